"""TLS settings: one normalized :class:`TLSSpec` whatever the input spelling.

Inputs come in three dialects, all accepted for every server type:

* libpq ``OPTIONS`` keys: ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``,
  ``sslpassword``, ``sslcrl``, ``ssl_min_protocol_version``;
* mysqlclient: an ``ssl`` dict (``ca``, ``capath``, ``cert``, ``key``,
  ``cipher``) or ``ssl=True``, plus ``ssl_mode`` (``DISABLED`` ...
  ``VERIFY_IDENTITY``), and the flat ``ssl_ca`` / ``ssl_cert`` / ... spelling;
* environment variables (see :mod:`multipool.config`), parsed field by field
  with :func:`normalize_tls_field`.

File values may be paths or PEM text (``-----BEGIN ...``). PEM text is written
once, mode 0600, into a private 0700 directory; equal text gives an equal path,
so equal configurations give equal specs.

:func:`validate_tls` checks the files at startup (exists, readable, PEM, key
permissions, key passphrase, key matches certificate, validity dates, issuing
CA) and returns warnings. Nothing here ever puts a key passphrase or PEM text
in a repr, a log line or an exception message.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import errno
import hashlib
import os
import re
import shutil
import ssl
import stat
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from multipool.errors import CertificateError, InvalidTLSSetting, TLSFileError

__all__ = [
    "ENCRYPTED_MODES",
    "MYSQL_SSL_MODES",
    "TLS_MODES",
    "TLS_OPTION_KEYS",
    "TLS_VERSIONS",
    "MultipoolWarning",
    "TLSSpec",
    "check_tls_support",
    "is_pem_text",
    "normalize_tls_field",
    "system_ca_bundle",
    "tls_fields_from_options",
    "tls_from_options",
    "validate_tls",
    "write_pem",
]

TLS_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
#: the modes in which a connection must be encrypted or not be made at all
ENCRYPTED_MODES = ("require", "verify-ca", "verify-full")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
VENDORS = ("postgresql", "mysql", "sqlite")

#: canonical mode -> mysqlclient ``ssl_mode``
MYSQL_SSL_MODES: Mapping[str, str] = {
    "disable": "DISABLED",
    "allow": "PREFERRED",
    "prefer": "PREFERRED",
    "require": "REQUIRED",
    "verify-ca": "VERIFY_CA",
    "verify-full": "VERIFY_IDENTITY",
}

#: days before a certificate's expiry from which validate_tls warns
EXPIRY_WARNING_DAYS = 30

# Every spelling of a mode, after ``strip().lower().replace("_", "-")``.
_MODE_SPELLINGS: Mapping[str, str] = {
    # libpq
    **{m: m for m in TLS_MODES},
    # MySQL ssl_mode
    "disabled": "disable",
    "preferred": "prefer",
    "required": "require",
    "verify-identity": "verify-full",
    # MariaDB / generic switches (--ssl, --ssl-verify-server-cert, ssl=true)
    "verify-server-cert": "verify-full",
    "true": "require",
    "on": "require",
    "yes": "require",
    "1": "require",
    "false": "disable",
    "off": "disable",
    "no": "disable",
    "0": "disable",
}

_VERSION_SPELLINGS: Mapping[str, str] = {
    "tlsv1.2": "TLSv1.2",
    "tls1.2": "TLSv1.2",
    "1.2": "TLSv1.2",
    "tlsv1.3": "TLSv1.3",
    "tls1.3": "TLSv1.3",
    "1.3": "TLSv1.3",
}
_OLD_VERSIONS = frozenset(
    {"tlsv1", "tlsv1.0", "tlsv1.1", "tls1", "tls1.0", "tls1.1", "1.0", "1.1", "sslv3", "sslv2"}
)

# OPTIONS key -> TLSSpec field, per dialect.
_LIBPQ_KEYS: Mapping[str, str] = {
    "sslmode": "mode",
    "sslrootcert": "ca",
    "sslcert": "cert",
    "sslkey": "key",
    "sslpassword": "key_password",
    "sslcrl": "crl",
    "ssl_min_protocol_version": "min_version",
}
_MYSQL_FLAT_KEYS: Mapping[str, str] = {
    "ssl_mode": "mode",
    "ssl_ca": "ca",
    "ssl_capath": "capath",
    "ssl_cert": "cert",
    "ssl_key": "key",
    "ssl_cipher": "ciphers",
    "ssl_crl": "crl",
    "tls_version": "min_version",
}
#: keys inside a mysqlclient ``ssl`` dict (plus the flat spellings, also accepted there)
_SSL_DICT_KEYS: Mapping[str, str] = {
    "ca": "ca",
    "capath": "capath",
    "cert": "cert",
    "key": "key",
    "cipher": "ciphers",
    **_MYSQL_FLAT_KEYS,
}

_ALL_TLS_KEYS = frozenset(_LIBPQ_KEYS) | frozenset(_MYSQL_FLAT_KEYS) | {"ssl"}

#: vendor -> the OPTIONS keys that are TLS settings. Every accepted spelling is
#: consumed for every vendor, so a backend can strip them all from the driver
#: parameters and put :meth:`TLSSpec.driver_kwargs` in their place.
TLS_OPTION_KEYS: Mapping[str, frozenset[str]] = {vendor: _ALL_TLS_KEYS for vendor in VENDORS}

_FILE_FIELDS = ("ca", "cert", "key", "crl")
_PATH_FIELDS = (*_FILE_FIELDS, "capath")


class MultipoolWarning(UserWarning):
    """A setting works but probably not as intended (certificate about to expire, ...)."""


@dataclass(frozen=True)
class TLSSpec:
    """Normalized TLS settings of one alias. All paths are absolute."""

    mode: str | None = None  # canonical libpq spelling; None = driver default
    ca: str | None = None  # absolute path of a CA bundle file, or "system"
    cert: str | None = None  # client certificate file
    key: str | None = None  # client key file
    key_password: str | None = None  # masked in repr
    crl: str | None = None
    min_version: str | None = None  # "TLSv1.2" | "TLSv1.3"
    ciphers: str | None = None
    capath: str | None = None  # directory of hashed CA certificates (MySQL only)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            shown = "'***'" if f.name == "key_password" else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"TLSSpec({', '.join(parts)})"

    @property
    def verifies(self) -> bool:
        """Whether the server certificate is verified (verify-ca / verify-full)."""
        return self.mode in ("verify-ca", "verify-full")

    @property
    def has_material(self) -> bool:
        """Whether any certificate, key, CA or cipher setting is given."""
        return any(
            getattr(self, f) is not None for f in ("ca", "capath", "cert", "key", "ciphers")
        )

    def requires_encryption(self, vendor: str) -> bool:
        """Whether these settings ask for an encrypted connection: a mode of
        ``require`` or stricter, or on MySQL TLS material without a mode (a
        mysqlclient ``ssl`` dict asks for TLS)."""
        if self.mode is not None:
            return self.mode in ENCRYPTED_MODES
        return vendor == "mysql" and self.has_material

    @property
    def is_empty(self) -> bool:
        """No TLS setting at all (driver defaults)."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def libpq_kwargs(self) -> dict[str, str]:
        """libpq connection parameters (psycopg / psycopg2)."""
        out: dict[str, str] = {}
        for key, field_name in _LIBPQ_KEYS.items():
            value = getattr(self, field_name)
            if value is not None:
                out[key] = value
        return out

    def mysql_kwargs(self) -> dict[str, Any]:
        """mysqlclient ``connect()`` keyword arguments: ``ssl`` dict and ``ssl_mode``.

        ``ca="system"`` becomes the system CA bundle (or directory). mysqlclient
        has no way to set a key passphrase, a CRL or a minimum TLS version;
        :func:`check_tls_support` rejects those for MySQL. TLS material without
        a mode asks for TLS: ``ssl_mode`` is ``REQUIRED`` then.
        """
        out = self._mysql(resolve_system=True)
        if "ssl" in out and "ssl_mode" not in out:
            out["ssl_mode"] = MYSQL_SSL_MODES["require"]
        return out

    def _mysql(self, *, resolve_system: bool) -> dict[str, Any]:
        ssl_dict: dict[str, str] = {}
        if self.ca is not None:
            if self.ca == "system" and resolve_system:
                cafile, capath = system_ca_bundle()
                if cafile:
                    ssl_dict["ca"] = cafile
                elif capath:
                    ssl_dict["capath"] = capath
            else:
                ssl_dict["ca"] = self.ca
        if self.capath is not None:
            ssl_dict["capath"] = self.capath
        if self.cert is not None:
            ssl_dict["cert"] = self.cert
        if self.key is not None:
            ssl_dict["key"] = self.key
        if self.ciphers is not None:
            ssl_dict["cipher"] = self.ciphers
        out: dict[str, Any] = {}
        if ssl_dict:
            out["ssl"] = ssl_dict
        if self.mode is not None:
            out["ssl_mode"] = MYSQL_SSL_MODES[self.mode]
        return out

    def driver_kwargs(self, vendor: str) -> dict[str, Any]:
        """The driver's keyword arguments for these settings, ready to connect."""
        if vendor == "postgresql":
            return dict(self.libpq_kwargs())
        if vendor == "mysql":
            return self.mysql_kwargs()
        if vendor == "sqlite":
            return {}
        raise ValueError(f"unknown vendor {vendor!r}")

    def to_options(self, vendor: str) -> dict[str, Any]:
        """These settings as ``DATABASES`` ``OPTIONS`` entries, in the driver's spelling.

        Same as :meth:`driver_kwargs` except that ``ca="system"`` stays
        ``"system"`` for MySQL (resolved at connect time), so that
        ``tls_from_options(to_options(v)) == self``.
        """
        if vendor == "mysql":
            return self._mysql(resolve_system=False)
        return self.driver_kwargs(vendor)


