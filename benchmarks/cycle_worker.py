"""One configuration of the request-cycle benchmark, in its own process.

Started by :mod:`benchmarks.request_cycle` (``python -m benchmarks.cycle_worker``);
talks JSON lines: the first line on stdin describes the configuration
(``{"config", "vendor", "entry", "threads", "view_us"}``), then each command line gets one
answer line on the original stdout:

* ``{"cmd": "run", "requests": N}`` -- every thread serves N requests;
  answer: wall time, each request's latency, errors, connects;
* ``{"cmd": "quit"}`` -- close everything and exit.

Each process has exactly one alias, ``default``, as a real application would:
Django reads ``DATABASES`` once per process, and stock Django's per-thread
connections, Django's native pool and the two SQLAlchemy-based pools all keep
their state for the whole run. The worker threads live as long as the process,
so a persistent connection (``CONN_MAX_AGE=None``) stays open across runs.

A request is what Django's WSGI handler does around a view:
``request_started`` (``close_old_connections``), one indexed lookup through
``connections["default"]``, ``request_finished`` (``close_old_connections``:
with ``CONN_MAX_AGE=0`` this is where a pooled connection goes back).
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import threading
import time
import traceback
from typing import Any

from benchmarks.common import (
    BENCH_ROWS,
    BENCH_TABLE,
    MULTIPOOL_CONFIGS,
    NATIVE_POOL_CONFIGS,
    configure_django,
    entry_from_environ,
)

SQL = f"SELECT name FROM {BENCH_TABLE} WHERE id = %s"


class Handler:
    """The ``sender`` Django's WSGIHandler uses for the request signals."""


_ENVIRON = {"REQUEST_METHOD": "GET", "PATH_INFO": "/bench/"}


