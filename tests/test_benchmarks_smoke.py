"""Smoke test of the benchmarks: the harness runs every configuration against the
real test servers and reports sane fields. A few requests each; no timing assertions.

The full benchmark is ``python -m benchmarks.request_cycle`` (see benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import pytest

from multipool.testing.servers import in_ci
from tests.conftest import require_modules

pytestmark = pytest.mark.timeout(900)

THREADS = 2
REQUESTS = 5
ROUNDS = 2

#: the alternatives the benchmark compares with (declared in the ``test`` extra)
COMPARED = {
    "dj_db_conn_pool": "django-db-connection-pool[postgresql,mysql]",
    "psycopg_pool": "psycopg-pool",
}


@pytest.fixture(params=["postgresql", "mysql"])
def bench_server(request: pytest.FixtureRequest) -> Any:
    name = "postgres_server" if request.param == "postgresql" else "mysql_server"
    return request.getfixturevalue(name)


def _affinity_of_tree(pid: int) -> dict[int, set[int]]:
    """The CPU affinity of every thread of ``pid`` and its descendants."""
    from benchmarks.common import _process_tree

    found = {}
    for process in _process_tree(pid):
        for task in os.listdir(f"/proc/{process}/task"):
            with contextlib.suppress(OSError):
                found[int(task)] = os.sched_getaffinity(int(task))
    return found


def test_request_cycle_smoke(bench_server: Any) -> None:
    require_modules(COMPARED, "benchmark smoke test")
    from benchmarks import request_cycle
    from benchmarks.common import TLS_VARIANTS, Placement, available_configs, database_name

    engine = bench_server.engine
    placement = Placement.split()
    all_cpus = os.sched_getaffinity(0)
    try:
        results = request_cycle.run(
            {engine: bench_server},
            threads=THREADS,
            requests=REQUESTS,
            rounds=ROUNDS,
            warmup=2,
            processes=2,
            placement=placement,
            log=None,
        )
        server_pid = getattr(bench_server.controller, "pid", None)
        if placement is not None and server_pid is not None:
            # the server, backends started since included, stayed on its CPUs
            affinity = _affinity_of_tree(server_pid)
            assert len(affinity) > 1
            assert all(cpus == set(placement.server) for cpus in affinity.values())
    finally:
        from benchmarks.common import pin_server

        pin_server(bench_server, all_cpus)  # the other tests share this server
    json.loads(json.dumps(results))  # JSON-ready
    if placement is None:
        assert results["parameters"]["placement"] is None
    else:
        assert results["parameters"]["placement"]["client"] == sorted(placement.client)
        pinned = {engine: server_pid is not None}  # not a server attached by URL
        assert results["parameters"]["placement"]["servers_pinned"] == pinned

    assert results["parameters"]["threads"] == THREADS
    assert results["machine"]["cpus"]
    groups = results["groups"]
    assert [(g["engine"], g["tls"]) for g in groups] == [(engine, t) for t in TLS_VARIANTS]
    per_config = THREADS * REQUESTS * ROUNDS
    for group in groups:
        assert list(group["configs"]) == list(available_configs(engine))
        assert len(group["rounds"]) == ROUNDS
        for config, summary in group["configs"].items():
            where = f"{engine}/{group['tls']}/{config}"
            assert summary["errors"] == 0, (where, summary["error_samples"])
            assert summary["requests"] == per_config, where
            assert summary["rps_median"] > 0, where
            assert len(summary["rps_rounds"]) == ROUNDS, where
            assert 0 < summary["p50_ms"] <= summary["p99_ms"], where
            conns = summary["server_connections"]
            assert conns["peak"] is not None and conns["peak"] >= 0, where
            assert conns["opened"] is not None and conns["opened"] >= 0, where
            if config == "conn_per_request":
                # a new connection per request, seen by the server and the driver
                assert conns["opened"] >= per_config, where
                assert summary["client_connects"] == per_config, where
                assert conns["open_after"] == 0, where
            else:
                # warmed up: nothing opened during the measured rounds
                assert summary["client_connects"] == 0, where
                assert 1 <= conns["open_after"] <= THREADS + 5, where
            if conns["limit"] is not None:
                assert conns["peak"] <= conns["limit"], where
            assert summary["client_cpu_us"] > 0, where
            if placement is not None:
                assert all(
                    run["cpus"] == sorted(placement.client) for run in group["runs"][config]
                ), where
        assert len(group["orders"]) == ROUNDS
        # a fresh worker process per configuration for each block of rounds
        for config, config_runs in group["runs"].items():
            assert len({run["process"] for run in config_runs}) == 2, config
        assert all(sorted(order) == sorted(group["configs"]) for order in group["orders"])
        control = group["ratios"]["persistent_control_vs_persistent"]
        assert control["median"] > 0
        low, high = control["ci95"]
        assert low <= control["median"] <= high
        pool = group["configs"]["multipool"]["pool_stats"]
        assert pool["pool_size"] == THREADS
        # the last worker process's pool: its block of rounds (ROUNDS / 2)
        assert pool["checkouts"] >= THREADS * REQUESTS * ROUNDS // 2
        assert 1 <= pool["connects"] <= THREADS
        for other in group["configs"]:
            if other != "multipool":
                ratio = group["ratios"][f"multipool_vs_{other}"]
                assert ratio["median"] > 0 and len(ratio["rounds"]) == ROUNDS

    checks = results["targets"]
    assert checks and all({"target", "value", "goal", "met"} <= set(c) for c in checks)
    table = request_cycle.markdown_table(results)
    assert table.count("\n") == 1 + sum(len(g["configs"]) for g in groups)

    # the workers are gone and the bench databases dropped
    for config in available_configs(engine):
        assert bench_server.connection_count(database=database_name(config)) == 0


@pytest.mark.parametrize("count", [2, 3, 5, 6])
def test_round_orders_balance_positions_and_predecessors(count: int) -> None:
    from collections import Counter
    from itertools import pairwise

    from benchmarks.common import balanced_orders

    items = [f"c{i}" for i in range(count)]
    cycle = count if count % 2 == 0 else 2 * count
    orders = balanced_orders(items, 2 * cycle)
    assert orders[:cycle] == orders[cycle:]  # the design repeats
    rows = orders[:cycle]
    assert all(sorted(row) == items for row in rows)
    # every configuration runs in every slot, and right after every other
    # one, equally often: no configuration always follows the heavy one
    positions = Counter((item, row.index(item)) for row in rows for item in row)
    assert len(positions) == count * count and len(set(positions.values())) == 1
    follows = Counter(pair for row in rows for pair in pairwise(row))
    assert len(follows) == count * (count - 1) and len(set(follows.values())) == 1


def test_median_confidence_interval_brackets_the_median() -> None:
    from statistics import median

    from benchmarks.common import median_ci

    values = [0.91, 0.97, 1.02, 0.99, 0.95, 1.04, 0.98, 1.0, 0.96]
    low, high = median_ci(values)
    assert min(values) <= low <= median(values) <= high <= max(values)
    assert median_ci(values) == (low, high)  # seeded: reproducible
    narrow = median_ci([1.0 + (i % 3 - 1) * 0.001 for i in range(30)])
    assert narrow[1] - narrow[0] < high - low
    assert median_ci([1.0]) is None


def test_process_pairs_widen_the_interval_of_round_ratios() -> None:
    """Rounds of one pair of application-server processes move together: the
    interval resamples the pairs as well as their rounds."""
    from benchmarks.common import clustered_median_ci, median_ci, round_ratios

    pairs = [[0.90 + i * 0.001 for i in range(5)], [1.00 + i * 0.001 for i in range(5)],
             [1.10 + i * 0.001 for i in range(5)]]  # fmt: skip
    flat = median_ci([v for p in pairs for v in p])
    clustered = clustered_median_ci(pairs)
    assert flat is not None and clustered is not None
    assert clustered[1] - clustered[0] > flat[1] - flat[0]
    assert clustered_median_ci([pairs[0]]) == median_ci(pairs[0])
    rounds = [{"a": v, "b": 1.0} for p in pairs for v in p]
    result = round_ratios(rounds, "a", "b", [5, 5, 5])
    assert result["per_process"] == [0.902, 1.002, 1.102]
    assert result["ci95"] == [round(clustered[0], 3), round(clustered[1], 3)]
    assert "per_process" not in round_ratios(rounds, "a", "b")


def test_request_cycle_chart(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    from benchmarks import request_cycle

    summary = {
        "label": "x", "rps_median": 100.0, "p99_ms": 1.0,
    }
    results = {
        "parameters": {"threads": 2},
        "machine": {"cpus": 2, "cpu": "test"},
        "groups": [
            {"flavor": "postgresql", "tls": tls, "configs": {c: summary for c in configs}}
            for tls, configs in (
                ("off", ("persistent", "multipool")),
                ("verify-full", ("conn_per_request", "multipool")),
            )
        ],
    }
    path = request_cycle.chart(results, tmp_path / "chart.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_checkout_micro_smoke(postgres_server: Any) -> None:
    """The micro-benchmark configures Django settings: it runs in a process of its own."""
    require_modules(COMPARED, "benchmark smoke test")
    import subprocess
    import sys

    from benchmarks.common import REPO_ROOT, ServerRef, worker_env

    script = (
        "import json, sys\n"
        "from benchmarks import checkout_micro\n"
        "from benchmarks.common import ServerRef\n"
        "server = ServerRef(**json.loads(sys.stdin.read()))\n"
        "results = checkout_micro.run({'postgresql': server}, number=20, repeat=2)\n"
        "print(json.dumps(results))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(ServerRef.of(postgres_server).to_dict()),
        cwd=REPO_ROOT,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = results["rows"]
    cases = {(r["group"], r["case"]) for r in rows}
    assert ("AliasPool checkout+checkin", "no ping") in cases
    assert ("Django cycle", "multipool, pre_ping") in cases
    assert ("Django cycle", "Django native pool") in cases
    assert ("sqlalchemy QueuePool", "reset_on_return=None") in cases
    assert ("request boundary", "multipool") in cases
    assert all(r["median_us"] > 0 and r["best_us"] > 0 for r in rows)
    counters = results["pool_counters"]
    assert counters["postgresql_mp"]["pings"] == 0
    assert counters["postgresql_mp_preping"]["pings"] > 0
    assert counters["postgresql_mp_idle0"]["pings"] > 0
    # the request boundary keeps its one connection: no reconnect, no checkout
    boundary = counters["postgresql_mp_boundary"]
    assert boundary["connects"] == 1
    assert boundary["checkouts"] >= 40


def _require_callgrind() -> None:
    from benchmarks import instructions

    if not instructions.callgrind_available():
        reason = "the instruction-count benchmark needs valgrind (apt-get install valgrind)"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


def test_instructions_smoke(mysql_server: Any) -> None:
    """Instructions per request under callgrind: a few requests, both configurations
    the report compares; the counts are positive and of a request's size."""
    from benchmarks import instructions

    _require_callgrind()
    results = instructions.run(
        {"mysql": mysql_server}, tls_variants=("off",), requests=(2, 4), seeds=1, log=None
    )
    json.loads(json.dumps(results))  # JSON-ready
    (group,) = results["groups"]
    assert list(group["configs"]) == ["persistent", "multipool"]
    for config, summary in group["configs"].items():
        # a primary-key lookup through Django costs some 10^5 instructions,
        # not a handful (counts mixed up) and not 10^8 (start-up not cancelled)
        assert 10_000 < summary["mean"] < 10_000_000, (config, summary)
    assert group["configs"]["persistent"]["x_reference"] == 1.0
    assert instructions.markdown_table(results).count("\n") == 3


