"""What each driver can do with TLS settings: refuse the rest, adapt the spec to it.

* SQLite: no TLS setting at all.
* PostgreSQL (libpq): no cipher choice, no CA directory; ``sslrootcert=system``
  needs ``verify-full`` (libpq refuses weaker modes) and implies it.
* MySQL (mysqlclient): no key passphrase, CRL or minimum TLS version;
  ``allow`` is ``prefer``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from multipool.errors import InvalidTLSSetting
from multipool.setting_names import SettingNames
from multipool.tls.spec import VENDORS, TLSSpec


def check_tls_support(
    alias: str,
    vendor: str,
    spec: TLSSpec,
    *,
    settings: Mapping[str, str] | SettingNames | None = None,
) -> TLSSpec:
    """Reject what the vendor's driver cannot do; return the spec normalized for it."""
    if vendor not in VENDORS:
        raise ValueError(f"unknown vendor {vendor!r}")
    return _SUPPORT[vendor](SettingNames.given(alias, vendor, settings), spec)


def _sqlite(names: SettingNames, spec: TLSSpec) -> TLSSpec:
    for f in dataclasses.fields(spec):
        if getattr(spec, f.name) is not None:
            raise InvalidTLSSetting(
                names.alias,
                names.of(f.name),
                "SQLite is a local file: it has no TLS",
                "remove the TLS settings from this alias",
            )
    return spec


def _postgresql(names: SettingNames, spec: TLSSpec) -> TLSSpec:
    if spec.ciphers is not None:
        raise InvalidTLSSetting(
            names.alias,
            names.of("ciphers"),
            "libpq cannot choose TLS ciphers on the client side",
            "remove it, and set ssl_ciphers in the server's postgresql.conf",
        )
    if spec.capath is not None:
        raise InvalidTLSSetting(
            names.alias,
            names.of("capath"),
            "libpq has no CA directory setting",
            "concatenate the CA certificates into one bundle file and give it as the CA",
        )
    if spec.ca == "system":
        if spec.mode is None:
            return dataclasses.replace(spec, mode="verify-full")
        if spec.mode != "verify-full":
            raise InvalidTLSSetting(
                names.alias,
                names.of("mode"),
                f"sslmode {spec.mode!r} with the system CA store: libpq accepts "
                "only verify-full with sslrootcert=system",
                f"set the mode ({names.of('mode')}) to verify-full",
            )
    return spec


#: what mysqlclient cannot set: TLS field -> (why, fix)
_NOT_IN_MYSQLCLIENT: Mapping[str, tuple[str, str]] = {
    "key_password": (
        "mysqlclient cannot decrypt an encrypted client key",
        "decrypt the key (openssl pkey -in client.key -out client-plain.key; "
        "chmod 600 client-plain.key) and remove the passphrase",
    ),
    "crl": (
        "mysqlclient has no certificate revocation list setting",
        "remove it (revocation is enforced by the server's own CA setup)",
    ),
    "min_version": (
        "mysqlclient cannot set the TLS protocol version",
        "remove it, and set tls_version=TLSv1.2,TLSv1.3 on the server",
    ),
}


def _mysql(names: SettingNames, spec: TLSSpec) -> TLSSpec:
    for field_name, (why, fix) in _NOT_IN_MYSQLCLIENT.items():
        if getattr(spec, field_name) is not None:
            raise InvalidTLSSetting(names.alias, names.of(field_name), why, fix)
    if spec.mode == "allow":
        return dataclasses.replace(spec, mode="prefer")
    return spec


_SUPPORT: Mapping[str, Callable[[SettingNames, TLSSpec], TLSSpec]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
    "mysql": _mysql,
}
