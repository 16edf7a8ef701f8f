"""Primary/replica routing over multipool's per-alias pools.

``DATABASE_ROUTERS = ["multipool.routers.PrimaryReplicaRouter"]``. See
``docs/routing.md`` for the whole story; in short:

* **Groups.** Every alias of ``DATABASES`` that is not a replica is the
  primary of a group; its replicas are the aliases named in its
  ``DATABASES[alias]["MULTIPOOL"]["replicas"]`` or naming it in their
  ``["MULTIPOOL"]["replica_of"]`` (both are written by
  :func:`multipool.databases` from ``DATABASE_REPLICAS`` /
  ``<ALIAS>_DATABASE_REPLICAS``). The topology is read from
  ``django.db.connections.settings`` and re-read whenever it changes.
* **Which group a model belongs to.** The database of a model instance given
  as a hint (a related lookup follows its object), else
  ``settings.MULTIPOOL_ROUTES`` (``{"app_label": alias,
  "app_label.ModelName": alias}``; a model entry wins over its app's), else
  ``default``.
* **Writes** go to the group's primary, and pin the group: later reads in the
  same pin scope (request, thread, asyncio task) go to the primary too.
* **Reads** go to a healthy replica of the group (``MULTIPOOL_READ_STRATEGY``:
  ``round-robin``, ``random`` or ``least-busy``), or to the primary when the
  group is pinned, inside ``transaction.atomic`` on the primary, or when no
  replica is usable. A replica the current thread already holds a connection
  to is preferred (no second checkout; monotonic reads within a request).
* **Health.** Choosing a replica makes sure the thread holds a connection to
  it (the checkout the query would do anyway, made a moment earlier); when that
  fails the replica is marked down in :data:`multipool.health.health` for a
  back-off and the next candidate is tried. No extra round trip per read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import Error as DatabaseError

from multipool.errors import ConfigurationError, PoolTimeout
from multipool.health import LAGGING, PROBE, UP, health
from multipool.pools import manager

__all__ = [
    "ALL",
    "STRATEGIES",
    "PinState",
    "PrimaryReplicaRouter",
    "RouterSettings",
    "Topology",
    "current_pin_state",
    "is_pinned",
    "pin",
    "pin_scope",
    "pinned",
    "replica_lag",
    "router_settings",
    "topology",
    "unpin",
]

logger = logging.getLogger("multipool.routers")

#: read strategies (``MULTIPOOL_READ_STRATEGY``)
STRATEGIES = ("round-robin", "random", "least-busy")

#: "every group" in a pin set and in the pin cookie
ALL = "*"

_COOKIE_NAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
)


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouterSettings:
    """The router's Django settings, parsed (see ``docs/routing.md``)."""

    strategy: str = "round-robin"  # MULTIPOOL_READ_STRATEGY
    backoff: float = 5.0  # MULTIPOOL_REPLICA_BACKOFF
    backoff_max: float = 60.0  # MULTIPOOL_REPLICA_BACKOFF_MAX
    max_lag: float | None = None  # MULTIPOOL_REPLICA_MAX_LAG
    lag_interval: float = 5.0  # MULTIPOOL_REPLICA_LAG_INTERVAL
    pin_seconds: float = 0.0  # MULTIPOOL_PIN_SECONDS
    pin_cookie: str = "multipool_pin"  # MULTIPOOL_PIN_COOKIE
    pin_unsafe_methods: bool = True  # MULTIPOOL_PIN_UNSAFE_METHODS


_SETTING_NAMES: tuple[tuple[str, str], ...] = (
    ("strategy", "MULTIPOOL_READ_STRATEGY"),
    ("backoff", "MULTIPOOL_REPLICA_BACKOFF"),
    ("backoff_max", "MULTIPOOL_REPLICA_BACKOFF_MAX"),
    ("max_lag", "MULTIPOOL_REPLICA_MAX_LAG"),
    ("lag_interval", "MULTIPOOL_REPLICA_LAG_INTERVAL"),
    ("pin_seconds", "MULTIPOOL_PIN_SECONDS"),
    ("pin_cookie", "MULTIPOOL_PIN_COOKIE"),
    ("pin_unsafe_methods", "MULTIPOOL_PIN_UNSAFE_METHODS"),
)
_MISSING: Any = object()
_settings_cache: tuple[tuple[Any, ...], RouterSettings] | None = None


