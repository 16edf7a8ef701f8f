"""Throwaway development PKI: a CA, a server certificate and client certificates.

Everything here is for development and tests only: keys are written unencrypted
(mode 0600) next to the certificates (mode 0644). Nothing in this module ever
prints, logs or embeds key material in an exception.

Quick start::

    from multipool.certs import generate_dev_certs
    paths = generate_dev_certs("certs")          # CA + server + client "certuser"
    paths.ca_cert, paths.server_cert, paths.client("certuser")

Lower-level helpers (:func:`make_ca`, :func:`issue_cert`, :func:`write_cert`,
:func:`write_key`) let tests build odd certificates: expired, for another host
name, signed by an unrelated CA, ...
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_HOSTS",
    "CertPaths",
    "CertificateAuthority",
    "CertificateExistsError",
    "KeyType",
    "PrivateKey",
    "client_cert_names",
    "file_mode",
    "generate_dev_certs",
    "generate_private_key",
    "issue_cert",
    "load_ca",
    "load_dev_certs",
    "make_ca",
    "write_cert",
    "write_key",
]

KeyType = Literal["ec", "rsa"]
PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]  # noqa: UP007
Usage = Literal["server", "client", "both"]

DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700


class CertificateExistsError(FileExistsError):
    """Refusing to overwrite an existing key or certificate (pass ``overwrite=True``).

    ``path`` is the first file found in the way.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"{path} already exists; refusing to overwrite it "
            "(delete it, choose another directory, or pass overwrite=True)"
        )


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def generate_private_key(key_type: KeyType = "ec") -> PrivateKey:
    """A new private key: EC P-256 (default, fast) or RSA 2048."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate and its private key (the key is never shown in the repr)."""

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)

    @property
    def name(self) -> str:
        return self.cert.subject.rfc4514_string()


def _validity(
    days: int, not_before: _dt.datetime | None, not_after: _dt.datetime | None
) -> tuple[_dt.datetime, _dt.datetime]:
    start = not_before if not_before is not None else _now() - _dt.timedelta(hours=1)
    end = not_after if not_after is not None else start + _dt.timedelta(days=days)
    if end <= start:
        raise ValueError("not_after must be later than not_before")
    return start, end


