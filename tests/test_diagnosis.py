"""Connect errors explained, without database servers: the certificate fetch against
small local TLS servers that speak the opening of each protocol (PostgreSQL's
SSLRequest, MySQL's greeting and SSL request), the comparisons, and the driver
messages each explanation recognizes.

The same explanations against the real servers are in
``tests/reliability/test_tls_enforcement.py`` and ``tests/reliability/test_connect_errors.py``.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from multipool.backends import certificate_diagnosis, diagnosis
from multipool.backends.certificate_diagnosis import certificate_names, names_host
from multipool.backends.server_certificate import FetchError, chain_error, fetch_certificate
from multipool.certs import CertificateAuthority, issue_cert, make_ca, write_cert, write_key
from multipool.config import spec_from_settings
from multipool.errors import (
    AuthenticationFailed,
    ConnectTimeout,
    ServerCertificateError,
    ServerUnreachable,
)

pytestmark = pytest.mark.timeout(30)

NOW = dt.datetime.now(dt.timezone.utc)


# -- certificates ----------------------------------------------------------------------


def ca_that_signs_cas(
    name: str, parent: CertificateAuthority | None = None
) -> CertificateAuthority:
    """A CA that may sign other CAs (``make_ca`` makes end-of-chain CAs only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer = parent.cert.subject if parent else subject
    signer = parent.key if parent else key
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


class Served:
    """What a fake server presents: a chain file and its key."""

    def __init__(self, directory: Path, chain: list[x509.Certificate], key: Any) -> None:
        self.chain_file = write_cert(directory / "chain.crt", chain, overwrite=True)
        self.key_file = write_key(directory / "server.key", key, overwrite=True)
        self.leaf = chain[0]

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.chain_file, self.key_file)
        return context


# -- fake servers ----------------------------------------------------------------------

_MYSQL_SSL = 0x800


def _greeting(flags: int) -> bytes:
    payload = (
        b"\x0a" + b"10.11.0-fake\0" + struct.pack("<I", 7) + b"12345678" + b"\0"
        + struct.pack("<H", flags & 0xFFFF) + b"\x2d" + struct.pack("<H", 2)
        + struct.pack("<H", flags >> 16) + b"\x15" + b"\0" * 10 + b"123456789012\0"
    )
    return len(payload).to_bytes(3, "little") + b"\0" + payload


def _answer(protocol: str, conn: socket.socket, served: Served) -> None:
    if protocol == "postgresql":
        assert conn.recv(8) == struct.pack("!ii", 8, 80877103)
        conn.sendall(b"S")
    elif protocol == "postgresql-no-tls":
        conn.recv(8)
        conn.sendall(b"N")
        return
    elif protocol == "mysql-error":
        text = b"Host '127.0.0.1' is blocked because of many connection errors"
        payload = b"\xff" + struct.pack("<H", 1129) + text
        conn.sendall(len(payload).to_bytes(3, "little") + b"\0" + payload)
        return
    else:
        conn.sendall(_greeting(0xF7FF if protocol == "mysql-no-tls" else 0xFFFF))
        if protocol == "mysql-no-tls":
            return
        header = conn.recv(4)
        assert header[3] == 1, header  # the packet after the greeting
        request = conn.recv(int.from_bytes(header[:3], "little"))
        assert struct.unpack_from("<I", request)[0] & _MYSQL_SSL
    try:
        with served.context().wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)  # until the client leaves
    except (ssl.SSLError, OSError):
        pass  # the client refused the certificate: what the tests are about


