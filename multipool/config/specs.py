"""The specs: :class:`DatabaseSpec` (one alias) and :class:`PoolSpec` (its pool).

Specs are frozen, hashable and comparable; :func:`freeze` / :func:`thaw` turn
driver options into hashable values and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from multipool.setting_names import POOL_ATTRIBUTES, SettingNames
from multipool.tls import TLSSpec

#: vendor -> multipool ENGINE
ENGINES: Mapping[str, str] = {
    "postgresql": "multipool.backends.postgresql",
    "mysql": "multipool.backends.mysql",
    "sqlite": "multipool.backends.sqlite3",
}

#: the OPTIONS keys multipool consumes for its pool (a backend strips them)
POOL_OPTION_KEYS: frozenset[str] = frozenset(POOL_ATTRIBUTES)

POOLERS = ("pgbouncer", "proxysql")
#: what is undone when a connection comes back: the open transaction only, or the whole session
POOL_RESETS = ("transaction", "session")

_SENSITIVE = ("password", "passwd", "secret", "token")


@dataclass(frozen=True)
class PoolSpec:
    """How one alias opens and pools its connections."""

    enabled: bool = True
    size: int = 5
    max_overflow: int = 5
    timeout: float = 10.0  # seconds to wait for a free connection
    recycle: float | None = None  # seconds; None = never
    pre_ping: bool = False  # ping on every checkout
    ping_idle: float = 30.0  # ping connections idle longer than this many seconds
    poll_idle: float = 0.001  # poll the socket of connections idle at least this long
    overflow_idle: float = 30.0  # close a surplus connection idle this long; 0 = on return
    lifo: bool = True
    reset: str = "transaction"  # "transaction" | "session" (see POOL_RESETS)
    metrics: bool = True  # report metrics (OpenTelemetry, Prometheus)
    pooler: str | None = None  # None | "pgbouncer" | "proxysql"
    connect_timeout: float = 10.0  # seconds to open a connection (TCP, TLS, login)
    network_timeout: float = 30.0  # seconds a silent network may last (keepalives); 0 = OS
    rotation_check: float = 5.0  # seconds between looks at the certificate files; 0 = always

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> PoolSpec:
        """A spec from parsed values keyed by ``OPTIONS`` key (:data:`POOL_OPTION_KEYS`)."""
        return cls(**{POOL_ATTRIBUTES[key]: value for key, value in values.items()})

    def to_options(self) -> dict[str, Any]:
        """These settings as flat ``OPTIONS`` keys (:data:`POOL_OPTION_KEYS`)."""
        return {key: getattr(self, attr) for key, attr in POOL_ATTRIBUTES.items()}


#: the keys of a ``DATABASES`` entry's ``MULTIPOOL`` dict that name where secrets come from
SECRET_KEYS = ("password_file", "url_file", "credentials")


@dataclass(frozen=True)
class SecretSpec:
    """Where an alias's login comes from when it can change while the process runs.

    Each is read when a physical connection is opened, never per request:
    ``password_file`` (``DATABASE_PASSWORD_FILE``) holds the password,
    ``url_file`` (``DATABASE_URL_FILE``) the URL whose user and password are
    used, ``credentials`` (``DATABASE_CREDENTIALS``) is a provider,
    ``package.module:callable``.
    """

    password_file: str | None = None
    url_file: str | None = None
    credentials: str | None = None

    @property
    def is_empty(self) -> bool:
        return self.password_file is None and self.url_file is None and self.credentials is None

    def to_meta(self) -> dict[str, str]:
        """The keys this spec sets in a ``DATABASES`` entry's ``MULTIPOOL`` dict."""
        return {key: getattr(self, key) for key in SECRET_KEYS if getattr(self, key) is not None}


class _FrozenDict(tuple):
    """A dict frozen into a tuple of sorted ``(key, value)`` pairs (thawed back to a dict)."""

    __slots__ = ()


def sort_key(item: tuple[Any, Any]) -> tuple[int, str]:
    """Sorts ``(key, value)`` pairs by key, string keys first."""
    key = item[0]
    return (0, key) if isinstance(key, str) else (1, repr(key))


def freeze(value: Any) -> Any:
    """Recursively hashable: dicts -> sorted tuples of pairs, lists/tuples -> tuples."""
    if isinstance(value, Mapping):
        return _FrozenDict(sorted(((k, freeze(v)) for k, v in value.items()), key=sort_key))
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

    ``settings`` (where each value came from, for messages: see :meth:`setting`)
    takes no part in equality: equal configurations give equal specs whatever
    their source.
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
    secrets: SecretSpec = field(default_factory=SecretSpec)
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

    @property
    def setting_names(self) -> SettingNames:
        """The names of this alias's settings (see :attr:`settings`)."""
        return SettingNames(self.alias, self.vendor, dict(self.settings))

    def setting(self, field_name: str) -> str:
        """The name of the setting behind ``field_name``, for messages.

        ``field_name`` is a settings field (``pool_size``, ``tls_mode``, ``url``,
        ``name``...; an OPTIONS key like ``sslmode`` or a :class:`TLSSpec` field
        like ``ca`` works too). Falls back to the ``DATABASES`` spelling.
        """
        return self.setting_names.of(field_name)

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
        return self.setting_names.tls()

    def to_django(self) -> dict[str, Any]:
        """A Django ``DATABASES`` entry (``spec_from_settings(alias, entry) == self``)."""
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
                **self.secrets.to_meta(),
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
