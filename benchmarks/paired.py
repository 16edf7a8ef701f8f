"""Paired timing in one process: configurations alternate in short blocks.

The request-cycle benchmark gives each configuration its own processes, as an
application would run, and its A/A control shows what that costs in
precision: two processes of the very same configuration differ by a few
percent. Instruction counts (:mod:`benchmarks.instructions`) have no such
noise, but they miss what costs time without costing instructions -- code and
data the request boundary touches when they are no longer in the CPU's
caches. This benchmark times that:

* one worker process per engine and TLS variant holds every configuration as
  an alias of its own, on the same server, with the same threads, memory
  layout and hash seed;
* the threads serve ``--requests`` requests each on one alias, then on the
  next (a block each), for ``--blocks`` blocks, the order reversed every
  other block, so that slow drift of the machine hits every configuration
  alike;
* each block's CPU time (the process's, user and system) and wall time per
  request are paired with the reference's block next to it; the median of
  those ratios is reported;
* with ``--placement split`` (the default) the worker runs on the lower half
  of the CPUs and a server started here on the upper half (see
  :class:`benchmarks.common.Placement`).

A request is what Django's ``close_old_connections`` does for *this* alias at
``request_started`` and ``request_finished`` around one primary-key lookup:
sending the signals would run every other alias's checks as well, and a
persistent connection's checks (``get_autocommit()`` through
``ensure_connection()``) cost more than a pooled one's.

**Shapes** (``--shape``): ``thread`` (the default) is a WSGI server's thread, one
connection wrapper serving request after request; the reference is
``persistent``. ``asgi`` is Django under an ASGI server, which runs each
request's sync code in a thread of its own and so makes a new wrapper per
request (its connections are thread-local): each request here starts with a
new wrapper in place of the thread's. Persistent connections leak under that
shape, so the reference is Django's native pool (PostgreSQL).

**Metrics** (:data:`METRICS_CONFIGS`): ``multipool_otel`` is multipool with its
OpenTelemetry metrics, an SDK MeterProvider collecting every second (into an
exporter that discards); ``multipool_prometheus`` with Prometheus in multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, the connection counts published every
second). Either needs a worker of its own -- the provider and the multiprocess
mode are process-wide -- which holds the other chosen configurations too, with
``multipool`` as the reference with its metrics off (``pool_metrics`` False),
and the other metrics library made unimportable. Their rows add the ratios to
``multipool``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_ROWS,
    BENCH_TABLE,
    CONFIGS,
    ENGINES,
    REPO_ROOT,
    RESULTS_DIR,
    SHAPE_REFERENCES,
    TLS_VARIANTS,
    Placement,
    add_shape_arguments,
    bench_groups,
    check_shape_configs,
    config_entry,
    configure_django,
    database_name,
    machine_info,
    median,
    open_servers,
    parse_selection,
    rounded,
    server_info,
    worker_env,
    write_report,
)

DEFAULT_CONFIGS = ("persistent", "persistent_control", "multipool")
#: what a shape runs when --configs is not given
SHAPE_CONFIGS = {"thread": DEFAULT_CONFIGS, "asgi": ("django_pool", "multipool")}
#: multipool with its metrics on: configuration -> what the worker sets up
METRICS_CONFIGS = {"multipool_otel": "otel", "multipool_prometheus": "prometheus"}
SQL = f"SELECT name FROM {BENCH_TABLE} WHERE id = %s"


# -- the worker process --------------------------------------------------------------


def _discarding_exporter() -> Any:
    """An OpenTelemetry metric exporter that drops what it is given."""
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

    class Discard(MetricExporter):
        def export(self, metrics_data: Any, timeout_millis: float = 0, **kw: Any) -> Any:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 0) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 0, **kw: Any) -> None:
            return None

    return Discard()


def _set_up_metrics(kind: str | None) -> None:
    """What a metrics configuration needs in its worker, before multipool records."""
    if kind == "otel":
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
        reader = PeriodicExportingMetricReader(_discarding_exporter(), export_interval_millis=1000)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    elif kind == "prometheus":
        import tempfile

        sys.modules["opentelemetry"] = None  # type: ignore[assignment]
        directory = tempfile.mkdtemp(prefix="multipool-bench-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        import atexit
        import shutil

        atexit.register(shutil.rmtree, directory, True)


def _serve_blocks(setup: Mapping[str, Any]) -> dict[str, Any]:
    _set_up_metrics(setup.get("metrics"))
    configure_django({"default": setup["entries"][setup["configs"][0]], **setup["entries"]})
    from django.db import connections

    configs: list[str] = setup["configs"]
    threads, requests = int(setup["threads"]), int(setup["requests"])
    wrapper_per_request = setup["shape"] == "asgi"
    start, end = threading.Barrier(threads + 1), threading.Barrier(threads + 1)
    job: dict[str, Any] = {"alias": None, "n": 0, "stop": False}
    errors: list[str] = []

    def serve(index: int) -> None:
        rng = random.Random(index)
        while True:
            start.wait()
            if job["stop"]:
                connections.close_all()
                end.wait()
                return
            alias = job["alias"]
            conn = connections[alias]
            try:
                for _ in range(job["n"]):
                    if wrapper_per_request:
                        connections[alias] = conn = connections.create_connection(alias)
                    conn.close_if_unusable_or_obsolete()  # request_started
                    try:
                        with conn.cursor() as cursor:
                            cursor.execute(SQL, [rng.randint(1, BENCH_ROWS)])
                            cursor.fetchone()
                    finally:
                        conn.close_if_unusable_or_obsolete()  # request_finished
            except Exception as exc:  # reported, and the run fails
                errors.append(f"{job['alias']}: {type(exc).__name__}: {exc}")
            end.wait()

    workers = [threading.Thread(target=serve, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()

    def block(alias: str, n: int) -> dict[str, float]:
        job["alias"], job["n"] = alias, n
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        wall0 = time.perf_counter()
        start.wait()
        end.wait()
        wall = time.perf_counter() - wall0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        count = n * threads
        return {
            "wall_us": wall / count * 1e6,
            "cpu_us": (ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime) / count * 1e6,
            "user_us": (ru1.ru_utime - ru0.ru_utime) / count * 1e6,
        }

    for alias in configs:  # connect and warm up
        block(alias, max(20, requests // 5))
    measured: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    for b in range(int(setup["blocks"])):
        for alias in configs if b % 2 == 0 else configs[::-1]:
            measured[alias].append(block(alias, requests))
    job["stop"] = True
    start.wait()
    end.wait()
    from multipool.pools import manager

    # which aliases recorded metrics (their pool has a recorder)
    recording = {alias: getattr(manager.get(alias), "recorder", None) is not None
                 for alias in configs}  # fmt: skip
    manager.dispose()  # the parked connections too
    if errors:
        raise RuntimeError("; ".join(sorted(set(errors))[:5]))
    return {"blocks": measured, "recording": recording}


def worker_main() -> int:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed goes to stderr
    setup = json.loads(sys.stdin.readline())
    out.write(json.dumps(_serve_blocks(setup)) + "\n")
    out.close()
    return 0


# -- the harness ---------------------------------------------------------------------


def _ratios(
    blocks: list[dict[str, float]], reference: list[dict[str, float]]
) -> tuple[list[float], list[float]]:
    """Per block pair: the throughput and the CPU time of ``blocks`` over ``reference``'s."""
    pairs = list(zip(blocks, reference, strict=True))
    return (
        [ref["wall_us"] / own["wall_us"] for own, ref in pairs],
        [own["cpu_us"] / ref["cpu_us"] for own, ref in pairs],
    )


