"""A validated snapshot of one alias's certificate, key, CA and CRL files.

:func:`load_tls_files` reads each file once, copies what it read into a
private file that cannot change (:func:`~multipool.tls.pem.snapshot_file`, in
memory on Linux), and validates the copies with the startup checks
(:func:`~multipool.tls.validate_tls`: key matches certificate, chain, dates).
The driver is then given the copies: a rotation half-written on disk can never
reach a handshake.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multipool.errors import TLSFileError
from multipool.secrets.files import Signature, read_secret_file, signature
from multipool.tls import validate_tls
from multipool.tls.pem import from_pem_text, snapshot_file

if TYPE_CHECKING:
    from multipool.config.specs import DatabaseSpec
    from multipool.tls import TLSSpec

__all__ = ["CertificateInfo", "TLSFiles", "load_tls_files", "watched_paths"]

#: the TLS fields whose files are watched and copied, in the order messages name them
WATCHED = ("cert", "key", "ca", "crl")
_WHAT = {"cert": "client certificate", "key": "client key", "ca": "CA", "crl": "CRL"}

#: a CA file with more certificates is a public bundle (as in multipool.tls.validation)
_PRIVATE_CA_MAX = 10

#: field -> the signature of its file (None: missing)
FileSignatures = tuple[tuple[str, "Signature | None"], ...]


def watched_paths(tls: TLSSpec) -> dict[str, str]:
    """The TLS fields given as files that can change: not PEM text (kept in a
    file that cannot), not ``system``."""
    found = {}
    for name in WATCHED:
        path = getattr(tls, name)
        if path is not None and path != "system" and not from_pem_text(path):
            found[name] = path
    return found


def signatures(paths: Mapping[str, str]) -> FileSignatures:
    """One ``stat`` per file."""
    return tuple((name, signature(path)) for name, path in paths.items())


@dataclass(frozen=True)
class CertificateInfo:
    """What the status shows of a certificate: never key material."""

    fingerprint: str  # SHA-256 of the DER, hex
    serial: int
    subject: str
    issuer: str
    not_after: _dt.datetime

    @classmethod
    def of(cls, cert: Any) -> CertificateInfo:
        from cryptography.hazmat.primitives.serialization import Encoding

        return cls(
            fingerprint=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
            serial=cert.serial_number,
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            not_after=cert.not_valid_after_utc,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "serial": f"{self.serial:x}",
            "subject": self.subject,
            "issuer": self.issuer,
            "expires": self.not_after.isoformat(),
        }


@dataclass(frozen=True)
class TLSFiles:
    """One validated set: the copies the driver reads, and what the status shows."""

    generation: int
    signatures: FileSignatures
    tls: TLSSpec  # the alias's TLS settings with the copies' paths
    cert: CertificateInfo | None
    ca: CertificateInfo | None  # the CA certificate that expires first
    warnings: tuple[str, ...]
    loaded_at: _dt.datetime

    def driver_kwargs(self, vendor: str) -> dict[str, Any]:
        return self.tls.driver_kwargs(vendor)

    def changed_fields(self, other: TLSFiles) -> list[str]:
        """The fields whose file differs between ``other`` and this set."""
        theirs = dict(other.signatures)
        return [name for name, sig in self.signatures if theirs.get(name) != sig]


def load_tls_files(spec: DatabaseSpec, paths: Mapping[str, str], generation: int) -> TLSFiles:
    """Read, copy and validate the files; raise what is wrong with them (a
    :class:`~multipool.errors.ConfigurationError` naming the setting)."""
    names = spec.setting_names
    copies: dict[str, str] = {}
    sigs = []
    for name, path in paths.items():
        read = read_secret_file(
            spec.alias, names.of(f"tls_{name}"), path, _WHAT[name], TLSFileError,
            private_key=name == "key",
        )
        copies[name] = snapshot_file(name, read.data, path)
        sigs.append((name, read.signature))
    tls = dataclasses.replace(spec.tls, **copies)
    warnings = validate_tls(spec.alias, tls, settings=names, vendor=spec.vendor)
    return TLSFiles(
        generation=generation,
        signatures=tuple(sigs),
        tls=tls,
        cert=_leaf(tls.cert),
        ca=_first_to_expire(tls.ca),
        warnings=tuple(warnings),
        loaded_at=_dt.datetime.now(_dt.timezone.utc),
    )


def _certificates(path: str | None) -> list[Any]:
    if path is None or path == "system":
        return []
    from cryptography import x509

    with open(path, "rb") as handle:  # a copy that validated: it parses
        return list(x509.load_pem_x509_certificates(handle.read()))


def _leaf(path: str | None) -> CertificateInfo | None:
    certs = _certificates(path)
    return CertificateInfo.of(certs[0]) if certs else None


def _first_to_expire(path: str | None) -> CertificateInfo | None:
    certs = _certificates(path)
    if not certs or len(certs) > _PRIVATE_CA_MAX:
        return None  # a public bundle: its first expiry says nothing about this server
    return CertificateInfo.of(min(certs, key=lambda c: c.not_valid_after_utc))
