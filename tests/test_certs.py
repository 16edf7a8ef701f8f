"""multipool.certs: the throwaway development PKI (real files, real TLS handshakes)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from multipool.certs import (
    CertificateExistsError,
    CertPaths,
    file_mode,
    generate_dev_certs,
    issue_cert,
    load_ca,
    load_dev_certs,
    make_ca,
    write_cert,
    write_key,
)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(ext.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return dns, ips


def cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def bundle(tmp_path: Path) -> CertPaths:
    return generate_dev_certs(
        tmp_path / "certs", hosts=("db.internal", "10.0.0.5"), clients=("certuser", "app")
    )


def test_files_and_modes(bundle: CertPaths) -> None:
    assert file_mode(bundle.directory) == 0o700
    keys = [bundle.ca_key, bundle.server_key, *(k for _, k in bundle.clients.values())]
    certs = [bundle.ca_cert, bundle.server_cert, *(c for c, _ in bundle.clients.values())]
    for key in keys:
        assert file_mode(key) == 0o600, key
        assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for cert in certs:
        assert file_mode(cert) == 0o644, cert
    assert sorted(p.name for p in bundle.directory.iterdir()) == sorted(
        p.name for p in keys + certs
    )
    assert bundle.client("certuser") == (
        bundle.directory / "client-certuser.crt",
        bundle.directory / "client-certuser.key",
    )
    with pytest.raises(KeyError, match="nobody"):
        bundle.client("nobody")
    hash(bundle)  # frozen and hashable


def test_modes_do_not_depend_on_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        paths = generate_dev_certs(tmp_path / "u")
    finally:
        os.umask(old)
    assert file_mode(paths.directory) == 0o700
    assert file_mode(paths.server_key) == 0o600
    assert file_mode(paths.server_cert) == 0o644


def test_server_cert_names_and_usage(bundle: CertPaths) -> None:
    cert = load(bundle.server_cert)
    dns, ips = sans(cert)
    assert dns == {"localhost", "db.internal"}
    assert ips == {"127.0.0.1", "::1", "10.0.0.5"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_client_cert_common_name_is_the_user(bundle: CertPaths) -> None:
    for user in ("certuser", "app"):
        cert = load(bundle.client(user)[0])
        assert cn(cert) == user
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_chain_verifies(bundle: CertPaths, tmp_path: Path) -> None:
    ca = load(bundle.ca_cert)
    ca.verify_directly_issued_by(ca)  # self-signed
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    load(bundle.server_cert).verify_directly_issued_by(ca)
    for cert_path, _ in bundle.clients.values():
        load(cert_path).verify_directly_issued_by(ca)
    other = load(generate_dev_certs(tmp_path / "other").ca_cert)
    with pytest.raises((ValueError, InvalidSignature)):
        load(bundle.server_cert).verify_directly_issued_by(other)


def test_validity_window(bundle: CertPaths) -> None:
    cert = load(bundle.server_cert)
    now = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc
    assert (cert.not_valid_after_utc - now).days >= 824


def test_no_silent_overwrite(bundle: CertPaths) -> None:
    before = {p: p.read_bytes() for p in bundle.directory.iterdir()}
    with pytest.raises(CertificateExistsError, match="overwrite=True"):
        generate_dev_certs(bundle.directory, clients=("certuser", "app"))
    # A bundle with a new client name still refuses (the CA and server files exist).
    with pytest.raises(CertificateExistsError):
        generate_dev_certs(bundle.directory, clients=("someone",))
    assert {p: p.read_bytes() for p in bundle.directory.iterdir()} == before

    key = make_ca().key
    with pytest.raises(CertificateExistsError):
        write_key(bundle.server_key, key)
    assert bundle.server_key.read_bytes() == before[bundle.server_key]


def test_overwrite_true_replaces_and_keeps_modes(bundle: CertPaths) -> None:
    old_key = bundle.server_key.read_bytes()
    os.chmod(bundle.server_key, 0o644)  # a too-open key gets fixed on rewrite
    again = generate_dev_certs(bundle.directory, clients=("certuser", "app"), overwrite=True)
    assert again == bundle
    assert bundle.server_key.read_bytes() != old_key
    assert file_mode(bundle.server_key) == 0o600


def test_rsa_keys(tmp_path: Path) -> None:
    paths = generate_dev_certs(tmp_path / "rsa", key_type="rsa", clients=())
    key = load(paths.server_cert).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048
    load(paths.server_cert).verify_directly_issued_by(load(paths.ca_cert))


def test_low_level_helpers_expired_and_wrong_host(bundle: CertPaths, tmp_path: Path) -> None:
    ca = load_ca(bundle.ca_cert, bundle.ca_key)
    assert "key=" not in repr(ca)
    assert "PRIVATE" not in repr(ca)
    now = dt.datetime.now(dt.timezone.utc)
    expired, key = issue_cert(
        ca, "localhost", hosts=["localhost", "127.0.0.1"],
        not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1),
    )
    assert expired.not_valid_after_utc < now
    expired.verify_directly_issued_by(ca.cert)
    wrong, _ = issue_cert(ca, "wrong.example", hosts=["wrong.example"])
    assert sans(wrong) == ({"wrong.example"}, set())
    write_cert(tmp_path / "e.crt", expired)
    write_key(tmp_path / "e.key", key)
    assert file_mode(tmp_path / "e.key") == 0o600
    with pytest.raises(ValueError):
        issue_cert(ca, "x", not_before=now, not_after=now - dt.timedelta(days=1))


def test_load_dev_certs_discovers_clients(bundle: CertPaths) -> None:
    loaded = load_dev_certs(bundle.directory)
    assert loaded == bundle
    assert set(loaded.clients) == {"certuser", "app"}


def _handshake(
    paths: CertPaths,
    server_hostname: str,
    cafile: Path,
    client_cert: tuple[Path, Path] | None = None,
) -> str:
    """A real TLS handshake over a socket pair; returns the negotiated version."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    if client_cert is not None:
        server_ctx.load_verify_locations(paths.ca_cert)
        server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    if client_cert is not None:
        client_ctx.load_cert_chain(*client_cert)
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)
    peer: list[str] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as tls:
                cert = tls.getpeercert()
                if cert:
                    peer.append(dict(x[0] for x in cert["subject"])["commonName"])
                tls.sendall(b"x")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=server_hostname) as tls:
            assert tls.recv(1) == b"x"
            version = str(tls.version())
    finally:
        thread.join(10)
        left.close()
    if client_cert is not None:
        assert peer == [cn(load(client_cert[0]))]
    return version


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "db.internal"])
def test_python_tls_accepts_the_server_cert(bundle: CertPaths, host: str) -> None:
    assert _handshake(bundle, host, bundle.ca_cert).startswith("TLSv1.")


def test_python_tls_client_cert(bundle: CertPaths) -> None:
    _handshake(bundle, "localhost", bundle.ca_cert, client_cert=bundle.client("certuser"))


def test_python_tls_rejects_wrong_host_and_wrong_ca(bundle: CertPaths, tmp_path: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(bundle, "wrong.example", bundle.ca_cert)
    other = generate_dev_certs(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(bundle, "localhost", other.ca_cert)
