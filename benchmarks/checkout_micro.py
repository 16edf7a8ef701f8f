"""Micro-benchmark: what one checkout + checkin costs, in microseconds.

    .venv/bin/python -m benchmarks.checkout_micro

One thread, a warm pool of one connection, nothing else running. Cases, for
each engine (TLS off: user ``plain``, so that a ping costs a plain round trip):

* ``sqlalchemy QueuePool`` -- ``pool.connect(); lease.close()`` on a bare
  ``sqlalchemy.pool.QueuePool`` over the same driver: the floor multipool
  builds on (``reset_on_return=None``, and ``"rollback"`` as SQLAlchemy's
  default);
* ``AliasPool`` -- ``pool.checkout(connect)`` + ``pool.checkin(lease)``, and
  ``take_back`` + ``keep`` (a thread taking
  back the connection it kept, the backend's path between two requests of
  one thread), with the pool's health policy:
  ``no ping`` (defaults: the socket is polled, no round trip), ``ping_idle=0``
  (every checkout counts as idle too long: one ``SELECT 1`` / ``ping()``) and
  ``pre_ping``;
* ``Django cycle`` -- ``connections[alias].ensure_connection();
  connections[alias].close()``: what Django does per request with
  ``CONN_MAX_AGE=0``, through multipool's backend (same three variants), and
  for context Django's native pool (PostgreSQL), django-db-connection-pool
  (its defaults: ``pre_ping=True``) and stock Django opening a new connection
  each time;
* ``request boundary`` -- ``ensure_connection()`` (a request's first
  query) then ``close_if_unusable_or_obsolete()`` (what ``request_finished``
  calls): multipool takes its parked connection back and parks it again;
  persistent connections only check; the other pools connect and close;
* ``request, 1 thread`` -- a whole request as :mod:`benchmarks.request_cycle`
  drives it (``request_started``, ``SELECT 1`` through ``connections[alias]``,
  ``request_finished``) for every configuration, stock persistent connections
  included: the client-side cost of a request. With a trivial query the
  request-cycle benchmark is bound by this Python time (the GIL), so these
  numbers predict its throughput ratios.

Each case runs in a thread of its own, so that Django's per-thread
connections (and ``close_old_connections``, which visits every connection of
the thread) see only that case's alias. Every case runs ``--repeat`` times
``--number`` iterations, the cases interleaved (rotated order each repeat);
the table gives the median and the best repeat per iteration. Results:
``benchmarks/results/checkout_micro.json``.
"""

from __future__ import annotations

import argparse
import gc
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ENGINES,
    RESULTS_DIR,
    TLS_VARIANTS,
    available_configs,
    config_entry,
    configure_django,
    machine_info,
    median,
    multipool_entry,
    open_servers,
    rounded,
    server_info,
    write_report,
)

#: multipool variants: alias suffix -> (label, environment keys)
MULTIPOOL_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mp": ("no ping", {}),
    "mp_idle0": ("ping_idle=0", {"POOL_PING_IDLE": 0}),
    "mp_preping": ("pre_ping", {"POOL_PRE_PING": "true"}),
}


class Runner:
    """A thread of its own for one case: Django's connections are per thread."""

    def __init__(self, name: str) -> None:
        self._calls: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._calls.get()
            if item is None:
                return
            fn, box, done = item
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            done.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        box: list[tuple[bool, Any]] = []
        done = threading.Event()
        self._calls.put((fn, box, done))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._calls.put(None)
        self._thread.join(timeout=30)