# -- PEM text -> private files -------------------------------------------------------

_pem_lock = threading.Lock()
_pem_dir: str | None = None
_pem_dir_pid: int | None = None


def _cleanup_pem_dir() -> None:
    # Only the process that made the directory removes it: forked workers share it.
    if _pem_dir is not None and _pem_dir_pid == os.getpid():
        shutil.rmtree(_pem_dir, ignore_errors=True)


def _private_dir() -> str:
    global _pem_dir, _pem_dir_pid
    if _pem_dir is None or not os.path.isdir(_pem_dir):
        _pem_dir = tempfile.mkdtemp(prefix="multipool-tls-")
        os.chmod(_pem_dir, 0o700)
        if _pem_dir_pid is None:
            atexit.register(_cleanup_pem_dir)
        _pem_dir_pid = os.getpid()
    return _pem_dir


def is_pem_text(value: str) -> bool:
    """Whether a setting's value is PEM text rather than a path."""
    return value.lstrip().startswith("-----BEGIN")


def _pem_bytes(text: str) -> bytes:
    text = text.strip()
    if "\n" not in text and "\\n" in text:
        # A one-line environment variable with escaped newlines (common in .env files).
        text = text.replace("\\n", "\n")
    text = text.replace("\r\n", "\n")
    return (text + "\n").encode("utf-8")


