"""Smoke test of the application-server benchmark (``python -m benchmarks.app_servers``):
every configuration served by real gunicorn/uvicorn processes against the test
servers, a few requests each, and the results' shape. No timing assertions.

Two groups keep it short: PostgreSQL under uvicorn (async and sync views, the
goal's case, with Django's native pool) and MariaDB under gunicorn ``gthread``
(two blocks of rounds: fresh application servers for each).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.conftest import require_modules

pytestmark = pytest.mark.timeout(300)

REQUESTS = 8
ROUNDS = 2

#: what the benchmark runs (declared in the ``test`` extra)
NEEDED = {
    "gunicorn": "gunicorn",
    "uvicorn": "uvicorn",
    "dj_db_conn_pool": "django-db-connection-pool[postgresql,mysql]",
    "psycopg_pool": "psycopg-pool",
}


def _check_summary(where: str, config: str, s: dict[str, Any], opts: Any) -> None:
    """One configuration's results for one view."""
    from benchmarks.app_project.configs import POOLED

    assert s["errors"] == 0, (where, s["error_samples"])
    assert s["requests"] == REQUESTS * ROUNDS, where
    assert s["rps_median"] > 0 and len(s["rps_rounds"]) == ROUNDS, where
    assert 0 < s["p50_ms"] <= s["p99_ms"], where
    if config in POOLED:
        # a pool keeps its connections: seen by the sampler, never above the limit
        assert s["budget"] == opts.pool_size + opts.max_overflow, where
        assert 1 <= s["peak_connections"] <= s["budget"], where
        assert s["within_budget"] is True, where
    else:
        assert s["budget"] is None and s["within_budget"] is None, where
    if config in ("multipool", "django_pool"):
        # the pool's own counters: one checkout per request, no timeout
        assert s["pool"]["checkouts"] == s["requests"], (where, s["pool"])
        assert s["pool"]["timeouts"] == 0, (where, s["pool"])
    else:
        assert s["pool"] is None, where


def _check_report(
    results: dict[str, Any], app_server: str, views: tuple[str, ...], configs: list[str]
) -> None:
    """The targets and the tables."""
    from benchmarks import app_report

    checks = results["targets"]
    peak_checks = [c for c in checks if "peak server connections" in c["target"]]
    assert len(peak_checks) == len(views) and all(c["met"] is True for c in peak_checks)
    goals = [c for c in checks if c not in peak_checks]
    # under uvicorn: multipool against Django's pool (PostgreSQL) and CONN_MAX_AGE=0
    assert len(goals) == (2 * len(views) if app_server == "uvicorn" else 0)
    assert all(c["value"] > 0 and c["met"] in (True, False) for c in goals)
    table = app_report.results_table(results)
    assert table.count("\n") == 1 + len(views) * len(configs)
    assert "**multipool**" in table
    report = app_report.markdown_report(results)
    assert "Target" in report and "open after the last round" in report


@pytest.mark.parametrize(
    ("fixture", "app_server", "processes"),
    [("postgres_server", "uvicorn", 1), ("mysql_server", "gthread", 2)],
)
def test_app_servers_benchmark_smoke(
    request: pytest.FixtureRequest, fixture: str, app_server: str, processes: int
) -> None:
    require_modules(NEEDED, "the app-server benchmark")
    from benchmarks import app_servers
    from benchmarks.app_project.configs import engine_configs
    from benchmarks.common import database_name

    server = request.getfixturevalue(fixture)
    engine = server.engine
    opts = app_servers.Options(
        requests=REQUESTS, rounds=ROUNDS, warmup=4, concurrency=4, threads=4,
        pool_size=2, max_overflow=1, processes=processes,
    )
    every_cpu = os.sched_getaffinity(0)
    results = app_servers.run({engine: server}, opts, app_servers=(app_server,), log=None)
    json.loads(json.dumps(results))  # JSON-ready
    assert results["parameters"]["placement"] == "split"
    # the session's servers and this thread are back on every CPU afterwards
    assert os.sched_getaffinity(0) == every_cpu
    server_pid = getattr(server.controller, "pid", None)
    if server_pid is not None:
        assert os.sched_getaffinity(server_pid) == every_cpu

    (group,) = results["groups"]
    assert (group["engine"], group["app_server"], group["tls"]) == (
        engine, app_server, "verify-full"
    )
    assert group["processes_per_config"] == processes
    configs = list(engine_configs(engine))
    assert ("django_pool" in configs) == (engine == "postgresql")
    views = app_servers.VIEWS[app_server]
    assert list(group["views"]) == list(views)
    for view, res in group["views"].items():
        assert list(res["configs"]) == configs
        assert len(res["rounds"]) == ROUNDS
        for config, summary in res["configs"].items():
            _check_summary(f"{engine}/{app_server}/{view}/{config}", config, summary, opts)
            if config != "conn_per_request":
                ratio = res["ratios"][f"{config}_vs_conn_per_request"]
                assert ratio["median"] > 0 and len(ratio["rounds"]) == ROUNDS, config
                low, high = ratio["ci95"]
                assert low <= ratio["median"] <= high, config
        assert ("multipool_vs_django_pool" in res["ratios"]) == (engine == "postgresql")
    conns = group["connections"]
    # a new connection for every request, as the server counted it
    assert conns["conn_per_request"]["opened"] >= REQUESTS * ROUNDS * len(views)
    assert conns["conn_per_request"]["open_after"] == 0
    assert 1 <= conns["multipool"]["open_after"] <= opts.pool_size + opts.max_overflow
    # application servers: a fresh one per configuration for each block of rounds
    for view_runs in group["runs"].values():
        for config, runs in view_runs.items():
            pids = {run["process"] for run in runs}
            assert len(pids) == processes, config
            for pid in pids:  # stopped and reaped
                assert not os.path.exists(f"/proc/{pid}"), (config, pid)

    _check_report(results, app_server, views, configs)

    # the application servers and their connections are gone
    for config in configs:
        assert server.connection_count(database=database_name(config)) == 0


