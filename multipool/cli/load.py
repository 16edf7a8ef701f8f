"""The demo's load generator: simulated requests through Django on a few threads."""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from multipool.cli.output import error_text
from multipool.cli.sources import is_multipool, vendor_of

if TYPE_CHECKING:
    from multipool.pools import PoolStats


class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label = label
        self.total = max(1, total)
        self.enabled = enabled
        self._last = -1.0

    def update(self, done: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.05:
            return
        self._last = now
        width = 30
        filled = int(width * done / self.total)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r  {self.label:<28} [{bar}] {done}/{self.total}")
        sys.stderr.flush()

    def finish(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


class _DemoRequest:
    """The ``sender`` of the request signals sent by the demo."""


def _session_id_sql(vendor: str | None) -> str:
    if vendor == "postgresql":
        return "SELECT pg_backend_pid()"
    if vendor == "mysql":
        return "SELECT CONNECTION_ID()"
    return "SELECT 1"


def run_load(
    alias: str,
    *,
    requests: int,
    threads: int,
    pooled: bool,
    progress: Progress,
) -> dict[str, Any]:
    """``requests`` simulated requests on ``threads`` threads through ``connections[alias]``.

    Each request is what Django's handler does: ``request_started``, a query,
    ``request_finished`` (which gives the connection back, CONN_MAX_AGE=0).
    ``pooled=False`` runs the same alias with ``pool_enabled=False`` and
    ``CONN_MAX_AGE=0``: a new connection per request.
    """
    from multipool.pools import manager

    with _settings_for(alias, pooled=pooled) as original, _connections_opened(alias) as opened:
        vendor = vendor_of(original)
        load = _Load(alias, requests, _session_id_sql(vendor), count_sessions=vendor != "sqlite")
        before = manager.stats(alias).get(alias)
        elapsed = _run_threads(load, threads, progress)
    progress.finish(load.done)
    after = manager.stats(alias).get(alias)
    if pooled and after is not None:
        connects, checkouts = _pool_counts(before, after)
    else:
        connects, checkouts = opened[0], None
    ordered = sorted(load.latencies)
    return {
        "mode": "pooled" if pooled else "unpooled",
        "requests": load.done,
        "threads": threads,
        "seconds": elapsed,
        "requests_per_second": load.done / elapsed if elapsed > 0 else None,
        "latency_p50_seconds": _percentile(ordered, 0.50),
        "latency_p95_seconds": _percentile(ordered, 0.95),
        "connects": connects,
        "checkouts": checkouts,
        "server_sessions": len(load.sessions) if vendor != "sqlite" else None,
        "error": load.errors[0] if load.errors else None,
    }


@dataclass
class _Load:
    """The requests the worker threads share, and what they measured."""

    alias: str
    requests: int
    sql: str
    count_sessions: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    taken: int = 0
    done: int = 0
    latencies: list[float] = field(default_factory=list)
    sessions: set[Any] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    def take(self) -> bool:
        """Claim the next request; False when all are claimed or a worker failed."""
        with self.lock:
            if self.stop.is_set() or self.taken >= self.requests:
                return False
            self.taken += 1
            return True

    def worker(self) -> None:
        """One thread: requests until none is left; the first error stops every thread."""
        from django.db import connections

        latencies = []
        sessions = set()
        try:
            while self.take():
                started = time.perf_counter()
                row = _one_request(self.alias, self.sql)
                latencies.append(time.perf_counter() - started)
                if self.count_sessions and row:
                    sessions.add(row[0])
                with self.lock:
                    self.done += 1
        except Exception as exc:
            with self.lock:
                self.errors.append(error_text(exc))
            self.stop.set()
        finally:
            finished_at = time.perf_counter()
            connections.close_all()
            with self.lock:
                self.latencies.extend(latencies)
                self.sessions.update(sessions)
                self.ends.append(finished_at)


def _one_request(alias: str, sql: str) -> Any:
    """What Django's handler does around a view: request_started, one query,
    request_finished. Returns the query's row."""
    from django.core.signals import request_finished, request_started
    from django.db import connections

    request_started.send(sender=_DemoRequest, environ={})
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    finally:
        request_finished.send(sender=_DemoRequest)


def _run_threads(load: _Load, threads: int, progress: Progress) -> float:
    """Run ``threads`` workers to the end; returns the seconds they took."""
    workers = [threading.Thread(target=load.worker, name=f"demo-{i}") for i in range(threads)]
    started = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        while t.is_alive():
            progress.update(load.done)
            t.join(0.05)
    # The workers' own end times: the main thread's polling adds no time.
    return (max(load.ends) if load.ends else time.perf_counter()) - started


@contextlib.contextmanager
def _settings_for(alias: str, *, pooled: bool) -> Iterator[dict[str, Any]]:
    """``connections[alias]`` rebuilt from its settings, as configured (``pooled``) or
    with ``pool_enabled=False`` and ``CONN_MAX_AGE=0``; the settings restored on exit.
    Yields the configured settings."""
    from django.db import connections

    original = connections.settings[alias]
    if not pooled:
        changed = copy.deepcopy(original)
        options = dict(changed.get("OPTIONS") or {})
        if is_multipool(changed):
            options["pool_enabled"] = False
        changed["OPTIONS"] = options
        changed["CONN_MAX_AGE"] = 0
        connections.settings[alias] = changed
    with contextlib.suppress(Exception):
        connections[alias].close()
    with contextlib.suppress(AttributeError):
        del connections[alias]  # this thread's wrapper: rebuilt from the settings above
    try:
        yield original
    finally:
        connections.settings[alias] = original


@contextlib.contextmanager
def _connections_opened(alias: str) -> Iterator[list[int]]:
    """Counts (in the yielded ``[n]``) the connections Django opens for ``alias`` inside."""
    from django.db.backends.signals import connection_created

    opened = [0]
    lock = threading.Lock()

    def on_created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == alias:
            with lock:
                opened[0] += 1

    connection_created.connect(on_created, weak=False)
    try:
        yield opened
    finally:
        connection_created.disconnect(on_created)


def _pool_counts(before: PoolStats | None, after: PoolStats) -> tuple[int, int]:
    """``(connects, checkouts)`` of the pool between two :class:`PoolStats` snapshots."""
    if before is None:
        return after.connects, after.checkouts
    connects = after.connects - before.connects
    if before.connects > after.connects:  # the pool was replaced
        connects = after.connects
    return connects, after.checkouts - before.checkouts


def _percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]