@contextmanager
def fake_server(protocol: str, served: Served) -> Iterator[int]:
    """A server on 127.0.0.1 that answers each connection as ``protocol`` does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # to see ``stop`` soon
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                _answer(protocol, conn, served)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture
def root(tmp_path: Path) -> CertificateAuthority:
    ca = ca_that_signs_cas("Example Root CA")
    write_cert(tmp_path / "root.crt", ca.cert)
    return ca


def spec_for(vendor: str, port: int, ca: Path, mode: str = "verify-full") -> Any:
    engine = "postgresql" if vendor == "postgresql" else "mysql"
    options: dict[str, Any] = {"connect_timeout": 3}
    if vendor == "postgresql":
        options.update(sslmode=mode, sslrootcert=str(ca))
    else:
        options.update(ssl_mode=mode.upper().replace("-", "_").replace("FULL", "IDENTITY"),
                       ssl={"ca": str(ca)})
    return spec_from_settings("main", {
        "ENGINE": f"multipool.backends.{engine}", "NAME": "app", "USER": "app",
        "HOST": "127.0.0.1", "PORT": port, "OPTIONS": options,
    })


# -- fetching ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["postgresql", "mysql"])
def test_fetch_certificate_speaks_each_protocol(
    protocol: str, tmp_path: Path, root: CertificateAuthority
) -> None:
    cert, key = issue_cert(root, "db.internal", hosts=["db.internal"])
    served = Served(tmp_path, [cert], key)
    with fake_server(protocol, served) as port:
        der = fetch_certificate(protocol, "127.0.0.1", port, timeout=3)
        assert x509.load_der_x509_certificate(der) == cert
        trusted = str(tmp_path / "root.crt")
        assert chain_error(protocol, "127.0.0.1", port, 3, cafile=trusted) is None
        other = write_cert(tmp_path / "other.crt", make_ca("Other CA").cert)
        code, reason = chain_error(protocol, "127.0.0.1", port, 3, cafile=str(other)) or (0, "")
        assert code in (19, 20, 21), reason  # no trusted issuer


@pytest.mark.parametrize(
    ("protocol", "said"),
    [
        ("postgresql-no-tls", "does not offer TLS"),
        ("mysql-no-tls", "does not offer TLS"),
        ("mysql-error", "is blocked because of many connection errors"),
    ],
)
def test_fetch_certificate_says_why_there_is_none(
    protocol: str, said: str, tmp_path: Path, root: CertificateAuthority
) -> None:
    served = Served(tmp_path, [issue_cert(root, "db")[0]], issue_cert(root, "db")[1])
    vendor = protocol.split("-")[0]
    with fake_server(protocol, served) as port, pytest.raises(FetchError, match=said):
        fetch_certificate(vendor, "127.0.0.1", port, timeout=3)


def test_fetch_certificate_is_bounded_by_the_timeout() -> None:
    """A server that accepts and never answers: the whole fetch ends in time."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        for vendor in ("postgresql", "mysql"):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                fetch_certificate(vendor, "127.0.0.1", port, timeout=0.5)
            assert time.monotonic() - started < 2


# -- comparing ---------------------------------------------------------------------------


def test_certificate_names_and_host_matching(root: CertificateAuthority) -> None:
    cert, _ = issue_cert(root, "ignored-cn", hosts=["*.db.internal", "db.internal", "10.0.0.5"])
    assert certificate_names(cert) == ["*.db.internal", "db.internal", "10.0.0.5"]
    assert names_host(cert, "db.internal")
    assert names_host(cert, "EU1.DB.internal")  # any case; one label for the wildcard
    assert not names_host(cert, "a.b.db.internal")
    assert not names_host(cert, "ignored-cn")  # the common name counts only without SANs
    assert names_host(cert, "10.0.0.5")
    assert not names_host(cert, "10.0.0.6")
    bare, _ = issue_cert(root, "legacy.internal")
    assert certificate_names(bare) == ["legacy.internal"]
    assert names_host(bare, "legacy.internal")


@pytest.mark.parametrize("protocol", ["postgresql", "mysql"])
def test_an_intermediate_sent_along_is_not_blamed(
    protocol: str, tmp_path: Path, root: CertificateAuthority
) -> None:
    """The server sends leaf + intermediate, the client trusts the root: the chain is
    fine, and only the host name is reported."""
    intermediate = ca_that_signs_cas("Example Issuing CA", parent=root)
    cert, key = issue_cert(intermediate, "db.internal", hosts=["db.internal"])
    served = Served(tmp_path, [cert, intermediate.cert], key)
    with fake_server(protocol, served) as port:
        spec = spec_for(protocol, port, tmp_path / "root.crt")
        error = certificate_diagnosis.certificate_error(spec, "127.0.0.1", port, "driver text")
    assert isinstance(error, ServerCertificateError)
    assert error.setting == "DATABASES['main']['HOST']"
    assert error.problem.startswith(
        f"the certificate of 127.0.0.1:{port} is for 'db.internal', not for '127.0.0.1'"
    )
    assert "issued by" not in error.problem
    assert error.problem.endswith("(driver text)")
    assert "'127.0.0.1' among its subject alternative names" in error.fix