def test_the_a_a_control_runs_when_named(postgres_server: Any) -> None:
    """``django_pool_control``: Django's native pool again, in processes and a database
    of its own, taken against Django's pool like any configuration; a run leaves it out
    unless ``--configs`` names it."""
    require_modules(NEEDED, "the app-server benchmark")
    from benchmarks import app_report, app_servers
    from benchmarks.app_project.configs import engine_configs

    assert "django_pool_control" not in engine_configs("postgresql")
    opts = app_servers.Options(
        requests=REQUESTS, rounds=ROUNDS, warmup=4, concurrency=4, pool_size=2, max_overflow=1,
    )
    results = app_servers.run(
        {"postgresql": postgres_server}, opts, app_servers=("uvicorn",),
        configs=("django_pool", "django_pool_control"), log=None,
    )
    (group,) = results["groups"]
    for view, res in group["views"].items():
        assert list(res["configs"]) == ["django_pool", "django_pool_control"], view
        control = res["configs"]["django_pool_control"]
        assert control["errors"] == 0 and control["within_budget"] is True, view
        assert control["pool"]["checkouts"] == control["requests"], view  # its own pool
        assert res["ratios"]["django_pool_control_vs_django_pool"]["median"] > 0, view
    assert "A/A control" in app_report.results_table(results)


def test_exception_lines_are_the_last_lines_of_tracebacks() -> None:
    from benchmarks.app_servers import exception_lines

    log = (
        "[INFO] Booting worker with pid: 12\n"
        "Internal Server Error: /async/\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in view\n'
        "psycopg.OperationalError: connection failed: FATAL:  sorry, too many clients already\n"
        "sqlalchemy.exc.TimeoutError: QueuePool limit of size 4 overflow 4 reached\n"
        "multipool.errors.PoolTimeout: default: no connection within 10s\n"
    )
    assert exception_lines(log) == [
        "psycopg.OperationalError: connection failed: FATAL:  sorry, too many clients already",
        "sqlalchemy.exc.TimeoutError: QueuePool limit of size 4 overflow 4 reached",
        "multipool.errors.PoolTimeout: default: no connection within 10s",
    ]


def _run(rps: float, peak: int) -> dict[str, Any]:
    return {"requests": 10, "rps": rps, "latencies_ms": [1.0, 2.0], "errors": 0,
            "error_samples": [], "server_peak": peak, "server_opened": 0, "pool": None}


def test_targets_come_from_ratios_within_rounds() -> None:
    """Per-round ratios against CONN_MAX_AGE=0 and Django's pool decide the goals;
    one sample above the budget fails multipool's connection target."""
    from benchmarks import app_report
    from benchmarks.app_servers import Options

    configs = ("conn_per_request", "django_pool", "multipool")
    # the machine slows down in round 2: every configuration alike
    rates = {"conn_per_request": (100, 50), "django_pool": (280, 140), "multipool": (300, 150)}
    peaks = {"conn_per_request": 16, "django_pool": 8, "multipool": 9}
    block = {
        "runs": {"async": {c: [_run(r, peaks[c]) for r in rates[c]] for c in configs}},
        "per_round": {"async": [{c: rates[c][i] for c in configs} for i in range(2)]},
        "opened": {c: 0 for c in configs},
        "open_after": {c: 8 for c in configs},
    }
    summary = app_report.summarize_group([block], configs=configs, views=("async",),
                                         opts=Options())
    group = {"engine": "postgresql", "tls": "verify-full", "app_server": "uvicorn", **summary}
    ratios = group["views"]["async"]["ratios"]
    assert ratios["multipool_vs_conn_per_request"]["rounds"] == [3.0, 3.0]
    assert ratios["multipool_vs_django_pool"]["median"] == round(300 / 280, 3)
    checks = {c["target"]: c for c in app_report.check_targets([group])}
    met = {target.split(": ", 1)[1]: c["met"] for target, c in checks.items()}
    assert met == {
        "multipool >= 1.0x Django native pool": True,
        "multipool >= 2.5x Django CONN_MAX_AGE=0": True,
        "multipool peak server connections <= workers x (pool + overflow)": False,
    }
    assert group["views"]["async"]["configs"]["conn_per_request"]["within_budget"] is None


def test_app_paired_benchmark_smoke(postgres_server: Any) -> None:
    """Django's native pool and multipool as two aliases of one uvicorn process, in
    alternating blocks; the results' shape (no timing assertions)."""
    require_modules(NEEDED, "the app-server benchmark")
    from benchmarks import app_paired, app_servers
    from benchmarks.common import database_name

    opts = app_paired.PairedOptions(
        processes=2, blocks=2, requests=REQUESTS, concurrency=4, warmup=4,
        server=app_servers.Options(pool_size=2, max_overflow=1),
    )  # fmt: skip
    results = app_paired.run(postgres_server, opts, log=None)
    json.loads(json.dumps(results))  # JSON-ready
    assert list(results["views"]) == ["async", "sync"]
    for view, s in results["views"].items():
        assert s["blocks"] == 4 and len(s["per_process"]) == 2, view
        assert all(s["rps_median"][c] > 0 for c in app_paired.CONFIGS), view
        low, high = s["ci95"]
        assert low <= s["multipool_vs_django_pool"] <= high, view
    assert len(results["blocks"]) == 2
    assert "| async |" in app_paired.markdown_report(results)
    for config in app_paired.CONFIGS:  # the databases are gone again
        assert not postgres_server.query(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database_name(config),)
        )
