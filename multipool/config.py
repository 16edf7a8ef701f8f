"""Database settings: from the environment, or from a Django ``DATABASES`` entry.

Two entry points produce the same normalized, hashable :class:`DatabaseSpec`:

* :func:`read_environment` / :func:`databases` read every alias from
  environment variables (through python-decouple: ``os.environ``, then a
  ``.env`` or ``settings.ini`` file found from the caller's directory upward);
* :func:`spec_from_settings` reads one ``DATABASES`` entry, hand-written or
  produced by :meth:`DatabaseSpec.to_django` (``spec_from_settings(a,
  spec.to_django()) == spec``).

Every environment key is listed in :data:`ENV_KEYS` (``docs/configuration.md``
is generated from it by :func:`env_keys_markdown`). Every error is a
:class:`~multipool.errors.ConfigurationError` naming the alias, the variable
and the fix, and never contains a password, a key passphrase or key material.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import FrameType
from typing import Any, NamedTuple
from urllib.parse import unquote

from multipool.errors import (
    ConfigurationError,
    InvalidPoolSetting,
    InvalidURL,
    UnknownScheme,
)
from multipool.tls import (
    TLS_OPTION_KEYS,
    MultipoolWarning,
    TLSSpec,
    check_tls_support,
    normalize_tls_field,
    tls_fields_from_options,
    validate_tls,
)
from multipool.tls import _default_setting as _tls_default_setting

__all__ = [
    "DEFAULT_URL",
    "ENGINES",
    "ENV_KEYS",
    "POOL_OPTION_KEYS",
    "SCHEMES",
    "DatabaseSpec",
    "EnvKey",
    "MultipoolWarning",
    "PoolSpec",
    "databases",
    "engine_vendor",
    "env_keys_markdown",
    "env_prefix",
    "freeze",
    "read_environment",
    "spec_from_settings",
    "thaw",
    "unusable_entry",
    "validate_spec",
]

logger = logging.getLogger("multipool.config")

#: the ``default`` alias when nothing is configured: an embedded SQLite file
DEFAULT_URL = "sqlite:///db.sqlite3"

ALIAS_RE = re.compile(r"[a-z][a-z0-9_]*")

#: vendor -> multipool ENGINE
ENGINES: Mapping[str, str] = {
    "postgresql": "multipool.backends.postgresql",
    "mysql": "multipool.backends.mysql",
    "sqlite": "multipool.backends.sqlite3",
}
_ENGINE_VENDORS: Mapping[str, str] = {
    **{engine: vendor for vendor, engine in ENGINES.items()},
    "django.db.backends.postgresql": "postgresql",
    "django.db.backends.postgresql_psycopg2": "postgresql",
    "django.db.backends.mysql": "mysql",
    "django.db.backends.sqlite3": "sqlite",
}

#: URL scheme (before ``+``) -> (vendor, accepted driver names after ``+``)
SCHEMES: Mapping[str, tuple[str, frozenset[str]]] = {
    "postgres": ("postgresql", frozenset({"", "psycopg", "psycopg2"})),
    "postgresql": ("postgresql", frozenset({"", "psycopg", "psycopg2"})),
    "pgsql": ("postgresql", frozenset({"", "psycopg", "psycopg2"})),
    "mysql": ("mysql", frozenset({"", "mysqldb"})),
    "mariadb": ("mysql", frozenset({"", "mysqldb"})),
    "sqlite": ("sqlite", frozenset({"", "pysqlite"})),
}


def engine_vendor(engine: object) -> str | None:
    """The vendor (``postgresql``, ``mysql``, ``sqlite``) of a ``DATABASES`` ENGINE that
    multipool reads -- its own backends and Django's -- or ``None``."""
    return _ENGINE_VENDORS.get(engine) if isinstance(engine, str) else None


def scheme_names() -> list[str]:
    """Every accepted URL scheme: ``scheme`` or ``scheme+driver``."""
    return [f"{s}+{d}" if d else s for s, (_, ds) in SCHEMES.items() for d in sorted(ds)]


# OPTIONS key -> (PoolSpec attribute, kind)
_POOL_FIELDS: Mapping[str, tuple[str, str]] = {
    "pool_enabled": ("enabled", "bool"),
    "pool_size": ("size", "size"),
    "max_overflow": ("max_overflow", "count"),
    "pool_timeout": ("timeout", "seconds"),
    "pool_recycle": ("recycle", "recycle"),
    "pool_pre_ping": ("pre_ping", "bool"),
    "pool_ping_idle": ("ping_idle", "seconds"),
    "pool_poll_idle": ("poll_idle", "seconds"),
    "pool_overflow_idle": ("overflow_idle", "seconds"),
    "pool_lifo": ("lifo", "bool"),
    "pool_reset": ("reset", "reset"),
    "pooler": ("pooler", "pooler"),
}

#: the OPTIONS keys multipool consumes for its pool (a backend strips them)
POOL_OPTION_KEYS: frozenset[str] = frozenset(_POOL_FIELDS)

#: django-db-connection-pool's ``POOL_OPTIONS`` keys -> multipool's ``OPTIONS`` key
#: (``None``: no equivalent)
_DBCP_POOL_NAMES: Mapping[str, str | None] = {
    "POOL_SIZE": "pool_size",
    "MAX_OVERFLOW": "max_overflow",
    "RECYCLE": "pool_recycle",
    "TIMEOUT": "pool_timeout",
    "PRE_PING": "pool_pre_ping",
    "ECHO": None,
}
#: those names as they may land in ``OPTIONS``, as is or in lower case
_OLD_POOL_NAMES: Mapping[str, str | None] = {
    **_DBCP_POOL_NAMES,
    **{k.lower(): v for k, v in _DBCP_POOL_NAMES.items() if k.lower() != v},
}

POOLERS = ("pgbouncer", "proxysql")
#: what is undone when a connection comes back: the open transaction only, or the whole session
POOL_RESETS = ("transaction", "session")
_POOLER_VENDOR = {"pgbouncer": "postgresql", "proxysql": "mysql"}