def write_pem(kind: str, text: str) -> str:
    """Write PEM text to a 0600 file in a private 0700 directory; return its path.

    The file name is a digest of the content: the same text gives the same
    path within a process, and is written only once.
    """
    data = _pem_bytes(text)
    digest = hashlib.sha256(data).hexdigest()[:40]
    with _pem_lock:
        directory = _private_dir()
        path = os.path.join(directory, f"{kind}-{digest}.pem")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    return path


# -- parsing ----------------------------------------------------------------------------


def _default_setting(alias: str, vendor: str, field_name: str) -> str:
    if vendor == "mysql":
        key = {
            "mode": "['ssl_mode']",
            "ca": "['ssl']['ca']",
            "capath": "['ssl']['capath']",
            "cert": "['ssl']['cert']",
            "key": "['ssl']['key']",
            "ciphers": "['ssl']['cipher']",
            "key_password": "['ssl_key_password']",
            "crl": "['ssl_crl']",
            "min_version": "['tls_version']",
        }[field_name]
    else:
        libpq = {v: k for k, v in _LIBPQ_KEYS.items()}
        key = f"[{libpq.get(field_name, 'ssl_' + field_name)!r}]"
    return f"DATABASES[{alias!r}]['OPTIONS']{key}"


def _name(alias: str, vendor: str, field_name: str, settings: Mapping[str, str] | None) -> str:
    if settings:
        for key in (field_name, f"tls_{field_name}"):
            if key in settings:
                return settings[key]
    return _default_setting(alias, vendor, field_name)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: base64 text with no dot, dash or underscore: more likely a PEM body pasted
