"""Request-cycle benchmark: multipool against stock Django and the other Django pools.

    .venv/bin/python -m benchmarks.request_cycle --threads 4 --requests 2000

For each engine (PostgreSQL, MySQL/MariaDB) and each TLS variant (``off``: user
``plain``, ``sslmode=disable``; ``verify-full``: user ``app``, the server
certificate verified against the test CA), every configuration of
:data:`benchmarks.common.CONFIGS` runs in its own worker process
(:mod:`benchmarks.cycle_worker`) with one alias and ``--threads`` threads. The
configurations take turns: ``--rounds`` rounds, each running every
configuration once (in the order of a Williams design, see
:func:`benchmarks.common.balanced_orders`) for ``--requests`` requests per
thread (``--slow-requests`` for ``CONN_MAX_AGE=0``, 10-100x slower), so that
noise from the rest of the machine spreads over all of them. Ratios are taken
per round, between configurations of the same round, and the median over
rounds is reported. ``--view-us`` adds CPU-bound Python work to each request
(a view's ORM and templates), holding the GIL.

Server side, each configuration has a database of its own
(``mpbench_<config>``), which is how its connections are told apart:

* ``peak`` -- the most client connections seen at once during its rounds
  (sampled every 20 ms from ``pg_stat_activity`` / ``PROCESSLIST``);
* ``opened`` -- connections the server accepted during the measured rounds:
  PostgreSQL ``pg_stat_database.sessions`` of the configuration's database,
  MySQL the ``Connections`` status counter around each run (one configuration
  runs at a time);
* ``open_after`` -- connections still open after the last round.

Client side, ``client_connects`` counts the driver's ``connect()`` calls in
the worker, and multipool's and Django's pools report their own counters.

Results go to ``benchmarks/results/request_cycle.json`` and ``.png`` (``--out``).
Without ``--postgres-url`` / ``--mysql-url`` the servers are started from local
binaries (or containers) by :mod:`multipool.testing`; with them, the harness
attaches to existing servers (admin URLs, see ``multipool.testing``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CONFIGS,
    ENGINES,
    LABELS,
    MULTIPOOL_CONFIGS,
    REPO_ROOT,
    RESULTS_DIR,
    TLS_VARIANTS,
    Placement,
    available_configs,
    balanced_orders,
    config_entry,
    config_environ,
    connections_counter,
    create_bench_database,
    database_name,
    drop_bench_database,
    fmt,
    fmt_ci,
    machine_info,
    median,
    open_servers,
    parse_selection,
    percentile,
    round_blocks,
    round_ratios,
    rounded,
    server_info,
    settled_sessions,
    worker_env,
    write_report,
)

#: the targets of the issue, checked in every run (multipool vs the others, same run)
TARGETS = {
    "vs_persistent": 0.95,
    "vs_dj_db_conn_pool": 1.2,
    "vs_django_pool": 1.0,
    "vs_conn_per_request_tls": 5.0,
}


#: configurations that serve 10-100x fewer requests/s: ``--slow-requests`` each round
SLOW = ("conn_per_request",)


class WorkerError(RuntimeError):
    pass


class Worker:
    """A :mod:`benchmarks.cycle_worker` process running one configuration."""

    def __init__(
        self,
        config: str,
        vendor: str,
        entry: Mapping[str, Any],
        threads: int,
        view_us: float = 0,
        cpus: frozenset[int] | None = None,
        code_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cycle_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # ``-m`` puts the working directory first on sys.path: another
            # multipool's directory, or this checkout
            cwd=str(code_dir or REPO_ROOT),
            env=worker_env(code_dir),
            text=True,
            # set in the child before exec, so every thread it starts inherits it
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        # The entry holds a password: it goes through the pipe, never argv.
        self._send({
            "config": config,
            "vendor": vendor,
            "entry": dict(entry),
            # multipool's configurations: the worker reads these with its own multipool
            "environ": None if environ is None else dict(environ),
            "threads": threads,
            "view_us": view_us,
        })

    def _send(self, payload: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(payload) + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            raise WorkerError(f"worker {self.config!r} exited (code {code}); see stderr")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"worker {self.config!r}: {reply['error']}")
        return reply

    def ready(self) -> dict[str, Any]:
        return self._receive()

    def run(self, requests: int) -> dict[str, Any]:
        self._send({"cmd": "run", "requests": requests})
        return self._receive()

    def quit(self) -> dict[str, Any] | None:
        reply = None
        try:
            if self.proc.poll() is None:
                self._send({"cmd": "quit"})
                reply = self._receive()
            self.proc.wait(timeout=30)
        except Exception:
            self.kill()
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class PeakMonitor:
    """Samples the server's connection count for one (user, database) while a run goes on."""

    def __init__(self, server: Any, interval: float = 0.02) -> None:
        self.server = server
        self.interval = interval
        self._target: tuple[str, str] | None = None
        self._peak = 0
        self._samples = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="peak-monitor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped:
            with self._lock:
                target = self._target
            if target is None:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                count = self.server.connection_count(user=target[0], database=target[1])
            except Exception:  # pragma: no cover - a sample lost is no harm
                count = 0
            with self._lock:
                if self._target == target:
                    self._peak = max(self._peak, count)
                    self._samples += 1
            time.sleep(self.interval)

    def watch(self, user: str, database: str) -> None:
        count = self.server.connection_count(user=user, database=database)
        with self._lock:
            self._target = (user, database)
            self._peak = count
            self._samples = 1
        self._wake.set()

    def done(self) -> tuple[int, int]:
        """Stop watching; the peak (including one final sample) and the sample count."""
        with self._lock:
            target, self._target = self._target, None
        assert target is not None
        last = self.server.connection_count(user=target[0], database=target[1])
        with self._lock:
            return max(self._peak, last), self._samples + 1

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=5)