class Case:
    def __init__(
        self,
        engine: str,
        group: str,
        name: str,
        op: Callable[[], None],
        *,
        slow: bool = False,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.group = group
        self.name = name
        self.op = op
        self.slow = slow
        self.cleanup = cleanup
        self.samples: list[float] = []
        self.runner = Runner(f"{engine}:{group}:{name}")
        self.runner.call(op)  # warm: opens the pool / connection in its thread

    def timed(self, n: int) -> float:
        """µs per iteration over ``n`` iterations, in the case's thread."""
        op = self.op

        def loop() -> float:
            t0 = time.perf_counter_ns()
            for _ in range(n):
                op()
            return (time.perf_counter_ns() - t0) / n / 1000

        return float(self.runner.call(loop))

    def close(self) -> None:
        if self.cleanup is not None:
            self.runner.call(self.cleanup)
        self.runner.stop()


def build_databases(servers: Mapping[str, Any], tls_variant: str) -> dict[str, dict[str, Any]]:
    """One DATABASES alias per case, named ``<engine>_<variant>``."""
    user, tls = TLS_VARIANTS[tls_variant]
    databases: dict[str, dict[str, Any]] = {}
    for engine, server in servers.items():
        database = server.database
        for suffix, (_, env) in MULTIPOOL_VARIANTS.items():
            # one alias for Django's cycle, one for the AliasPool cases: cases
            # sharing a pool of one would take each other's (parked) connection
            aliases = [f"{engine}_{suffix}", f"{engine}_{suffix}_direct"]
            if suffix == "mp":
                aliases += [f"{engine}_mp_request", f"{engine}_mp_boundary"]
            for alias in aliases:
                databases[alias] = multipool_entry(
                    server, user=user, tls=tls, database=database, POOL_SIZE=1, **env
                )
        others = ["dj_db_conn_pool", "conn_per_request", "persistent"]
        if "django_pool" in available_configs(engine):
            others.insert(0, "django_pool")
        for config in others:
            databases[f"{engine}_{config}"] = config_entry(
                config, server, user=user, tls=tls, database=database, threads=1
            )
    return databases


def build_cases(servers: Mapping[str, Any]) -> list[Case]:
    from django.core import signals
    from django.db import connections
    from sqlalchemy.pool import QueuePool

    from benchmarks.cycle_worker import one_request
    from multipool.pools import manager

    cases: list[Case] = []
    for engine in servers:
        # bare SQLAlchemy pools over the driver, connections opened the way the
        # multipool backend opens them (same parameters)
        wrapper = connections[f"{engine}_mp"]
        params = wrapper.get_connection_params()

        def creator(wrapper: Any = wrapper, params: dict[str, Any] = params) -> Any:
            return wrapper.connect_physical(params, wrapper.multipool_spec())

        for reset in (None, "rollback"):
            pool = QueuePool(creator, pool_size=1, max_overflow=0, reset_on_return=reset)

            def bare(pool: QueuePool = pool) -> None:
                pool.connect().close()

            cases.append(Case(
                engine, "sqlalchemy QueuePool", f"reset_on_return={reset}", bare,
                cleanup=pool.dispose,
            ))

        for suffix, (label, _) in MULTIPOOL_VARIANTS.items():
            alias = f"{engine}_{suffix}_direct"
            Runner(alias).call(lambda alias=alias: _open_and_close(alias))  # makes the pool
            alias_pool = manager.get(alias)
            assert alias_pool is not None, alias
            mp_wrapper = connections[alias]
            mp_params = mp_wrapper.get_connection_params()

            def connect(wrapper: Any = mp_wrapper, params: dict[str, Any] = mp_params) -> Any:
                return wrapper.connect_physical(params, wrapper.multipool_spec())

            def checkout_checkin(pool: Any = alias_pool, connect: Any = connect) -> None:
                lease = pool.checkout(connect)
                pool.checkin(lease)

            cases.append(Case(engine, "AliasPool checkout+checkin", label, checkout_checkin))

            # the same thread taking back the connection it kept (a request's end
            # keeps it, the next query of the thread takes it back)
            held: list[Any] = []

            def take_back_keep(
                pool: Any = alias_pool, connect: Any = connect, held: list[Any] = held
            ) -> None:
                if not (held and pool.take_back(held[0])):
                    held[:] = [pool.checkout(connect)]
                if not pool.keep(held[0]):
                    held.clear()

            cases.append(Case(engine, "AliasPool take_back+keep", label, take_back_keep))

        others = (
            [("Django native pool", "django_pool")]
            if "django_pool" in available_configs(engine)
            else []
        )
        others += [
            ("django-db-connection-pool", "dj_db_conn_pool"),
            ("stock Django, CONN_MAX_AGE=0", "conn_per_request"),
        ]
        variants = [(f"multipool, {label}", s) for s, (label, _) in MULTIPOOL_VARIANTS.items()]
        for label, suffix in [*variants, *others]:
            alias = f"{engine}_{suffix}"

            def cycle(alias: str = alias) -> None:
                conn = connections[alias]
                conn.ensure_connection()
                conn.close()

            cases.append(Case(
                engine, "Django cycle", label, cycle, slow=suffix == "conn_per_request",
                cleanup=lambda alias=alias: connections[alias].close(),
            ))

        boundary = [
            ("stock Django, CONN_MAX_AGE=None", "persistent"),
            ("multipool", "mp_boundary"),
            *others,
        ]
        for label, suffix in boundary:
            alias = f"{engine}_{suffix}"

            def boundary_op(alias: str = alias) -> None:
                conn = connections[alias]
                conn.ensure_connection()  # a request's first query
                conn.close_if_unusable_or_obsolete()  # request_finished

            cases.append(Case(
                engine, "request boundary", label, boundary_op,
                slow=suffix == "conn_per_request",
                cleanup=lambda alias=alias: connections[alias].close(),
            ))

        requests = [
            ("stock Django, CONN_MAX_AGE=None", "persistent"),
            ("multipool", "mp_request"),
            *others,
        ]
        for label, suffix in requests:
            alias = f"{engine}_{suffix}"

            def request(alias: str = alias) -> None:
                one_request(connections, signals, None, alias=alias, sql="SELECT 1")

            cases.append(Case(
                engine, "request, 1 thread", label, request, slow=suffix == "conn_per_request",
                cleanup=lambda alias=alias: connections[alias].close(),
            ))
    return cases


def _open_and_close(alias: str) -> None:
    from django.db import connections

    connections[alias].ensure_connection()
    connections[alias].close()


def measure(cases: Sequence[Case], *, number: int, repeat: int) -> None:
    """Interleaved timing: every repeat runs each case ``number`` times (slow ones
    ``number // 50`` times) in a rotated order; samples are µs per iteration."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeat):
            shift = r % len(cases)
            for case in [*cases[shift:], *cases[:shift]]:
                case.samples.append(case.timed(_iterations(case, number)))
    finally:
        if gc_was_enabled:
            gc.enable()


def _iterations(case: Case, number: int) -> int:
    return max(5, number // 50) if case.slow else number


def pool_counters(aliases: Sequence[str]) -> dict[str, Any]:
    from multipool.pools import manager

    out: dict[str, Any] = {}
    for alias in aliases:
        pool = manager.get(alias)
        if pool is not None:
            stats = pool.stats()
            out[alias] = {
                "checkouts": stats.checkouts,
                "pings": stats.pings,
                "connects": stats.connects,
            }
    return out


def run(
    servers: Mapping[str, Any],
    *,
    number: int = 2000,
    repeat: int = 7,
    tls_variant: str = "off",
) -> dict[str, Any]:
    """Configure Django with one alias per case, measure, return JSON-ready results.

    Configures Django settings: run it in a process of its own.
    """
    databases = build_databases(servers, tls_variant)
    configure_django({"default": {"ENGINE": "django.db.backends.dummy"}, **databases})
    from django.db import connections

    cases = build_cases(servers)
    try:
        measure(cases, number=number, repeat=repeat)
    finally:
        counters = pool_counters(list(databases))
        for case in cases:
            case.close()
        for alias in databases:
            if alias.endswith("django_pool"):
                connections[alias].close_pool()
        from dj_db_conn_pool.core import pool_container

        from multipool.pools import manager

        pool_container.dispose()
        manager.dispose()
    # reference of each row: the bare QueuePool for pools and Django cycles,
    # a persistent connection for requests and request boundaries
    reference: dict[tuple[str, str], float | None] = {}
    for c in cases:
        if c.group == "sqlalchemy QueuePool" and c.name == "reset_on_return=None":
            for group in (
                "sqlalchemy QueuePool",
                "AliasPool checkout+checkin",
                "AliasPool take_back+keep",
                "Django cycle",
            ):
                reference[(c.engine, group)] = median(c.samples)
        if c.group in ("request, 1 thread", "request boundary") and c.name.endswith(
            "CONN_MAX_AGE=None"
        ):
            reference[(c.engine, c.group)] = median(c.samples)
    rows = []
    for c in cases:
        med = median(c.samples)
        ref = reference.get((c.engine, c.group))
        rows.append({
            "engine": c.engine,
            "group": c.group,
            "case": c.name,
            "iterations": _iterations(c, number) * repeat,
            "median_us": rounded(med, 2),
            "best_us": rounded(min(c.samples), 2),
            "extra_us": rounded(None if med is None or ref is None else med - ref, 2),
        })
    return {
        "benchmark": "checkout_micro",
        "parameters": {"number": number, "repeat": repeat, "tls": tls_variant},
        "machine": machine_info(),
        "servers": {engine: server_info(s) for engine, s in servers.items()},
        "rows": rows,
        "pool_counters": counters,
    }


def markdown_table(results: Mapping[str, Any]) -> str:
    lines = [
        "| Server | What | Case | median µs | best µs | extra µs (median) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    flavors = {e: s["flavor"] for e, s in results["servers"].items()}
    for row in results["rows"]:
        lines.append(
            f"| {flavors[row['engine']]} | {row['group']} | {row['case']} | "
            f"{row['median_us']:.1f} | {row['best_us']:.1f} | "
            f"{_signed(row['extra_us'])} |"
        )
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.checkout_micro", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--number", type=int, default=2000, help="iterations per repeat")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved repeats")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--tls", default="off", choices=list(TLS_VARIANTS))
    parser.add_argument("--postgres-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--mysql-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="checkout_micro")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    with open_servers(engines, postgres_url=args.postgres_url, mysql_url=args.mysql_url) as servers:
        results = run(servers, number=args.number, repeat=args.repeat, tls_variant=args.tls)
    write_report(args.out, args.name, results, markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
