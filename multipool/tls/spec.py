"""The normalized TLS settings of one alias, and the driver arguments they become."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from multipool.setting_names import LIBPQ_KEYS

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


def system_ca_bundle() -> tuple[str | None, str | None]:
    """The system CA bundle file and directory (either may be ``None``)."""
    paths = ssl.get_default_verify_paths()
    cafile = next(
        (p for p in (paths.cafile, paths.openssl_cafile) if p and os.path.isfile(p)), None
    )
    capath = next((p for p in (paths.capath, paths.openssl_capath) if p and os.path.isdir(p)), None)
    return cafile, capath


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
        for key, field_name in LIBPQ_KEYS.items():
            value = getattr(self, field_name)
            if value is not None:
                out[key] = value
        return out

    def mysql_kwargs(self) -> dict[str, Any]:
        """mysqlclient ``connect()`` keyword arguments: ``ssl`` dict and ``ssl_mode``.

        ``ca="system"`` becomes the system CA bundle (or directory). mysqlclient
        has no way to set a key passphrase, a CRL or a minimum TLS version;
        :func:`~multipool.tls.check_tls_support` rejects those for MySQL. TLS
        material without a mode asks for TLS: ``ssl_mode`` is ``REQUIRED`` then.
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
        for field_name, key in (("capath", "capath"), ("cert", "cert"), ("key", "key")):
            if getattr(self, field_name) is not None:
                ssl_dict[key] = getattr(self, field_name)
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