class ConnectCounter:
    """Counts physical connections the driver opens in this process, whoever asks
    (Django, psycopg_pool, SQLAlchemy's pool)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.count += 1

    def install(self, vendor: str) -> None:
        if vendor == "postgresql":
            import psycopg

            original = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]
            counter = self

            def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
                counter.hit()
                return original(cls, *args, **kwargs)

            psycopg.Connection.connect = classmethod(connect)  # type: ignore[method-assign,assignment]
            psycopg.connect = psycopg.Connection.connect  # type: ignore[assignment]
        elif vendor == "mysql":
            import MySQLdb

            original_connect = MySQLdb.connect
            counter = self

            def mysql_connect(*args: Any, **kwargs: Any) -> Any:
                counter.hit()
                return original_connect(*args, **kwargs)

            MySQLdb.connect = mysql_connect  # type: ignore[assignment]


def one_request(
    connections: Any,
    signals: Any,
    key: int | None,
    alias: str = "default",
    sql: str = SQL,
    view_ns: int = 0,
    new_wrapper: bool = False,
) -> None:
    """One request as Django's handler runs it: ``request_started``, a query
    (with ``[key]`` as parameters, or none when ``key`` is None), then
    ``view_ns`` nanoseconds of Python work holding the GIL (the rest of a view:
    ORM, templates), ``request_finished``. ``new_wrapper``: the request gets a
    connection wrapper of its own, as under an ASGI server."""
    if new_wrapper:
        connections[alias] = connections.create_connection(alias)
    signals.request_started.send(sender=Handler, environ=_ENVIRON)
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(sql, None if key is None else [key])
            cursor.fetchone()
        if view_ns:
            busy(view_ns)
    finally:
        signals.request_finished.send(sender=Handler)


def busy(ns: int) -> None:
    """Spin in Python for ``ns`` nanoseconds (CPU-bound work that holds the GIL)."""
    clock = time.perf_counter_ns
    end = clock() + ns
    while clock() < end:
        pass


class Bench:
    """``threads`` long-lived threads serving requests in lock step with ``run()``;
    ``new_wrapper``: a connection wrapper per request (see :func:`one_request`)."""

    def __init__(self, threads: int, view_us: float = 0, new_wrapper: bool = False) -> None:
        from django.core import signals
        from django.db import connections

        self.threads = threads
        self.view_ns = int(view_us * 1000)
        self.new_wrapper = new_wrapper
        self._connections = connections
        self._signals = signals
        self._start = threading.Barrier(threads + 1)
        self._end = threading.Barrier(threads + 1)
        self._requests = 0
        self._stop = False
        self._latencies: list[list[int]] = [[] for _ in range(threads)]
        self._errors: list[list[str]] = [[] for _ in range(threads)]
        self._workers = [
            threading.Thread(target=self._serve, args=(i,), name=f"bench-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def _serve(self, index: int) -> None:
        rng = random.Random(index)
        latencies = self._latencies[index]
        errors = self._errors[index]
        connections, signals = self._connections, self._signals
        clock = time.perf_counter_ns
        view_ns, new_wrapper = self.view_ns, self.new_wrapper
        while True:
            self._start.wait()
            if self._stop:
                connections.close_all()
                self._end.wait()
                return
            for _ in range(self._requests):
                key = rng.randint(1, BENCH_ROWS)
                t0 = clock()
                try:
                    one_request(connections, signals, key, view_ns=view_ns, new_wrapper=new_wrapper)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.01)
                latencies.append(clock() - t0)
            self._end.wait()

    def run(self, requests: int) -> dict[str, Any]:
        for lst in (*self._latencies, *self._errors):
            lst.clear()
        self._requests = requests
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self._start.wait()
        self._end.wait()
        wall = time.perf_counter() - t0
        cpu1 = time.process_time()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        latencies = [ns for per_thread in self._latencies for ns in per_thread]
        errors = [e for per_thread in self._errors for e in per_thread]
        return {
            "wall_s": wall,
            # the process's CPU time, every thread, user and system
            "cpu_s": cpu1 - cpu0,
            "voluntary_switches": ru1.ru_nvcsw - ru0.ru_nvcsw,
            "involuntary_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
            "requests": len(latencies),
            "latencies_us": [round(ns / 1000, 1) for ns in latencies],
            "errors": len(errors),
            "error_samples": sorted(set(errors))[:5],
            # where the threads were allowed to run (--placement)
            "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        }

    def stop(self) -> None:
        self._stop = True
        self._start.wait()
        self._end.wait()


def pool_stats(config: str) -> dict[str, Any] | None:
    """The pool's own counters, where the pool keeps any."""
    if config in MULTIPOOL_CONFIGS:
        from multipool.pools import manager

        stats = manager.stats("default").get("default")
        return stats.as_dict() if stats else None
    if config in NATIVE_POOL_CONFIGS:
        from django.db import connections

        pool = connections["default"].pool
        return dict(pool.get_stats()) if pool is not None else None
    return None


def close_pools(config: str) -> None:
    from django.db import connections

    if config in MULTIPOOL_CONFIGS:
        from multipool.pools import manager

        manager.dispose()
    elif config in NATIVE_POOL_CONFIGS:
        connections["default"].close_pool()
    elif config == "dj_db_conn_pool":
        from dj_db_conn_pool.core import pool_container

        pool_container.dispose()


def main() -> int:
    # The protocol owns the real stdout; anything printed goes to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def answer(payload: dict[str, Any]) -> None:
        out.write(json.dumps(payload) + "\n")
        out.flush()

    setup = json.loads(sys.stdin.readline())
    config = setup["config"]
    counter = ConnectCounter()
    counter.install(setup["vendor"])

    environ = setup.get("environ")
    entry = setup["entry"] if environ is None else entry_from_environ(environ)
    configure_django({"default": entry})
    bench = Bench(int(setup["threads"]), float(setup.get("view_us", 0)))
    import multipool

    # which multipool this process runs (the baseline's, for multipool_baseline)
    answer({"ready": True, "pid": os.getpid(), "multipool": os.path.dirname(multipool.__file__)})

    for line in sys.stdin:
        command = json.loads(line)
        try:
            if command["cmd"] == "run":
                before = counter.count
                result = bench.run(int(command["requests"]))
                result["client_connects"] = counter.count - before
                result["client_connects_total"] = counter.count
                result["pool"] = pool_stats(config)
                answer(result)
            elif command["cmd"] == "quit":
                bench.stop()
                close_pools(config)
                answer({"bye": True, "client_connects_total": counter.count})
                return 0
            else:
                answer({"error": f"unknown command {command['cmd']!r}"})
        except Exception:
            answer({"error": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
