"""Reading certificate, key and CRL files for validation, with errors that name the setting."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from multipool.errors import TLSFileError
from multipool.tls.pem import show_path

_MAX_FILE_SIZE = 16 * 1024 * 1024


def _read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_MAX_FILE_SIZE)


def load_file(alias: str, setting: str, path: str, what: str) -> bytes:
    """The content of a regular file; :class:`TLSFileError` if there is none to read."""
    shown = show_path(path)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (None, errno.ENOENT, errno.ENOTDIR):
            reason = exc.strerror or type(exc).__name__
            raise TLSFileError(
                alias,
                setting,
                f"the {what} file {shown} cannot be read ({reason})",
                "make it and its directories readable by the user running the application",
            ) from None
        st = None
    if st is None:
        raise TLSFileError(
            alias,
            setting,
            f"the {what} file {shown} does not exist",
            f"point {setting} at an existing file, or give the PEM text itself",
        )
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise TLSFileError(
            alias,
            setting,
            f"the {what} file {shown} is {kind}",
            f"point {setting} at a PEM file",
        )
    try:
        return _read_file(path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise TLSFileError(
            alias,
            setting,
            f"the {what} file {shown} cannot be read ({reason})",
            "make it readable by the user running the application",
        ) from None


def load_certs(alias: str, setting: str, path: str, what: str) -> list[Any]:
    """The certificates of a PEM file (at least one)."""
    from cryptography import x509

    data = load_file(alias, setting, path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSFileError(
            alias,
            setting,
            f"the {what} file {show_path(path)} is not a PEM certificate "
            "(no -----BEGIN CERTIFICATE----- block)",
            "give a PEM file (convert DER with: openssl x509 -inform der -in X -out X.pem)",
        )
    try:
        return list(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise TLSFileError(
            alias,
            setting,
            f"the {what} file {show_path(path)} holds a damaged PEM certificate",
            "replace it with an intact copy",
        ) from None


def check_crl(alias: str, setting: str, path: str) -> None:
    """The CRL file exists and is PEM."""
    data = load_file(alias, setting, path, "CRL")
    if b"-----BEGIN X509 CRL-----" not in data:
        raise TLSFileError(
            alias,
            setting,
            f"the CRL file {show_path(path)} is not a PEM CRL",
            "give a PEM CRL (convert with: openssl crl -inform der -in X -out X.pem)",
        )


def key_too_open(st: os.stat_result) -> bool:
    """libpq's rule: a key owned by root may be group-readable (0640), any other key
    must not be accessible by group or others (0600)."""
    if os.name == "nt":
        return False
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == 0:
        return bool(mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO))
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def key_permission_error(alias: str, setting: str, path: str, st: os.stat_result) -> TLSFileError:
    """The error for a key file :func:`key_too_open` refuses."""
    mode = stat.S_IMODE(st.st_mode)
    shown_ok = not show_path(path).startswith("(")
    return TLSFileError(
        alias,
        setting,
        f"the private key file {show_path(path)} is readable by group or others "
        f"(mode {mode:04o}); libpq refuses such keys",
        f"chmod 600 {path}" if shown_ok else "chmod 600 the key file",
    )


def _check_key_permissions(alias: str, setting: str, path: str) -> None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return  # reported by load_file
    if key_too_open(st):
        raise key_permission_error(alias, setting, path, st)


def load_key(
    alias: str, setting: str, path: str, password: str | None, password_setting: str
) -> tuple[Any, list[str]]:
    """The client's private key, and a warning if a passphrase is set for a plain key."""
    _check_key_permissions(alias, setting, path)
    data = load_file(alias, setting, path, "client key")
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise TLSFileError(
            alias,
            setting,
            f"the client key file {show_path(path)} is not a PEM private key",
            "give a PEM private key (convert DER with: openssl pkey -inform der -in X -out X.pem)",
        )
    encrypted = b"ENCRYPTED" in data
    key = _parse_key(alias, setting, path, data, password if encrypted else None, password_setting)
    if password and not encrypted:
        return key, [
            f"database alias '{alias}': {password_setting} is set but the client key "
            f"({setting}) is not encrypted; the passphrase is unused"
        ]
    return key, []


def _parse_key(
    alias: str,
    setting: str,
    path: str,
    data: bytes,
    password: str | None,
    password_setting: str,
) -> Any:
    """A PEM private key; ``password`` only when the key is encrypted."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(
            data, password.encode("utf-8") if password else None
        )
    except TypeError:
        # no password for an encrypted key
        raise TLSFileError(
            alias,
            setting,
            "the client key is encrypted and no passphrase is set",
            f"set the passphrase in {password_setting}, or decrypt the key",
        ) from None
    except ValueError:
        if password:
            raise TLSFileError(
                alias,
                password_setting,
                f"the passphrase does not decrypt the client key ({setting})",
                f"check {password_setting}",
            ) from None
        raise TLSFileError(
            alias,
            setting,
            f"the client key file {show_path(path)} cannot be parsed",
            "replace it with an intact PEM private key",
        ) from None
    except UnsupportedAlgorithm:
        raise TLSFileError(
            alias,
            setting,
            f"the client key file {show_path(path)} uses an unsupported algorithm",
            "use an RSA, EC or Ed25519 key",
        ) from None


def public_der(key: Any) -> bytes:
    """A public key as DER, to compare keys."""
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