#: without its ``-----BEGIN`` line than a file name
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/=]{32,}")


def _show_path(path: str) -> str:
    """A path for a message; never echo something that may be key material."""
    if (
        len(path) > 255
        or "\n" in path
        or not path.isprintable()
        or _BASE64_BODY.fullmatch(path.strip())
    ):
        return "(the value, not shown: if it is PEM text, include its -----BEGIN line)"
    return repr(path)


def normalize_tls_field(
    alias: str, field_name: str, value: Any, setting: str, *, base_dir: str | None = None
) -> Any:
    """One TLS value, normalized: ``None`` when unset.

    ``field_name`` is a :class:`TLSSpec` field. Modes and versions accept every
    spelling; file fields accept a path (made absolute: relative to ``base_dir``,
    by default the current directory) or PEM text (written to a private file);
    ``ca`` also accepts ``system``.
    """
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidTLSSetting(
                alias, setting, "the value is not UTF-8 text", "give a path or PEM text"
            ) from None
    if not isinstance(value, str):
        if field_name == "mode" and isinstance(value, bool):
            return "require" if value else "disable"
        raise InvalidTLSSetting(
            alias,
            setting,
            f"expected text, got a {type(value).__name__}",
            "give the setting as a string",
        )
    if "\x00" in value:
        is_file = field_name not in ("mode", "min_version", "ciphers")
        raise (TLSFileError if is_file else InvalidTLSSetting)(
            alias,
            setting,
            "the value contains a NUL character (value not shown)",
            "give a path, PEM text or a passphrase without NUL characters",
        )
    if field_name == "key_password":
        return value if value != "" else None
    text = value.strip()
    if text == "":
        return None
    if field_name == "mode":
        mode = _MODE_SPELLINGS.get(text.lower().replace("_", "-"))
        if mode is None:
            raise InvalidTLSSetting(
                alias,
                setting,
                f"unknown TLS mode {_short(text)}",
                "use one of "
                + ", ".join(TLS_MODES)
                + " (MySQL spellings DISABLED, PREFERRED, REQUIRED, VERIFY_CA, "
                "VERIFY_IDENTITY are accepted too)",
            )
        return mode
    if field_name == "min_version":
        lowered = text.lower().replace(" ", "").replace("_", ".")
        versions = [v for v in lowered.split(",") if v]
        canonical = []
        for v in versions:
            if v in _VERSION_SPELLINGS:
                canonical.append(_VERSION_SPELLINGS[v])
            elif v in _OLD_VERSIONS:
                raise InvalidTLSSetting(
                    alias,
                    setting,
                    f"{_short(text)} allows an obsolete, insecure protocol version",
                    "use TLSv1.2 or TLSv1.3",
                )
            else:
                raise InvalidTLSSetting(
                    alias,
                    setting,
                    f"unknown TLS version {_short(text)}",
                    "use TLSv1.2 or TLSv1.3",
                )
        if not canonical:
            raise InvalidTLSSetting(
                alias, setting, f"unknown TLS version {_short(text)}", "use TLSv1.2 or TLSv1.3"
            )
        return min(canonical)  # "TLSv1.2" < "TLSv1.3"
    if field_name == "ciphers":
        return text
    if field_name in _PATH_FIELDS:
        if field_name == "ca" and text.lower() == "system":
            return "system"
        if is_pem_text(text):
            if field_name == "capath":
                raise InvalidTLSSetting(
                    alias, setting, "a CA directory cannot be PEM text", "give a directory path"
                )
            try:
                return write_pem(field_name, text)
            except UnicodeEncodeError:
                raise TLSFileError(
                    alias, setting, "the PEM text is not valid text", "paste the PEM file as is"
                ) from None
            except OSError as exc:
                raise TLSFileError(
                    alias,
                    setting,
                    f"cannot write the PEM text to a private file ({exc.strerror})",
                    "make the temporary directory writable (TMPDIR), or give a file path",
                ) from None
        path = os.path.abspath(os.path.join(base_dir or "", os.path.expanduser(text)))
        if _BASE64_BODY.fullmatch(text) and not os.path.exists(path):
            # A PEM body whose -----BEGIN line was lost (a secret manager, a
            # flattened variable): never echo it, not even as a file name.
            raise TLSFileError(
                alias,
                setting,
                "the value is neither an existing file nor PEM text (value not shown)",
                "give a file path, or the whole PEM text including its -----BEGIN and "
                "-----END lines",
            )
        return path
    raise ValueError(f"unknown TLS field {field_name!r}")