def _summarize(measured: Mapping[str, list[dict[str, float]]], reference: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for config, blocks in measured.items():
        throughput, cpu = _ratios(blocks, measured[reference])
        summary[config] = {
            "wall_us_per_request": rounded(median(b["wall_us"] for b in blocks), 1),
            "cpu_us_per_request": rounded(median(b["cpu_us"] for b in blocks), 1),
            "user_us_per_request": rounded(median(b["user_us"] for b in blocks), 1),
            "throughput_x_reference": rounded(median(throughput)),
            "cpu_x_reference": rounded(median(cpu)),
            "blocks_faster_than_reference": sum(r > 1 for r in throughput),
            "blocks": len(blocks),
        }
        if config in METRICS_CONFIGS and "multipool" in measured:
            throughput, cpu = _ratios(blocks, measured["multipool"])
            summary[config]["throughput_x_multipool"] = rounded(median(throughput))
            summary[config]["cpu_x_multipool"] = rounded(median(cpu))
    return summary


def run(
    servers: Mapping[str, Any],
    *,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    tls_variants: Sequence[str] = tuple(TLS_VARIANTS),
    threads: int = 4,
    requests: int = 500,
    blocks: int = 20,
    placement: Placement | None = None,
    shape: str = "thread",
    pool_size: int | None = None,
    max_overflow: int = 5,
) -> dict[str, Any]:
    """``pool_size`` (default ``threads``) and ``max_overflow`` size every pool; with
    ``pool_size`` given, Django's native pool gets ``min_size=pool_size`` and
    ``max_size=pool_size + max_overflow`` (else ``threads`` both). Fewer connections
    than threads make requests wait for one, as under an ASGI server."""
    reference = SHAPE_REFERENCES[shape]
    if reference not in configs:
        raise ValueError(f"the {shape} shape needs {reference!r} among the configurations")
    check_shape_configs(shape, configs)
    with_metrics = [c for c in configs if c in METRICS_CONFIGS]
    base = [c for c in configs if c not in METRICS_CONFIGS]
    if with_metrics and "multipool" not in base:
        raise ValueError("the metrics configurations need 'multipool' (their reference)")
    placed = None if placement is None else placement.pin_servers(servers)
    groups = []
    for engine, server, tls_variant, chosen in bench_groups(servers, base, tls_variants):
        user, tls = TLS_VARIANTS[tls_variant]
        entries = {
            c: config_entry(
                c, server, user=user, tls=tls, database=database_name(c),
                threads=threads if pool_size is None else pool_size, max_overflow=max_overflow,
            )
            for c in chosen
        }
        if pool_size is not None and "django_pool" in entries:
            limits = {"min_size": pool_size, "max_size": pool_size + max_overflow}
            entries["django_pool"]["OPTIONS"]["pool"] = limits
        for metrics in with_metrics or [None]:
            worker_entries = _with_metrics(entries, metrics)
            result = _run_worker(
                {
                    "configs": list(worker_entries),
                    "entries": worker_entries,
                    "threads": threads,
                    "requests": requests,
                    "blocks": blocks,
                    "metrics": METRICS_CONFIGS.get(metrics or ""),
                    "shape": shape,
                },
                None if placement is None else placement.client,
            )
            measured = result["blocks"]
            for config in chosen:
                server.wait_for_connection_count(
                    0, user=user, database=database_name(config), timeout=10
                )
            groups.append({
                "engine": engine,
                "tls": tls_variant,
                "metrics": metrics,
                "reference": reference,
                "configs": _summarize(measured, reference),
                "blocks": measured,
                "recording_metrics": result["recording"],
            })
    return {
        "benchmark": "paired",
        "parameters": {
            "threads": threads,
            "requests_per_thread_per_block": requests,
            "shape": shape,
            "blocks": blocks,
            "pool_size": threads if pool_size is None else pool_size,
            "max_overflow": max_overflow,
            "placement": placed,
        },
        "machine": machine_info(),
        "servers": {engine: server_info(s) for engine, s in servers.items()},
        "groups": groups,
    }


def _with_metrics(entries: Mapping[str, Any], metrics: str | None) -> dict[str, Any]:
    """The aliases of one worker: ``metrics`` (a copy of multipool's entry, on the same
    database) besides the others, multipool's own with its metrics off."""
    if metrics is None:
        return dict(entries)
    plain = entries["multipool"]
    off = {**plain, "OPTIONS": {**plain["OPTIONS"], "pool_metrics": False}}
    on = {**plain, "OPTIONS": {**plain["OPTIONS"], "pool_metrics": True}}
    return {**entries, "multipool": off, metrics: on}


def _run_worker(setup: Mapping[str, Any], cpus: frozenset[int] | None) -> Any:
    # The entries hold passwords: they go through the pipe, never argv.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.paired", "--worker"],
        input=json.dumps(setup) + "\n",
        capture_output=True,
        text=True,
        cwd=str(REPO_ROOT),
        env=worker_env(),
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"paired worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def markdown_table(results: Mapping[str, Any]) -> str:
    lines = [
        "| Server | TLS | Configuration | CPU µs/request | wall µs/request "
        "| reference | throughput x reference | CPU x reference | blocks faster "
        "| throughput x multipool | CPU x multipool |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group in results["groups"]:
        for config, s in group["configs"].items():
            versus = (
                f"{s['throughput_x_multipool']:.3f} | {s['cpu_x_multipool']:.3f}"
                if "throughput_x_multipool" in s
                else "- | -"
            )
            worker = f" ({group['metrics']} worker)" if group.get("metrics") else ""
            lines.append(
                f"| {group['engine']} | {group['tls']}{worker} | {config} | "
                f"{s['cpu_us_per_request']:.1f} | {s['wall_us_per_request']:.1f} | "
                f"{group['reference']} | "
                f"{s['throughput_x_reference']:.3f} | {s['cpu_x_reference']:.3f} | "
                f"{s['blocks_faster_than_reference']}/{s['blocks']} | {versus} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.paired", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engines", default=",".join(ENGINES), help="postgresql,mysql")
    parser.add_argument("--tls", default=",".join(TLS_VARIANTS), help="off,verify-full")
    add_shape_arguments(parser, [*CONFIGS, *METRICS_CONFIGS], SHAPE_CONFIGS)
    parser.add_argument("--threads", type=int, default=4, help="threads (default 4)")
    parser.add_argument("--pool-size", type=int, default=None,
                        help="POOL_SIZE of every pool (default: --threads); Django's native "
                        "pool: min_size, max_size with --max-overflow")
    parser.add_argument("--max-overflow", type=int, default=5,
                        help="MAX_OVERFLOW of every pool (default 5)")
    parser.add_argument(
        "--requests", type=int, default=500, help="requests per thread per block (default 500)"
    )
    parser.add_argument("--blocks", type=int, default=20, help="blocks per configuration")
    parser.add_argument("--placement", choices=("split", "none"), default="split")
    parser.add_argument("--postgres-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--mysql-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--name", default="paired", help="file name stem of the results")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    named = [c for c in (args.configs or ",".join(SHAPE_CONFIGS[args.shape])).split(",") if c]
    engines, tls_variants, selected = parse_selection(
        parser, args.engines, args.tls, ",".join(c for c in named if c not in METRICS_CONFIGS)
    )
    configs = [
        *(selected or SHAPE_CONFIGS[args.shape]), *(c for c in named if c in METRICS_CONFIGS)
    ]
    if any(c in METRICS_CONFIGS for c in configs) and "multipool" not in configs:
        parser.error("--configs: the metrics configurations need multipool (their reference)")
    reference = SHAPE_REFERENCES[args.shape]
    if reference not in configs:
        parser.error(f"--configs must include {reference} (the {args.shape} shape's reference)")
    if "conn_per_request" in configs:
        parser.error("conn_per_request is 10-100x slower; compare it with request_cycle")
    try:
        check_shape_configs(args.shape, configs)
    except ValueError as exc:
        parser.error(f"--shape asgi: {exc}")
    with open_servers(engines, postgres_url=args.postgres_url, mysql_url=args.mysql_url) as servers:
        results = run(
            servers,
            configs=configs,
            tls_variants=tls_variants,
            threads=args.threads,
            requests=args.requests,
            blocks=args.blocks,
            placement=Placement.split() if args.placement == "split" else None,
            shape=args.shape,
            pool_size=args.pool_size,
            max_overflow=args.max_overflow,
        )
    write_report(args.out, args.name, results, markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
