"""Instructions per request, counted by callgrind: the request cycle without the noise.

Timing a request on a shared two-vCPU machine cannot resolve a difference of a
few percent (see the A/A control of :mod:`benchmarks.request_cycle`).
``valgrind --tool=callgrind`` counts the instructions the process executes
instead, whatever else the machine is doing. This runs the request-cycle
worker (:class:`benchmarks.cycle_worker.Bench`: ``request_started``, one
primary-key lookup, ``request_finished``) under callgrind twice per
configuration, for ``A`` and for ``B`` requests, one thread: the difference of
the two totals divided by ``B - A`` is the cost of one request, with start-up,
warm-up and teardown cancelled out. ``--shape thread`` serves request after
request on one connection wrapper (WSGI) and compares with persistent
connections; ``--shape asgi`` makes a wrapper per request, as Django does under
an ASGI server, and compares with Django's native pool.

Two caveats, both measured:

* With one thread and a fixed ``PYTHONHASHSEED`` the count repeats to within
  a few instructions. With several threads it does not (the GIL changes hands
  at different points): about ±1 %.
* A change anywhere in the code moves objects in memory, which changes which
  attribute lookups collide in CPython's type cache: about ±0.5 % between two
  builds that do the same work. Each configuration is therefore counted under
  ``--seeds`` hash seeds, and the mean is reported.

The count includes the client's whole process (Python, Django, the driver, TLS
on the client side) and nothing of the server.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CONFIGS,
    ENGINES,
    REPO_ROOT,
    RESULTS_DIR,
    SHAPE_REFERENCES,
    TLS_VARIANTS,
    add_shape_arguments,
    bench_groups,
    check_shape_configs,
    config_entry,
    configure_django,
    database_name,
    machine_info,
    open_servers,
    parse_selection,
    server_info,
    worker_env,
    write_report,
)

#: shape -> the configurations it counts by default (its reference first)
SHAPES = {shape: (reference, "multipool") for shape, reference in SHAPE_REFERENCES.items()}
DEFAULT_CONFIGS = SHAPES["thread"]
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


class CallgrindError(RuntimeError):
    pass


def callgrind_available() -> bool:
    return shutil.which("valgrind") is not None


def count_instructions(
    entry: Mapping[str, Any],
    *,
    config: str,
    requests: int,
    threads: int = 1,
    warmup: int = 20,
    seed: int = 0,
    shape: str = "thread",
) -> int:
    """Instructions callgrind counts for a worker that serves ``requests``
    requests per thread (after ``warmup``), start-up and teardown included."""
    with tempfile.TemporaryDirectory(prefix="multipool-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        setup = {
            "config": config,
            "entry": dict(entry),
            "threads": threads,
            "requests": requests,
            "warmup": warmup,
            "new_wrapper": shape == "asgi",
        }
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.instructions",
                "--worker",
            ],
            # The entry holds a password: through the pipe, never argv.
            input=json.dumps(setup) + "\n",
            capture_output=True,
            text=True,
            cwd=str(REPO_ROOT),
            env=worker_env(PYTHONHASHSEED=str(seed)),
        )
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise CallgrindError(f"callgrind run of {config!r} failed:\n{tail}")
        match = _TOTALS.search(out.read_text(errors="replace"))
        if match is None:  # pragma: no cover - callgrind always writes its totals
            raise CallgrindError(f"no totals in callgrind's output for {config!r}")
        return int(match.group(1))


def per_request(
    entry: Mapping[str, Any],
    *,
    config: str,
    requests: tuple[int, int],
    threads: int = 1,
    seed: int = 0,
    shape: str = "thread",
) -> float:
    """Instructions per request: the difference between a run of ``requests[1]``
    and one of ``requests[0]`` requests per thread (run side by side)."""
    low, high = requests
    if not 0 < low < high:
        raise ValueError(f"requests must be two increasing counts, not {requests!r}")
    with ThreadPoolExecutor(2) as pool:
        counts = list(
            pool.map(
                lambda n: count_instructions(
                    entry, config=config, requests=n, threads=threads, seed=seed, shape=shape
                ),
                (low, high),
            )
        )
    return (counts[1] - counts[0]) / ((high - low) * threads)


def run(
    servers: Mapping[str, Any],
    *,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    tls_variants: Sequence[str] = tuple(TLS_VARIANTS),
    requests: tuple[int, int] = (300, 900),
    seeds: int = 3,
    threads: int = 1,
    shape: str = "thread",
    log: Any = sys.stderr,
) -> dict[str, Any]:
    """Count every configuration of every group; JSON-ready results. Each is compared
    with the ``shape``'s reference (persistent connections, or Django's native pool)."""
    reference_config = SHAPE_REFERENCES[shape]
    check_shape_configs(shape, configs)
    groups: list[dict[str, Any]] = []
    for engine, server, tls, engine_configs in bench_groups(servers, configs, tls_variants):
        user, mode = TLS_VARIANTS[tls]
        counted: dict[str, dict[str, Any]] = {}
        for config in engine_configs:
            entry = config_entry(
                config,
                server,
                user=user,
                tls=mode,
                database=database_name(config),
                threads=max(threads, 1),
            )
            values = [
                per_request(
                    entry, config=config, requests=requests, threads=threads, seed=s, shape=shape
                )
                for s in range(seeds)
            ]
            mean = sum(values) / len(values)
            counted[config] = {
                "per_seed": [round(v) for v in values],
                "mean": round(mean),
            }
            if log is not None:
                print(
                    f"[{engine}/{tls}] {config}: {mean / 1000:.1f}k instructions/request "
                    f"(seeds: {', '.join(f'{v / 1000:.1f}k' for v in values)})",
                    file=log,
                    flush=True,
                )
        reference = counted.get(reference_config)
        for summary in counted.values():
            summary["x_reference"] = (
                round(summary["mean"] / reference["mean"], 4) if reference else None
            )
        groups.append(
            {"engine": engine, "tls": tls, "reference": reference_config, "configs": counted}
        )
    return {
        "benchmark": "instructions",
        "parameters": {
            "requests": list(requests),
            "threads": threads,
            "shape": shape,
            "reference": reference_config,
            "seeds": seeds,
            "query": "SELECT name FROM bench_item WHERE id = %s (primary key, 1000 rows)",
        },
        "machine": machine_info(),
        "servers": {engine: server_info(s) for engine, s in servers.items()},
        "groups": groups,
    }


def markdown_table(results: Mapping[str, Any]) -> str:
    seeds, reference = results["parameters"]["seeds"], results["parameters"]["reference"]
    lines = [
        f"| Server | TLS | Configuration | instructions/request (mean of {seeds} seeds) "
        f"| per seed | x {reference} |",
        "| --- | --- | --- | ---: | --- | ---: |",
    ]
    for group in results["groups"]:
        for config, summary in group["configs"].items():
            ratio = summary["x_reference"]
            lines.append(
                f"| {group['engine']} | {group['tls']} | {config} "
                f"| {summary['mean'] / 1000:.1f}k "
                f"| {', '.join(f'{v / 1000:.1f}k' for v in summary['per_seed'])} "
                f"| {'-' if ratio is None else format(ratio, '.3f')} |"
            )
    return "\n".join(lines)


# -- the worker, run under callgrind ------------------------------------------------------


def worker_main() -> int:
    from benchmarks.cycle_worker import Bench, close_pools

    setup = json.loads(sys.stdin.readline())
    configure_django({"default": setup["entry"]})
    bench = Bench(int(setup["threads"]), new_wrapper=bool(setup.get("new_wrapper")))
    for requests in (int(setup["warmup"]), int(setup["requests"])):
        result = bench.run(requests)
        if result["errors"]:
            print(result["error_samples"], file=sys.stderr)
            return 1
    bench.stop()
    close_pools(setup["config"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engines", default=",".join(ENGINES), help="postgresql,mysql")
    parser.add_argument("--tls", default=",".join(TLS_VARIANTS), help="off,verify-full")
    add_shape_arguments(parser, CONFIGS, SHAPES)
    parser.add_argument(
        "--requests", default="300,900", help="the two request counts per thread (default 300,900)"
    )
    parser.add_argument("--seeds", type=int, default=3, help="hash seeds per configuration")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads (default 1; more is not repeatable)"
    )
    parser.add_argument("--postgres-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--mysql-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--name", default="instructions", help="file name stem of the results")
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    if not callgrind_available():
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    try:
        low, high = (int(n) for n in args.requests.split(","))
    except ValueError:
        parser.error(f"--requests takes two counts, like 300,900, not {args.requests!r}")
    engines, tls_variants, selected = parse_selection(
        parser, args.engines, args.tls, args.configs or ",".join(SHAPES[args.shape])
    )
    configs = selected or list(SHAPES[args.shape])
    try:
        check_shape_configs(args.shape, configs)
    except ValueError as exc:
        parser.error(f"--shape asgi: {exc}")
    with open_servers(engines, postgres_url=args.postgres_url, mysql_url=args.mysql_url) as servers:
        results = run(
            servers,
            configs=configs,
            tls_variants=tls_variants,
            requests=(low, high),
            seeds=args.seeds,
            threads=args.threads,
            shape=args.shape,
        )
    write_report(args.out, args.name, results, markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