def test_a_regenerated_ca_of_the_same_name_is_named(
    tmp_path: Path, root: CertificateAuthority
) -> None:
    cert, key = issue_cert(root, "localhost", hosts=["127.0.0.1"])
    again = ca_that_signs_cas("Example Root CA")  # same name, another key
    write_cert(tmp_path / "again.crt", again.cert)
    with fake_server("postgresql", Served(tmp_path, [cert], key)) as port:
        spec = spec_for("postgresql", port, tmp_path / "again.crt")
        error = certificate_diagnosis.certificate_error(spec, "127.0.0.1", port, "said")
    assert error.setting == "DATABASES['main']['OPTIONS']['sslrootcert']"
    assert (
        "was issued by 'CN=Example Root CA' but not signed by the CA of that name"
        in error.problem
    )


def test_every_finding_is_reported_at_once(tmp_path: Path, root: CertificateAuthority) -> None:
    """A foreign CA, an expired certificate and another host: three findings; the
    setting named is the first one's."""
    foreign = make_ca("Foreign CA")
    cert, key = issue_cert(
        foreign, "wrong.example", hosts=["wrong.example"],
        not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1),
    )
    with fake_server("mysql", Served(tmp_path, [cert], key)) as port:
        spec = spec_for("mysql", port, tmp_path / "root.crt")
        error = certificate_diagnosis.certificate_error(spec, "127.0.0.1", port, "said")
    assert error.setting == "DATABASES['main']['OPTIONS']['ssl']['ca']"
    parts = error.problem.split("; ")
    assert parts[0].startswith(f"the certificate of 127.0.0.1:{port} was issued by 'CN=Foreign CA")
    assert "which is not a CA in DATABASES['main']['OPTIONS']['ssl']['ca'] " in parts[0]
    assert "(it holds 'CN=Example Root CA')" in parts[0]
    assert parts[1].startswith("it expired on ")
    assert parts[2].startswith("it is for 'wrong.example', not for '127.0.0.1'")
    assert "VERIFY_IDENTITY" not in error.problem  # the canonical mode, as everywhere
    assert "FLUSH SSL" in error.fix


