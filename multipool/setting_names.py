"""The names of settings in messages.

Every message names the setting at fault: the environment variable a value came
from (``DATABASE_POOL_SIZE``), the URL it was written in (``DATABASE_URL``), or
its ``DATABASES`` key (``DATABASES['default']['OPTIONS']['sslrootcert']``).
:class:`SettingNames` answers "which setting is behind field F of alias A" for
:mod:`multipool.config` and :mod:`multipool.tls` alike. This module also knows
how each field is spelled in a ``DATABASES`` entry, and shows values briefly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "LIBPQ_KEYS",
    "MYSQL_FLAT_KEYS",
    "POOL_ATTRIBUTES",
    "TLS_FIELDS",
    "SettingNames",
    "short",
]

#: the fields of :class:`multipool.tls.TLSSpec`
TLS_FIELDS = (
    "mode",
    "ca",
    "cert",
    "key",
    "key_password",
    "crl",
    "min_version",
    "ciphers",
    "capath",
)

#: pool ``OPTIONS`` key -> :class:`multipool.config.PoolSpec` attribute
POOL_ATTRIBUTES: Mapping[str, str] = {
    "pool_enabled": "enabled",
    "pool_size": "size",
    "max_overflow": "max_overflow",
    "pool_timeout": "timeout",
    "pool_recycle": "recycle",
    "pool_pre_ping": "pre_ping",
    "pool_ping_idle": "ping_idle",
    "pool_poll_idle": "poll_idle",
    "pool_overflow_idle": "overflow_idle",
    "pool_lifo": "lifo",
    "pool_reset": "reset",
    "pool_metrics": "metrics",
    "pooler": "pooler",
    "connect_timeout": "connect_timeout",
    "network_timeout": "network_timeout",
    "rotation_check": "rotation_check",
}

#: libpq ``OPTIONS`` key -> TLS field
LIBPQ_KEYS: Mapping[str, str] = {
    "sslmode": "mode",
    "sslrootcert": "ca",
    "sslcert": "cert",
    "sslkey": "key",
    "sslpassword": "key_password",
    "sslcrl": "crl",
    "ssl_min_protocol_version": "min_version",
}

#: mysqlclient's flat ``OPTIONS`` keys -> TLS field
MYSQL_FLAT_KEYS: Mapping[str, str] = {
    "ssl_mode": "mode",
    "ssl_ca": "ca",
    "ssl_capath": "capath",
    "ssl_cert": "cert",
    "ssl_key": "key",
    "ssl_cipher": "ciphers",
    "ssl_crl": "crl",
    "tls_version": "min_version",
}

#: the keys of a ``DATABASES`` entry that hold one field each
_ENTRY_KEYS: Mapping[str, str] = {
    "NAME": "name",
    "USER": "user",
    "PASSWORD": "password",
    "HOST": "host",
    "PORT": "port",
    "CONN_MAX_AGE": "conn_max_age",
    "ENGINE": "engine",
}

#: where a TLS field sits in ``OPTIONS`` when no other spelling was used
_TLS_SPELLINGS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "mysql": {
        "mode": ("ssl_mode",),
        "ca": ("ssl", "ca"),
        "capath": ("ssl", "capath"),
        "cert": ("ssl", "cert"),
        "key": ("ssl", "key"),
        "ciphers": ("ssl", "cipher"),
        "key_password": ("ssl_key_password",),
        "crl": ("ssl_crl",),
        "min_version": ("tls_version",),
    },
    "postgresql": {
        **{f: (key,) for key, f in LIBPQ_KEYS.items()},
        "ciphers": ("ssl_ciphers",),
        "capath": ("ssl_capath",),
    },
}

#: other names of a field -> its name in :attr:`SettingNames.recorded`
_CANONICAL: Mapping[str, str] = {
    **{key: f"tls_{f}" for key, f in {**LIBPQ_KEYS, **MYSQL_FLAT_KEYS}.items()},
    **{f: f"tls_{f}" for f in TLS_FIELDS},
    **{attr: key for key, attr in POOL_ATTRIBUTES.items() if attr != key},
    **_ENTRY_KEYS,
}


def short(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (for messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class SettingNames:
    """The setting behind each value of one alias, for messages.

    ``recorded`` maps a field (``pool_size``, ``tls_ca``, ``url``, ``name``...) to
    the setting its value came from, usually an environment variable. A field
    with nothing recorded is named by how it was spelled (when the caller knows)
    or else by its ``DATABASES`` spelling. ``written_in`` is the URL variable
    while that URL's query options are read: they are all named by it.
    """

    alias: str
    vendor: str
    recorded: Mapping[str, str] = field(default_factory=dict)
    written_in: str | None = None

    @classmethod
    def given(
        cls, alias: str, vendor: str, settings: Mapping[str, str] | SettingNames | None
    ) -> SettingNames:
        """``settings`` as :class:`SettingNames` (a mapping is taken as ``recorded``)."""
        if isinstance(settings, SettingNames):
            return settings
        return cls(alias, vendor, dict(settings or {}))

    def of(self, field_name: str, spelled: str | None = None) -> str:
        """The name of the setting behind ``field_name``.

        ``field_name`` is a field (``pool_size``, ``tls_mode``, ``url``, ``name``),
        a ``DATABASES`` key (``NAME``), a TLS ``OPTIONS`` key (``sslmode``) or a
        :class:`~multipool.tls.TLSSpec` / :class:`~multipool.config.PoolSpec`
        attribute (``ca``, ``size``). ``spelled``: where the value was written,
        when nothing is recorded for it.
        """
        canonical = _CANONICAL.get(field_name, field_name)
        for key in (canonical, field_name):
            if self.recorded.get(key):
                return self.recorded[key]
        return spelled or self._spelling(canonical)

    def option(self, *keys: str) -> str:
        """Where the ``OPTIONS`` entry ``keys`` (``"ssl", "ca"``) was written."""
        if self.written_in is not None:
            return self.written_in
        return f"DATABASES[{self.alias!r}]['OPTIONS']" + "".join(f"[{k!r}]" for k in keys)

    def driver_option(self, key: str) -> str:
        """The name of a driver option (one multipool passes on as it is)."""
        url = self.recorded.get("url")
        return f"{url} (option {key})" if url else self.option(key)

    def tls(self) -> dict[str, str]:
        """The names of the TLS fields, keyed by TLS field."""
        return {f: self.of(f"tls_{f}") for f in TLS_FIELDS}

    def _spelling(self, canonical: str) -> str:
        """The ``DATABASES`` spelling of a field."""
        base = f"DATABASES[{self.alias!r}]"
        if canonical in POOL_ATTRIBUTES:
            return f"{base}['OPTIONS'][{canonical!r}]"
        if canonical.startswith("tls_"):
            tls_field = canonical.removeprefix("tls_")
            spellings = _TLS_SPELLINGS.get(self.vendor, _TLS_SPELLINGS["postgresql"])
            keys = spellings.get(tls_field, (f"ssl_{tls_field}",))
            return f"{base}['OPTIONS']" + "".join(f"[{k!r}]" for k in keys)
        if canonical in ("replicas", "replica_of", "password_file", "url_file", "credentials"):
            return f"{base}['MULTIPOOL'][{canonical!r}]"
        if canonical in _ENTRY_KEYS.values():
            return f"{base}[{canonical.upper()!r}]"
        return base
