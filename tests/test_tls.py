"""Unit tests of multipool.tls: normalization, driver kwargs, PEM files, validation."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from multipool import tls
from multipool.errors import (
    CertificateDateError,
    CertificateError,
    ConfigurationError,
    InvalidTLSSetting,
    TLSFileError,
)
from multipool.tls import (
    TLS_OPTION_NAMES,
    TLSSpec,
    check_tls_support,
    pem,
    tls_from_options,
    validate_tls,
    write_pem,
)

PASSPHRASE = "correct-horse-battery"
NOW = dt.datetime.now(dt.timezone.utc)


# -- a tiny PKI, built with cryptography directly ------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name = issuer[0].subject if issuer else subject
    signing_key = issuer[1] if issuer else key
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(days=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    algorithm: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm
    )


def write(path: Path, data: bytes, mode: int = 0o644) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


@dataclass
class PKI:
    dir: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    ca: str
    cert: str
    key: str

    def client(
        self,
        name: str,
        *,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
        password: str | None = None,
        key_mode: int = 0o600,
        chain: tuple[x509.Certificate, ...] = (),
        **dates: Any,
    ) -> tuple[str, str]:
        key = new_key()
        cert = make_cert(name, key, issuer=issuer or (self.ca_cert, self.ca_key), **dates)
        return (
            write(self.dir / f"{name}.crt", cert_pem(cert, *chain)),
            write(self.dir / f"{name}.key", key_pem(key, password), key_mode),
        )


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    ca_key = new_key()
    ca_cert = make_cert("Test CA", ca_key, ca=True)
    ca = write(tmp_path / "ca.crt", cert_pem(ca_cert))
    pki = PKI(tmp_path, ca_key, ca_cert, ca, "", "")
    pki.cert, pki.key = pki.client("client")
    return pki


# -- driver kwargs tables --------------------------------------------------------------------

LIBPQ_CASES = [
    pytest.param(TLSSpec(), {}, id="empty"),
    pytest.param(TLSSpec(mode="require"), {"sslmode": "require"}, id="require"),
    pytest.param(
        TLSSpec(mode="verify-full", ca="/ca.pem"),
        {"sslmode": "verify-full", "sslrootcert": "/ca.pem"},
        id="verify-full",
    ),
    pytest.param(
        TLSSpec(mode="verify-ca", ca="system"),
        {"sslmode": "verify-ca", "sslrootcert": "system"},
        id="system-passthrough",
    ),
    pytest.param(
        TLSSpec(
            mode="verify-full",
            ca="/ca.pem",
            cert="/c.crt",
            key="/c.key",
            key_password="pw",
            crl="/crl.pem",
            min_version="TLSv1.3",
        ),
        {
            "sslmode": "verify-full",
            "sslrootcert": "/ca.pem",
            "sslcert": "/c.crt",
            "sslkey": "/c.key",
            "sslpassword": "pw",
            "sslcrl": "/crl.pem",
            "ssl_min_protocol_version": "TLSv1.3",
        },
        id="everything",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), LIBPQ_CASES)
def test_libpq_kwargs(spec: TLSSpec, expected: dict[str, str]) -> None:
    assert spec.libpq_kwargs() == expected
    assert spec.driver_kwargs("postgresql") == expected


MYSQL_CASES = [
    pytest.param(TLSSpec(), {}, id="empty"),
    pytest.param(TLSSpec(mode="disable"), {"ssl_mode": "DISABLED"}, id="disable"),
    pytest.param(TLSSpec(mode="allow"), {"ssl_mode": "PREFERRED"}, id="allow"),
    pytest.param(TLSSpec(mode="prefer"), {"ssl_mode": "PREFERRED"}, id="prefer"),
    pytest.param(TLSSpec(mode="require"), {"ssl_mode": "REQUIRED"}, id="require"),
    pytest.param(
        TLSSpec(mode="verify-ca", ca="/ca.pem"),
        {"ssl": {"ca": "/ca.pem"}, "ssl_mode": "VERIFY_CA"},
        id="verify-ca",
    ),
    pytest.param(
        TLSSpec(
            mode="verify-full",
            ca="/ca.pem",
            cert="/c.crt",
            key="/c.key",
            ciphers="ECDHE-ECDSA-AES256-GCM-SHA384",
            capath="/cadir",
        ),
        {
            "ssl": {
                "ca": "/ca.pem",
                "capath": "/cadir",
                "cert": "/c.crt",
                "key": "/c.key",
                "cipher": "ECDHE-ECDSA-AES256-GCM-SHA384",
            },
            "ssl_mode": "VERIFY_IDENTITY",
        },
        id="verify-full-client-cert",
    ),
]


@pytest.mark.parametrize(("spec", "expected"), MYSQL_CASES)
def test_mysql_kwargs(spec: TLSSpec, expected: dict[str, Any]) -> None:
    assert spec.mysql_kwargs() == expected
    assert spec.driver_kwargs("mysql") == expected


def test_mysql_system_ca_uses_the_system_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TLSSpec(mode="verify-full", ca="system")
    cafile, capath = tls.system_ca_bundle()
    expected: dict[str, str] = {"ca": cafile} if cafile else {"capath": capath or ""}
    assert spec.mysql_kwargs() == {"ssl": expected, "ssl_mode": "VERIFY_IDENTITY"}
    # the OPTIONS form keeps "system" so the settings round-trip
    assert spec.to_options("mysql") == {"ssl": {"ca": "system"}, "ssl_mode": "VERIFY_IDENTITY"}
    # TLSSpec resolves "system" where it builds the driver arguments
    monkeypatch.setattr(tls.spec, "system_ca_bundle", lambda: (None, "/etc/ssl/certs"))
    assert spec.mysql_kwargs()["ssl"] == {"capath": "/etc/ssl/certs"}


def test_driver_kwargs_sqlite_and_unknown() -> None:
    assert TLSSpec(mode="require").driver_kwargs("sqlite") == {}
    with pytest.raises(ValueError, match="vendor"):
        TLSSpec().driver_kwargs("oracle")


@pytest.mark.parametrize(
    ("mode", "verifies"),
    [(None, False), *((m, m.startswith("verify")) for m in tls.TLS_MODES)],
    ids=lambda v: str(v),
)
def test_verifies(mode: str | None, verifies: bool) -> None:
    assert TLSSpec(mode=mode).verifies is verifies


def test_repr_masks_key_password() -> None:
    spec = TLSSpec(mode="require", key="/k", key_password="hunter2-secret")
    assert "hunter2-secret" not in repr(spec)
    assert "key_password='***'" in repr(spec)
    assert "hunter2-secret" not in str(spec)


def test_option_names() -> None:
    assert {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslcrl",
        "ssl_min_protocol_version",
    } <= TLS_OPTION_NAMES
    assert {"ssl", "ssl_mode", "ssl_ca", "ssl_cert", "ssl_key", "tls_version"} <= TLS_OPTION_NAMES
    # every key a spec emits is one the backend will strip
    for vendor in ("postgresql", "mysql"):
        full = TLSSpec(mode="verify-full", ca="/ca", cert="/c", key="/k")
        assert set(full.driver_kwargs(vendor)) <= TLS_OPTION_NAMES


# -- normalization -------------------------------------------------------------------------

MODE_SPELLINGS = [
    ("disable", "disable"),
    ("DISABLED", "disable"),
    ("allow", "allow"),
    ("prefer", "prefer"),
    ("Preferred", "prefer"),
    ("require", "require"),
    ("REQUIRED", "require"),
    ("true", "require"),
    ("verify-ca", "verify-ca"),
    ("VERIFY_CA", "verify-ca"),
    ("verify_ca", "verify-ca"),
    ("verify-full", "verify-full"),
    ("VERIFY_IDENTITY", "verify-full"),
    ("verify-identity", "verify-full"),
    (" verify-full ", "verify-full"),
]


@pytest.mark.parametrize(("given", "mode"), MODE_SPELLINGS, ids=[g for g, _ in MODE_SPELLINGS])
@pytest.mark.parametrize("key", ["sslmode", "ssl_mode"])
def test_mode_spellings(key: str, given: str, mode: str) -> None:
    spec = tls_from_options("default", "postgresql", {key: given, "sslrootcert": "/ca.pem"})
    assert spec.mode == mode


OPTION_CASES = [
    pytest.param("postgresql", {}, TLSSpec(), id="pg-none"),
    pytest.param(
        "postgresql",
        {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem", "connect_timeout": 5},
        TLSSpec(mode="verify-full", ca="/etc/ca.pem"),
        id="pg-libpq",
    ),
    pytest.param(
        "postgresql",
        {"sslrootcert": "system"},
        TLSSpec(mode="verify-full", ca="system"),
        id="pg-system-implies-verify-full",
    ),
    pytest.param(
        "postgresql",
        {"ssl_mode": "VERIFY_IDENTITY", "ssl_ca": "/etc/ca.pem"},
        TLSSpec(mode="verify-full", ca="/etc/ca.pem"),
        id="pg-mysql-spelling",
    ),
    pytest.param("postgresql", {"ssl": "true"}, TLSSpec(mode="require"), id="pg-ssl-true"),
    pytest.param(
        "postgresql",
        {"ssl_min_protocol_version": "tlsv1.2"},
        TLSSpec(min_version="TLSv1.2"),
        id="pg-version",
    ),
    pytest.param(
        "mysql",
        {"ssl": {"ca": "/etc/ca.pem", "cert": "/c.crt", "key": "/c.key"}, "ssl_mode": "VERIFY_CA"},
        TLSSpec(mode="verify-ca", ca="/etc/ca.pem", cert="/c.crt", key="/c.key"),
        id="mysql-ssl-dict",
    ),
    pytest.param(
        "mysql",
        {
            "ssl_ca": "/etc/ca.pem",
            "ssl_cert": "/c.crt",
            "ssl_key": "/c.key",
            "ssl_mode": "verify_ca",
        },
        TLSSpec(mode="verify-ca", ca="/etc/ca.pem", cert="/c.crt", key="/c.key"),
        id="mysql-flat",
    ),
    pytest.param(
        "mysql",
        {
            "sslmode": "verify-ca",
            "sslrootcert": "/etc/ca.pem",
            "sslcert": "/c.crt",
            "sslkey": "/c.key",
        },
        TLSSpec(mode="verify-ca", ca="/etc/ca.pem", cert="/c.crt", key="/c.key"),
        id="mysql-libpq-spelling",
    ),
    pytest.param("mysql", {"ssl": True}, TLSSpec(mode="require"), id="mysql-ssl-true"),
    pytest.param("mysql", {"ssl": False}, TLSSpec(mode="disable"), id="mysql-ssl-false"),
    pytest.param(
        "mysql", {"ssl_mode": "allow"}, TLSSpec(mode="prefer"), id="mysql-allow-is-prefer"
    ),
    pytest.param(
        "mysql",
        {"ssl": {"cipher": "AES256-SHA", "capath": "/etc/ssl/certs"}},
        TLSSpec(ciphers="AES256-SHA", capath="/etc/ssl/certs"),
        id="mysql-cipher-capath",
    ),
    pytest.param("mysql", {"ssl": {}}, TLSSpec(), id="mysql-empty-dict"),
    pytest.param("sqlite", {"timeout": 5}, TLSSpec(), id="sqlite-none"),
    pytest.param("postgresql", {"sslmode": "", "sslrootcert": None}, TLSSpec(), id="empty-values"),
]


@pytest.mark.parametrize(("vendor", "options", "expected"), OPTION_CASES)
def test_tls_from_options(vendor: str, options: dict[str, Any], expected: TLSSpec) -> None:
    assert tls_from_options("default", vendor, options) == expected


def test_equal_configs_equal_specs() -> None:
    forms = [
        {"sslmode": "verify-ca", "sslrootcert": "/ca.pem", "sslcert": "/c", "sslkey": "/k"},
        {"ssl_mode": "VERIFY_CA", "ssl": {"ca": "/ca.pem", "cert": "/c", "key": "/k"}},
        {"ssl_mode": "verify_ca", "ssl_ca": "/ca.pem", "ssl_cert": "/c", "ssl_key": "/k"},
    ]
    specs = {tls_from_options("x", "mysql", f) for f in forms}
    assert len(specs) == 1


def test_relative_and_home_paths_become_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    spec = tls_from_options("x", "postgresql", {"sslrootcert": "certs/ca.pem", "sslcert": "~/c"})
    assert spec.ca == os.path.abspath("certs/ca.pem")
    assert spec.cert == "/home/someone/c"


def test_path_like_values(tmp_path: Path) -> None:
    spec = tls_from_options("x", "postgresql", {"sslrootcert": tmp_path / "ca.pem"})
    assert spec.ca == str(tmp_path / "ca.pem")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("TLSv1.2", "TLSv1.2"),
        ("tlsv1.3", "TLSv1.3"),
        ("1.2", "TLSv1.2"),
        ("TLSv1.3,TLSv1.2", "TLSv1.2"),
    ],
)
def test_min_version_spellings(given: str, expected: str) -> None:
    spec = tls_from_options("x", "postgresql", {"ssl_min_protocol_version": given})
    assert spec.min_version == expected


# -- parse errors ----------------------------------------------------------------------------

PARSE_ERRORS = [
    pytest.param(
        "postgresql", {"sslmode": "verify"}, InvalidTLSSetting, "['sslmode']", id="unknown-mode"
    ),
    pytest.param(
        "mysql",
        {"ssl_mode": "IDENTITY"},
        InvalidTLSSetting,
        "['ssl_mode']",
        id="unknown-mysql-mode",
    ),
    pytest.param(
        "postgresql",
        {"ssl_min_protocol_version": "TLSv1.1"},
        InvalidTLSSetting,
        "ssl_min_protocol_version",
        id="obsolete-version",
    ),
    pytest.param(
        "postgresql",
        {"ssl_min_protocol_version": "TLSv9"},
        InvalidTLSSetting,
        "ssl_min_protocol_version",
        id="unknown-version",
    ),
    pytest.param(
        "postgresql",
        {"sslmode": "require", "ssl_mode": "VERIFY_CA"},
        InvalidTLSSetting,
        "conflicts",
        id="conflicting-modes",
    ),
    pytest.param(
        "mysql",
        {"ssl": {"ca": "/a.pem", "check_hostname": False}},
        InvalidTLSSetting,
        "['ssl']['check_hostname']",
        id="unknown-ssl-dict-key",
    ),
    pytest.param("mysql", {"ssl": 3.5}, InvalidTLSSetting, "['ssl']", id="ssl-not-dict"),
    pytest.param("postgresql", {"sslmode": 5}, InvalidTLSSetting, "['sslmode']", id="not-text"),
    pytest.param(
        "sqlite", {"sslmode": "require"}, InvalidTLSSetting, "['sslmode']", id="sqlite-tls"
    ),
    pytest.param(
        "postgresql",
        {"ssl_cipher": "AES256-SHA"},
        InvalidTLSSetting,
        "ssl_cipher",
        id="pg-ciphers",
    ),
    pytest.param(
        "postgresql",
        {"ssl_capath": "/etc/ssl/certs"},
        InvalidTLSSetting,
        "ssl_capath",
        id="pg-capath",
    ),
    pytest.param(
        "postgresql",
        {"sslmode": "require", "sslrootcert": "system"},
        InvalidTLSSetting,
        "['sslmode']",
        id="pg-system-needs-verify-full",
    ),
    pytest.param(
        "mysql",
        {"sslpassword": PASSPHRASE},
        InvalidTLSSetting,
        "sslpassword",
        id="mysql-key-password",
    ),
    pytest.param("mysql", {"ssl_crl": "/crl.pem"}, InvalidTLSSetting, "ssl_crl", id="mysql-crl"),
    pytest.param(
        "mysql", {"tls_version": "TLSv1.2"}, InvalidTLSSetting, "tls_version", id="mysql-version"
    ),
    pytest.param(
        "postgresql",
        {"sslcapath": "x", "ssl_capath": "-----BEGIN CERTIFICATE-----\nx"},
        InvalidTLSSetting,
        "ssl_capath",
        id="capath-pem",
    ),
]


@pytest.mark.parametrize(("vendor", "options", "error", "setting"), PARSE_ERRORS)
def test_parse_errors(
    vendor: str, options: dict[str, Any], error: type[ConfigurationError], setting: str
) -> None:
    with pytest.raises(error) as info:
        tls_from_options("reports", vendor, options)
    message = str(info.value)
    assert "'reports'" in message
    assert setting in message
    assert "Fix:" in message
    assert PASSPHRASE not in message


def test_error_names_come_from_settings() -> None:
    with pytest.raises(InvalidTLSSetting) as info:
        tls_from_options(
            "db2", "postgresql", {"sslmode": "nope"}, settings={"mode": "DB2_DATABASE_SSLMODE"}
        )
    assert info.value.setting == "DB2_DATABASE_SSLMODE"
    assert info.value.alias == "db2"


def test_check_tls_support_unknown_vendor() -> None:
    with pytest.raises(ValueError):
        check_tls_support("x", "oracle", TLSSpec())


# -- PEM text --------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "files"])
def pem_storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where PEM text goes: an in-memory file (Linux), or a temporary file (elsewhere)."""
    if request.param == "memory" and not pem.use_memfd:
        pytest.skip("no memfd_create on this system")
    monkeypatch.setattr(pem, "use_memfd", request.param == "memory")
    return str(request.param)