def tls_fields_from_options(
    alias: str,
    vendor: str,
    options: Mapping[str, Any],
    *,
    settings: Mapping[str, str] | None = None,
    base_dir: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The TLS values found in ``options`` (normalized) and the setting each came from.

    Returns ``(values, names)``, both keyed by :class:`TLSSpec` field. Unset and
    empty values are left out. The same field given twice (``sslrootcert`` and
    ``ssl['ca']``) must agree.
    """
    found: dict[str, tuple[Any, str]] = {}

    def put(field_name: str, value: Any, default_name: str) -> None:
        name = default_name
        if settings:
            name = settings.get(field_name) or settings.get(f"tls_{field_name}") or name
        normalized = normalize_tls_field(alias, field_name, value, name, base_dir=base_dir)
        if normalized is None:
            return
        if field_name in found and found[field_name][0] != normalized:
            other = found[field_name][1]
            raise InvalidTLSSetting(
                alias,
                name,
                f"conflicts with {other}: both set the TLS {field_name.replace('_', ' ')}",
                "keep only one of them",
            )
        found[field_name] = (normalized, name)

    base = f"DATABASES[{alias!r}]['OPTIONS']"
    for key, value in options.items():
        if key in _LIBPQ_KEYS:
            put(_LIBPQ_KEYS[key], value, f"{base}[{key!r}]")
        elif key in _MYSQL_FLAT_KEYS:
            put(_MYSQL_FLAT_KEYS[key], value, f"{base}[{key!r}]")
        elif key == "ssl":
            if isinstance(value, Mapping):
                for sub, sub_value in value.items():
                    sub_name = f"{base}['ssl'][{sub!r}]"
                    if sub not in _SSL_DICT_KEYS:
                        raise InvalidTLSSetting(
                            alias,
                            sub_name,
                            f"unknown key {_short(sub)} in the ssl dict",
                            "use ca, capath, cert, key or cipher (mysqlclient ignores others)",
                        )
                    put(_SSL_DICT_KEYS[sub], sub_value, sub_name)
            elif value is None or value == "":
                continue
            elif isinstance(value, (bool, str)):
                put("mode", value, f"{base}['ssl']")
            elif isinstance(value, int) and value in (0, 1):
                put("mode", bool(value), f"{base}['ssl']")
            else:
                raise InvalidTLSSetting(
                    alias,
                    f"{base}['ssl']",
                    f"expected a dict or true/false, got a {type(value).__name__}",
                    "use {'ca': ..., 'cert': ..., 'key': ...} or ssl_mode",
                )
    values = {k: v for k, (v, _) in found.items()}
    names = {k: n for k, (_, n) in found.items()}
    return values, names


def check_tls_support(
    alias: str,
    vendor: str,
    spec: TLSSpec,
    *,
    settings: Mapping[str, str] | None = None,
) -> TLSSpec:
    """Reject what the vendor's driver cannot do; return the spec normalized for it.

    * SQLite: no TLS setting at all.
    * PostgreSQL (libpq): no cipher choice, no CA directory; ``sslrootcert=system``
      needs ``verify-full`` (libpq refuses weaker modes) and implies it.
    * MySQL (mysqlclient): no key passphrase, CRL or minimum TLS version;
      ``allow`` is ``prefer``.
    """

    def name(field_name: str) -> str:
        return _name(alias, vendor, field_name, settings)

    if vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}")
    if vendor == "sqlite":
        for f in fields(spec):
            if getattr(spec, f.name) is not None:
                raise InvalidTLSSetting(
                    alias,
                    name(f.name),
                    "SQLite is a local file: it has no TLS",
                    "remove the TLS settings from this alias",
                )
        return spec
    if vendor == "postgresql":
        if spec.ciphers is not None:
            raise InvalidTLSSetting(
                alias,
                name("ciphers"),
                "libpq cannot choose TLS ciphers on the client side",
                "remove it, and set ssl_ciphers in the server's postgresql.conf",
            )
        if spec.capath is not None:
            raise InvalidTLSSetting(
                alias,
                name("capath"),
                "libpq has no CA directory setting",
                "concatenate the CA certificates into one bundle file and give it as the CA",
            )
        if spec.ca == "system":
            if spec.mode is None:
                return _replace(spec, mode="verify-full")
            if spec.mode != "verify-full":
                raise InvalidTLSSetting(
                    alias,
                    name("mode"),
                    f"sslmode {spec.mode!r} with the system CA store: libpq accepts "
                    "only verify-full with sslrootcert=system",
                    f"set the mode ({name('mode')}) to verify-full",
                )
        return spec
    # mysql
    for field_name, why in (
        ("key_password", "mysqlclient cannot decrypt an encrypted client key"),
        ("crl", "mysqlclient has no certificate revocation list setting"),
        ("min_version", "mysqlclient cannot set the TLS protocol version"),
    ):
        if getattr(spec, field_name) is not None:
            fix = {
                "key_password": "decrypt the key (openssl pkey -in client.key -out "
                "client-plain.key; chmod 600 client-plain.key) and remove the passphrase",
                "crl": "remove it (revocation is enforced by the server's own CA setup)",
                "min_version": "remove it, and set tls_version=TLSv1.2,TLSv1.3 on the server",
            }[field_name]
            raise InvalidTLSSetting(alias, name(field_name), why, fix)
    if spec.mode == "allow":
        return _replace(spec, mode="prefer")
    return spec


def _replace(spec: TLSSpec, **changes: Any) -> TLSSpec:
    values = {f.name: getattr(spec, f.name) for f in fields(spec)}
    values.update(changes)
    return TLSSpec(**values)


def tls_from_options(
    alias: str,
    vendor: str,
    options: Mapping[str, Any],
    *,
    settings: Mapping[str, str] | None = None,
) -> TLSSpec:
    """The :class:`TLSSpec` of a ``DATABASES`` ``OPTIONS`` dict (any dialect, see module doc).

    ``settings`` maps a :class:`TLSSpec` field name (``mode``, ``ca``, ...; a
    ``tls_`` prefix is accepted too) to the setting name used in error messages.
    """
    values, names = tls_fields_from_options(alias, vendor, options, settings=settings)
    merged = dict(names)
    if settings:
        merged.update({k.removeprefix("tls_"): v for k, v in settings.items()})
    return check_tls_support(alias, vendor, TLSSpec(**values), settings=merged)


# -- validation ------------------------------------------------------------------------


def system_ca_bundle() -> tuple[str | None, str | None]:
    """The system CA bundle file and directory (either may be ``None``)."""
    paths = ssl.get_default_verify_paths()
    cafile = next(
        (p for p in (paths.cafile, paths.openssl_cafile) if p and os.path.isfile(p)), None
    )
    capath = next((p for p in (paths.capath, paths.openssl_capath) if p and os.path.isdir(p)), None)
    return cafile, capath


_MAX_FILE_SIZE = 16 * 1024 * 1024


def _read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(_MAX_FILE_SIZE)


def _load_file(alias: str, setting: str, path: str, what: str) -> bytes:
    shown = _show_path(path)
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


def _load_certs(alias: str, setting: str, path: str, what: str) -> list[Any]:
    from cryptography import x509

    data = _load_file(alias, setting, path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSFileError(
            alias,
            setting,
            f"the {what} file {_show_path(path)} is not a PEM certificate "
            "(no -----BEGIN CERTIFICATE----- block)",
            "give a PEM file (convert DER with: openssl x509 -inform der -in X -out X.pem)",
        )
    try:
        return list(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise TLSFileError(
            alias,
            setting,
            f"the {what} file {_show_path(path)} holds a damaged PEM certificate",
            "replace it with an intact copy",
        ) from None


def _check_key_permissions(alias: str, setting: str, path: str) -> None:
    if os.name == "nt":
        return
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return  # reported by _load_file
    mode = stat.S_IMODE(st.st_mode)
    # libpq's rule: a key owned by root may be group-readable (0640), any other
    # key must not be accessible by group or others (0600).
    too_open = (
        mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO)
        if st.st_uid == 0
        else mode & (stat.S_IRWXG | stat.S_IRWXO)
    )
    if too_open:
        shown_ok = not _show_path(path).startswith("(")
        raise TLSFileError(
            alias,
            setting,
            f"the private key file {_show_path(path)} is readable by group or others "
            f"(mode {mode:04o}); libpq refuses such keys",
            f"chmod 600 {path}" if shown_ok else "chmod 600 the key file",
        )


def _load_key(
    alias: str, setting: str, path: str, password: str | None, password_setting: str
) -> tuple[Any, list[str]]:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    warnings: list[str] = []
    _check_key_permissions(alias, setting, path)
    data = _load_file(alias, setting, path, "client key")
    if b"-----BEGIN" not in data or b"PRIVATE KEY-----" not in data:
        raise TLSFileError(
            alias,
            setting,
            f"the client key file {_show_path(path)} is not a PEM private key",
            "give a PEM private key (convert DER with: openssl pkey -inform der -in X -out X.pem)",
        )
    encrypted = b"ENCRYPTED" in data
    try:
        key = serialization.load_pem_private_key(
            data, password.encode("utf-8") if (password and encrypted) else None
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
        if encrypted and password:
            raise TLSFileError(
                alias,
                password_setting,
                f"the passphrase does not decrypt the client key ({setting})",
                f"check {password_setting}",
            ) from None
        raise TLSFileError(
            alias,
            setting,
            f"the client key file {_show_path(path)} cannot be parsed",
            "replace it with an intact PEM private key",
        ) from None
    except UnsupportedAlgorithm:
        raise TLSFileError(
            alias,
            setting,
            f"the client key file {_show_path(path)} uses an unsupported algorithm",
            "use an RSA, EC or Ed25519 key",
        ) from None
    if password and not encrypted:
        warnings.append(
            f"database alias '{alias}': {password_setting} is set but the client key "
            f"({setting}) is not encrypted; the passphrase is unused"
        )
    return key, warnings


def _public_der(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _check_dates(
    alias: str, setting: str, cert: Any, what: str, now: _dt.datetime, warnings: list[str]
) -> bool:
    """Raise for a certificate not valid now; warn when it expires soon. True if valid."""
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now < not_before:
        raise CertificateError(
            alias,
            setting,
            f"the {what} is not valid before {not_before:%Y-%m-%d %H:%M} UTC",
            "check the system clock, or issue a certificate valid from now",
        )
    if now > not_after:
        raise CertificateError(
            alias,
            setting,
            f"the {what} expired on {not_after:%Y-%m-%d %H:%M} UTC",
            "renew the certificate",
        )
    left = not_after - now
    if left < _dt.timedelta(days=EXPIRY_WARNING_DAYS):
        warnings.append(
            f"database alias '{alias}': the {what} ({setting}) expires on "
            f"{not_after:%Y-%m-%d %H:%M} UTC, in {left.days} days; renew it"
        )
    return True


def _issued_by(cert: Any, issuer: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


def _check_issuer(
    alias: str,
    cert_setting: str,
    ca_setting: str,
    leaf: Any,
    chain: list[Any],
    cas: list[Any],
    warnings: list[str],
) -> None:
    """The client certificate chains up to a certificate of the CA bundle."""
    current = leaf
    candidates = chain + cas
    ca_ids = {id(c) for c in cas}
    for _ in range(len(candidates) + 1):
        if any(
            c.subject == current.subject
            and _public_der(c.public_key()) == _public_der(current.public_key())
            for c in cas
        ):
            return  # the certificate itself is trusted
        named = [c for c in candidates if c.subject == current.issuer]
        signer = next((c for c in named if _issued_by(current, c)), None)
        if signer is None:
            if named:
                raise CertificateError(
                    alias,
                    cert_setting,
                    "the client certificate was not signed by the CA in "
                    f"{ca_setting}, although that CA has the issuer's name "
                    "(was the CA regenerated?)",
                    "issue the client certificate again with the current CA, "
                    "or point the CA setting at the CA that signed it",
                )
            warnings.append(
                f"database alias '{alias}': the client certificate ({cert_setting}) was "
                f"issued by {current.issuer.rfc4514_string()!r}, which is not in "
                f"{ca_setting}; fine if the server trusts that CA for client "
                "certificates, otherwise the server will reject it"
            )
            return
        if id(signer) in ca_ids:
            return
        if signer is current:
            return
        current = signer


def validate_tls(
    alias: str,
    spec: TLSSpec,
    *,
    settings: Mapping[str, str] | None = None,
    now: _dt.datetime | None = None,
    vendor: str | None = None,
) -> list[str]:
    """Check the TLS settings and their files; raise the first problem, return warnings.

    Raises :class:`~multipool.errors.InvalidTLSSetting` (verify without CA,
    certificate without key...), :class:`~multipool.errors.TLSFileError` (missing,
    unreadable, not PEM, key too permissive, key passphrase missing or wrong) and
    :class:`~multipool.errors.CertificateError` (key does not match certificate,
    expired or not yet valid, not signed by the given CA). ``vendor`` adds the
    driver checks of :func:`check_tls_support`.
    """
    v = vendor or "postgresql"

    def name(field_name: str) -> str:
        return _name(alias, v, field_name, settings)

    if vendor is not None:
        check_tls_support(alias, vendor, spec, settings=settings)
    when = now or _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    warnings: list[str] = []

    if spec.verifies and spec.ca is None and spec.capath is None:
        raise InvalidTLSSetting(
            alias,
            name("mode"),
            f"TLS mode {spec.mode} verifies the server certificate but no CA is set ({name('ca')})",
            f"set {name('ca')} to the CA bundle file, its PEM text, or 'system' "
            "for the operating system's CA store",
        )
    if spec.cert is not None and spec.key is None:
        raise InvalidTLSSetting(
            alias,
            name("key"),
            f"a client certificate is set ({name('cert')}) but no client key",
            f"set {name('key')} to the certificate's private key",
        )
    if spec.key is not None and spec.cert is None:
        raise InvalidTLSSetting(
            alias,
            name("cert"),
            f"a client key is set ({name('key')}) but no client certificate",
            f"set {name('cert')} to the client certificate",
        )
    if spec.mode == "disable" and any(
        getattr(spec, f) is not None for f in ("ca", "cert", "key", "crl", "capath")
    ):
        warnings.append(
            f"database alias '{alias}': TLS is disabled ({name('mode')}) but certificate "
            "settings are given; they are ignored"
        )

    cas: list[Any] = []
    if spec.ca == "system":
        if vendor == "mysql" and system_ca_bundle() == (None, None):
            raise TLSFileError(
                alias,
                name("ca"),
                "no system CA bundle was found for 'system'",
                "install the ca-certificates package, or give the CA bundle file path",
            )
    elif spec.ca is not None:
        cas = _load_certs(alias, name("ca"), spec.ca, "CA")
        valid = [c for c in cas if c.not_valid_before_utc <= when <= c.not_valid_after_utc]
        if not valid:
            # Every CA certificate is expired (or not yet valid): nothing can verify.
            _check_dates(alias, name("ca"), cas[0], "CA certificate", when, warnings)
        if len(cas) <= 10:  # a private CA file, not a public bundle: warn about expiry
            for c in valid:
                _check_dates(alias, name("ca"), c, "CA certificate", when, warnings)
    if spec.capath is not None and not os.path.isdir(spec.capath):
        raise TLSFileError(
            alias,
            name("capath"),
            f"the CA directory {_show_path(spec.capath)} does not exist",
            "point it at a directory of hashed CA certificates (c_rehash)",
        )
    if spec.crl is not None:
        data = _load_file(alias, name("crl"), spec.crl, "CRL")
        if b"-----BEGIN X509 CRL-----" not in data:
            raise TLSFileError(
                alias,
                name("crl"),
                f"the CRL file {_show_path(spec.crl)} is not a PEM CRL",
                "give a PEM CRL (convert with: openssl crl -inform der -in X -out X.pem)",
            )
    if spec.cert is not None and spec.key is not None:
        certs = _load_certs(alias, name("cert"), spec.cert, "client certificate")
        key, key_warnings = _load_key(
            alias, name("key"), spec.key, spec.key_password, name("key_password")
        )
        warnings.extend(key_warnings)
        leaf = certs[0]
        if _public_der(key.public_key()) != _public_der(leaf.public_key()):
            raise CertificateError(
                alias,
                name("key"),
                f"the client key does not match the client certificate ({name('cert')})",
                "use the private key the certificate was issued for",
            )
        _check_dates(alias, name("cert"), leaf, "client certificate", when, warnings)
        if cas:
            _check_issuer(alias, name("cert"), name("ca"), leaf, certs[1:], cas, warnings)
    return warnings