def _summarize_config(
    config: str,
    runs: list[dict[str, Any]],
    *,
    threads: int,
    max_overflow: int,
    sessions_opened: int | None,
    open_after: int,
    final_pool: dict[str, Any] | None,
    warmup: dict[str, Any],
) -> dict[str, Any]:
    latencies = [us for run in runs for us in run["latencies_us"]]
    total_requests = sum(run["requests"] for run in runs)
    per_round_opened = [run["server_opened"] for run in runs]
    if sessions_opened is None and all(v is not None for v in per_round_opened):
        sessions_opened = sum(per_round_opened)
    pooled = config in ("django_pool", "dj_db_conn_pool", "multipool")
    summary: dict[str, Any] = {
        "label": LABELS[config],
        "description": CONFIGS[config],
        "requests": total_requests,
        "rps_median": rounded(median(run["rps"] for run in runs), 1),
        "rps_rounds": [rounded(run["rps"], 1) for run in runs],
        "p50_ms": rounded(_ms(percentile(latencies, 50))),
        "p99_ms": rounded(_ms(percentile(latencies, 99))),
        "mean_ms": rounded(_ms(sum(latencies) / len(latencies) if latencies else None)),
        "errors": sum(run["errors"] for run in runs),
        "error_samples": sorted({e for run in runs for e in run["error_samples"]})[:5],
        "server_connections": {
            "opened": sessions_opened,
            "opened_per_request": rounded(
                sessions_opened / total_requests if sessions_opened is not None and
                total_requests else None, 4
            ),
            "peak": max(run["server_peak"] for run in runs) if runs else None,
            "open_after": open_after,
            "limit": threads + max_overflow if pooled else None,
            "samples": sum(run["server_samples"] for run in runs),
        },
        "client_connects": sum(run["client_connects"] for run in runs),
        # the worker process's CPU time (user + system, all threads) per request
        "client_cpu_us": rounded(
            median(
                run["cpu_s"] / run["requests"] * 1e6
                for run in runs if run["requests"]
            ),
            1,
        ),
        "client_connects_warmup": warmup.get("client_connects"),
        "pool_stats": final_pool,
    }
    return summary


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def run_group(
    server: Any,
    *,
    tls_variant: str,
    configs: Sequence[str],
    threads: int,
    requests: int,
    rounds: int,
    warmup: int,
    max_overflow: int,
    slow_requests: int | None = None,
    view_us: float = 0,
    processes: int = 1,
    client_cpus: frozenset[int] | None = None,
    baseline_code: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Every configuration against one server with one TLS variant, interleaved.

    The rounds are split into ``processes`` blocks, and every configuration
    gets a fresh worker process (warmed up again) for each block: two
    processes running the very same code differ by a few percent (memory
    layout, hash seed), and one process per configuration would pass that
    difference off as the configuration's."""
    engine = server.engine
    user, tls = TLS_VARIANTS[tls_variant]
    databases = {c: database_name(c) for c in configs}

    def say(msg: str) -> None:
        if log is not None:
            print(f"[{engine}/{tls_variant}] {msg}", file=log, flush=True)

    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    per_round: list[dict[str, float]] = []
    orders = balanced_orders(configs, rounds)
    warm: dict[str, dict[str, Any]] = {}
    code: dict[str, str | None] = {}  # the multipool package each worker imported
    opened: dict[str, int] | None = dict.fromkeys(configs, 0)
    open_after: dict[str, int] = {}
    monitor = PeakMonitor(server)
    try:
        for block in round_blocks(rounds, processes):
            workers: dict[str, Worker] = {}
            try:
                for config in configs:
                    entry = config_entry(
                        config,
                        server,
                        user=user,
                        tls=tls,
                        database=databases[config],
                        threads=threads,
                        max_overflow=max_overflow,
                    )
                    workers[config] = Worker(
                        config, engine, entry, threads, view_us, cpus=client_cpus,
                        code_dir=baseline_code if config == "multipool_baseline" else None,
                        environ=config_environ(
                            config, server, user=user, tls=tls, database=databases[config],
                            threads=threads, max_overflow=max_overflow,
                        ),
                    )
                for config, worker in workers.items():
                    code[config] = worker.ready().get("multipool")
                for config, worker in workers.items():
                    warm[config] = worker.run(warmup)
                    if warm[config]["errors"]:
                        raise WorkerError(
                            f"{config}: warm-up failed: {warm[config]['error_samples']}"
                        )
                say(f"{len(workers)} worker processes warmed up ({warmup} requests/thread each)")
                baseline = settled_sessions(server, list(databases.values()))
                for r in block:
                    this_round: dict[str, float] = {}
                    for config in orders[r]:
                        before = connections_counter(server)
                        monitor.watch(user, databases[config])
                        n = (
                            requests if config not in SLOW or slow_requests is None
                            else slow_requests
                        )
                        result = workers[config].run(n)
                        peak, samples = monitor.done()
                        after = connections_counter(server)
                        result["rps"] = result["requests"] / result["wall_s"]
                        result["server_peak"] = peak
                        result["server_samples"] = samples
                        result["server_opened"] = (
                            after - before if after is not None and before is not None
                            else None
                        )
                        result["process"] = workers[config].proc.pid
                        runs[config].append(result)
                        this_round[config] = result["rps"]
                    per_round.append(this_round)
                    say(
                        f"round {r + 1}/{rounds}: "
                        + ", ".join(f"{c} {this_round[c]:.0f}/s" for c in configs)
                    )
                final = settled_sessions(server, list(databases.values()))
                if baseline is None or final is None or opened is None:
                    opened = None
                else:
                    for config in configs:
                        db = databases[config]
                        opened[config] += final.get(db, 0) - baseline.get(db, 0)
                open_after = {
                    c: server.connection_count(user=user, database=databases[c]) for c in configs
                }
            finally:
                for worker in workers.values():
                    worker.quit()
            for db in databases.values():
                server.wait_for_connection_count(0, user=user, database=db, timeout=10)
    finally:
        monitor.close()

    summaries: dict[str, dict[str, Any]] = {}
    for config in configs:
        last_pool = runs[config][-1]["pool"] if runs[config] else None
        summaries[config] = _summarize_config(
            config,
            runs[config],
            threads=threads,
            max_overflow=max_overflow,
            sessions_opened=None if opened is None else opened[config],
            open_after=open_after.get(config, 0),
            final_pool=last_pool,
            warmup=warm.get(config, {}),
        )
        for run in runs[config]:
            run.pop("latencies_us", None)

    ratios: dict[str, Any] = {}
    if "multipool" in configs:
        for other in configs:
            if other == "multipool":
                continue
            ratios[f"multipool_vs_{other}"] = round_ratios(per_round, "multipool", other)
    for other in configs:
        if other != "persistent" and "persistent" in configs:
            ratios[f"{other}_vs_persistent"] = round_ratios(per_round, other, "persistent")
    return {
        "engine": engine,
        "flavor": server.flavor,
        "server_version": server.version,
        "tls": tls_variant,
        "user": user,
        "sslmode": tls,
        "configs": summaries,
        "multipool_code": {c: p for c, p in code.items() if c in MULTIPOOL_CONFIGS},
        "ratios": ratios,
        "rounds": [{k: rounded(v, 1) for k, v in r.items()} for r in per_round],
        "orders": orders,
        "processes_per_config": len(round_blocks(rounds, processes)),
        "runs": {c: runs[c] for c in configs},
    }


def check_targets(groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the issue for each group: value, goal, met."""
    checks: list[dict[str, Any]] = []

    def add(group: Mapping[str, Any], name: str, key: str, goal: float) -> None:
        entry = group["ratios"].get(key) or {}
        value = entry.get("median")
        checks.append({
            "engine": group["engine"],
            "tls": group["tls"],
            "target": name,
            "value": value,
            "ci95": entry.get("ci95"),
            "goal": goal,
            "met": None if value is None else value >= goal,
        })

    for group in groups:
        configs = group["configs"]
        if "multipool" not in configs:
            continue
        if "persistent" in configs:
            add(group, "multipool >= 0.95x persistent", "multipool_vs_persistent",
                TARGETS["vs_persistent"])
        if "dj_db_conn_pool" in configs:
            add(group, "multipool >= 1.2x django-db-connection-pool",
                "multipool_vs_dj_db_conn_pool", TARGETS["vs_dj_db_conn_pool"])
        if "django_pool" in configs:
            add(group, "multipool >= 1.0x Django native pool",
                "multipool_vs_django_pool", TARGETS["vs_django_pool"])
        if "conn_per_request" in configs and group["tls"] != "off":
            add(group, "multipool >= 5x conn-per-request (TLS)",
                "multipool_vs_conn_per_request", TARGETS["vs_conn_per_request_tls"])
        conns = configs["multipool"]["server_connections"]
        limit, peak = conns["limit"], conns["peak"]
        checks.append({
            "engine": group["engine"],
            "tls": group["tls"],
            "target": "multipool server connections <= pool_size + max_overflow",
            "value": peak,
            "ci95": None,
            "goal": limit,
            "met": None if peak is None else peak <= limit,
        })
    return checks


def run(
    servers: Mapping[str, Any],
    *,
    threads: int = 4,
    requests: int = 1000,
    rounds: int = 9,
    warmup: int | None = None,
    tls_variants: Sequence[str] = tuple(TLS_VARIANTS),
    configs: Sequence[str] | None = None,
    max_overflow: int = 5,
    slow_requests: int | None = 250,
    view_us: float = 0,
    processes: int = 1,
    placement: Placement | None = None,
    baseline_code: Path | None = None,
    cleanup: bool = True,
    log: Any = sys.stderr,
) -> dict[str, Any]:
    """The benchmark's core: run every group and return the results (JSON-ready).

    ``servers`` maps an engine (``postgresql``, ``mysql``) to a
    :class:`multipool.testing.TestServer`. ``requests`` is per thread and round.
    With a ``placement``, worker processes run on its client CPUs and each
    server multipool started on its server CPUs (see :class:`Placement`).
    """
    if warmup is None:
        warmup = max(5, min(100, requests // 10))
    started = time.monotonic()
    meta = machine_info()
    placed = None if placement is None else placement.pin_servers(servers)
    groups: list[dict[str, Any]] = []
    for engine in ENGINES:
        server = servers.get(engine)
        if server is None:
            continue
        offered = available_configs(engine)
        if baseline_code is not None:
            offered = (*offered, "multipool_baseline")
        engine_configs = [c for c in offered if configs is None or c in configs]
        for config in engine_configs:
            create_bench_database(server, database_name(config))
        try:
            for tls_variant in tls_variants:
                groups.append(
                    run_group(
                        server,
                        tls_variant=tls_variant,
                        configs=engine_configs,
                        threads=threads,
                        requests=requests,
                        rounds=rounds,
                        warmup=warmup,
                        max_overflow=max_overflow,
                        slow_requests=None if slow_requests is None
                        else min(slow_requests, requests),
                        view_us=view_us,
                        processes=processes,
                        client_cpus=None if placement is None else placement.client,
                        baseline_code=baseline_code,
                        log=log,
                    )
                )
        finally:
            if cleanup:
                for config in engine_configs:
                    drop_bench_database(server, database_name(config))
    meta["loadavg_end"] = machine_info()["loadavg"]
    return {
        "benchmark": "request_cycle",
        "parameters": {
            "threads": threads,
            "requests_per_thread_per_round": requests,
            "requests_per_thread_per_round_slow": {
                c: requests if slow_requests is None else min(slow_requests, requests)
                for c in SLOW
            },
            "rounds": rounds,
            "processes_per_config": max(1, min(processes, rounds)),
            "warmup_per_thread": warmup,
            "pool_size": threads,
            "max_overflow": max_overflow,
            "query": "SELECT name FROM bench_item WHERE id = %s (primary key, 1000 rows)",
            "view_us": view_us,
            "placement": placed,
        },
        "machine": meta,
        "servers": {engine: server_info(s) for engine, s in servers.items()},
        "duration_s": round(time.monotonic() - started, 1),
        "groups": groups,
        "targets": check_targets(groups),
    }


# -- output --------------------------------------------------------------------------


def markdown_table(results: Mapping[str, Any]) -> str:
    """The results as a Markdown table (one row per engine x TLS x configuration)."""
    lines = [
        "| Server | TLS | Configuration | req/s (median) | x persistent | "
        "x persistent 95% CI | multipool x this | client CPU µs/req | p50 ms | p99 ms | "
        "server conns opened | peak open | errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group in results["groups"]:
        server = f"{group['flavor']} {group['server_version'].removesuffix('-MariaDB')}"
        ratios = group["ratios"]
        for config, summary in group["configs"].items():
            vs_entry = ratios.get(f"{config}_vs_persistent") or {}
            vs_persistent = 1.0 if config == "persistent" else vs_entry.get("median")
            mp_vs = (
                None if config == "multipool"
                else (ratios.get(f"multipool_vs_{config}") or {}).get("median")
            )
            conns = summary["server_connections"]
            name = f"**{summary['label']}**" if config == "multipool" else summary["label"]
            lines.append(
                f"| {server} | {group['tls']} | {name} | {fmt(summary['rps_median'], '.0f')} | "
                f"{fmt(vs_persistent)} | {fmt_ci(vs_entry.get('ci95'))} | {fmt(mp_vs)} | "
                f"{fmt(summary.get('client_cpu_us'), '.0f')} | {fmt(summary['p50_ms'], '.3f')} | "
                f"{fmt(summary['p99_ms'], '.3f')} | {fmt(conns['opened'], 'd')} | "
                f"{fmt(conns['peak'], 'd')} | {summary['errors']} |"
            )
    return "\n".join(lines)


def targets_table(results: Mapping[str, Any]) -> str:
    lines = [
        "| Server | TLS | Target | Value | 95% CI | Goal | Met |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for check in results["targets"]:
        value = check["value"]
        shown = fmt(value, "d") if isinstance(value, int) else fmt(value)
        met = {True: "yes", False: "**no**", None: "-"}[check["met"]]
        lines.append(
            f"| {check['engine']} | {check['tls']} | {check['target']} | {shown} | "
            f"{fmt_ci(check.get('ci95'))} | {check['goal']} | {met} |"
        )
    return "\n".join(lines)


def chart(results: Mapping[str, Any], path: Path) -> Path:
    """A PNG: throughput per configuration (left) and p99 latency (right), per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = results["groups"]
    # the A/A control is a second copy of persistent: the table shows it
    order = [
        c for c in CONFIGS
        if c != "persistent_control" and any(c in g["configs"] for g in groups)
    ]
    colors = {
        "conn_per_request": "#b0b0b0",
        "persistent": "#4c72b0",
        "django_pool": "#dd8452",
        "dj_db_conn_pool": "#937860",
        "multipool": "#55a868",
    }
    names = [
        f"{g['flavor']}\nTLS {g['tls']}".replace("postgresql", "PostgreSQL")
        .replace("mariadb", "MariaDB").replace("mysql", "MySQL")
        for g in groups
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    width = 0.8 / max(1, len(order))
    for panel, (key, title, unit) in zip(
        axes,
        (("rps_median", "Throughput (median of rounds)", "requests/s"),
         ("p99_ms", "p99 latency", "ms (log scale)")),
        strict=True,
    ):
        for i, config in enumerate(order):
            xs, ys = [], []
            for j, group in enumerate(groups):
                summary = group["configs"].get(config)
                if summary is not None and summary[key] is not None:
                    xs.append(j + (i - (len(order) - 1) / 2) * width)
                    ys.append(summary[key])
            bars = panel.bar(xs, ys, width, label=LABELS[config], color=colors.get(config))
            if key == "rps_median":
                panel.bar_label(bars, fmt="%.0f", fontsize=6, rotation=90, padding=2)
        panel.set_xticks(range(len(groups)), names)
        panel.set_title(title)
        panel.set_ylabel(unit)
        if key == "p99_ms":
            panel.set_yscale("log")
        else:
            panel.margins(y=0.15)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    params = results["parameters"]
    machine = results["machine"]
    fig.suptitle(
        f"Django request cycle, {params['threads']} threads, indexed lookup"
        + (f" + {params['view_us']:g} µs view work" if params.get("view_us") else "")
        + "; "
        f"{machine['cpus']} CPUs ({machine['cpu']})"
        + (
            f"; client on CPU {','.join(map(str, params['placement']['client']))}, "
            f"server on CPU {','.join(map(str, params['placement']['server']))}"
            if params.get("placement") else ""
        ),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@contextlib.contextmanager
def checkout_of(ref: str) -> Iterator[Path]:
    """A temporary directory holding the ``multipool`` package as of git ``ref``."""
    with tempfile.TemporaryDirectory(prefix="multipool-baseline-") as directory:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", ref, "multipool"],
            capture_output=True, check=True,
        )
        subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
        yield Path(directory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.request_cycle", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--threads", type=int, default=4, help="threads per process (= pool size)")
    parser.add_argument(
        "--requests", type=int, default=1000, help="requests per thread per round (default 1000)"
    )
    parser.add_argument(
        "--slow-requests",
        type=int,
        default=250,
        help="requests per thread per round for CONN_MAX_AGE=0 (default 250, at most --requests)",
    )
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="worker processes per configuration, one after another, each for a block "
        "of rounds (default 3)",
    )
    parser.add_argument(
        "--view-us",
        type=float,
        default=0,
        help="µs of CPU-bound Python per request after the query, like a view (default 0)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests per thread")
    parser.add_argument("--engines", default=",".join(ENGINES), help="postgresql,mysql")
    parser.add_argument("--tls", default=",".join(TLS_VARIANTS), help="off,verify-full")
    parser.add_argument("--configs", default=None, help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--max-overflow", type=int, default=5)
    parser.add_argument("--postgres-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--mysql-url", default=None, help="admin URL of an existing server")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--name", default="request_cycle", help="file name stem of the results")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--placement",
        choices=("split", "none"),
        default="split",
        help="split: worker processes on the lower half of the CPUs, servers started "
        "here on the upper half (default; see benchmarks/README.md); none: wherever "
        "the scheduler puts them",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        default=None,
        help="also run multipool as of this git commit (configuration multipool_baseline), "
        "to measure a change against the code before it in the same run",
    )
    args = parser.parse_args(argv)

    engines, tls_variants, configs = parse_selection(parser, args.engines, args.tls, args.configs)
    with contextlib.ExitStack() as stack:
        baseline_code = None
        if args.baseline is not None:
            baseline_code = stack.enter_context(checkout_of(args.baseline))
        servers = stack.enter_context(
            open_servers(engines, postgres_url=args.postgres_url, mysql_url=args.mysql_url)
        )
        results = run(
            servers,
            threads=args.threads,
            requests=args.requests,
            rounds=args.rounds,
            warmup=args.warmup,
            tls_variants=tls_variants,
            configs=configs,
            max_overflow=args.max_overflow,
            slow_requests=args.slow_requests,
            view_us=args.view_us,
            processes=args.processes,
            placement=Placement.split() if args.placement == "split" else None,
            baseline_code=baseline_code,
        )
        results["baseline"] = args.baseline
    text = f"{markdown_table(results)}\n\n{targets_table(results)}"
    write_report(args.out, args.name, results, text)
    if not args.no_chart:
        print(f"chart:   {chart(results, args.out / f'{args.name}.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
