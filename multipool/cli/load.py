"""The demo's load generator: simulated requests through Django on a few threads."""

from __future__ import annotations

import contextlib
import copy
import sys
import threading
import time
from typing import Any

from multipool.cli.output import error_text
from multipool.cli.sources import is_multipool, vendor_of


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
    from django.core.signals import request_finished, request_started
    from django.db import connections
    from django.db.backends.signals import connection_created

    from multipool.pools import manager

    original = connections.settings[alias]
    vendor = vendor_of(original)
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

    sql = _session_id_sql(vendor)
    lock = threading.Lock()
    next_index = [0]
    done = [0]
    created = [0]
    latencies: list[float] = []
    sessions: set[Any] = set()
    errors: list[str] = []
    stop = threading.Event()
    ends: list[float] = []

    def on_created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == alias:
            with lock:
                created[0] += 1

    def worker() -> None:
        local_latencies = []
        local_sessions = set()
        try:
            while not stop.is_set():
                with lock:
                    if next_index[0] >= requests:
                        break
                    next_index[0] += 1
                started = time.perf_counter()
                request_started.send(sender=_DemoRequest, environ={})
                try:
                    with connections[alias].cursor() as cursor:
                        cursor.execute(sql)
                        row = cursor.fetchone()
                finally:
                    request_finished.send(sender=_DemoRequest)
                local_latencies.append(time.perf_counter() - started)
                if vendor != "sqlite" and row:
                    local_sessions.add(row[0])
                with lock:
                    done[0] += 1
        except Exception as exc:
            with lock:
                errors.append(error_text(exc))
            stop.set()
        finally:
            finished_at = time.perf_counter()
            connections.close_all()
            with lock:
                latencies.extend(local_latencies)
                sessions.update(local_sessions)
                ends.append(finished_at)

    before = manager.stats(alias).get(alias)
    connection_created.connect(on_created, weak=False)
    workers = [threading.Thread(target=worker, name=f"demo-{i}") for i in range(threads)]
    started = time.perf_counter()
    try:
        for t in workers:
            t.start()
        for t in workers:
            while t.is_alive():
                progress.update(done[0])
                t.join(0.05)
    finally:
        # The workers' own end times: the main thread's polling adds no time.
        elapsed = (max(ends) if ends else time.perf_counter()) - started
        connection_created.disconnect(on_created)
        connections.settings[alias] = original
    progress.finish(done[0])
    after = manager.stats(alias).get(alias)

    if pooled and after is not None:
        connects = after.connects - (before.connects if before is not None else 0)
        if before is not None and before.connects > after.connects:  # pool was replaced
            connects = after.connects
        checkouts = after.checkouts - (before.checkouts if before is not None else 0)
    else:
        connects = created[0]
        checkouts = None
    ordered = sorted(latencies)

    def pct(p: float) -> float | None:
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {
        "mode": "pooled" if pooled else "unpooled",
        "requests": done[0],
        "threads": threads,
        "seconds": elapsed,
        "requests_per_second": done[0] / elapsed if elapsed > 0 else None,
        "latency_p50_seconds": pct(0.50),
        "latency_p95_seconds": pct(0.95),
        "connects": connects,
        "checkouts": checkouts,
        "server_sessions": len(sessions) if vendor != "sqlite" else None,
        "error": errors[0] if errors else None,
    }