def _seconds(name: str, value: Any, *, allow_none: bool = False, positive: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number of seconds" + (" or None" if allow_none else "")
        raise ImproperlyConfigured(f"settings.{name} must be {kind}, not {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ImproperlyConfigured(
            f"settings.{name} must be a finite number {bound}, not {value!r}"
        )
    return number


def _parse_settings(raw: tuple[Any, ...]) -> RouterSettings:
    defaults = RouterSettings()
    values = {
        attr: (getattr(defaults, attr) if value is _MISSING else value)
        for (attr, _), value in zip(_SETTING_NAMES, raw, strict=True)
    }
    names = dict(_SETTING_NAMES)
    strategy = values["strategy"]
    normalized = str(strategy).strip().lower().replace("_", "-") if strategy else ""
    if normalized == "roundrobin":
        normalized = "round-robin"
    if normalized not in STRATEGIES:
        raise ImproperlyConfigured(
            f"settings.{names['strategy']} is {strategy!r}; use one of {', '.join(STRATEGIES)}"
        )
    cookie = values["pin_cookie"]
    if not isinstance(cookie, str) or not cookie or not set(cookie) <= _COOKIE_NAME_CHARS:
        raise ImproperlyConfigured(
            f"settings.{names['pin_cookie']} must be a non-empty cookie name, not {cookie!r}"
        )
    backoff = _seconds(names["backoff"], values["backoff"])
    backoff_max = _seconds(names["backoff_max"], values["backoff_max"])
    if backoff_max < backoff:
        raise ImproperlyConfigured(
            f"settings.{names['backoff_max']} ({backoff_max:g}) is below "
            f"settings.{names['backoff']} ({backoff:g})"
        )
    return RouterSettings(
        strategy=normalized,
        backoff=backoff,
        backoff_max=backoff_max,
        max_lag=_seconds(names["max_lag"], values["max_lag"], allow_none=True, positive=True),
        lag_interval=_seconds(names["lag_interval"], values["lag_interval"]),
        pin_seconds=_seconds(names["pin_seconds"], values["pin_seconds"]),
        pin_cookie=cookie,
        pin_unsafe_methods=bool(values["pin_unsafe_methods"]),
    )


def router_settings() -> RouterSettings:
    """The current router settings (re-parsed only when a value changed)."""
    global _settings_cache
    raw = tuple(getattr(settings, name, _MISSING) for _, name in _SETTING_NAMES)
    cached = _settings_cache
    if cached is not None and cached[0] == raw:
        return cached[1]
    parsed = _parse_settings(raw)
    _settings_cache = (raw, parsed)
    return parsed


# -- topology ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topology:
    """Primary/replica groups of ``DATABASES`` and the model routes."""

    primary_of: Mapping[str, str]  # every alias -> the primary of its group
    replicas: Mapping[str, tuple[str, ...]]  # primary -> its replicas (may be empty)
    app_routes: Mapping[str, str]  # app_label -> primary
    model_routes: Mapping[tuple[str, str], str]  # (app_label, model_name) -> primary
    default: str = DEFAULT_DB_ALIAS

    @property
    def primaries(self) -> tuple[str, ...]:
        return tuple(self.replicas)

    def is_replica(self, alias: str) -> bool:
        return self.primary_of.get(alias, alias) != alias

    def group(self, alias: str) -> str:
        """The primary of ``alias``'s group (``alias`` itself for a primary)."""
        try:
            return self.primary_of[alias]
        except KeyError:
            raise KeyError(f"database alias {alias!r} is not in DATABASES") from None

    def route(self, app_label: str, model_name: str | None = None) -> str:
        """The primary of the group an app (or one of its models) belongs to."""
        if model_name is not None:
            primary = self.model_routes.get((app_label, model_name.lower()))
            if primary is not None:
                return primary
        return self.app_routes.get(app_label, self.default)

    def model_group(self, model: Any) -> str:
        meta = getattr(model, "_meta", None)
        if meta is None:
            return self.default
        if self.model_routes:
            primary = self.model_routes.get((meta.app_label, meta.model_name))
            if primary is None and meta.proxy:
                concrete = meta.concrete_model._meta
                primary = self.model_routes.get((concrete.app_label, concrete.model_name))
            if primary is not None:
                return primary
        return self.app_routes.get(meta.app_label, self.default)


_topology_cache: tuple[Any, Any, Topology] | None = None


def _fingerprint(databases: Mapping[str, Any]) -> tuple[Any, ...]:
    out: list[tuple[Any, ...]] = []
    for alias, entry in databases.items():
        meta = entry.get("MULTIPOOL") if isinstance(entry, Mapping) else None
        if isinstance(meta, Mapping):
            replicas = meta.get("replicas")
            if isinstance(replicas, list):
                replicas = tuple(replicas)
            out.append((alias, meta.get("replica_of"), replicas))
        else:
            out.append((alias, meta))
    return tuple(out)


def topology() -> Topology:
    """The current topology: cached, rebuilt when ``DATABASES`` topology or routes change."""
    global _topology_cache
    databases = connections.settings
    fingerprint = _fingerprint(databases)
    routes = getattr(settings, "MULTIPOOL_ROUTES", None)
    cached = _topology_cache
    if cached is not None and cached[0] == fingerprint and cached[1] == routes:
        return cached[2]
    built = build_topology(databases, routes)
    _topology_cache = (fingerprint, dict(routes) if isinstance(routes, Mapping) else routes, built)
    return built


def build_topology(databases: Mapping[str, Any], routes: Any = None) -> Topology:
    """Parse the ``MULTIPOOL`` keys of ``databases`` and ``routes`` (raises on mistakes)."""
    declared_of: dict[str, str] = {}
    listed: dict[str, list[str]] = {}
    for alias, entry in databases.items():
        meta = entry.get("MULTIPOOL") if isinstance(entry, Mapping) else None
        setting = f"DATABASES[{alias!r}]['MULTIPOOL']"
        if meta is None:
            continue
        if not isinstance(meta, Mapping):
            raise ConfigurationError(
                alias, setting, "must be a dict", "use {'replica_of': ..., 'replicas': [...]}"
            )
        replica_of = meta.get("replica_of")
        if replica_of not in (None, ""):
            if not isinstance(replica_of, str) or replica_of not in databases:
                raise ConfigurationError(
                    alias,
                    f"{setting}['replica_of']",
                    f"names {replica_of!r}, which is not in DATABASES",
                    "name the primary's alias",
                )
            if replica_of == alias:
                raise ConfigurationError(
                    alias, f"{setting}['replica_of']", "names the alias itself", "remove it"
                )
            declared_of[alias] = replica_of
        replicas = meta.get("replicas") or ()
        if isinstance(replicas, str) or not all(isinstance(r, str) for r in replicas):
            raise ConfigurationError(
                alias, f"{setting}['replicas']", "must be a list of aliases", "use ['replica1']"
            )
        for replica in replicas:
            if replica not in databases:
                raise ConfigurationError(
                    alias,
                    f"{setting}['replicas']",
                    f"names {replica!r}, which is not in DATABASES",
                    f"add a DATABASES entry for {replica!r} (e.g. set "
                    f"{replica.upper()}_DATABASE_URL) or remove it from the list",
                )
            if replica == alias:
                raise ConfigurationError(
                    alias, f"{setting}['replicas']", "lists the alias itself", "remove it"
                )
        if replicas:
            listed[alias] = list(replicas)

    primary_of: dict[str, str] = {}
    for primary, replicas in listed.items():
        for replica in replicas:
            owner = primary_of.get(replica) or declared_of.get(replica)
            if owner is not None and owner != primary:
                raise ConfigurationError(
                    replica,
                    f"DATABASES[{primary!r}]['MULTIPOOL']['replicas']",
                    f"{replica!r} is already a replica of {owner!r}",
                    "list each replica under one primary only",
                )
            primary_of[replica] = primary
    for replica, primary in declared_of.items():
        primary_of.setdefault(replica, primary)
    for replica, primary in primary_of.items():
        if primary in primary_of:
            raise ConfigurationError(
                replica,
                f"DATABASES[{replica!r}]['MULTIPOOL']",
                f"its primary {primary!r} is itself a replica of {primary_of[primary]!r}",
                "point every replica at the group's primary",
            )
        if replica in listed:
            raise ConfigurationError(
                replica,
                f"DATABASES[{replica!r}]['MULTIPOOL']['replicas']",
                f"{replica!r} is a replica of {primary!r} and cannot have replicas",
                f"list every replica under {primary!r}",
            )

    groups: dict[str, list[str]] = {a: [] for a in databases if a not in primary_of}
    for primary, replicas in listed.items():
        groups[primary].extend(replicas)
    for replica, primary in primary_of.items():
        if replica not in groups[primary]:
            groups[primary].append(replica)
    full_primary_of = {alias: primary_of.get(alias, alias) for alias in databases}
    app_routes, model_routes = _parse_routes(routes, full_primary_of)
    default = full_primary_of.get(DEFAULT_DB_ALIAS, DEFAULT_DB_ALIAS)
    return Topology(
        primary_of=full_primary_of,
        replicas={p: tuple(r) for p, r in groups.items()},
        app_routes=app_routes,
        model_routes=model_routes,
        default=default,
    )


def _parse_routes(
    routes: Any, primary_of: Mapping[str, str]
) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    if routes is None:
        return {}, {}
    if not isinstance(routes, Mapping):
        raise ImproperlyConfigured(
            "settings.MULTIPOOL_ROUTES must be a dict like "
            "{'app_label': 'alias', 'app_label.ModelName': 'alias'}"
        )
    app_routes: dict[str, str] = {}
    model_routes: dict[tuple[str, str], str] = {}
    for key, alias in routes.items():
        setting = f"MULTIPOOL_ROUTES[{key!r}]"
        parts = key.split(".") if isinstance(key, str) else []
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise ImproperlyConfigured(
                f"settings.{setting}: keys are 'app_label' or 'app_label.ModelName'"
            )
        if not isinstance(alias, str) or alias not in primary_of:
            raise ConfigurationError(
                str(alias),
                f"settings.{setting}",
                f"{alias!r} is not in DATABASES",
                "route to the alias of a group's primary",
            )
        if primary_of[alias] != alias:
            raise ConfigurationError(
                alias,
                f"settings.{setting}",
                f"{alias!r} is a replica of {primary_of[alias]!r}",
                f"route to the primary {primary_of[alias]!r}; reads use its replicas",
            )
        if len(parts) == 1:
            app_routes[parts[0]] = alias
        else:
            model_routes[(parts[0], parts[1].lower())] = alias
    return app_routes, model_routes


# -- pinning -------------------------------------------------------------------------------


class PinState:
    """What the current pin scope knows (one per request under :class:`PinningMiddleware`).

    ``pinned``: groups (primary aliases, or :data:`ALL`) whose reads go to the
    primary for the rest of the scope. ``carry``: the groups written to (or
    pinned with :func:`pin`) in this scope -- what the middleware's cookie
    carries to the next requests. The object is shared by everything running
    in the scope (threads of ``sync_to_async``, tasks created inside it).
    """

    __slots__ = ("carry", "pinned")

    def __init__(self) -> None:
        self.pinned: set[str] = set()
        self.carry: set[str] = set()

    def __repr__(self) -> str:
        return f"PinState(pinned={sorted(self.pinned)}, carry={sorted(self.carry)})"


_scope: ContextVar[PinState | None] = ContextVar("multipool_pin_scope", default=None)
_forced: ContextVar[frozenset[str]] = ContextVar("multipool_pinned", default=frozenset())


def current_pin_state(*, create: bool = False) -> PinState | None:
    """The pin state of the current context (created on demand with ``create``)."""
    state = _scope.get()
    if state is None and create:
        state = PinState()
        _scope.set(state)
    return state


@contextmanager
def pin_scope() -> Iterator[PinState]:
    """A fresh pin scope for the block (what :class:`PinningMiddleware` does per request).

    Use it around units of work outside requests (a task, a batch step) so that
    a write pins only the reads of that unit.
    """
    state = PinState()
    token = _scope.set(state)
    try:
        yield state
    finally:
        _scope.reset(token)


def _groups(aliases: Iterable[str]) -> set[str]:
    names = list(aliases)
    if not names:
        return {ALL}
    topo = topology()
    out = set()
    for alias in names:
        if alias == ALL:
            out.add(ALL)
            continue
        try:
            out.add(topo.group(alias))
        except KeyError:
            raise ValueError(f"multipool: unknown database alias {alias!r}") from None
    return out


def pin(*aliases: str) -> None:
    """Send the reads of these aliases' groups (all groups by default) to their primaries
    for the rest of the current pin scope; :class:`PinningMiddleware` carries the pin
    to the next requests like a write."""
    groups = _groups(aliases)
    state = current_pin_state(create=True)
    assert state is not None
    state.pinned |= groups
    state.carry |= groups


def unpin(*aliases: str) -> None:
    """Undo :func:`pin` and write pins (of these groups; of all by default)."""
    state = current_pin_state()
    if state is None:
        return
    if not aliases:
        state.pinned.clear()
        state.carry.clear()
        return
    groups = _groups(aliases)
    state.pinned -= groups
    state.carry -= groups


@contextmanager
def pinned(*aliases: str) -> Iterator[None]:
    """Within the block, reads of these aliases' groups (all by default) go to the primary."""
    groups = frozenset(_groups(aliases))
    token = _forced.set(_forced.get() | groups)
    try:
        yield
    finally:
        _forced.reset(token)


def is_pinned(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether reads of ``alias``'s group go to its primary right now (pin, write, block)."""
    return _is_pinned(topology().group(alias))


def _is_pinned(primary: str) -> bool:
    forced = _forced.get()
    if forced and (ALL in forced or primary in forced):
        return True
    state = _scope.get()
    return state is not None and bool(state.pinned) and (
        ALL in state.pinned or primary in state.pinned
    )


def _note_write(primary: str) -> None:
    state = current_pin_state(create=True)
    assert state is not None
    state.pinned.add(primary)
    state.carry.add(primary)


# -- replica lag ----------------------------------------------------------------------------

_PG_LAG_SQL = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


def replica_lag(connection: Any) -> float | None:
    """Seconds a PostgreSQL replica is behind (0 when caught up or not a replica;
    ``None`` when unknown). Other vendors: ``None``. One round trip."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(_PG_LAG_SQL)
        row = cursor.fetchone()
    if row is None or row[0] is None:
        return None
    return max(0.0, float(row[0]))


# -- the router -----------------------------------------------------------------------------


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _scrub(message: str, settings_dict: Mapping[str, Any]) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    password = settings_dict.get("PASSWORD")
    if isinstance(password, str) and password:
        line = line.replace(password, "***")
    return line[:300]


class PrimaryReplicaRouter:
    """Writes to a group's primary, reads from a healthy replica (see the module doc)."""

    def __init__(self) -> None:
        self._counters: dict[str, Iterator[int]] = {}
        self._lock = threading.Lock()
        router_settings()  # report a mistake in the settings when Django loads the router

    # -- Django's router API ---------------------------------------------------
    def db_for_read(self, model: Any, **hints: Any) -> str:
        topo = topology()
        primary = self._group_for(topo, model, hints)
        replicas = topo.replicas.get(primary, ())
        if not replicas or _is_pinned(primary) or self._in_transaction(primary):
            return primary
        return self.choose_replica(primary, replicas)

    def db_for_write(self, model: Any, **hints: Any) -> str:
        topo = topology()
        primary = self._group_for(topo, model, hints)
        if topo.replicas.get(primary):
            _note_write(primary)
        return primary

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        topo = topology()
        first = self._object_group(topo, obj1)
        second = self._object_group(topo, obj2)
        if first is None or second is None:
            return None
        return first == second

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        topo = topology()
        if db not in topo.primary_of:
            return None
        if topo.is_replica(db):
            return False
        model = hints.get("model")
        primary = topo.model_group(model) if model is not None else (
            topo.route(app_label, model_name)
        )
        return db == primary

    # -- groups ------------------------------------------------------------------
    @staticmethod
    def _group_for(topo: Topology, model: Any, hints: Mapping[str, Any]) -> str:
        instance = hints.get("instance")
        if instance is not None:
            db = getattr(getattr(instance, "_state", None), "db", None)
            if db and db in topo.primary_of:
                return topo.primary_of[db]
        return topo.model_group(model)

    @staticmethod
    def _object_group(topo: Topology, obj: Any) -> str | None:
        db = getattr(getattr(obj, "_state", None), "db", None)
        if db:
            return topo.primary_of.get(db)
        return topo.model_group(type(obj))

    @staticmethod
    def _in_transaction(primary: str) -> bool:
        try:
            return bool(connections[primary].in_atomic_block)
        except Exception:  # pragma: no cover - an alias Django cannot load
            return False

    # -- choosing a replica --------------------------------------------------------
    def choose_replica(self, primary: str, replicas: tuple[str, ...]) -> str:
        """A usable replica of ``primary`` (``primary`` itself when none is)."""
        cfg = router_settings()
        probe_grace = max(cfg.backoff_max, 30.0)
        no_io = _in_event_loop()
        first: list[str] = []  # the one replica this call must probe (back-off over / lag due)
        candidates: list[str] = []
        claimed = False
        for alias in replicas:
            state = health.peek(alias) if claimed or no_io else health.check(
                alias, probe_grace=probe_grace
            )
            if state == PROBE:
                claimed = True
                first.append(alias)
            elif state == LAGGING:
                if cfg.max_lag is None:
                    health.forget_lag(alias)
                    candidates.append(alias)
                elif not claimed and not no_io and health.lag_due(alias, cfg.lag_interval):
                    claimed = True
                    first.append(alias)
            elif state == UP:
                candidates.append(alias)
            # DOWN: skipped
        if no_io:
            # Cannot connect from an event loop thread: trust the health record.
            ordered = self._order(primary, candidates, cfg)
            return ordered[0] if ordered else primary
        held = [a for a in candidates if self._holds_connection(a)]
        rest = [a for a in self._order(primary, candidates, cfg) if a not in held]
        for alias in itertools.chain(first, held, rest):
            if self._usable(alias, cfg, lag_claimed=alias in first):
                return alias
        return primary

    def _order(self, primary: str, candidates: list[str], cfg: RouterSettings) -> list[str]:
        if len(candidates) <= 1:
            return candidates
        if cfg.strategy == "random":
            return random.sample(candidates, len(candidates))
        start = next(self._counter(primary)) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        if cfg.strategy == "least-busy":
            # stable sort: equally busy replicas keep the round-robin rotation
            rotated.sort(key=_checked_out)
        return rotated

    def _counter(self, primary: str) -> Iterator[int]:
        counter = self._counters.get(primary)
        if counter is None:
            with self._lock:
                counter = self._counters.setdefault(primary, itertools.count())
        return counter

    @staticmethod
    def _holds_connection(alias: str) -> bool:
        # A pooled wrapper's connection kept between requests reads as None.
        return connections[alias].connection is not None

    def _usable(self, alias: str, cfg: RouterSettings, *, lag_claimed: bool) -> bool:
        """Make sure this thread holds a working connection to ``alias``; check its lag."""
        conn = connections[alias]
        def mark_down(exc: BaseException) -> None:
            health.mark_down(
                alias,
                exc,
                backoff=cfg.backoff,
                backoff_max=cfg.backoff_max,
                detail=_scrub(str(exc), conn.settings_dict),
            )

        try:
            opened = self._ensure_connection(conn)
        except PoolTimeout:
            # Busy, not broken: read elsewhere this time, and do not mark the replica down.
            logger.info("multipool: replica %r has no free connection; reading elsewhere", alias)
            health.release_probe(alias)
            return False
        except SynchronousOnlyOperation:  # pragma: no cover - checked by _in_event_loop
            health.release_probe(alias)
            return health.peek(alias) == UP
        except DatabaseError as exc:
            mark_down(exc)
            return False
        health.mark_up(alias)
        if cfg.max_lag is None or conn.vendor != "postgresql":
            return True
        if not (lag_claimed or health.lag_due(alias, cfg.lag_interval)):
            return health.peek(alias) == UP
        try:
            lag = replica_lag(conn)
        except DatabaseError as exc:
            mark_down(exc)
            if opened and not conn.in_atomic_block:
                conn.close()
            return False
        if health.record_lag(alias, lag, cfg.max_lag):
            return True
        if opened and not conn.in_atomic_block:
            conn.close()  # give the connection back: this request will not use it
        return False

    @staticmethod
    def _ensure_connection(conn: Any) -> bool:
        """Connect ``conn`` if needed; True when a connection was checked out here."""
        if conn.connection is not None:
            if not conn.errors_occurred or conn.in_atomic_block:
                return False
            # The last query on this connection failed: is it a disconnect?
            if conn.is_usable():
                conn.errors_occurred = False
                return False
            conn.close()  # given back as broken; the pool marks its siblings suspect
        conn.ensure_connection()
        return True


def _checked_out(alias: str) -> int:
    pool = manager.get(alias)
    return pool.stats().checked_out if pool is not None else 0