def test_a_certificate_that_cannot_be_fetched_still_names_the_settings(
    tmp_path: Path, root: CertificateAuthority
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    spec = spec_for("postgresql", port, tmp_path / "root.crt")
    error = certificate_diagnosis.certificate_error(spec, "127.0.0.1", port, "libpq: said")
    assert error.setting == "DATABASES['main']['OPTIONS']['sslmode']"
    assert error.problem.startswith(
        f"the certificate of 127.0.0.1:{port} was refused (libpq: said); fetching it again "
        "to compare failed"
    )
    assert "DATABASES['main']['OPTIONS']['sslrootcert'] holds the CA" in error.fix


# -- the driver messages -------------------------------------------------------------------


class FakeMySQLError(Exception):
    """Shaped like MySQLdb's errors: ``(code, message)``."""


PG_PREFIX = (
    'connection failed: connection to server at "db.internal" (10.0.0.5), port 6432 failed: '
)


@pytest.mark.parametrize(
    ("vendor", "error", "kind", "setting", "problem"),
    [
        ("postgresql", PG_PREFIX + "Connection refused\n\tIs the server running on that host",
         ServerUnreachable, "DATABASES['main']['HOST'] / DATABASES['main']['PORT']",
         "nothing accepts connections at db.internal:6432 (libpq: Connection refused)"),
        ("postgresql", 'could not translate host name "db.nowhere" to address: Name or '
         "service not known", ServerUnreachable, "DATABASES['main']['HOST']",
         "the host name 'db.internal' does not resolve"),
        ("postgresql", "connection timeout expired", ConnectTimeout,
         "DATABASES['main']['OPTIONS']['connect_timeout']",
         "db.internal:6432 did not answer within 3 s (libpq: connection timeout expired)"),
        ("postgresql", PG_PREFIX + 'FATAL:  password authentication failed for user "app"',
         AuthenticationFailed, "DATABASES['main']['PASSWORD']",
         "the server refused the password of user 'app' (libpq: FATAL: password "
         'authentication failed for user "app")'),
        ("mysql", (2005, "Unknown server host 'db.internal' (-2)"), ServerUnreachable,
         "DATABASES['main']['HOST']", "the host name 'db.internal' does not resolve"),
        ("mysql", (2002, "Can't connect to server on 'db.internal' (110)"), ConnectTimeout,
         "DATABASES['main']['OPTIONS']['connect_timeout']", "db.internal:3306 did not answer"),
        ("mysql", (1045, "Access denied for user 'app'@'10.0.0.2' (using password: YES)"),
         AuthenticationFailed, "DATABASES['main']['PASSWORD']",
         "the server refused the login of user 'app' (MySQL error 1045: Access denied"),
    ],
    ids=["pg-refused", "pg-no-such-host", "pg-timeout", "pg-password", "my-no-such-host",
         "my-timeout", "my-access-denied"],
)
def test_driver_messages_become_connect_errors(
    vendor: str, error: Any, kind: type, setting: str, problem: str
) -> None:
    engine = "postgresql" if vendor == "postgresql" else "mysql"
    spec = spec_from_settings("main", {
        "ENGINE": f"multipool.backends.{engine}", "NAME": "app", "USER": "app",
        "PASSWORD": "hunter2", "HOST": "db.internal", "OPTIONS": {"connect_timeout": 3},
        **({"PORT": 6432} if vendor == "postgresql" else {}),
    })
    exc = FakeMySQLError(*error) if isinstance(error, tuple) else Exception(error)
    explained = diagnosis.explain_connect_error(spec, exc)
    assert type(explained) is kind, explained
    assert (explained.alias, explained.setting) == ("main", setting)
    assert explained.problem.startswith(problem), explained.problem
    assert "hunter2" not in str(explained)


def test_unix_sockets_and_unknown_errors_stay_the_drivers() -> None:
    spec = spec_from_settings("main", {
        "ENGINE": "multipool.backends.postgresql", "NAME": "app", "HOST": "/run/postgresql",
    })
    socket_error = Exception(
        'connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: '
        "Connection refused"
    )
    assert diagnosis.explain_connect_error(spec, socket_error) is None
    assert diagnosis.explain_connect_error(spec, Exception("something else")) is None


def test_a_failing_explanation_leaves_the_drivers_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a bug in the explanation")

    monkeypatch.setattr(diagnosis, "certificate_error", broken)
    spec = spec_for("postgresql", 5432, tmp_path / "root.crt")
    with caplog.at_level(logging.WARNING, logger="multipool.backends"):
        said = Exception(PG_PREFIX + "SSL error: certificate verify failed")
        assert diagnosis.explain_connect_error(spec, said) is None
    assert "cannot explain a connect error of 'main'" in caplog.text


def test_a_storm_of_failing_connects_costs_one_second_look(
    tmp_path: Path, root: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every thread and every retry fails the same way: the certificate is fetched
    once per LOOK_AGAIN_AFTER seconds for an alias's settings and server."""
    cert, key = issue_cert(root, "wrong.example", hosts=["wrong.example"])
    with fake_server("postgresql", Served(tmp_path, [cert], key)) as port:
        spec = spec_for("postgresql", port, tmp_path / "root.crt")
        first = certificate_diagnosis.certificate_error(spec, "127.0.0.1", port, "one")
    # the server is gone: the look is reused, with the driver's words of this time
    again = certificate_diagnosis.certificate_error(spec, "127.0.0.1", port, "two")
    assert again.problem == first.problem.replace("(one)", "(two)")
    assert "is for 'wrong.example'" in again.problem
    monkeypatch.setattr(certificate_diagnosis, "LOOK_AGAIN_AFTER", 0.0)  # the period is over
    late = certificate_diagnosis.certificate_error(spec, "127.0.0.1", port, "three")
    assert "fetching it again to compare failed" in late.problem
