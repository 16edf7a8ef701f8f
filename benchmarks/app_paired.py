"""Application-server benchmark, paired in one process: the pools as aliases of one uvicorn.

    .venv/bin/python -m benchmarks.app_paired --processes 4 --blocks 30

The application-server benchmark (:mod:`benchmarks.app_servers`) gives each
configuration processes of its own, as an application runs. Two processes of
the same code differ by up to 10 % here (memory layout, hash seed), so a
difference of a few percent between two configurations needs dozens of
processes to show. This benchmark holds Django's native pool and multipool as
two aliases of the same uvicorn worker (``MPBENCH_CONFIG=django_pool,multipool``),
each with its own database and its own pool of ``--pool-size`` +
``--max-overflow``, and sends a block of ``--requests`` requests to one alias,
then the same to the other, the order alternating from block to block: the
process, the load client and the machine's drift are the same for both.

Each pair of blocks gives a ratio of requests/s (multipool over Django's
pool); reported per view: the median over all blocks, a 95 % interval that
resamples the processes and their blocks
(:func:`benchmarks.common.clustered_median_ci`), each process's median and how
many blocks multipool won. A request's thread makes a connection wrapper for
its own alias only, so Django's ``close_old_connections`` at the start and end
of a request touches that alias alone.

What it leaves out is what a process pays for the libraries it imports: the
separate-process benchmark measures that, with its noise.

Results go to ``benchmarks/results/app_paired.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.app_project.configs import CONFIG_VARIABLE, engine_configs
from benchmarks.app_servers import (
    APPLICATIONS,
    PATHS,
    SETTINGS,
    Options,
    app_env,
    load_failure,
    placed,
    raise_connection_limit,
)
from benchmarks.common import (
    REPO_ROOT,
    RESULTS_DIR,
    clustered_median_ci,
    create_bench_database,
    database_name,
    drop_bench_database,
    machine_info,
    median,
    open_servers,
    package_versions,
    pin_process_tree,
    rounded,
    server_info,
    write_report,
)
from multipool.testing.app_servers import run_load, start_app_server, uvicorn

REFERENCE = "django_pool"
CONFIGS = (REFERENCE, "multipool")


@dataclass(frozen=True)
class PairedOptions:
    """How big the run is; recorded in the results as ``parameters``."""

    processes: int = 4  # uvicorn processes, one after the other
    blocks: int = 30  # block pairs per process and view
    requests: int = 200  # per block
    concurrency: int = 16
    warmup: int = 100  # per alias and view, not measured
    views: tuple[str, ...] = ("async", "sync")
    server: Options = field(default_factory=Options)  # pools, TLS, placement


def _block(app: Any, config: str, view: str, opts: PairedOptions) -> float:
    """Requests/s of one block; a failed request stops the run with the server's log."""
    report = run_load(
        app.base_url, [("GET", f"/{config}{PATHS[view]}")],
        requests=opts.requests, concurrency=opts.concurrency,
    )  # fmt: skip
    if report.errors:
        raise load_failure(app, f"{config} {view}", report)
    return report.requests_per_second


def run_process(server: Any, opts: PairedOptions, placement: Any, log: Any) -> dict[str, Any]:
    """One uvicorn process serving both aliases: per view, each block pair's
    requests/s."""
    env = {**app_env(server, REFERENCE, opts.server), CONFIG_VARIABLE: ",".join(CONFIGS)}
    rates: dict[str, list[dict[str, float]]] = {view: [] for view in opts.views}
    with start_app_server(
        uvicorn(APPLICATIONS["uvicorn"]), settings=SETTINGS, env=env, cwd=REPO_ROOT,
        ready_path="/pool/",
    ) as app:  # fmt: skip
        if placement is not None:
            pin_process_tree(app.pid, placement.client)
        for view in opts.views:
            for config in CONFIGS:
                run_load(app.base_url, [("GET", f"/{config}{PATHS[view]}")],
                         requests=opts.warmup, concurrency=opts.concurrency)  # fmt: skip
        for b in range(opts.blocks):
            for view in opts.views if b % 2 == 0 else opts.views[::-1]:
                order = CONFIGS if b % 2 == 0 else CONFIGS[::-1]
                rates[view].append({config: _block(app, config, view, opts) for config in order})
            if log is not None and (b + 1) % 10 == 0:
                print(f"[process {app.pid}] {b + 1} blocks", file=log, flush=True)
    return rates


