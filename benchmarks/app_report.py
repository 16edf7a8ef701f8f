"""The application-server benchmark's summaries, ratios, targets and tables
(:mod:`benchmarks.app_servers` measures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.app_project.configs import APP_CONFIGS, APP_LABELS
from benchmarks.common import fmt, fmt_ci, median, percentile, round_ratios, rounded
from benchmarks.request_cycle import targets_table

#: the goals the benchmark reports, under uvicorn on PostgreSQL (multipool's requests/s x
#: the other's): where Django's native pool exists and a TLS connect costs a handshake
TARGETS = {"django_pool": 1.0, "conn_per_request": 2.5}
#: the configurations every ratio is taken against
REFERENCES = ("conn_per_request", "django_pool")
#: pool counter -> its name in the pool's own statistics (``GET /pool/``)
POOL_COUNTERS: dict[str, dict[str, str]] = {
    "multipool": {
        "checkouts": "checkouts", "waits": "waits", "timeouts": "timeouts",
        "connects": "connects",
    },
    # psycopg_pool's get_stats(): requests_queued counts the requests that had to wait
    "django_pool": {
        "checkouts": "requests_num", "waits": "requests_queued",
        "timeouts": "requests_errors", "connects": "connections_num",
    },
}
POOL_COUNTERS["django_pool_control"] = POOL_COUNTERS["django_pool"]


def _merge_blocks(blocks: Sequence[Mapping[str, Any]], views: Sequence[str],
                  configs: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runs and per-round throughputs of consecutive blocks, in round order."""
    runs = {v: {c: [run for b in blocks for run in b["runs"][v][c]] for c in configs}
            for v in views}
    per_round = {v: [r for b in blocks for r in b["per_round"][v]] for v in views}
    return runs, per_round