def test_pem_text_goes_to_a_private_file(pki: PKI, pem_storage: str) -> None:
    text = Path(pki.ca).read_text()
    spec = tls_from_options("x", "postgresql", {"sslrootcert": text, "sslmode": "verify-full"})
    assert spec.ca is not None and spec.ca != text
    assert Path(spec.ca).read_text() == text
    assert stat.S_IMODE(os.stat(spec.ca).st_mode) == 0o600
    if pem_storage == "memory":
        assert spec.ca.startswith("/proc/self/fd/")
        assert os.readlink(spec.ca).startswith("/memfd:multipool-tls-ca")
    else:
        assert stat.S_IMODE(os.stat(os.path.dirname(spec.ca)).st_mode) == 0o700
    # same content -> same path, so equal configurations stay equal
    again = tls_from_options("y", "postgresql", {"sslrootcert": text, "sslmode": "verify-full"})
    assert again == spec
    # an escaped one-line form (as in .env files) is the same content
    one_line = text.strip().replace("\n", "\\n")
    assert tls_from_options("z", "postgresql", {"sslrootcert": one_line}).ca == spec.ca
    # mysql dict with PEM text too
    assert tls_from_options("x", "mysql", {"ssl": {"ca": text}}).ca == spec.ca
    assert validate_tls("x", spec) == []