def make_ca(
    common_name: str | None = None,
    *,
    key_type: KeyType = "ec",
    days: int = 825,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> CertificateAuthority:
    """A self-signed CA able to sign leaf certificates.

    The default common name is ``multipool dev CA <random>``: every dev CA has its
    own name, so two of them are never confused by a TLS library.
    """
    if common_name is None:
        common_name = f"multipool dev CA {secrets.token_hex(4)}"
    key = generate_private_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "multipool development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    start, end = _validity(days, not_before, not_after)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def _general_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_cert(
    ca: CertificateAuthority,
    common_name: str,
    *,
    hosts: Iterable[str] = (),
    usage: Usage = "server",
    key_type: KeyType = "ec",
    key: PrivateKey | None = None,
    days: int = 825,
    not_before: _dt.datetime | None = None,
    not_after: _dt.datetime | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf certificate signed by ``ca``; returns ``(cert, key)``.

    ``hosts`` become subjectAltName entries (IP addresses as IP entries, the rest
    as DNS names). ``usage`` sets the extended key usage: ``"server"``
    (serverAuth), ``"client"`` (clientAuth; the common name is the user name) or
    ``"both"``. ``not_before``/``not_after`` override the validity window, e.g.
    to make an already expired certificate.
    """
    if usage not in ("server", "client", "both"):
        raise ValueError(f"usage must be 'server', 'client' or 'both', not {usage!r}")
    leaf_key = key if key is not None else generate_private_key(key_type)
    public = leaf_key.public_key()
    start, end = _validity(days, not_before, not_after)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(leaf_key), critical=True)
        .add_extension(_extended_key_usage(usage), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    alt_names = _general_names(hosts)
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca.key, hashes.SHA256()), leaf_key


def _leaf_key_usage(key: PrivateKey) -> x509.KeyUsage:
    """Signatures; key exchange by encryption (RSA) or by agreement (EC)."""
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=not is_rsa,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _extended_key_usage(usage: Usage) -> x509.ExtendedKeyUsage:
    ekus = []
    if usage in ("server", "both"):
        ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if usage in ("client", "both"):
        ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return x509.ExtendedKeyUsage(ekus)


def _check_writable(path: Path, overwrite: bool) -> None:
    if not overwrite and (path.exists() or path.is_symlink()):
        raise CertificateExistsError(path)


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    _check_writable(path, overwrite)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask or a pre-existing file may have other bits
        os.write(fd, data)
    finally:
        os.close(fd)


def write_key(path: str | os.PathLike[str], key: PrivateKey, *, overwrite: bool = False) -> Path:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600. Never overwrites silently."""
    target = Path(path)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(target, pem, KEY_MODE, overwrite)
    return target


def write_cert(
    path: str | os.PathLike[str],
    cert: x509.Certificate | Iterable[x509.Certificate],
    *,
    overwrite: bool = False,
) -> Path:
    """Write one certificate (or a chain, in order) as PEM, mode 0644."""
    target = Path(path)
    certs = [cert] if isinstance(cert, x509.Certificate) else list(cert)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write(target, pem, CERT_MODE, overwrite)
    return target


def load_ca(
    cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]
) -> CertificateAuthority:
    """Load a CA written by :func:`generate_dev_certs` (to sign more certificates)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise TypeError(f"{key_path}: unsupported key type {type(key).__name__}")
    return CertificateAuthority(cert=cert, key=key)


@dataclass(frozen=True)
class CertPaths:
    """The files of one generated bundle."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: Mapping[str, tuple[Path, Path]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    """user name -> (certificate, key)"""

    def client(self, user: str) -> tuple[Path, Path]:
        """``(cert, key)`` of the client certificate for ``user``."""
        try:
            return self.clients[user]
        except KeyError:
            known = ", ".join(sorted(self.clients)) or "none"
            raise KeyError(
                f"no client certificate for user {user!r} in {self.directory} "
                f"(available: {known})"
            ) from None


def client_cert_names(user: str) -> tuple[str, str]:
    """File names ``(cert, key)`` used for the client certificate of ``user``."""
    if not user or "/" in user or user.startswith("."):
        raise ValueError(f"invalid user name for a client certificate file: {user!r}")
    return f"client-{user}.crt", f"client-{user}.key"


def _bundle_paths(directory: Path, clients: Iterable[str]) -> CertPaths:
    client_paths = {}
    for user in clients:
        cert_name, key_name = client_cert_names(user)
        client_paths[user] = (directory / cert_name, directory / key_name)
    return CertPaths(
        directory=directory,
        ca_cert=directory / CA_CERT,
        ca_key=directory / CA_KEY,
        server_cert=directory / SERVER_CERT,
        server_key=directory / SERVER_KEY,
        clients=MappingProxyType(client_paths),
    )


def generate_dev_certs(
    directory: str | os.PathLike[str],
    *,
    hosts: Iterable[str] = DEFAULT_HOSTS,
    clients: Iterable[str] = ("certuser",),
    days: int = 825,
    overwrite: bool = False,
    key_type: KeyType = "ec",
) -> CertPaths:
    """Create a CA, a server certificate and client certificates in ``directory``.

    Files: ``ca.crt``/``ca.key``, ``server.crt``/``server.key`` (SANs:
    localhost, 127.0.0.1, ::1 plus any extra ``hosts``) and
    ``client-<user>.crt``/``client-<user>.key`` per client (CN = user name).
    Keys are written 0600, certificates 0644; a new directory is created 0700.
    Raises :class:`CertificateExistsError` before writing anything if any of
    these files exists, unless ``overwrite=True``.
    """
    root = Path(directory)
    all_hosts = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    users = list(dict.fromkeys(clients))
    paths = _bundle_paths(root, users)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} exists and is not a directory")
    targets = [paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key]
    for cert_path, key_path in paths.clients.values():
        targets += [cert_path, key_path]
    for target in targets:
        _check_writable(target, overwrite)

    ca = make_ca(key_type=key_type, days=days)
    server_cert, server_key = issue_cert(
        ca, all_hosts[0], hosts=all_hosts, usage="server", key_type=key_type, days=days
    )
    issued = {
        user: issue_cert(ca, user, usage="client", key_type=key_type, days=days)
        for user in users
    }

    if not root.exists():
        root.mkdir(mode=DIR_MODE, parents=True)
        os.chmod(root, DIR_MODE)
    write_key(paths.ca_key, ca.key, overwrite=overwrite)
    write_cert(paths.ca_cert, ca.cert, overwrite=overwrite)
    write_key(paths.server_key, server_key, overwrite=overwrite)
    write_cert(paths.server_cert, server_cert, overwrite=overwrite)
    for user, (cert, key) in issued.items():
        cert_path, key_path = paths.clients[user]
        write_key(key_path, key, overwrite=overwrite)
        write_cert(cert_path, cert, overwrite=overwrite)
    return paths


def add_client_certs(
    directory: str | os.PathLike[str],
    clients: Iterable[str],
    *,
    days: int = 825,
    overwrite: bool = False,
    key_type: KeyType = "ec",
) -> CertPaths:
    """Issue client certificates from the CA of an existing bundle in ``directory``.

    The CA (``ca.crt``/``ca.key``) and the server certificate stay as they are;
    ``client-<user>.crt``/``.key`` are written per user. Raises
    :class:`CertificateExistsError` before writing anything if one of them
    exists, unless ``overwrite=True``; ``FileNotFoundError`` without a CA.
    """
    root = Path(directory)
    for name in (CA_CERT, CA_KEY):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name} not found: no CA to sign with")
    users = list(dict.fromkeys(clients))
    paths = _bundle_paths(root, users)
    for cert_path, key_path in paths.clients.values():
        _check_writable(cert_path, overwrite)
        _check_writable(key_path, overwrite)
    ca = load_ca(paths.ca_cert, paths.ca_key)
    for user in users:
        cert, key = issue_cert(ca, user, usage="client", key_type=key_type, days=days)
        cert_path, key_path = paths.clients[user]
        write_key(key_path, key, overwrite=overwrite)
        write_cert(cert_path, cert, overwrite=overwrite)
    return paths


def load_dev_certs(directory: str | os.PathLike[str]) -> CertPaths:
    """The :class:`CertPaths` of an existing bundle (client certificates discovered).

    Only ``ca.crt`` must exist; other paths are returned whether or not the files
    exist (a bundle for an external server usually has no server key).
    """
    root = Path(directory)
    if not (root / CA_CERT).is_file():
        raise FileNotFoundError(f"{root / CA_CERT} not found (expected a CA certificate)")
    users = []
    for cert_path in sorted(root.glob("client-*.crt")):
        user = cert_path.name[len("client-") : -len(".crt")]
        if (root / client_cert_names(user)[1]).is_file():
            users.append(user)
    return _bundle_paths(root, users)


def file_mode(path: str | os.PathLike[str]) -> int:
    """Permission bits of ``path`` (e.g. ``0o600``)."""
    return stat.S_IMODE(os.stat(path).st_mode)