def summarize(processes: Sequence[dict[str, list[dict[str, float]]]],
              views: Sequence[str]) -> dict[str, Any]:
    """Per view: the ratio of multipool to Django's pool, block by block."""
    summary: dict[str, Any] = {}
    for view in views:
        clusters = [[r["multipool"] / r[REFERENCE] for r in p[view]] for p in processes]
        ratios = [x for c in clusters for x in c]
        ci = clustered_median_ci(clusters)
        summary[view] = {
            "multipool_vs_django_pool": rounded(median(ratios)),
            "ci95": None if ci is None else [rounded(ci[0]), rounded(ci[1])],
            "per_process": [rounded(median(c)) for c in clusters],
            "blocks_multipool_faster": sum(x > 1 for x in ratios),
            "blocks": len(ratios),
            "rps_median": {
                config: rounded(median(r[config] for p in processes for r in p[view]), 1)
                for config in CONFIGS
            },
        }
    return summary


def run(server: Any, opts: PairedOptions, log: Any = sys.stderr) -> dict[str, Any]:
    """The benchmark against ``server`` (PostgreSQL); the results, JSON-ready."""
    if REFERENCE not in engine_configs(server.engine):
        raise ValueError("Django's native pool exists for PostgreSQL only")
    started = time.monotonic()
    meta = machine_info()
    meta["packages"].update(package_versions(("uvicorn", "asgiref")))
    for config in CONFIGS:
        create_bench_database(server, database_name(config))
    try:
        with placed({server.engine: server}, opts.server) as placement:
            processes = [run_process(server, opts, placement, log) for _ in range(opts.processes)]
    finally:
        for config in CONFIGS:
            drop_bench_database(server, database_name(config))
    return {
        "benchmark": "app_paired",
        "parameters": {**asdict(opts), "paths": {v: f"/<alias>{PATHS[v]}" for v in opts.views}},
        "machine": meta,
        "server": server_info(server),
        "duration_s": round(time.monotonic() - started, 1),
        "views": summarize(processes, opts.views),
        "blocks": processes,
    }


def markdown_report(results: dict[str, Any]) -> str:
    p = results["parameters"]
    lines = [
        f"uvicorn, 1 process at a time ({p['processes']} in all), Django's native pool and "
        f"multipool as two aliases of it; {p['blocks']} block pairs of {p['requests']} "
        f"requests per process and view, {p['concurrency']} concurrent clients; every pool "
        f"{p['server']['pool_size']} + {p['server']['max_overflow']}; TLS {p['server']['tls']}.",
        "",
        "| View | Django pool req/s | multipool req/s | multipool x Django pool (95% CI) "
        "| blocks multipool faster | per process |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for view, s in results["views"].items():
        ci = s["ci95"]
        lines.append(
            f"| {view} | {s['rps_median'][REFERENCE]:.0f} | {s['rps_median']['multipool']:.0f} | "
            f"{s['multipool_vs_django_pool']:.3f} ({ci[0]:.3f} to {ci[1]:.3f}) | "
            f"{s['blocks_multipool_faster']}/{s['blocks']} | "
            + ", ".join(f"{x:.3f}" for x in s["per_process"]) + " |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.app_paired", description=__doc__.split("\n\n")[0]
    )
    defaults = PairedOptions()
    for name, help_text in (
        ("processes", "uvicorn processes, one after the other"),
        ("blocks", "block pairs per process and view"),
        ("requests", "requests per block"),
        ("concurrency", "concurrent HTTP clients"),
        ("warmup", "unmeasured requests per alias and view first"),
    ):
        default = getattr(defaults, name)
        parser.add_argument(f"--{name}", type=int, default=default,
                            help=f"{help_text} (default {default})")  # fmt: skip
    server_defaults = defaults.server
    parser.add_argument("--pool-size", type=int, default=server_defaults.pool_size)
    parser.add_argument("--max-overflow", type=int, default=server_defaults.max_overflow)
    parser.add_argument("--placement", choices=("split", "none"), default=server_defaults.placement)
    parser.add_argument("--postgres-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--name", default="app_paired", help="file name stem of the results")
    args = parser.parse_args(argv)
    opts = PairedOptions(
        processes=args.processes, blocks=args.blocks, requests=args.requests,
        concurrency=args.concurrency, warmup=args.warmup,
        server=Options(pool_size=args.pool_size, max_overflow=args.max_overflow,
                       placement=args.placement),
    )  # fmt: skip
    with open_servers(["postgresql"], postgres_url=args.postgres_url) as servers:
        raise_connection_limit(servers["postgresql"], log=sys.stderr)
        results = run(servers["postgresql"], opts)
    write_report(args.out, args.name, results, markdown_report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