def test_pem_key_text(pki: PKI, pem_storage: str) -> None:
    key_text = Path(pki.key).read_text()
    cert_text = Path(pki.cert).read_text()
    spec = tls_from_options(
        "x", "postgresql", {"sslkey": key_text, "sslcert": cert_text, "sslrootcert": pki.ca}
    )
    assert spec.key is not None and key_text not in repr(spec)
    assert stat.S_IMODE(os.stat(spec.key).st_mode) == 0o600
    assert validate_tls("x", spec) == []


def test_different_content_different_path(pem_storage: str) -> None:
    a = write_pem("ca", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
    b = write_pem("ca", "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----")
    assert a != b
    assert write_pem("ca", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----") == a


@pytest.mark.skipif(not pem.use_memfd, reason="no memfd_create on this system")
def test_in_memory_pem_file_is_private_sealed_and_closed_on_exec(pki: PKI) -> None:
    import fcntl

    path = write_pem("key", Path(pki.key).read_text())
    fd = int(path.rpartition("/")[2])
    assert path == f"/proc/self/fd/{fd}" and fd > 2  # clear of stdin, stdout, stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
    writable = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(PermissionError):  # sealed: the content cannot change
            os.write(writable, b"-----BEGIN PRIVATE KEY-----")
    finally:
        os.close(writable)
    assert Path(path).read_bytes() == Path(pki.key).read_bytes()
    assert pem.from_pem_text(path) and not pem.from_pem_text(pki.key)
    assert pem.show_path(path) == "(the PEM text given)"


@pytest.mark.skipif(not pem.use_memfd, reason="no memfd_create on this system")
def test_in_memory_pem_file_is_made_again_when_its_descriptor_is_gone(pki: PKI) -> None:
    """Code that closes every descriptor (a daemonizing worker) and reuses the number:
    reading the settings again gives a file with the text, not what the number is now."""
    text = Path(pki.ca).read_text()
    path = write_pem("ca", text)
    fd = int(path.rpartition("/")[2])
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, fd)  # closes the in-memory file; the number now means /dev/null
        again = write_pem("ca", text)
        assert Path(again).read_text() == text
        assert again != path
    finally:
        os.close(null)
        os.close(fd)


def test_invalid_pem_text_is_a_configuration_error() -> None:
    with pytest.raises(TLSFileError) as info:
        tls_from_options("x", "postgresql", {"sslkey": "-----BEGIN \udcff"})
    assert "['sslkey']" in str(info.value)


# -- validation ------------------------------------------------------------------------------


def names(prefix: str = "APP_DATABASE_") -> dict[str, str]:
    return {
        "mode": f"{prefix}SSLMODE",
        "ca": f"{prefix}SSLROOTCERT",
        "cert": f"{prefix}SSLCERT",
        "key": f"{prefix}SSLKEY",
        "key_password": f"{prefix}SSLPASSWORD",
        "crl": f"{prefix}SSLCRL",
        "capath": f"{prefix}SSLCAPATH",
    }


def check(spec: TLSSpec, **kwargs: Any) -> list[str]:
    return validate_tls("app", spec, settings=names(), **kwargs)


def test_valid_setup_has_no_warnings(pki: PKI) -> None:
    spec = TLSSpec(mode="verify-full", ca=pki.ca, cert=pki.cert, key=pki.key)
    assert check(spec) == []
    assert check(TLSSpec(mode="verify-full", ca="system"), vendor="postgresql") == []
    assert check(TLSSpec(mode="require")) == []
    assert check(TLSSpec()) == []


def _spec_missing_file(pki: PKI) -> TLSSpec:
    return TLSSpec(mode="verify-full", ca=str(pki.dir / "nope.crt"))


def _spec_dir(pki: PKI) -> TLSSpec:
    return TLSSpec(mode="verify-full", ca=str(pki.dir))


def _spec_ca_not_pem(pki: PKI) -> TLSSpec:
    der = pki.ca_cert.public_bytes(serialization.Encoding.DER)
    return TLSSpec(mode="verify-full", ca=write(pki.dir / "ca.der", der))


def _spec_ca_damaged(pki: PKI) -> TLSSpec:
    bad = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    return TLSSpec(mode="verify-full", ca=write(pki.dir / "bad.crt", bad))


def _spec_cert_missing(pki: PKI) -> TLSSpec:
    return TLSSpec(ca=pki.ca, cert=str(pki.dir / "none.crt"), key=pki.key)


def _spec_key_not_pem(pki: PKI) -> TLSSpec:
    return TLSSpec(ca=pki.ca, cert=pki.cert, key=write(pki.dir / "k.txt", b"hello", 0o600))


def _spec_key_damaged(pki: PKI) -> TLSSpec:
    data = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    return TLSSpec(ca=pki.ca, cert=pki.cert, key=write(pki.dir / "k.pem", data, 0o600))


def _spec_key_world_readable(pki: PKI) -> TLSSpec:
    cert, key = pki.client("loose", key_mode=0o644)
    return TLSSpec(ca=pki.ca, cert=cert, key=key)


def _spec_key_group_writable(pki: PKI) -> TLSSpec:
    cert, key = pki.client("groupw", key_mode=0o620)
    return TLSSpec(ca=pki.ca, cert=cert, key=key)


def _spec_mismatch(pki: PKI) -> TLSSpec:
    _, other_key = pki.client("other")
    return TLSSpec(ca=pki.ca, cert=pki.cert, key=other_key)


def _spec_expired(pki: PKI) -> TLSSpec:
    cert, key = pki.client(
        "old", not_before=NOW - dt.timedelta(days=400), not_after=NOW - dt.timedelta(days=1)
    )
    return TLSSpec(ca=pki.ca, cert=cert, key=key)


def _spec_not_yet_valid(pki: PKI) -> TLSSpec:
    cert, key = pki.client(
        "future", not_before=NOW + dt.timedelta(days=2), not_after=NOW + dt.timedelta(days=400)
    )
    return TLSSpec(ca=pki.ca, cert=cert, key=key)


def _spec_ca_expired(pki: PKI) -> TLSSpec:
    key = new_key()
    old = make_cert(
        "Old CA",
        key,
        ca=True,
        not_before=NOW - dt.timedelta(days=100),
        not_after=NOW - dt.timedelta(days=1),
    )
    return TLSSpec(mode="verify-full", ca=write(pki.dir / "old-ca.crt", cert_pem(old)))


def _spec_wrong_ca(pki: PKI) -> TLSSpec:
    # a CA regenerated with the same name: the client cert's signature no longer verifies
    new_ca_key = new_key()
    new_ca = make_cert("Test CA", new_ca_key, ca=True)
    return TLSSpec(ca=write(pki.dir / "new-ca.crt", cert_pem(new_ca)), cert=pki.cert, key=pki.key)


def _spec_encrypted_no_passphrase(pki: PKI) -> TLSSpec:
    cert, key = pki.client("enc", password=PASSPHRASE)
    return TLSSpec(ca=pki.ca, cert=cert, key=key)


def _spec_wrong_passphrase(pki: PKI) -> TLSSpec:
    cert, key = pki.client("enc2", password=PASSPHRASE)
    return TLSSpec(ca=pki.ca, cert=cert, key=key, key_password="not-" + PASSPHRASE)


def _spec_verify_without_ca(pki: PKI) -> TLSSpec:
    return TLSSpec(mode="verify-ca")


def _spec_cert_without_key(pki: PKI) -> TLSSpec:
    return TLSSpec(ca=pki.ca, cert=pki.cert)


def _spec_key_without_cert(pki: PKI) -> TLSSpec:
    return TLSSpec(ca=pki.ca, key=pki.key)


def _spec_crl_not_pem(pki: PKI) -> TLSSpec:
    return TLSSpec(ca=pki.ca, crl=pki.ca)


def _spec_capath_missing(pki: PKI) -> TLSSpec:
    return TLSSpec(mode="verify-ca", capath=str(pki.dir / "nodir"))


def _spec_not_regular(pki: PKI) -> TLSSpec:
    return TLSSpec(mode="verify-ca", ca="/dev/null")


VALIDATION_ERRORS: list[Any] = [
    pytest.param(_spec_missing_file, TLSFileError, "SSLROOTCERT", "does not exist", id="missing"),
    pytest.param(_spec_dir, TLSFileError, "SSLROOTCERT", "directory", id="directory"),
    pytest.param(_spec_not_regular, TLSFileError, "SSLROOTCERT", "regular", id="not-regular"),
    pytest.param(_spec_ca_not_pem, TLSFileError, "SSLROOTCERT", "not a PEM", id="ca-not-pem"),
    pytest.param(_spec_ca_damaged, TLSFileError, "SSLROOTCERT", "damaged", id="ca-damaged"),
    pytest.param(_spec_cert_missing, TLSFileError, "SSLCERT", "does not exist", id="cert-missing"),
    pytest.param(_spec_key_not_pem, TLSFileError, "SSLKEY", "not a PEM", id="key-not-pem"),
    pytest.param(_spec_key_damaged, TLSFileError, "SSLKEY", "cannot be parsed", id="key-damaged"),
    pytest.param(
        _spec_key_world_readable, TLSFileError, "SSLKEY", "chmod 600", id="key-world-readable"
    ),
    pytest.param(
        _spec_key_group_writable, TLSFileError, "SSLKEY", "chmod 600", id="key-group-writable"
    ),
    pytest.param(_spec_mismatch, CertificateError, "SSLKEY", "does not match", id="key-mismatch"),
    pytest.param(_spec_expired, CertificateDateError, "SSLCERT", "expired", id="cert-expired"),
    pytest.param(
        _spec_not_yet_valid, CertificateDateError, "SSLCERT", "not valid before", id="not-yet-valid"
    ),
    pytest.param(_spec_ca_expired, CertificateDateError, "SSLROOTCERT", "expired", id="ca-expired"),
    pytest.param(_spec_wrong_ca, CertificateError, "SSLCERT", "not signed", id="wrong-ca"),
    pytest.param(
        _spec_encrypted_no_passphrase,
        TLSFileError,
        "SSLPASSWORD",
        "no passphrase",
        id="encrypted-key-no-passphrase",
    ),
    pytest.param(
        _spec_wrong_passphrase,
        TLSFileError,
        "SSLPASSWORD",
        "does not decrypt",
        id="wrong-passphrase",
    ),
    pytest.param(
        _spec_verify_without_ca, InvalidTLSSetting, "SSLROOTCERT", "no CA", id="verify-without-ca"
    ),
    pytest.param(
        _spec_cert_without_key, InvalidTLSSetting, "SSLKEY", "no client key", id="cert-no-key"
    ),
    pytest.param(
        _spec_key_without_cert, InvalidTLSSetting, "SSLCERT", "no client cert", id="key-no-cert"
    ),
    pytest.param(_spec_crl_not_pem, TLSFileError, "SSLCRL", "not a PEM CRL", id="crl-not-pem"),
    pytest.param(
        _spec_capath_missing, TLSFileError, "SSLCAPATH", "does not exist", id="capath-missing"
    ),
]


@pytest.mark.parametrize(("make", "error", "variable", "problem"), VALIDATION_ERRORS)
def test_validation_errors(
    pki: PKI,
    make: Callable[[PKI], TLSSpec],
    error: type[ConfigurationError],
    variable: str,
    problem: str,
) -> None:
    spec = make(pki)
    with pytest.raises(error) as info:
        check(spec)
    message = str(info.value)
    assert "'app'" in message
    assert f"APP_DATABASE_{variable}" in message
    assert problem in message
    assert PASSPHRASE not in message
    assert "PRIVATE KEY" not in message
    assert info.value.alias == "app"


def test_unreadable_file(pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(path: str) -> bytes:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(tls.files, "_read_file", deny)
    with pytest.raises(TLSFileError) as info:
        check(TLSSpec(mode="verify-full", ca=pki.ca))
    assert "cannot be read (Permission denied)" in str(info.value)
    assert "APP_DATABASE_SSLROOTCERT" in str(info.value)


def test_unreadable_file_for_real(pki: PKI) -> None:
    if os.geteuid() != 0:
        os.chmod(pki.ca, 0)
        with pytest.raises(TLSFileError, match="cannot be read"):
            check(TLSSpec(mode="verify-full", ca=pki.ca))
        return
    # Root reads anything: check in a forked child that drops to an unprivileged user.
    os.chmod(pki.ca, 0)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                check(TLSSpec(mode="verify-full", ca=pki.ca))
            except TLSFileError as exc:
                os.write(write_fd, str(exc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        message = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "cannot be read" in message


def test_key_permissions_follow_libpq(pki: PKI) -> None:
    cert, key = pki.client("g", key_mode=0o640)
    spec = TLSSpec(ca=pki.ca, cert=cert, key=key)
    if os.stat(key).st_uid == 0:
        assert check(spec) == []  # libpq accepts a root-owned 0640 key
    else:
        with pytest.raises(TLSFileError, match="chmod 600"):
            check(spec)
    cert, key = pki.client("ro", key_mode=0o400)
    assert check(TLSSpec(ca=pki.ca, cert=cert, key=key)) == []


def test_encrypted_key_with_passphrase(pki: PKI) -> None:
    cert, key = pki.client("enc", password=PASSPHRASE)
    spec = TLSSpec(ca=pki.ca, cert=cert, key=key, key_password=PASSPHRASE)
    assert check(spec) == []


def test_unused_passphrase_warns(pki: PKI) -> None:
    spec = TLSSpec(ca=pki.ca, cert=pki.cert, key=pki.key, key_password=PASSPHRASE)
    [warning] = check(spec)
    assert "APP_DATABASE_SSLPASSWORD" in warning and PASSPHRASE not in warning


def test_expiring_soon_warns(pki: PKI) -> None:
    cert, key = pki.client("soon", not_after=NOW + dt.timedelta(days=10))
    [warning] = check(TLSSpec(ca=pki.ca, cert=cert, key=key))
    assert "'app'" in warning and "APP_DATABASE_SSLCERT" in warning and "expires" in warning
    # 40 days left is fine
    cert, key = pki.client("later", not_after=NOW + dt.timedelta(days=40))
    assert check(TLSSpec(ca=pki.ca, cert=cert, key=key)) == []


def test_now_can_be_naive(pki: PKI) -> None:
    naive = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(days=500)
    with pytest.raises(CertificateDateError, match="expired"):
        check(TLSSpec(ca=pki.ca, cert=pki.cert, key=pki.key), now=naive)


def test_client_cert_from_another_ca_warns(pki: PKI) -> None:
    other_key = new_key()
    other = make_cert("Client CA", other_key, ca=True)
    cert, key = pki.client("foreign", issuer=(other, other_key))
    [warning] = check(TLSSpec(ca=pki.ca, cert=cert, key=key))
    assert "Client CA" in warning and "APP_DATABASE_SSLROOTCERT" in warning


def test_chain_through_intermediate(pki: PKI) -> None:
    inter_key = new_key()
    inter = make_cert("Intermediate", inter_key, issuer=(pki.ca_cert, pki.ca_key), ca=True)
    # intermediate shipped with the client certificate
    cert, key = pki.client("leaf", issuer=(inter, inter_key), chain=(inter,))
    assert check(TLSSpec(ca=pki.ca, cert=cert, key=key)) == []
    # or in the CA bundle
    bundle = write(pki.dir / "bundle.crt", cert_pem(pki.ca_cert, inter))
    cert2, key2 = pki.client("leaf2", issuer=(inter, inter_key))
    assert check(TLSSpec(ca=bundle, cert=cert2, key=key2)) == []


def test_disable_with_files_warns(pki: PKI) -> None:
    [warning] = check(TLSSpec(mode="disable", ca=pki.ca))
    assert "ignored" in warning


def test_crl_ok(pki: PKI) -> None:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca_cert.subject)
        .last_update(NOW - dt.timedelta(days=1))
        .next_update(NOW + dt.timedelta(days=30))
        .sign(pki.ca_key, hashes.SHA256())
    )
    path = write(pki.dir / "ca.crl", crl.public_bytes(serialization.Encoding.PEM))
    assert check(TLSSpec(mode="verify-full", ca=pki.ca, crl=path)) == []


def test_validate_with_vendor_checks_support() -> None:
    with pytest.raises(InvalidTLSSetting) as info:
        check(TLSSpec(mode="require", key_password=PASSPHRASE), vendor="mysql")
    assert "APP_DATABASE_SSLPASSWORD" in str(info.value)
    assert PASSPHRASE not in str(info.value)


def test_mysql_system_ca_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # validate_tls looks for the bundle that mysqlclient will be given
    monkeypatch.setattr(tls.validation, "system_ca_bundle", lambda: (None, None))
    with pytest.raises(TLSFileError) as info:
        check(TLSSpec(mode="verify-full", ca="system"), vendor="mysql")
    assert "APP_DATABASE_SSLROOTCERT" in str(info.value)


def test_paths_that_look_like_key_material_are_not_echoed(pki: PKI) -> None:
    blob = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ" * 8
    with pytest.raises(TLSFileError) as info:
        check(TLSSpec(ca=pki.ca, cert=pki.cert, key=blob))
    assert blob not in str(info.value)


def test_check_dates_returns_its_warning_or_none() -> None:
    """It used to return True whatever the dates (documented "True if valid")."""
    from multipool.tls.validation import check_dates

    key = new_key()
    year = make_cert("year", key)
    assert check_dates("app", "APP_DATABASE_SSLCERT", year, "client certificate", NOW) is None
    soon = make_cert("soon", key, not_after=NOW + dt.timedelta(days=10))
    warning = check_dates("app", "APP_DATABASE_SSLCERT", soon, "client certificate", NOW)
    assert warning is not None
    assert "(APP_DATABASE_SSLCERT) expires on" in warning
    old = make_cert("old", key, not_before=NOW - dt.timedelta(days=60),
                    not_after=NOW - dt.timedelta(days=30))
    with pytest.raises(CertificateDateError, match="expired on"):
        check_dates("app", "APP_DATABASE_SSLCERT", old, "client certificate", NOW)
