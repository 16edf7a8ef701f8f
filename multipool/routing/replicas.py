"""Choosing the replica a read goes to, and keeping the health record true.

:class:`ReplicaChooser` is the router's half that talks to databases:

* a replica the health record says is up (or lagging, when its lag is due for
  a new measurement) is a candidate; one the thread already holds a
  connection to comes first, then the read strategy's order;
* choosing one makes sure the thread holds a working connection to it (the
  checkout the query would do anyway); a failure marks it down and the next
  candidate is tried, finally the primary;
* with a required position (a causal read), a replica is chosen only once it
  has replayed that position: its position is read at most once per
  ``MULTIPOOL_REPLICA_POSITION_INTERVAL`` per replica and process;
* with ``MULTIPOOL_REPLICA_MAX_LAG``, the replica's lag is measured from
  positions (:mod:`multipool.routing.progress`) once per interval;
* a down replica whose back-off is over is probed on a background thread, so
  no request waits for a replica that may not answer.
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
from multipool.pools import manager
from multipool.routing.health import LAGGING, PROBE, UP, health
from multipool.routing.positions import (
    Position,
    primary_position,
    reached,
    replayed_position,
)
from multipool.routing.progress import progress
from multipool.routing.settings import RouterSettings, router_settings

__all__ = ["ReplicaChooser", "starting_up"]

logger = logging.getLogger("multipool.routers")

#: what a server says while it starts (PostgreSQL's SQLSTATE 57P03 and its messages)
_STARTING = ("starting up", "not yet accepting connections", "consistent recovery state")


def starting_up(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the server is starting, not broken."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if getattr(seen, "sqlstate", None) == "57P03":
            return True
        if any(words in str(seen) for words in _STARTING):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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


def _mark_down(alias: str, exc: BaseException, cfg: RouterSettings, *, probe: bool) -> None:
    health.mark_down(
        alias,
        exc,
        backoff=cfg.backoff,
        backoff_max=cfg.backoff_max,
        detail=_scrub(str(exc), connections[alias].settings_dict),
        probe=probe,
        transient=starting_up(exc),
    )


def _probe(alias: str, cfg: RouterSettings) -> None:
    """Try a down replica once (on its own thread) and report to the health record."""
    conn = connections[alias]  # this thread's own wrapper
    try:
        conn.ensure_connection()
    except PoolTimeout:
        health.release_probe(alias)
    except DatabaseError as exc:
        _mark_down(alias, exc, cfg, probe=True)
    except Exception:  # never leave the probe claimed
        health.release_probe(alias)
        logger.exception("multipool: probing replica %r failed unexpectedly", alias)
    else:
        health.mark_up(alias)
    finally:
        conn.close()  # back to its pool


class ReplicaChooser:
    """Picks a usable replica of a group (see the module doc)."""

    def __init__(self) -> None:
        self._counters: dict[str, Iterator[int]] = {}
        self._lock = threading.Lock()

    def choose(
        self, primary: str, replicas: tuple[str, ...], required: Position | None = None
    ) -> str:
        """A usable replica of ``primary`` that has replayed ``required`` (``primary``
        itself when none is)."""
        cfg = router_settings()
        no_io = _in_event_loop()
        measure, candidates = self._candidates(replicas, cfg, no_io)
        if no_io:  # no I/O from an event loop thread: trust the records
            ordered = self._order(primary, candidates, cfg)
            return next((a for a in ordered if reached(health.position(a)[0], required)), primary)
        held = [a for a in candidates if connections[a].connection is not None]
        rest = [a for a in self._order(primary, candidates, cfg) if a not in held]
        for alias in itertools.chain(measure, held, rest):
            if self._usable(alias, primary, cfg, measure=alias in measure, required=required):
                return alias
        return primary

    def _candidates(
        self, replicas: tuple[str, ...], cfg: RouterSettings, no_io: bool
    ) -> tuple[list[str], list[str]]:
        """``(to measure first, other candidates)``; starts the probes that are due."""
        measure: list[str] = []
        candidates: list[str] = []
        for alias in replicas:
            state = health.check(alias, probe_grace=max(cfg.backoff_max, 30.0))
            if state == PROBE:
                threading.Thread(
                    target=_probe, args=(alias, cfg), name=f"multipool-probe-{alias}", daemon=True
                ).start()
            elif state == UP:
                candidates.append(alias)
            elif state == LAGGING:
                if cfg.max_lag is None:
                    health.forget_lag(alias)
                    candidates.append(alias)
                elif not measure and not no_io and health.lag_due(alias, cfg.lag_interval):
                    measure.append(alias)
        return measure, candidates

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

    # -- one replica ---------------------------------------------------------------
    def _usable(
        self, alias: str, primary: str, cfg: RouterSettings, *, measure: bool,
        required: Position | None,
    ) -> bool:
        """Make sure this thread holds a working connection to ``alias``, within the lag
        limit and at the required position."""
        conn = connections[alias]
        try:
            opened = _ensure_connection(conn)
        except PoolTimeout:
            # Busy, not broken: read elsewhere this time, and do not mark the replica down.
            logger.info("multipool: replica %r has no free connection; reading elsewhere", alias)
            return False
        except SynchronousOnlyOperation:  # pragma: no cover - checked by _in_event_loop
            return health.peek(alias) == UP
        except DatabaseError as exc:
            _mark_down(alias, exc, cfg, probe=False)
            return False
        health.mark_up(alias)
        try:
            ok = _within_lag(alias, primary, conn, cfg, measure) and _has_position(
                alias, conn, cfg, required
            )
        except DatabaseError as exc:
            _mark_down(alias, exc, cfg, probe=False)
            ok = False
        if not ok and opened and not conn.in_atomic_block:
            conn.close()  # give the connection back: this read will not use it
        return ok


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


def _within_lag(alias: str, primary: str, conn: Any, cfg: RouterSettings, measure: bool) -> bool:
    """Whether ``alias`` is within ``MULTIPOOL_REPLICA_MAX_LAG`` (measured when due)."""
    if cfg.max_lag is None:
        return True
    if not (measure or health.lag_due(alias, cfg.lag_interval)):
        return health.peek(alias) == UP
    if progress.sample_due(primary, cfg.lag_interval) and not _sample_primary(primary):
        return health.peek(alias) == UP  # no fresh sample: keep what is known
    replayed = replayed_position(conn)
    if replayed is None and not _has_positions(conn):
        return True  # a vendor whose positions multipool does not read: not measured
    health.record_position(alias, replayed)
    return health.record_lag(alias, progress.lag(primary, replayed), cfg.max_lag)


def _sample_primary(primary: str) -> bool:
    """Record the primary's position now (on this thread's connection to it)."""
    try:
        position = primary_position(connections[primary])
    except DatabaseError as exc:
        logger.info(
            "multipool: the position of primary %r could not be read (%s); lag not measured",
            primary, type(exc).__name__,
        )  # fmt: skip
        return False
    if position is not None:
        progress.record(primary, position)
    return True


def _has_position(alias: str, conn: Any, cfg: RouterSettings, required: Position | None) -> bool:
    """Whether ``alias`` has replayed ``required`` (read again at most once per interval)."""
    if required is None:
        return True
    if reached(health.position(alias)[0], required):
        return True
    if not health.position_due(alias, cfg.position_interval):
        return False
    position = replayed_position(conn)
    health.record_position(alias, position)
    return reached(position, required)


def _has_positions(conn: Any) -> bool:
    return conn.vendor == "postgresql" or bool(getattr(conn, "mysql_is_mariadb", False))


def _checked_out(alias: str) -> int:
    pool = manager.get(alias)
    return pool.stats().checked_out if pool is not None else 0