_TLS_FIELD_NAMES = (
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

_SENSITIVE = ("password", "passwd", "secret", "token")


# -- the specs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSpec:
    """How one alias pools its connections."""

    enabled: bool = True
    size: int = 5
    max_overflow: int = 5
    timeout: float = 10.0  # seconds to wait for a free connection
    recycle: float | None = None  # seconds; None = never
    pre_ping: bool = False  # ping on every checkout
    ping_idle: float = 30.0  # ping connections idle longer than this many seconds
    poll_idle: float = 0.5  # poll the socket of connections idle at least this long
    overflow_idle: float = 30.0  # close a surplus connection idle this long; 0 = on return
    lifo: bool = True
    reset: str = "transaction"  # "transaction" | "session" (see POOL_RESETS)
    pooler: str | None = None  # None | "pgbouncer" | "proxysql"

    def to_options(self) -> dict[str, Any]:
        """These settings as flat ``OPTIONS`` keys (:data:`POOL_OPTION_KEYS`)."""
        return {key: getattr(self, attr) for key, (attr, _) in _POOL_FIELDS.items()}


class _FrozenDict(tuple):
    """A dict frozen into a tuple of sorted ``(key, value)`` pairs (thawed back to a dict)."""

    __slots__ = ()


def _sort_key(item: tuple[Any, Any]) -> tuple[int, str]:
    key = item[0]
    return (0, key) if isinstance(key, str) else (1, repr(key))


def freeze(value: Any) -> Any:
    """Recursively hashable: dicts -> sorted tuples of pairs, lists/tuples -> tuples."""
    if isinstance(value, Mapping):
        return _FrozenDict(sorted(((k, freeze(v)) for k, v in value.items()), key=_sort_key))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return frozenset(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Undo :func:`freeze`: frozen dicts -> dicts, other tuples -> lists."""
    if isinstance(value, _FrozenDict):
        return {k: thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def _is_sensitive(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SENSITIVE)


@dataclass(frozen=True)
class DatabaseSpec:
    """Everything multipool knows about one alias; hashable, comparable, password masked.

    ``settings`` (names of the settings for messages) takes no part in equality:
    equal configurations give equal specs whatever their source.
    """

    alias: str
    vendor: str  # "postgresql" | "mysql" | "sqlite"
    name: str  # database name, or sqlite file path
    user: str | None = None
    password: str | None = None  # masked in repr
    host: str | None = None
    port: int | None = None
    options: tuple[tuple[str, Any], ...] = ()  # other driver OPTIONS, frozen
    tls: TLSSpec = field(default_factory=TLSSpec)
    pool: PoolSpec = field(default_factory=PoolSpec)
    conn_max_age: int | None = 0
    # Topology is not connection configuration: adding a replica must not make
    # the primary's spec (and so its pool) a different one.
    replica_of: str | None = field(default=None, compare=False)
    replicas: tuple[str, ...] = field(default=(), compare=False)
    settings: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __repr__(self) -> str:
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "password":
                shown = "'***'" if value else repr(value)
            elif f.name == "options":
                shown = repr(tuple((k, "***" if _is_sensitive(k) and v else v) for k, v in value))
            elif f.name == "settings":
                continue
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"DatabaseSpec({', '.join(parts)})"

    @property
    def engine(self) -> str:
        return ENGINES[self.vendor]

    def option(self, key: str, default: Any = None) -> Any:
        """One of the other driver OPTIONS (thawed)."""
        for k, v in self.options:
            if k == key:
                return thaw(v)
        return default

    def setting(self, field_name: str) -> str:
        """The name of the setting behind ``field_name``, for messages.

        ``field_name`` is a settings field (``pool_size``, ``tls_mode``, ``url``,
        ``name``...; an OPTIONS key like ``sslmode`` or a :class:`TLSSpec` field
        like ``ca`` works too). Falls back to the ``DATABASES`` spelling.
        """
        canonical = _canonical_field(field_name)
        names = dict(self.settings)
        if canonical in names:
            return names[canonical]
        if field_name in names:
            return names[field_name]
        return _default_setting(self.alias, self.vendor, canonical)

    def encryption_setting(self) -> str | None:
        """The setting that asks for an encrypted connection, or ``None`` when
        none does (see :meth:`TLSSpec.requires_encryption`)."""
        tls = self.tls
        if not tls.requires_encryption(self.vendor):
            return None
        if tls.mode is not None:
            return self.setting("tls_mode")
        given = next(f for f in ("ca", "capath", "cert", "key", "ciphers") if getattr(tls, f))
        return f"{self.setting(f'tls_{given}')} (a TLS setting without a TLS mode)"

    def tls_settings(self) -> dict[str, str]:
        """Setting names of the TLS fields, keyed by :class:`TLSSpec` field."""
        return {f: self.setting(f"tls_{f}") for f in _TLS_FIELD_NAMES}

    def to_django(self) -> dict[str, Any]:
        """A Django ``DATABASES`` entry (see module doc)."""
        options = {k: thaw(v) for k, v in self.options}
        options.update(self.pool.to_options())
        options.update(self.tls.to_options(self.vendor))
        entry: dict[str, Any] = {
            "ENGINE": ENGINES[self.vendor],
            "NAME": self.name,
            "USER": self.user or "",
            "PASSWORD": self.password or "",
            "HOST": self.host or "",
            "PORT": self.port if self.port is not None else "",
            "CONN_MAX_AGE": self.conn_max_age,
            "OPTIONS": options,
            "MULTIPOOL": {
                "replica_of": self.replica_of,
                "replicas": list(self.replicas),
                "settings": dict(self.settings),
            },
        }
        if self.replica_of is not None:
            # Django's test runner: a replica reads the primary's test database
            # instead of creating one of its own on a read-only server.
            entry["TEST"] = {"MIRROR": self.replica_of}
        if self.pool.pooler == "pgbouncer":
            # A server-side cursor outlives its transaction (WITH HOLD), and
            # the next FETCH may reach another server session.
            entry["DISABLE_SERVER_SIDE_CURSORS"] = True
        return entry


_FIELD_ALIASES: Mapping[str, str] = {
    # OPTIONS spellings of TLS settings
    "sslmode": "tls_mode",
    "ssl_mode": "tls_mode",
    "sslrootcert": "tls_ca",
    "ssl_ca": "tls_ca",
    "sslcert": "tls_cert",
    "ssl_cert": "tls_cert",
    "sslkey": "tls_key",
    "ssl_key": "tls_key",
    "sslpassword": "tls_key_password",
    "sslcrl": "tls_crl",
    "ssl_crl": "tls_crl",
    "ssl_min_protocol_version": "tls_min_version",
    "tls_version": "tls_min_version",
    "ssl_cipher": "tls_ciphers",
    "ssl_capath": "tls_capath",
    # TLSSpec / PoolSpec attribute names
    **{f: f"tls_{f}" for f in _TLS_FIELD_NAMES},
    **{attr: key for key, (attr, _) in _POOL_FIELDS.items() if attr != key},
    # DATABASES keys
    "NAME": "name",
    "USER": "user",
    "PASSWORD": "password",
    "HOST": "host",
    "PORT": "port",
    "CONN_MAX_AGE": "conn_max_age",
    "ENGINE": "engine",
}


def _canonical_field(field_name: str) -> str:
    return _FIELD_ALIASES.get(field_name, field_name)


def _default_setting(alias: str, vendor: str, field_name: str) -> str:
    base = f"DATABASES[{alias!r}]"
    if field_name in POOL_OPTION_KEYS:
        return f"{base}['OPTIONS'][{field_name!r}]"
    if field_name.startswith("tls_"):
        return _tls_default_setting(alias, vendor, field_name[4:])
    if field_name in ("replicas", "replica_of"):
        return f"{base}['MULTIPOOL'][{field_name!r}]"
    if field_name in ("name", "user", "password", "host", "port", "conn_max_age", "engine"):
        return f"{base}[{field_name.upper()!r}]"
    return base


# -- environment keys --------------------------------------------------------------------


@dataclass(frozen=True)
class EnvKey:
    """One environment key: ``<prefix><suffix>`` (see :func:`env_prefix`)."""

    suffix: str
    field: str  # the DatabaseSpec.settings field it sets
    type: str  # for the docs
    default: str  # for the docs
    description: str
    scope: str = "alias"  # "alias": every alias; "primary": not replicas; "global": once
    example: str = ""

    def name(self, alias: str = "default") -> str:
        if self.scope == "global":
            return f"DATABASE_{self.suffix}"
        return f"{env_prefix(alias)}{self.suffix}"


def env_prefix(alias: str) -> str:
    """``DATABASE_`` for ``default``, ``<ALIAS>_DATABASE_`` for the others."""
    return "DATABASE_" if alias == "default" else f"{alias.upper()}_DATABASE_"


_SECONDS = "seconds (number ≥ 0)"

#: Every environment key, in documentation order.
ENV_KEYS: tuple[EnvKey, ...] = (
    EnvKey(
        "URL",
        "url",
        "database URL",
        f"`{DEFAULT_URL}` for `default`; required for other aliases",
        "Where the database is: `scheme://user:password@host:port/name?option=value`. "
        f"Schemes: {', '.join(scheme_names())} (`sqlite:///relative.db`, "
        "`sqlite:////absolute/path.db`). Percent-encode special characters of the "
        "password. Query options go to the driver (`connect_timeout`, `application_name`, "
        "`charset`, ...); TLS options in either libpq or MySQL spelling and the pool keys "
        "(`pool_size`, ...) are accepted too; `host=/socket/dir` selects a Unix socket.",
        example="postgresql://app:s%40cret@db.internal:5432/app?sslmode=verify-full",
    ),
    EnvKey(
        "ALIASES",
        "aliases",
        "comma-separated aliases",
        "none",
        "Extra primary aliases besides `default`. Each reads `<ALIAS>_DATABASE_URL` and "
        "the other `<ALIAS>_DATABASE_*` keys. Aliases are lower-case identifiers "
        "(`[a-z][a-z0-9_]*`).",
        scope="global",
        example="legacy,analytics",
    ),
    EnvKey(
        "REPLICAS",
        "replicas",
        "comma-separated aliases",
        "none",
        "Read replicas of this primary. Each replica reads `<REPLICA>_DATABASE_URL` and "
        "inherits the primary's pool and TLS settings unless it sets its own "
        "`<REPLICA>_DATABASE_*` keys.",
        scope="primary",
        example="replica1,replica2",
    ),
    EnvKey("POOL", "pool_enabled", "boolean", "`true`", "Pool connections of this alias."),
    EnvKey(
        "POOL_SIZE",
        "pool_size",
        "integer ≥ 1",
        "`5`",
        "Connections kept open in the pool.",
    ),
    EnvKey(
        "MAX_OVERFLOW",
        "max_overflow",
        "integer ≥ 0",
        "`5`",
        "Extra connections opened above `POOL_SIZE` under load; closed once idle for "
        "`POOL_OVERFLOW_IDLE` seconds.",
    ),
    EnvKey(
        "POOL_TIMEOUT",
        "pool_timeout",
        _SECONDS,
        "`10`",
        "How long a request waits for a free connection before failing with `PoolTimeout`.",
    ),
    EnvKey(
        "POOL_RECYCLE",
        "pool_recycle",
        "seconds (number > 0), or `none`",
        "`none`",
        "Replace connections older than this (e.g. below a server or proxy idle timeout). "
        "`none` or `-1`: never.",
    ),
    EnvKey(
        "POOL_PRE_PING",
        "pool_pre_ping",
        "boolean",
        "`false`",
        "Ping every connection when it is checked out.",
    ),
    EnvKey(
        "POOL_PING_IDLE",
        "pool_ping_idle",
        _SECONDS,
        "`30`",
        "Ping connections that were idle longer than this when they are checked out.",
    ),
    EnvKey(
        "POOL_POLL_IDLE",
        "pool_poll_idle",
        _SECONDS,
        "`0.5`",
        "Before lending a connection that sat idle at least this long, check its socket "
        "(a zero-timeout `poll()`, no round trip) for a close by the server. A connection "
        "used more recently is lent unchecked, as HikariCP and pgx do; `0`: check every time.",
    ),
    EnvKey(
        "POOL_OVERFLOW_IDLE",
        "pool_overflow_idle",
        _SECONDS,
        "`30`",
        "Keep connections opened above `POOL_SIZE` while they are reused; close one once it "
        "has sat idle this long. `0`: close them as soon as they are returned (SQLAlchemy's "
        "behaviour), which under sustained load reopens them, a TLS handshake each time.",
    ),
    EnvKey(
        "POOL_LIFO",
        "pool_lifo",
        "boolean",
        "`true`",
        "Reuse the most recently returned connection first (lets idle ones time out).",
    ),
    EnvKey(
        "POOL_RESET",
        "pool_reset",
        "`transaction` or `session`",
        "`transaction`",
        "What is undone when a connection goes back to the pool. `transaction`: an open "
        "transaction is rolled back; session settings persist, as with Django's persistent "
        "connections. `session`: also reset the session (PostgreSQL `DISCARD ALL`, MySQL "
        "`COM_CHANGE_USER`), at the cost of a round trip per request.",
    ),
    EnvKey(
        "POOLER",
        "pooler",
        "`none`, `pgbouncer` or `proxysql`",
        "`none`",
        "An external pooler sits between the application and the server "
        "(`pgbouncer`: PostgreSQL only; `proxysql`: MySQL only).",
    ),
    EnvKey(
        "CONN_MAX_AGE",
        "conn_max_age",
        "integer ≥ 0, or `none`",
        "`0`",
        "Django's `CONN_MAX_AGE`. Keep `0` with pooling: Django returns the connection to "
        "the pool at the end of each request.",
    ),
    EnvKey(
        "SSLMODE",
        "tls_mode",
        "TLS mode",
        "driver default",
        "`disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full`; MySQL "
        "spellings (`DISABLED`, `PREFERRED`, `REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY`, "
        "any case) and `true`/`false` are accepted too. `require` and stricter mean "
        "encrypted or refused (`EncryptionRequired`), whatever the client library does; on "
        "MySQL, TLS files without a mode mean `require`.",
        example="verify-full",
    ),
    EnvKey(
        "SSLROOTCERT",
        "tls_ca",
        "path, PEM text, or `system`",
        "none",
        "CA bundle used to verify the server certificate. `system`: the operating "
        "system's CA store (PostgreSQL: needs libpq 16+ and implies `verify-full`). "
        "Required by `verify-ca` / `verify-full`.",
    ),
    EnvKey("SSLCERT", "tls_cert", "path or PEM text", "none", "Client certificate."),
    EnvKey(
        "SSLKEY",
        "tls_key",
        "path or PEM text",
        "none",
        "Client private key. A key file must not be readable by group or others (`chmod 600`).",
    ),
    EnvKey(
        "SSLPASSWORD",
        "tls_key_password",
        "text",
        "none",
        "Passphrase of an encrypted client key (PostgreSQL only).",
    ),
    EnvKey(
        "SSLCRL",
        "tls_crl",
        "path or PEM text",
        "none",
        "Certificate revocation list (PostgreSQL only).",
    ),
    EnvKey(
        "SSL_MIN_VERSION",
        "tls_min_version",
        "`TLSv1.2` or `TLSv1.3`",
        "driver default",
        "Lowest TLS protocol version (PostgreSQL only; set `tls_version` on a MySQL server).",
    ),
    EnvKey(
        "SSL_CIPHERS",
        "tls_ciphers",
        "OpenSSL cipher list",
        "driver default",
        "Allowed ciphers (MySQL only; set `ssl_ciphers` on a PostgreSQL server).",
    ),
)

_KEYS_BY_SUFFIX: Mapping[str, EnvKey] = {k.suffix: k for k in ENV_KEYS}
_ALIAS_KEYS = tuple(k for k in ENV_KEYS if k.scope != "global")
_DEFAULT_KEY_RE = re.compile(
    r"(?:(?P<alias>[A-Z][A-Z0-9_]*)_)?DATABASE_(?P<suffix>"
    + "|".join(sorted((re.escape(k.suffix) for k in ENV_KEYS), key=len, reverse=True))
    + ")"
)


def env_keys_markdown(alias: str = "default") -> str:
    """The table of :data:`ENV_KEYS` as Markdown (for ``docs/configuration.md``)."""
    lines = [
        "| Variable | Type | Default | Description |",
        "| --- | --- | --- | --- |",
    ]
    for key in ENV_KEYS:
        variable = f"`{key.name(alias)}`"
        if key.scope == "primary":
            variable += " (primaries only)"
        if key.scope == "global":
            variable += " (once)"
        description = key.description
        if key.example:
            description += f" Example: `{key.example}`."
        lines.append(f"| {variable} | {key.type} | {key.default} | {description} |")
    return "\n".join(lines) + "\n"


# -- value parsing ---------------------------------------------------------------------------


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_bool(alias: str, setting: str, value: Any) -> bool:
    from decouple import strtobool

    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        try:
            return bool(strtobool(value.strip()))
        except (ValueError, AttributeError):
            pass
    raise InvalidPoolSetting(
        alias,
        setting,
        f"{_short(value)} is not a boolean",
        "use true or false (also accepted: yes/no, on/off, 1/0)",
    )


def _as_int(alias: str, setting: str, value: Any, minimum: int, fix: str) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip())  # decouple's cast=int
        except ValueError:
            number = None
    if number is None:
        raise InvalidPoolSetting(alias, setting, f"{_short(value)} is not a whole number", fix)
    if number < minimum:
        raise InvalidPoolSetting(alias, setting, f"{number} is below {minimum}", fix)
    return number


#: the longest wait threading accepts (about 292 years on 64-bit Linux)
_MAX_SECONDS = float(int(threading.TIMEOUT_MAX))


def _as_float(alias: str, setting: str, value: Any, fix: str) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())  # decouple's cast=float
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise InvalidPoolSetting(alias, setting, f"{_short(value)} is not a number", fix)
    if number < 0:
        raise InvalidPoolSetting(alias, setting, f"{number:g} is negative", fix)
    if number > _MAX_SECONDS:
        raise InvalidPoolSetting(
            alias,
            setting,
            f"{number:g} seconds is beyond what a wait can last on this platform",
            f"use at most {_MAX_SECONDS:g} seconds",
        )
    return number


def _pool_switch(size_setting: str) -> str:
    """The name of the pool on/off setting next to the pool size setting ``size_setting``."""
    if size_setting.endswith("_POOL_SIZE"):
        return size_setting.removesuffix("_SIZE")  # DATABASE_POOL_SIZE -> DATABASE_POOL
    if size_setting.endswith("['pool_size']"):
        return size_setting.removesuffix("['pool_size']") + "['pool_enabled']"
    return "pool_enabled"


def _parse_pool_value(alias: str, key: str, value: Any, setting: str) -> Any:
    """One pool setting (OPTIONS key ``key``) from text or a Python value."""
    kind = _POOL_FIELDS[key][1]
    if kind == "bool":
        return _as_bool(alias, setting, value)
    if kind == "size":
        return _as_int(
            alias,
            setting,
            value,
            1,
            "use a whole number of at least 1 (to turn pooling off, set "
            f"{_pool_switch(setting)} to false instead)",
        )
    if kind == "count":
        return _as_int(alias, setting, value, 0, "use a whole number of at least 0")
    if kind == "seconds":
        return _as_float(alias, setting, value, "use a number of seconds, 0 or more")
    if kind == "recycle":
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in ("none", "never", "-1"):
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == -1:
            return None
        fix = "use a number of seconds above 0, or none to never recycle"
        number = _as_float(alias, setting, value, fix)
        if number == 0:
            raise InvalidPoolSetting(alias, setting, "0 would recycle on every checkout", fix)
        return number
    from decouple import Choices

    if kind == "reset":
        if isinstance(value, str):
            try:
                return Choices(list(POOL_RESETS), cast=lambda s: s.strip().lower())(value)
            except ValueError:
                pass
        raise InvalidPoolSetting(
            alias, setting, f"unknown reset {_short(value)}", "use transaction or session"
        )
    # pooler
    if value is None:
        return None
    if isinstance(value, str):
        try:
            chosen = Choices(["none", *POOLERS], cast=lambda s: s.strip().lower())(value)
        except ValueError:
            chosen = None
        if chosen is not None:
            return None if chosen == "none" else chosen
    raise InvalidPoolSetting(
        alias, setting, f"unknown pooler {_short(value)}", "use none, pgbouncer or proxysql"
    )


def _parse_conn_max_age(alias: str, setting: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return _as_int(
        alias,
        setting,
        value,
        0,
        "use a whole number of seconds (0: close at the end of each request, "
        "recommended with pooling) or none",
    )


def _parse_port(alias: str, setting: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    port: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.strip().isdigit():
        port = int(value.strip())
    if port is None or not 1 <= port <= 65535:
        raise ConfigurationError(
            alias, setting, f"port {_short(value)} is out of range", "use a port from 1 to 65535"
        )
    return port


def _option_value(value: Any) -> Any:
    """A URL query value for the driver: whole numbers become ints (mysqlclient wants them)."""
    if isinstance(value, tuple):
        return tuple(_option_value(v) for v in value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    return value


def _split_options(
    alias: str,
    vendor: str,
    options: Mapping[str, Any],
    names: Mapping[str, str],
    default_name: Callable[[str], str],
    base_dir: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], dict[str, tuple[Any, str]]]:
    """OPTIONS -> (other options, TLS values, TLS setting names, pool values)."""
    others: dict[str, Any] = {}
    tls_options: dict[str, Any] = {}
    pool: dict[str, tuple[Any, str]] = {}
    for key, value in options.items():
        if not isinstance(key, str):
            raise ConfigurationError(
                alias,
                f"DATABASES[{alias!r}]['OPTIONS']",
                f"option name {_short(key)} is not a string",
                "use string keys",
            )
        if key == "pool":
            raise InvalidPoolSetting(
                alias,
                default_name(key),
                "'pool' is Django's own PostgreSQL connection pool option; multipool "
                "pools connections itself",
                "remove 'pool' and use pool_size / max_overflow / pool_timeout "
                "(or the DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW environment keys)",
            )
        if key in _OLD_POOL_NAMES and not (key == "timeout" and vendor == "sqlite"):
            _refuse_old_pool_name(alias, key, default_name(key))
        if key in POOL_OPTION_KEYS:
            setting = names.get(key) or default_name(key)
            pool[key] = (_parse_pool_value(alias, key, value, setting), setting)
        elif key in TLS_OPTION_KEYS[vendor]:
            tls_options[key] = value
        else:
            others[key] = value
    tls_names = {f: names[f"tls_{f}"] for f in _TLS_FIELD_NAMES if f"tls_{f}" in names}
    tls_values, found_names = tls_fields_from_options(
        alias, vendor, tls_options, settings=tls_names or None, base_dir=base_dir
    )
    return others, tls_values, found_names, pool


def _refuse_old_pool_name(alias: str, key: str, setting: str) -> None:
    """A django-db-connection-pool name in OPTIONS: the driver would refuse it at connect."""
    new = _OLD_POOL_NAMES[key]
    fix = (
        f"rename it to {new}"
        if new is not None
        else "remove it (multipool has no echo: SQL is logged by Django's "
        "django.db.backends logger)"
    )
    raise InvalidPoolSetting(
        alias,
        setting,
        f"{key!r} is django-db-connection-pool's name for a pool setting; "
        "the database driver would refuse it",
        fix,
    )


def _check_combination(
    alias: str,
    vendor: str,
    name: str,
    options: Mapping[str, Any],
    pool: PoolSpec,
    setting: Callable[[str], str],
) -> None:
    if pool.pooler is not None:
        wanted = _POOLER_VENDOR[pool.pooler]
        if vendor != wanted:
            raise InvalidPoolSetting(
                alias,
                setting("pooler"),
                f"{pool.pooler} pools {wanted} connections, but this alias is {vendor}",
                "use pgbouncer for PostgreSQL, proxysql for MySQL, or none",
            )
    if pool.pooler == "pgbouncer":
        # Transaction pooling: consecutive transactions of one client may run on
        # different server sessions, so nothing may rely on session state.
        if options.get("assume_role"):
            raise InvalidPoolSetting(
                alias,
                setting("assume_role"),
                "SET ROLE does not survive the end of a transaction behind PgBouncer",
                "connect as the role directly (a PgBouncer user), or drop the pooler setting",
            )
        if options.get("prepare_threshold") is not None:
            raise InvalidPoolSetting(
                alias,
                setting("prepare_threshold"),
                "named prepared statements break behind PgBouncer in transaction mode",
                "remove prepare_threshold (multipool keeps psycopg's prepared statements off)",
            )
        if pool.reset == "session":
            raise InvalidPoolSetting(
                alias,
                setting("pool_reset"),
                "a session reset behind PgBouncer would reset another client's server session",
                "use POOL_RESET=transaction; PgBouncer resets server sessions itself "
                "(server_reset_query)",
            )


def _make_spec(
    *,
    alias: str,
    vendor: str,
    name: str,
    user: str | None,
    password: str | None,
    host: str | None,
    port: int | None,
    options: Mapping[str, Any],
    tls: TLSSpec,
    pool: PoolSpec,
    conn_max_age: int | None,
    replica_of: str | None,
    replicas: Iterable[str],
    settings: Mapping[str, str],
) -> DatabaseSpec:
    def setting(f: str) -> str:
        if settings.get(f):
            return settings[f]
        if f in options and f not in POOL_OPTION_KEYS:  # a driver option
            if settings.get("url"):
                return f"{settings['url']} (option {f})"
            return f"DATABASES[{alias!r}]['OPTIONS'][{f!r}]"
        return _default_setting(alias, vendor, f)

    _check_combination(alias, vendor, name, options, pool, setting)
    return DatabaseSpec(
        alias=alias,
        vendor=vendor,
        name=name,
        user=user or None,
        password=password or None,
        host=host or None,
        port=port,
        options=tuple(sorted(((k, freeze(v)) for k, v in options.items()), key=_sort_key)),
        tls=tls,
        pool=pool,
        conn_max_age=conn_max_age,
        replica_of=replica_of,
        replicas=tuple(replicas),
        settings=tuple(sorted(settings.items())),
    )


# -- DATABASES entries ---------------------------------------------------------------------

_CACHE_KEYS = (
    "ENGINE",
    "NAME",
    "USER",
    "PASSWORD",
    "HOST",
    "PORT",
    "OPTIONS",
    "CONN_MAX_AGE",
    "MULTIPOOL",
    "POOL_OPTIONS",
)
_MISSING = ("missing",)
_cache: dict[Any, DatabaseSpec] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 1024


def _key_freeze(value: Any) -> Any:
    """Like :func:`freeze`, but 1, 1.0 and True stay distinct."""
    if isinstance(value, Mapping):
        return (
            "d",
            tuple(sorted(((k, _key_freeze(v)) for k, v in value.items()), key=_sort_key)),
        )
    if isinstance(value, (list, tuple)):
        return ("l", tuple(_key_freeze(v) for v in value))
    if isinstance(value, (bool, int, float)):
        return (type(value).__name__, value)
    if isinstance(value, os.PathLike):
        return ("p", os.fspath(value))
    return value


def spec_from_settings(alias: str, settings_dict: Mapping[str, Any]) -> DatabaseSpec:
    """The :class:`DatabaseSpec` of one ``DATABASES`` entry (cached on its content).

    Accepts multipool's and Django's own ENGINE names, TLS options in any
    spelling (see :mod:`multipool.tls`), pool settings as flat OPTIONS keys
    (:data:`POOL_OPTION_KEYS`) and the ``MULTIPOOL`` key of :meth:`DatabaseSpec.to_django`.
    """
    try:
        # (a missing key and a key set to None differ: CONN_MAX_AGE)
        key = (alias, *(_key_freeze(settings_dict.get(k, _MISSING)) for k in _CACHE_KEYS))
        hash(key)
    except TypeError:
        return _spec_from_settings(alias, settings_dict)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    spec = _spec_from_settings(alias, settings_dict)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = spec
    return spec


def _text(alias: str, setting: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    if not isinstance(value, str):
        raise ConfigurationError(
            alias, setting, f"expected text, got a {type(value).__name__}", "give a string"
        )
    return value


def _spec_from_settings(alias: str, settings_dict: Mapping[str, Any]) -> DatabaseSpec:
    base = f"DATABASES[{alias!r}]"
    engine = settings_dict.get("ENGINE")
    vendor = engine_vendor(engine)
    if vendor is None:
        raise ConfigurationError(
            alias,
            f"{base}['ENGINE']",
            f"unsupported engine {_short(engine)}",
            "use one of " + ", ".join(ENGINES.values()),
        )
    if settings_dict.get("POOL_OPTIONS") is not None:
        raise InvalidPoolSetting(
            alias,
            f"{base}['POOL_OPTIONS']",
            "POOL_OPTIONS is django-db-connection-pool's setting; multipool would ignore it",
            "move the values into OPTIONS as pool_size, max_overflow, pool_recycle and "
            "pool_timeout (or use the DATABASE_POOL_SIZE... environment keys), and remove "
            "POOL_OPTIONS",
        )
    meta = settings_dict.get("MULTIPOOL")
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        raise ConfigurationError(
            alias,
            f"{base}['MULTIPOOL']",
            "must be a dict",
            "use {'replica_of': ..., 'replicas': [...], 'settings': {...}} or remove it",
        )
    if isinstance(meta.get("problem"), Mapping):  # recorded by databases()
        raise problem_from_record(meta["problem"])
    names_raw = meta.get("settings") or {}
    if not isinstance(names_raw, Mapping):
        raise ConfigurationError(
            alias, f"{base}['MULTIPOOL']['settings']", "must be a dict", "use {field: name}"
        )
    names = {str(k): str(v) for k, v in names_raw.items()}

    def setting(f: str) -> str:
        return names.get(f) or _default_setting(alias, vendor, f)

    replica_of = _text(alias, f"{base}['MULTIPOOL']['replica_of']", meta.get("replica_of"))
    replicas_raw = meta.get("replicas") or ()
    if isinstance(replicas_raw, str) or not all(isinstance(r, str) for r in replicas_raw):
        raise ConfigurationError(
            alias,
            f"{base}['MULTIPOOL']['replicas']",
            "must be a list of alias names",
            "use a list of strings",
        )
    options = settings_dict.get("OPTIONS")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(alias, f"{base}['OPTIONS']", "must be a dict", "use a dict")
    others, tls_values, tls_found, pool_values = _split_options(
        alias, vendor, options, names, lambda k: f"{base}['OPTIONS'][{k!r}]"
    )
    tls_names = {
        f: names.get(f"tls_{f}") or tls_found.get(f) or _default_setting(alias, vendor, f"tls_{f}")
        for f in _TLS_FIELD_NAMES
    }
    tls = check_tls_support(alias, vendor, TLSSpec(**tls_values), settings=tls_names)
    pool = PoolSpec(**{_POOL_FIELDS[k][0]: v for k, (v, _) in pool_values.items()})
    conn_max_age = (
        _parse_conn_max_age(alias, setting("conn_max_age"), settings_dict["CONN_MAX_AGE"])
        if "CONN_MAX_AGE" in settings_dict
        else 0
    )
    name = _text(alias, setting("name"), settings_dict.get("NAME")) or ""
    return _make_spec(
        alias=alias,
        vendor=vendor,
        name=name,
        user=_text(alias, setting("user"), settings_dict.get("USER")),
        password=_text(alias, setting("password"), settings_dict.get("PASSWORD")),
        host=_text(alias, setting("host"), settings_dict.get("HOST")),
        port=_parse_port(alias, setting("port"), settings_dict.get("PORT")),
        options=others,
        tls=tls,
        pool=pool,
        conn_max_age=conn_max_age,
        replica_of=replica_of,
        replicas=replicas_raw,
        # the spelling a TLS value came in, where it is not the default one
        settings={
            **{
                f"tls_{f}": n
                for f, n in tls_found.items()
                if n != _default_setting(alias, vendor, f"tls_{f}")
            },
            **names,
        },
    )


# -- URLs ------------------------------------------------------------------------------------


class _URLParts(NamedTuple):
    vendor: str
    name: str
    user: str | None
    password: str | None
    host: str | None
    port: int | None
    query: dict[str, Any]


_URL_FIX = (
    "use scheme://user:password@host:port/name?option=value "
    "(percent-encode special characters of the password, e.g. @ as %40)"
)


#: mysqlclient's ``connect()`` arguments, and Django's own MySQL OPTIONS
_MYSQL_OPTIONS = frozenset(
    {
        "host", "user", "password", "passwd", "database", "db", "port", "unix_socket",
        "conv", "connect_timeout", "compress", "named_pipe", "init_command",
        "read_default_file", "read_default_group", "cursorclass", "use_unicode", "charset",
        "collation", "auth_plugin", "sql_mode", "client_flag", "multi_statements",
        "server_public_key_path", "local_infile", "read_timeout", "write_timeout",
        "autocommit", "binary_prefix", "isolation_level",
    }
)  # fmt: skip


def _check_url_parts(
    alias: str, setting: str, vendor: str, url: str, parsed: Any, query: Mapping[str, Any]
) -> None:
    """Refuse what the URL parser accepts but no driver handles sanely.

    Messages never show the values: they may hold (part of) the password.
    """
    host = parsed.host or ""
    if "@" in host or url.count("@") > 1:
        raise InvalidURL(
            alias,
            setting,
            "the URL has an '@' that is not the one before the host (value not shown)",
            "percent-encode '@' as %40 in the user name, password, database and options "
            "(and ':' as %3A, '/' as %2F)",
        )
    parts = [parsed.username, parsed.password, host, parsed.database]
    for key, value in query.items():
        # (a repeated TLS or pool option gets its own error further on)
        driver_option = key not in POOL_OPTION_KEYS and key not in TLS_OPTION_KEYS[vendor]
        if isinstance(value, tuple) and driver_option:
            raise InvalidURL(
                alias,
                setting,
                f"the option {_short(key)} is given more than once",
                "give each query option once",
            )
        parts += [key, value]
    if any(isinstance(p, str) and "\x00" in p for p in parts):
        raise InvalidURL(
            alias,
            setting,
            "the URL contains a NUL character (%00) (value not shown)",
            "remove the %00: no database, user, password or option may contain it",
        )
    if vendor == "mysql":
        unknown = sorted(
            k for k in query
            if k not in _MYSQL_OPTIONS
            and k not in TLS_OPTION_KEYS["mysql"]
            and k not in POOL_OPTION_KEYS
        )  # fmt: skip
        if unknown:
            raise InvalidURL(
                alias,
                setting,
                f"unknown MySQL option {_short(unknown[0])} in the URL query",
                "use mysqlclient connect() options (e.g. connect_timeout, charset, "
                "init_command), TLS options (ssl_mode, ssl_ca, ...) or pool options",
            )


def _parse_url(alias: str, setting: str, url: Any) -> _URLParts:
    from sqlalchemy.engine import make_url

    if not isinstance(url, str):
        raise InvalidURL(alias, setting, f"expected text, got a {type(url).__name__}", _URL_FIX)
    try:
        parsed = make_url(url.strip())
        port = parsed.port
        query = dict(parsed.query)
    except Exception:
        # Never show the URL or the parser's message: both may contain the password.
        raise InvalidURL(
            alias, setting, "the URL cannot be parsed (value not shown)", _URL_FIX
        ) from None
    scheme, _, driver = parsed.drivername.partition("+")
    entry = SCHEMES.get(scheme.lower())
    if entry is None or driver.lower() not in entry[1]:
        raise UnknownScheme(
            alias,
            setting,
            f"unsupported URL scheme {_short(parsed.drivername)}",
            f"use one of {', '.join(scheme_names())}",
        )
    vendor = entry[0]
    _check_url_parts(alias, setting, vendor, url, parsed, query)
    if port is not None and not 1 <= port <= 65535:
        raise InvalidURL(
            alias, setting, f"port {port} is out of range", "use a port from 1 to 65535"
        )
    host = parsed.host or None
    if host and "%" in host:
        host = unquote(host)
    if vendor == "sqlite":
        if host or parsed.username or parsed.password or port:
            raise InvalidURL(
                alias,
                setting,
                "a SQLite URL takes no user, password, host or port",
                "use sqlite:///relative/path.db or sqlite:////absolute/path.db",
            )
        return _URLParts(vendor, parsed.database or ":memory:", None, None, None, None, query)
    return _URLParts(
        vendor,
        parsed.database or "",
        parsed.username or None,
        parsed.password or None,
        host,
        port,
        query,
    )


# -- the environment -------------------------------------------------------------------


#: the files python-decouple's ``AutoConfig`` reads, in its order of preference
_SETTINGS_FILES = ("settings.ini", ".env")


def find_settings_file(start: str) -> str | None:
    """The ``settings.ini`` or ``.env`` python-decouple's ``AutoConfig`` would read:
    the first found in ``start`` or a parent directory (the root excluded, as there)."""
    path = os.path.abspath(start)
    root = os.path.normcase(os.path.abspath(os.sep))
    while path and os.path.normcase(path) != root:
        for name in _SETTINGS_FILES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return None


class _Env:
    """Raw values: the source (decouple by default), then the keyword defaults.

    ``base_dir``: what relative paths (a SQLite file, certificate files) are
    relative to -- the ``base_dir`` given, else the directory of the ``.env`` /
    ``settings.ini`` in use, else where it was looked for; never the current
    directory, so that ``manage.py`` finds the same files from anywhere.
    """

    def __init__(
        self,
        source: Any,
        search_path: str | None,
        defaults: Mapping[str, Any],
        base_dir: str | None = None,
    ):
        self.defaults = defaults
        self._get: Callable[[str], Any]
        self.file: str | None = None
        self.base_dir = base_dir or search_path or os.getcwd()
        if source is None:
            from decouple import Config, RepositoryEmpty, RepositoryEnv, RepositoryIni

            start = search_path or _caller_dir()
            self.file = find_settings_file(start)
            repository: Any = RepositoryEmpty()
            if self.file is not None:
                kind = RepositoryIni if self.file.endswith(".ini") else RepositoryEnv
                repository = kind(self.file)
            config = Config(repository)
            self._get = lambda key: config(key, default=None)
            self.base_dir = base_dir or (os.path.dirname(self.file) if self.file else start)
        elif isinstance(source, Mapping):
            self._get = source.get
        elif callable(source):  # a decouple Config / AutoConfig
            self._get = lambda key: source(key, default=None)
        elif hasattr(source, "__contains__") and hasattr(source, "__getitem__"):
            from decouple import Config  # a decouple Repository: os.environ first

            wrapped = Config(source)
            self._get = lambda key: wrapped(key, default=None)
        else:
            raise TypeError(
                "source must be a mapping, a decouple Config/AutoConfig or a decouple "
                f"Repository, not {type(source).__name__}"
            )

    def from_source(self, key: str) -> Any:
        """The source's value; ``None`` when unset or empty."""
        value = self._get(key)
        return None if value is None or value == "" else value

    def from_defaults(self, key: str) -> Any:
        """The keyword default; ``None`` when not given or empty."""
        value = self.defaults.get(key)
        return None if value is None or value == "" else value

    def get(self, key: str) -> Any:
        value = self.from_source(key)
        return value if value is not None else self.from_defaults(key)

    def aliases(self, key: str, owner: str) -> list[str]:
        from decouple import Csv

        raw = self.get(key)
        if raw is None:
            return []
        if isinstance(raw, (list, tuple)):
            items = [str(a).strip() for a in raw]
        else:
            try:
                items = Csv()(str(raw))
            except ValueError:
                raise ConfigurationError(
                    owner,
                    key,
                    "the list cannot be parsed (unbalanced quotes?)",
                    "use comma-separated names: alias1,alias2",
                ) from None
        out: list[str] = []
        for item in items:
            if item == "":
                continue
            if not ALIAS_RE.fullmatch(item):
                raise ConfigurationError(
                    owner,
                    key,
                    f"{_short(item)} is not a valid alias name",
                    "use lower-case letters, digits and underscores, starting with a letter",
                )
            if item not in out:
                out.append(item)
        return out


def _caller_dir() -> str:
    """Directory of the first caller outside multipool (where decouple looks for .env)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith("<"):
            path = os.path.abspath(filename)
            if not path.startswith(package):
                return os.path.dirname(path)
        frame = frame.f_back
    return os.getcwd()


def _check_default_keys(defaults: Mapping[str, Any]) -> None:
    import difflib

    known = [k.name() for k in ENV_KEYS]
    for key in defaults:
        if not _DEFAULT_KEY_RE.fullmatch(key):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise TypeError(f"{key!r} is not a multipool environment key{hint}")


@dataclass
class _Layer:
    """Effective pool/TLS/CONN_MAX_AGE values of an alias, with where each came from."""

    pool: dict[str, tuple[Any, str]] = field(default_factory=dict)
    tls: dict[str, tuple[Any, str]] = field(default_factory=dict)
    conn_max_age: tuple[Any, str] | None = None

    def copy(self) -> _Layer:
        return _Layer(dict(self.pool), dict(self.tls), self.conn_max_age)


def _alias_from_env(
    alias: str,
    env: _Env,
    *,
    inherited: _Layer | None,
    replica_of: str | None,
    replicas: list[str],
    replicas_var: str,
) -> tuple[DatabaseSpec, _Layer]:
    prefix = env_prefix(alias)
    url_var = f"{prefix}URL"
    url = env.get(url_var)
    if url is None:
        if alias != "default":
            raise ConfigurationError(
                alias,
                url_var,
                "is not set",
                f"set {url_var} to the database URL, e.g. "
                "postgresql://user:password@host:5432/name",
            )
        url = DEFAULT_URL
    parts = _parse_url(alias, url_var, url)
    vendor = parts.vendor
    query = dict(parts.query)
    host = parts.host
    if "host" in query and vendor != "sqlite":
        socket = query.pop("host")
        host = socket[-1] if isinstance(socket, tuple) else socket
    url_names = {**{k: url_var for k in POOL_OPTION_KEYS}}
    url_names.update({f"tls_{f}": url_var for f in _TLS_FIELD_NAMES})
    others, q_tls, _, q_pool = _split_options(
        alias, vendor, query, url_names, lambda k: url_var, env.base_dir
    )
    others = {k: _option_value(v) for k, v in others.items()}
    if vendor == "postgresql" and not parts.name and not others.get("service"):
        # (Hand-written entries may leave NAME empty: Django's maintenance connection does.)
        raise ConfigurationError(
            alias,
            url_var,
            "the URL names no database",
            "put the database name in the URL path (postgresql://host/NAME), or add ?service=NAME",
        )

    name = parts.name
    if vendor == "sqlite" and name != ":memory:" and not name.startswith("file:"):
        name = os.path.join(env.base_dir, os.path.expanduser(name))
    layer = inherited.copy() if inherited is not None else _Layer()

    def apply(key: EnvKey, var: str, raw: Any) -> None:
        if key.field in POOL_OPTION_KEYS:
            layer.pool[key.field] = (_parse_pool_value(alias, key.field, raw, var), var)
        elif key.field.startswith("tls_"):
            tls_field = key.field[4:]
            if vendor == "sqlite":
                check_tls_support(alias, vendor, TLSSpec(mode="require"), settings={"mode": var})
            value = normalize_tls_field(alias, tls_field, raw, var, base_dir=env.base_dir)
            if value is not None:
                layer.tls[tls_field] = (value, var)
        elif key.field == "conn_max_age":
            layer.conn_max_age = (_parse_conn_max_age(alias, var, raw), var)

    # Lowest first: inherited from the primary, keyword defaults, URL query, environment.
    own = [(key, key.name(alias)) for key in _ALIAS_KEYS]
    for key, var in own:
        if env.from_source(var) is None and env.from_defaults(var) is not None:
            apply(key, var, env.from_defaults(var))
    layer.pool.update(q_pool)
    layer.tls.update({f: (v, url_var) for f, v in q_tls.items()})
    for key, var in own:
        raw = env.from_source(var)
        if raw is not None:
            apply(key, var, raw)

    names: dict[str, str] = {k.field: k.name(alias) for k in _ALIAS_KEYS}
    names.pop("replicas", None)
    if replica_of is None:
        names["replicas"] = replicas_var
    else:
        names["replica_of"] = replicas_var
    for f in ("url", "name", "user", "password", "host", "port"):
        names[f] = url_var
    names.update({k: n for k, (_, n) in layer.pool.items()})
    names.update({f"tls_{f}": n for f, (_, n) in layer.tls.items()})
    if layer.conn_max_age is not None:
        names["conn_max_age"] = layer.conn_max_age[1]

    tls_names = {f: names[f"tls_{f}"] for f in _TLS_FIELD_NAMES if f"tls_{f}" in names}
    tls = check_tls_support(
        alias, vendor, TLSSpec(**{f: v for f, (v, _) in layer.tls.items()}), settings=tls_names
    )
    pool = PoolSpec(**{_POOL_FIELDS[k][0]: v for k, (v, _) in layer.pool.items()})
    spec = _make_spec(
        alias=alias,
        vendor=vendor,
        name=name,
        user=parts.user,
        password=parts.password,
        host=host,
        port=parts.port,
        options=others,
        tls=tls,
        pool=pool,
        conn_max_age=layer.conn_max_age[0] if layer.conn_max_age is not None else 0,
        replica_of=replica_of,
        replicas=replicas,
        settings=names,
    )
    return spec, layer


def _emit(message: str) -> None:
    logger.warning("%s", message)
    warnings.warn(message, MultipoolWarning, stacklevel=4)


def validate_spec(spec: DatabaseSpec, *, now: Any = None) -> list[str]:
    """Startup checks of one spec (TLS files, CONN_MAX_AGE); raise or return warnings."""
    found = validate_tls(
        spec.alias, spec.tls, settings=spec.tls_settings(), now=now, vendor=spec.vendor
    )
    if spec.pool.enabled and spec.conn_max_age != 0:
        found.append(
            f"database alias '{spec.alias}': {spec.setting('conn_max_age')} is "
            f"{spec.conn_max_age}; with pooling keep it 0 so that Django returns "
            "connections to the pool at the end of each request"
        )
    return found


def _aliases_from_env(env: _Env) -> tuple[list[str], dict[str, list[str]]]:
    """The primary aliases and the replicas of each (``DATABASE_ALIASES``, ``*_REPLICAS``)."""
    aliases_var = "DATABASE_ALIASES"
    primaries = ["default", *(a for a in env.aliases(aliases_var, "default") if a != "default")]
    owners: dict[str, str] = {}
    replica_lists: dict[str, list[str]] = {}
    for primary in primaries:
        var = f"{env_prefix(primary)}REPLICAS"
        replica_lists[primary] = env.aliases(var, primary)
        for replica in replica_lists[primary]:
            if replica == "default" or replica in primaries:
                raise ConfigurationError(
                    primary,
                    var,
                    f"{replica!r} is a primary alias and cannot also be a replica",
                    f"remove {replica!r} from {var} or from {aliases_var}",
                )
            if replica in owners:
                raise ConfigurationError(
                    primary,
                    var,
                    f"{replica!r} is already a replica of {owners[replica]!r}",
                    "list each replica under one primary only",
                )
            owners[replica] = primary
    return primaries, replica_lists


def _read_all(env: _Env, *, validate: bool) -> dict[str, DatabaseSpec | ConfigurationError]:
    """Every alias of the environment: its spec, or the error that stops it.

    A replica of a primary that cannot be read shares the primary's error (it
    would inherit the primary's settings).
    """
    primaries, replica_lists = _aliases_from_env(env)
    found: dict[str, DatabaseSpec | ConfigurationError] = {}
    for primary in primaries:
        replicas_var = f"{env_prefix(primary)}REPLICAS"
        try:
            spec, layer = _alias_from_env(
                primary,
                env,
                inherited=None,
                replica_of=None,
                replicas=replica_lists[primary],
                replicas_var=replicas_var,
            )
            found[primary] = _validated(spec) if validate else spec
        except ConfigurationError as exc:
            found[primary] = exc
            found.update({replica: exc for replica in replica_lists[primary]})
            continue
        for replica in replica_lists[primary]:
            try:
                own = f"{env_prefix(replica)}REPLICAS"
                if env.get(own) is not None:
                    raise ConfigurationError(
                        replica,
                        own,
                        f"{replica!r} is a replica of {primary!r} and cannot have replicas",
                        f"list every replica in {replicas_var}",
                    )
                spec, _ = _alias_from_env(
                    replica,
                    env,
                    inherited=layer,
                    replica_of=primary,
                    replicas=[],
                    replicas_var=replicas_var,
                )
                found[replica] = _validated(spec) if validate else spec
            except ConfigurationError as exc:
                found[replica] = exc
    return found


def _validated(spec: DatabaseSpec) -> DatabaseSpec:
    for message in validate_spec(spec):
        _emit(message)
    return spec


def read_environment(
    *,
    source: Any = None,
    search_path: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    validate: bool = True,
    **defaults: Any,
) -> dict[str, DatabaseSpec]:
    """Every alias configured in the environment, as specs; raises the first problem.

    ``defaults`` are fallback values of environment keys
    (``DATABASE_URL="sqlite:///db.sqlite3"``, ``DATABASE_POOL_SIZE=10``), used
    when the environment does not set them.

    ``source``: where values come from. Default: python-decouple's
    ``AutoConfig`` (``os.environ``, then ``settings.ini`` or ``.env`` found
    from ``search_path``, by default the caller's directory, upward). Also
    accepted: a mapping (used alone, e.g. in tests), a decouple ``Config`` /
    ``AutoConfig``, or a decouple repository (``RepositoryEnv(path)``).

    ``base_dir``: what relative paths (a SQLite file, certificate files) are
    relative to. Default: the directory of the ``.env`` / ``settings.ini`` in
    use, else ``search_path`` (the caller's directory); with an explicit
    ``source``, ``search_path`` or the current directory.

    With ``validate`` (default), TLS files are checked and warnings are
    emitted as :class:`MultipoolWarning` and logged.
    """
    _check_default_keys(defaults)
    env = _Env(
        source,
        os.fspath(search_path) if search_path is not None else None,
        defaults,
        os.fspath(base_dir) if base_dir is not None else None,
    )
    specs: dict[str, DatabaseSpec] = {}
    for alias, found in _read_all(env, validate=validate).items():
        if isinstance(found, ConfigurationError):
            raise found
        specs[alias] = found
    return specs


def databases(
    *,
    source: Any = None,
    search_path: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    validate: bool = True,
    **defaults: Any,
) -> dict[str, dict[str, Any]]:
    """A Django ``DATABASES`` dict of every alias configured in the environment.

    ``multipool.databases(DATABASE_URL="sqlite:///db.sqlite3", DATABASE_POOL_SIZE=10)``:
    keyword arguments are fallbacks for environment keys. See :func:`read_environment`.

    A setting that cannot be used does not stop ``settings.py``: the alias's
    entry carries the problem, ``manage.py check`` reports it (``multipool.E001``
    to ``E005``, with the fix as hint) and the first use of the alias raises it
    (a :class:`~multipool.errors.ConfigurationError`, Django's
    ``ImproperlyConfigured``). :func:`read_environment` raises instead.
    """
    _check_default_keys(defaults)
    env = _Env(
        source,
        os.fspath(search_path) if search_path is not None else None,
        defaults,
        os.fspath(base_dir) if base_dir is not None else None,
    )
    try:
        found = _read_all(env, validate=validate)
    except ConfigurationError as exc:  # the list of aliases itself
        return {"default": unusable_entry(exc, "sqlite")}
    return {
        alias: unusable_entry(spec, _vendor_guess(env, alias))
        if isinstance(spec, ConfigurationError)
        else spec.to_django()
        for alias, spec in found.items()
    }


def _vendor_guess(env: _Env, alias: str) -> str:
    """The vendor of an alias whose settings cannot be read, from its URL's scheme."""
    url = env.get(f"{env_prefix(alias)}URL") if alias != "default" else env.get("DATABASE_URL")
    scheme = str(url or DEFAULT_URL).split(":", 1)[0].partition("+")[0].lower()
    return SCHEMES[scheme][0] if scheme in SCHEMES else "sqlite"


def unusable_entry(problem: ConfigurationError, vendor: str) -> dict[str, Any]:
    """A ``DATABASES`` entry that records ``problem``: checks report it, using it raises it."""
    return {
        "ENGINE": ENGINES[vendor],
        "NAME": "",
        "MULTIPOOL": {"problem": problem_record(problem)},
    }


def problem_record(problem: ConfigurationError) -> dict[str, str]:
    return {
        "class": type(problem).__name__,
        "alias": problem.alias,
        "setting": problem.setting,
        "problem": problem.problem,
        "fix": problem.fix,
    }


def problem_from_record(record: Mapping[str, Any]) -> ConfigurationError:
    from multipool import errors

    cls = getattr(errors, str(record.get("class")), ConfigurationError)
    if not (isinstance(cls, type) and issubclass(cls, ConfigurationError)):
        cls = ConfigurationError
    return cls(
        str(record.get("alias")),
        str(record.get("setting")),
        str(record.get("problem")),
        str(record.get("fix")),
    )
