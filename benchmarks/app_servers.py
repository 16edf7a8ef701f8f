"""Application-server benchmark: multipool and the alternatives under gunicorn and uvicorn.

    .venv/bin/python -m benchmarks.app_servers --requests 200 --rounds 10

Each configuration of :data:`benchmarks.app_project.configs.APP_CONFIGS` runs as
a real application server (:mod:`multipool.testing.app_servers`): gunicorn
with ``gthread`` workers serving a sync view, and uvicorn serving an async view
(Django's async ORM, ``aget`` and ``acount``) and the same reads as a sync view.
An HTTP load client sends ``--requests`` requests from ``--concurrency``
threads to one configuration at a time, while a sampler counts the server
connections of that configuration (each has a database of its own,
``mpbench_<config>``).

Every configuration of an engine and application server runs in every round,
in the order of a Williams design (:func:`benchmarks.common.balanced_orders`),
so that noise from the rest of the machine spreads over all of them; ratios
(requests/s against ``CONN_MAX_AGE=0`` and against Django's native pool) are
taken within each round and reported as the median over rounds with a
bootstrap 95 % confidence interval that resamples the ``--processes`` blocks
as well as their rounds. The three pools have the same connection
limit per worker process: ``--pool-size`` + ``--max-overflow``.

Results go to ``benchmarks/results/app_servers.json`` and ``.md`` (``--out``,
``--name``); see benchmarks/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.app_project.configs import (
    APP_CONFIGS,
    CONFIG_VARIABLE,
    DEFAULT_CONFIGS,
    POOLED,
    engine_configs,
)
from benchmarks.app_report import POOL_COUNTERS, check_targets, markdown_report, summarize_group
from benchmarks.common import (
    ENGINES,
    REPO_ROOT,
    RESULTS_DIR,
    TLS_VARIANTS,
    Placement,
    balanced_orders,
    connections_counter,
    create_bench_database,
    database_name,
    drop_bench_database,
    machine_info,
    open_servers,
    package_versions,
    pin_process_tree,
    pin_server,
    round_blocks,
    server_info,
    settled_sessions,
    write_report,
)
from multipool.testing.app_servers import (
    AppServer,
    ConnectionSampler,
    RunningAppServer,
    connection_budget,
    gunicorn_gthread,
    run_load,
    start_app_server,
    uvicorn,
)

APP_SERVERS = ("gthread", "uvicorn")
#: application server -> the views it serves, each a URL path of the benchmark project
VIEWS: dict[str, tuple[str, ...]] = {"gthread": ("sync",), "uvicorn": ("async", "sync")}
PATHS = {"sync": "/sync/", "async": "/async/"}
SETTINGS = "benchmarks.app_project.settings"
#: the connection limit a server this run started gets (see raise_connection_limit)
MAX_CONNECTIONS = 500
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Timeout)\b.*:")
APPLICATIONS = {
    "gthread": "benchmarks.app_project.wsgi:application",
    "uvicorn": "benchmarks.app_project.asgi:application",
}


@dataclass(frozen=True)
class Options:
    """How big the run is; recorded in the results as ``parameters``."""

    workers: int = 1
    threads: int = 8  # gthread threads per worker
    concurrency: int = 16  # concurrent HTTP clients
    requests: int = 200  # per configuration, view and round
    rounds: int = 10  # a full cycle of orders for 5 configurations
    warmup: int = 50  # requests per configuration and view before the first round
    pool_size: int = 4
    max_overflow: int = 4
    processes: int = 1  # app server processes per configuration, one per block of rounds
    tls: str = "verify-full"
    #: "split": application servers on the lower half of the CPUs, the database
    #: and the load client on the upper half; "none": where the scheduler puts them
    placement: str = "split"

    def recipe(self, app_server: str) -> AppServer:
        app = APPLICATIONS[app_server]
        if app_server == "gthread":
            return gunicorn_gthread(app, workers=self.workers, threads=self.threads)
        return uvicorn(app, workers=self.workers)

    def budget(self, config: str) -> int | None:
        """The most server connections ``config`` may open: a pool's limit per
        worker times the workers; ``None`` for stock Django, which has no limit."""
        if config not in POOLED:
            return None
        return connection_budget(
            workers=self.workers, pool_size=self.pool_size, max_overflow=self.max_overflow
        )


def app_env(server: Any, config: str, opts: Options) -> dict[str, str]:
    """The environment of ``config``'s application server (it holds a password:
    nothing prints it)."""
    user, tls = TLS_VARIANTS[opts.tls]
    return {
        CONFIG_VARIABLE: config,
        "DATABASE_URL": server.url(user, tls=tls, database=database_name(config)),
        "DATABASE_POOL_SIZE": str(opts.pool_size),
        "DATABASE_MAX_OVERFLOW": str(opts.max_overflow),
    }


def pool_counters(app: RunningAppServer, config: str, opts: Options) -> dict[str, int] | None:
    """The pool's counters (checkouts, waits, ...) as one worker reports them; ``None``
    for stock Django, django-db-connection-pool and with several workers (each
    request reaches one of them)."""
    if opts.workers != 1 or config not in POOL_COUNTERS:
        return None
    report = run_load(app.base_url, [("GET", "/pool/")], requests=1, concurrency=1)
    (result,) = report.results
    if result.status != 200:
        raise RuntimeError(f"{config}: GET /pool/ answered {result.status}: {result.error}")
    stats = json.loads(result.body)["pool"] or {}
    return {name: int(stats.get(key, 0)) for name, key in POOL_COUNTERS[config].items()}


def exception_lines(log: str) -> list[str]:
    """The last line of each traceback in ``log``: ``module.SomeError: message``."""
    return [line for line in log.splitlines() if EXCEPTION_LINE.match(line)]


def measure(
    server: Any, app: RunningAppServer, config: str, view: str, opts: Options
) -> dict[str, Any]:
    """One load run against one configuration: throughput, latencies, errors, the
    server connections it had open at most and opened, the pool's counters."""
    user = TLS_VARIANTS[opts.tls][0]
    pool_before = pool_counters(app, config, opts)
    log_before = len(app.log_text())
    opened_before = connections_counter(server)
    with ConnectionSampler(
        server, user=user, database=database_name(config), interval=0.02
    ) as sampler:
        report = run_load(
            app.base_url, [("GET", PATHS[view])],
            requests=opts.requests, concurrency=opts.concurrency,
        )
    opened_after = connections_counter(server)
    pool_after = pool_counters(app, config, opts)
    errors = report.errors
    return {
        "requests": len(report.results),
        "rps": report.requests_per_second,
        "latencies_ms": [r.latency * 1000 for r in report.results if r.status is not None],
        "errors": len(errors),
        "error_samples": sorted(
            {e.error or f"HTTP {e.status}" for e in errors}
            | (set(exception_lines(app.log_text()[log_before:])) if errors else set())
        )[:5],
        "server_peak": sampler.peak,
        "server_samples": len(sampler.samples),
        "server_opened": (
            None if opened_before is None or opened_after is None
            else opened_after - opened_before
        ),
        "pool": (
            None if pool_before is None or pool_after is None
            else {k: pool_after[k] - pool_before[k] for k in pool_after}
        ),
        "process": app.pid,
    }


