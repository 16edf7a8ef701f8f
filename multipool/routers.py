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
import random
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from django.core.exceptions import SynchronousOnlyOperation
from django.db import connections
from django.db.utils import Error as DatabaseError

from multipool.errors import PoolTimeout
from multipool.health import LAGGING, PROBE, UP, health
from multipool.pools import manager
from multipool.routing.lag import replica_lag
from multipool.routing.pins import (
    ALL,
    PinState,
    current_pin_state,
    is_pinned,
    note_write,
    pin,
    pin_scope,
    pinned,
    pinned_now,
    unpin,
)
from multipool.routing.settings import STRATEGIES, RouterSettings, router_settings
from multipool.routing.topology import Topology, build_topology, topology

__all__ = [
    "ALL",
    "STRATEGIES",
    "PinState",
    "PrimaryReplicaRouter",
    "RouterSettings",
    "Topology",
    "build_topology",
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
        if not replicas or pinned_now(primary) or self._in_transaction(primary):
            return primary
        return self.choose_replica(primary, replicas)

    def db_for_write(self, model: Any, **hints: Any) -> str:
        topo = topology()
        primary = self._group_for(topo, model, hints)
        if topo.replicas.get(primary):
            note_write(primary)
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