def test_instructions_asgi_shape_smoke(postgres_server: Any) -> None:
    """The asgi shape counts a wrapper per request against Django's native pool."""
    from benchmarks import instructions

    _require_callgrind()
    results = instructions.run(
        {"postgresql": postgres_server}, configs=instructions.SHAPES["asgi"],
        tls_variants=("off",), requests=(2, 4), seeds=1, shape="asgi", log=None,
    )  # fmt: skip
    (group,) = results["groups"]
    assert group["reference"] == "django_pool"
    assert list(group["configs"]) == ["django_pool", "multipool"]
    for config, summary in group["configs"].items():
        assert 10_000 < summary["mean"] < 10_000_000, (config, summary)
    assert group["configs"]["django_pool"]["x_reference"] == 1.0
    assert "| x django_pool |" in instructions.markdown_table(results)
    with pytest.raises(ValueError, match="leak"):
        instructions.run({"postgresql": postgres_server}, configs=("django_pool", "persistent"),
                         shape="asgi", log=None)  # fmt: skip


def test_one_request_with_a_new_wrapper_per_request() -> None:
    """The asgi shape's request gets a connection wrapper of its own, as under an
    ASGI server; the thread shape goes on with the wrapper it has."""
    from django.core import signals
    from django.db import connections

    from benchmarks.cycle_worker import one_request

    before = connections["default"]
    one_request(connections, signals, None, sql="SELECT 1")
    assert connections["default"] is before
    one_request(connections, signals, None, sql="SELECT 1", new_wrapper=True)
    after = connections["default"]
    assert after is not before
    one_request(connections, signals, None, sql="SELECT 1", new_wrapper=True)
    assert connections["default"] is not after
    connections["default"].close()