def warm_up(apps: Mapping[str, RunningAppServer], views: Sequence[str], opts: Options) -> None:
    """Fill the pools and load the code: ``--warmup`` requests per configuration and
    view, not measured; a failed one stops the run with the server's log."""
    for config, app in apps.items():
        for view in views:
            report = run_load(
                app.base_url, [("GET", PATHS[view])],
                requests=opts.warmup, concurrency=opts.concurrency,
            )
            if report.errors:
                raise load_failure(
                    app, f"{config} ({app.recipe.label}): warm-up of {PATHS[view]} failed", report
                )


def load_failure(app: RunningAppServer, what: str, report: Any) -> RuntimeError:
    """The error that stops a run whose load ``report`` has failed requests: ``what``,
    the first failure and the end of the application server's log."""
    sample = report.errors[0]
    return RuntimeError(
        f"{what}: {sample.error or f'HTTP {sample.status}'}; the server's log ends:\n"
        + "\n".join(app.log_text().splitlines()[-30:])
    )


@contextlib.contextmanager
def running_apps(
    server: Any,
    app_server: str,
    configs: Sequence[str],
    opts: Options,
    placement: Placement | None = None,
) -> Iterator[dict[str, RunningAppServer]]:
    """An application server per configuration, started side by side (each waits
    until it answers), moved to the ``placement``'s client CPUs, and stopped side
    by side when the block ends."""
    managers = {
        config: start_app_server(
            opts.recipe(app_server), settings=SETTINGS, env=app_env(server, config, opts),
            cwd=REPO_ROOT, ready_path="/pool/",
        )
        for config in configs
    }
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(managers)) as pool:
        futures = {config: pool.submit(m.__enter__) for config, m in managers.items()}
        apps: dict[str, RunningAppServer] = {}
        for config, future in futures.items():
            with contextlib.suppress(Exception):  # raised by result() below
                apps[config] = future.result()
                stack.push(managers[config].__exit__)
        for future in futures.values():
            future.result()  # the first server that did not start, once all are in the stack
        if placement is not None:
            for app in apps.values():
                pin_process_tree(app.pid, placement.client)
        try:
            yield apps
        finally:
            # stop() is idempotent: the managers' exits then only clean up
            list(pool.map(RunningAppServer.stop, apps.values()))