def _summarize_view(
    config: str, runs: list[dict[str, Any]], budget: int | None
) -> dict[str, Any]:
    latencies = [ms for run in runs for ms in run["latencies_ms"]]
    peak = max((run["server_peak"] for run in runs), default=None)
    pools = [run["pool"] for run in runs if run["pool"] is not None]
    return {
        "label": APP_LABELS[config],
        "requests": sum(run["requests"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "error_samples": sorted({e for run in runs for e in run["error_samples"]})[:5],
        "rps_median": rounded(median(run["rps"] for run in runs), 1),
        "rps_rounds": [rounded(run["rps"], 1) for run in runs],
        "p50_ms": rounded(percentile(latencies, 50)),
        "p99_ms": rounded(percentile(latencies, 99)),
        "peak_connections": peak,
        "budget": budget,
        "within_budget": None if budget is None or peak is None else peak <= budget,
        "pool": (
            {k: sum(p[k] for p in pools) for k in pools[0]} if pools and len(pools) == len(runs)
            else None
        ),
    }


def _connections(
    blocks: Sequence[Mapping[str, Any]], runs: Mapping[str, Mapping[str, list[dict[str, Any]]]],
    config: str,
) -> dict[str, Any]:
    """Server connections of ``config`` over every view and round: ``opened``
    (PostgreSQL: ``pg_stat_database.sessions`` around each block; MySQL: the
    ``Connections`` counter around each run) and ``open_after`` the last round."""
    config_runs = [run for view_runs in runs.values() for run in view_runs[config]]
    requests = sum(run["requests"] for run in config_runs)
    if all(b["opened"] is not None for b in blocks):
        opened: int | None = sum(b["opened"][config] for b in blocks)
    elif config_runs and all(run["server_opened"] is not None for run in config_runs):
        opened = sum(run["server_opened"] for run in config_runs)
    else:
        opened = None
    return {
        "opened": opened,
        "opened_per_request": (
            rounded(opened / requests, 4) if opened is not None and requests else None
        ),
        "open_after": blocks[-1]["open_after"][config] if blocks else None,
    }


def _ratios(
    per_round: list[dict[str, float]], configs: Sequence[str], block_sizes: Sequence[int]
) -> dict[str, Any]:
    return {
        f"{config}_vs_{reference}": round_ratios(per_round, config, reference, block_sizes)
        for reference in REFERENCES if reference in configs
        for config in configs if config != reference
    }


def summarize_group(
    blocks: Sequence[Mapping[str, Any]], *, configs: Sequence[str], views: Sequence[str],
    opts: Any,
) -> dict[str, Any]:
    """A group's results from its blocks of rounds: per view, each configuration's
    summary, the ratios and each round's requests/s; per configuration, its server
    connections; the runs themselves (without their latencies)."""
    runs, per_round = _merge_blocks(blocks, views, configs)
    summary = {
        view: {
            "configs": {
                c: _summarize_view(c, runs[view][c], opts.budget(c)) for c in configs
            },
            "ratios": _ratios(
                per_round[view], configs, [len(b["per_round"][view]) for b in blocks]
            ),
            "rounds": [{k: rounded(v, 1) for k, v in r.items()} for r in per_round[view]],
        }
        for view in views
    }
    for view_runs in runs.values():
        for config_runs in view_runs.values():
            for run in config_runs:
                run.pop("latencies_ms", None)
    return {
        "views": summary,
        "connections": {c: _connections(blocks, runs, c) for c in configs},
        "processes_per_config": len(blocks),
        "runs": runs,
    }


# -- targets ------------------------------------------------------------------------


def check_targets(groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Under uvicorn on PostgreSQL, each view: multipool's requests/s against Django's
    native pool and ``CONN_MAX_AGE=0``; everywhere: multipool within its budget."""
    checks: list[dict[str, Any]] = []
    for group in groups:
        where = {"engine": group["engine"], "tls": group["tls"]}
        for view, results in group["views"].items():
            if "multipool" not in results["configs"]:
                continue
            prefix = f"{group['app_server']} {view}: multipool"
            if group["app_server"] == "uvicorn" and group["engine"] == "postgresql":
                for reference, goal in TARGETS.items():
                    entry = results["ratios"].get(f"multipool_vs_{reference}")
                    if entry is None:
                        continue
                    checks.append({
                        **where,
                        "target": f"{prefix} >= {goal}x {APP_LABELS[reference]}",
                        "value": entry["median"], "ci95": entry["ci95"], "goal": goal,
                        "met": None if entry["median"] is None else entry["median"] >= goal,
                    })
            mp = results["configs"]["multipool"]
            checks.append({
                **where,
                "target": f"{prefix} peak server connections <= workers x (pool + overflow)",
                "value": mp["peak_connections"], "ci95": None, "goal": mp["budget"],
                "met": mp["within_budget"],
            })
    return checks


# -- tables -------------------------------------------------------------------------


def _server_name(group: Mapping[str, Any]) -> str:
    return f"{group['flavor']} {group['server_version'].removesuffix('-MariaDB')}"


def results_table(results: Mapping[str, Any]) -> str:
    """One row per engine x application server x view x configuration."""
    lines = [
        "| Server | App server | View | Configuration | req/s (median) | x CONN_MAX_AGE=0 "
        "(95% CI) | x Django pool (95% CI) | p50 ms | p99 ms | peak conns / budget "
        "| pool waits / checkouts | errors |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group in results["groups"]:
        for view, res in group["views"].items():
            for config, s in res["configs"].items():
                cells = [_server_name(group), group["app_server"], view,
                         f"**{s['label']}**" if config == "multipool" else s["label"],
                         fmt(s["rps_median"], ".0f")]
                for reference in REFERENCES:
                    entry = res["ratios"].get(f"{config}_vs_{reference}")
                    cells.append(
                        "1" if config == reference
                        else "-" if entry is None
                        else f"{fmt(entry['median'])} ({fmt_ci(entry['ci95'])})"
                    )
                pool = s["pool"]
                cells += [
                    fmt(s["p50_ms"], ".1f"), fmt(s["p99_ms"], ".1f"),
                    f"{fmt(s['peak_connections'], 'd')} / {fmt(s['budget'], 'd')}",
                    "-" if pool is None else f"{pool['waits']} / {pool['checkouts']}",
                    str(s["errors"]),
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def connections_table(results: Mapping[str, Any]) -> str:
    """Server connections per configuration, every view and round together."""
    lines = [
        "| Server | App server | Configuration | connections opened | per request "
        "| open after the last round |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for group in results["groups"]:
        for config, c in group["connections"].items():
            lines.append(
                f"| {_server_name(group)} | {group['app_server']} | {APP_LABELS[config]} | "
                f"{fmt(c['opened'], 'd')} | {fmt(c['opened_per_request'], '.3f')} | "
                f"{fmt(c['open_after'], 'd')} |"
            )
    return "\n".join(lines)


def markdown_report(results: Mapping[str, Any]) -> str:
    """The parameters, the results table, the connections table and the targets."""
    p = results["parameters"]
    machine = results["machine"]
    configs = sorted({c for g in results["groups"] for c in g["connections"]},
                     key=list(APP_CONFIGS).index)
    header = (
        f"{p['workers']} worker(s) (gthread: {p['threads']} threads each), "
        f"{p['concurrency']} concurrent clients, {p['requests']} requests per configuration, "
        f"view and round, {p['rounds']} rounds; TLS {p['tls']}; every pool "
        f"{p['pool_size']} + {p['max_overflow']} overflow per worker. "
        f"{machine['cpus']} CPUs ({machine['cpu']}), load {machine['loadavg']} to "
        f"{machine.get('loadavg_end')}.\n\n"
        + "\n".join(f"* {APP_LABELS[c]}: {APP_CONFIGS[c]}" for c in configs)
    )
    return "\n\n".join(
        (header, results_table(results), connections_table(results), targets_table(results))
    )