def test_paired_smoke(bench_server: Any) -> None:
    """Every configuration as an alias of one worker process, in alternating blocks."""
    from benchmarks import paired
    from benchmarks.common import TLS_VARIANTS, database_name

    engine = bench_server.engine
    configs = ("persistent", "persistent_control", "multipool")
    results = paired.run(
        {engine: bench_server}, configs=configs, threads=2, requests=5, blocks=2
    )
    json.loads(json.dumps(results))  # JSON-ready
    assert [(g["engine"], g["tls"]) for g in results["groups"]] == [
        (engine, t) for t in TLS_VARIANTS
    ]
    for group in results["groups"]:
        assert list(group["configs"]) == list(configs)
        for config, summary in group["configs"].items():
            assert summary["blocks"] == 2, config
            assert len(group["blocks"][config]) == 2, config
            assert summary["cpu_us_per_request"] > 0, config
            assert summary["wall_us_per_request"] > 0, config
            assert summary["throughput_x_reference"] > 0, config
        assert group["reference"] == "persistent"
        assert group["configs"]["persistent"]["throughput_x_reference"] == 1.0
    assert "| multipool |" in paired.markdown_table(results)
    for config in configs:
        assert bench_server.connection_count(database=database_name(config)) == 0


def test_paired_asgi_shape_smoke(postgres_server: Any) -> None:
    """The asgi shape: a new wrapper per request, against Django's native pool."""
    from benchmarks import paired
    from benchmarks.common import database_name

    configs = ("django_pool", "multipool")
    results = paired.run(
        {"postgresql": postgres_server}, configs=configs, tls_variants=("off",),
        threads=2, requests=5, blocks=2, shape="asgi", pool_size=1, max_overflow=0,
    )  # fmt: skip
    (group,) = results["groups"]
    assert results["parameters"]["shape"] == "asgi"
    assert (results["parameters"]["pool_size"], results["parameters"]["max_overflow"]) == (1, 0)
    assert group["reference"] == "django_pool"
    assert group["configs"]["django_pool"]["throughput_x_reference"] == 1.0
    assert group["configs"]["multipool"]["cpu_us_per_request"] > 0
    for config in configs:
        assert postgres_server.connection_count(database=database_name(config)) == 0
    with pytest.raises(ValueError, match="leak"):
        paired.run({"postgresql": postgres_server}, configs=("django_pool", "persistent"),
                   shape="asgi")  # fmt: skip


def test_paired_metrics_smoke(bench_server: Any) -> None:
    """Each metrics configuration in a worker of its own, against multipool without."""
    from benchmarks import paired

    engine = bench_server.engine
    configs = ("persistent", "multipool", "multipool_otel", "multipool_prometheus")
    results = paired.run(
        {engine: bench_server}, configs=configs, tls_variants=("off",), threads=2, requests=5,
        blocks=2,
    )  # fmt: skip
    groups = results["groups"]
    assert [g["metrics"] for g in groups] == ["multipool_otel", "multipool_prometheus"]
    for group in groups:
        metrics = group["metrics"]
        assert list(group["configs"]) == ["persistent", "multipool", metrics]
        assert group["recording_metrics"] == {"persistent": False, "multipool": False,
                                              metrics: True}  # fmt: skip
        assert group["configs"][metrics]["cpu_x_multipool"] > 0
    assert "(multipool_otel worker)" in paired.markdown_table(results)