def run_block(
    server: Any,
    app_server: str,
    configs: Sequence[str],
    rounds: Sequence[int],
    orders: Sequence[Sequence[str]],
    opts: Options,
    log: Any = None,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Start an application server per configuration, warm them up, run ``rounds``;
    what each run measured, what the server opened and what stayed open."""
    views = VIEWS[app_server]
    user = TLS_VARIANTS[opts.tls][0]
    databases = [database_name(c) for c in configs]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {v: {c: [] for c in configs} for v in views}
    per_round: dict[str, list[dict[str, float]]] = {v: [] for v in views}
    with running_apps(server, app_server, configs, opts, placement) as apps:
        warm_up(apps, views, opts)
        before = settled_sessions(server, databases)
        for r in rounds:
            this_round: dict[str, dict[str, float]] = {v: {} for v in views}
            for config in orders[r]:
                for view in views if r % 2 == 0 else views[::-1]:
                    result = measure(server, apps[config], config, view, opts)
                    runs[view][config].append(result)
                    this_round[view][config] = result["rps"]
            for view in views:
                per_round[view].append(this_round[view])
                if log is not None:
                    rates = ", ".join(f"{c} {this_round[view][c]:.0f}/s" for c in configs)
                    print(f"[{server.engine}/{app_server}/{view}] round {r + 1}: {rates}",
                          file=log, flush=True)
        after = settled_sessions(server, databases)
        open_after = {c: server.connection_count(user=user, database=database_name(c))
                      for c in configs}
    for db in databases:  # the application servers are gone: so are their connections
        server.wait_for_connection_count(0, user=user, database=db, timeout=10)
    opened = None if before is None or after is None else {
        c: after.get(database_name(c), 0) - before.get(database_name(c), 0) for c in configs
    }
    return {"runs": runs, "per_round": per_round, "opened": opened, "open_after": open_after}


def run_group(
    server: Any,
    app_server: str,
    configs: Sequence[str],
    opts: Options,
    log: Any = None,
    placement: Placement | None = None,
) -> dict[str, Any]:
    """Every configuration of one engine under one application server, interleaved,
    in ``opts.processes`` blocks of rounds (fresh application servers for each)."""
    orders = balanced_orders(configs, opts.rounds)
    blocks = [
        run_block(server, app_server, configs, block, orders, opts, log, placement)
        for block in round_blocks(opts.rounds, opts.processes)
    ]
    group = summarize_group(blocks, configs=configs, views=VIEWS[app_server], opts=opts)
    return {
        "engine": server.engine,
        "flavor": server.flavor,
        "server_version": server.version,
        "tls": opts.tls,
        "user": TLS_VARIANTS[opts.tls][0],
        "app_server": app_server,
        "recipe": opts.recipe(app_server).label,
        "orders": orders,
        **group,
    }


@contextlib.contextmanager
def placed(servers: Mapping[str, Any], opts: Options) -> Iterator[Placement | None]:
    """With ``placement="split"``: the database servers and this thread (the load
    client, and the threads it starts) on the upper half of the CPUs, the
    application servers (moved as they start) on the lower half, as in production
    where the application and the database have hosts of their own. Everything
    goes back to all CPUs afterwards."""
    placement = Placement.split() if opts.placement == "split" else None
    if placement is None:
        yield None
        return
    every_cpu = os.sched_getaffinity(0)
    placement.pin_servers(servers)
    os.sched_setaffinity(0, placement.server)
    try:
        yield placement
    finally:
        os.sched_setaffinity(0, every_cpu)
        for server in servers.values():
            pin_server(server, every_cpu)


def run(
    servers: Mapping[str, Any],
    opts: Options,
    *,
    app_servers: Sequence[str] = APP_SERVERS,
    configs: Sequence[str] | None = None,
    log: Any = sys.stderr,
) -> dict[str, Any]:
    """The benchmark's core: every engine in ``servers`` under every application
    server of ``app_servers``; the results, JSON-ready."""
    started = time.monotonic()
    meta = machine_info()
    meta["packages"].update(package_versions(("gunicorn", "uvicorn", "asgiref")))
    groups: list[dict[str, Any]] = []
    for engine in ENGINES:
        server = servers.get(engine)
        if server is None:
            continue
        chosen = list(engine_configs(engine, configs))
        if not chosen:  # e.g. only django_pool, on MariaDB
            continue
        for config in chosen:
            create_bench_database(server, database_name(config))
        try:
            with placed(servers, opts) as placement:
                for app_server in app_servers:
                    groups.append(run_group(server, app_server, chosen, opts, log, placement))
        finally:
            for config in chosen:
                drop_bench_database(server, database_name(config))
    meta["loadavg_end"] = machine_info()["loadavg"]
    return {
        "benchmark": "app_servers",
        "parameters": {
            **asdict(opts),
            "budget_per_pool": opts.budget("multipool"),
            "views": {s: {v: PATHS[v] for v in VIEWS[s]} for s in app_servers},
            "query": "per request: a primary-key lookup and a count (1,000 rows)",
        },
        "machine": meta,
        "servers": {
            engine: {**server_info(s), "max_connections": max_connections(s)}
            for engine, s in servers.items()
        },
        "duration_s": round(time.monotonic() - started, 1),
        "groups": groups,
        "targets": check_targets(groups),
    }


def max_connections(server: Any) -> int:
    """The server's connection limit (``max_connections``)."""
    if server.engine == "postgresql":
        return int(server.query("SHOW max_connections")[0][0])
    return int(server.query("SELECT @@GLOBAL.max_connections")[0][0])


def raise_connection_limit(server: Any, limit: int = MAX_CONNECTIONS, log: Any = None) -> int:
    """Let ``server`` accept ``limit`` connections, as a server this run started
    may be told to (MariaDB at once; PostgreSQL with a restart): under uvicorn,
    ``CONN_MAX_AGE=60`` leaves a connection behind for most requests, until
    the garbage collector closes it, and those must not make another
    configuration's connections fail. An attached server is left alone (a
    warning names the setting). The limit now in force."""
    current = max_connections(server)
    if current >= limit:
        return current
    if server.backend == "external":
        if log is not None:
            print(f"warning: {server.engine} accepts {current} connections; CONN_MAX_AGE=60 "
                  f"under uvicorn may need more: set max_connections >= {limit} on that "
                  "server, or leave out conn_max_age_60 (--configs)", file=log, flush=True)
        return current
    if server.engine == "postgresql":
        server.query(f"ALTER SYSTEM SET max_connections = {int(limit)}")
        server.restart()
    else:
        server.query(f"SET GLOBAL max_connections = {int(limit)}")
    return max_connections(server)


def _selection(parser: argparse.ArgumentParser, value: str, known: Sequence[str],
               what: str) -> list[str]:
    chosen = [v for v in value.split(",") if v]
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        parser.error(f"--{what}: choose among {', '.join(known)} (got {value!r})")
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.app_servers", description=__doc__.split("\n\n")[0]
    )
    defaults = Options()
    parser.add_argument("--engines", default=",".join(ENGINES), help="postgresql,mysql")
    parser.add_argument("--app-servers", default=",".join(APP_SERVERS), help="gthread,uvicorn")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="subset of " + ",".join(APP_CONFIGS))
    parser.add_argument("--tls", choices=tuple(TLS_VARIANTS), default=defaults.tls)
    parser.add_argument("--placement", choices=("split", "none"), default=defaults.placement,
                        help="split: application servers and the database on CPUs apart")
    for name, help_text in (
        ("workers", "application server worker processes"),
        ("threads", "gthread threads per worker"),
        ("concurrency", "concurrent HTTP clients"),
        ("requests", "requests per configuration, view and round"),
        ("rounds", "interleaved rounds"),
        ("warmup", "unmeasured requests per configuration and view first"),
        ("pool-size", "POOL_SIZE of every pool (Django's native pool: min_size)"),
        ("max-overflow", "MAX_OVERFLOW of every pool (Django's: max_size - min_size)"),
        ("processes", "application servers per configuration, one per block of rounds"),
    ):
        default = getattr(defaults, name.replace("-", "_"))
        parser.add_argument(f"--{name}", type=int, default=default,
                            help=f"{help_text} (default {default})")
    parser.add_argument("--postgres-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--mysql-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--name", default="app_servers", help="file name stem of the results")
    args = parser.parse_args(argv)
    engines = _selection(parser, args.engines, ENGINES, "engines")
    app_servers = _selection(parser, args.app_servers, APP_SERVERS, "app-servers")
    configs = _selection(parser, args.configs, tuple(APP_CONFIGS), "configs")
    opts = Options(
        workers=args.workers, threads=args.threads, concurrency=args.concurrency,
        requests=args.requests, rounds=args.rounds, warmup=args.warmup,
        pool_size=args.pool_size, max_overflow=args.max_overflow,
        processes=args.processes, tls=args.tls, placement=args.placement,
    )
    with open_servers(engines, postgres_url=args.postgres_url, mysql_url=args.mysql_url) as servers:
        for server in servers.values():
            raise_connection_limit(server, log=sys.stderr)
        results = run(servers, opts, app_servers=app_servers, configs=configs)
    write_report(args.out, args.name, results, markdown_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
