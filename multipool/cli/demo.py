"""``multipool demo``: a short simulated request load, pooled vs a new connection per request."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from multipool.cli.load import Progress, run_load
from multipool.cli.masking import Masker
from multipool.cli.output import EXIT_OK, EXIT_PROBLEMS, UsageError, ms, print_json, render_table
from multipool.cli.sources import (
    DEFAULT_PORTS,
    is_multipool,
    load_source,
    setup_django,
    vendor_label,
)
from multipool.status import pool_status, render_pool_status

#: result key -> what the run is called in the output
_LABELS = {"pooled": "pooled", "unpooled": "new connection per request"}


def cmd_demo(args: argparse.Namespace, masker: Masker) -> int:
    if args.requests < 1 or args.threads < 1:
        raise UsageError("--requests and --threads must be at least 1")
    origin, databases = _setup(masker)
    aliases = _demo_aliases(args.alias, databases)
    show_progress = not args.no_progress and not args.json and sys.stderr.isatty()
    if not args.json:
        print(f"source: {origin}")
        print(
            f"multipool demo: {args.requests} requests on {args.threads} threads per run; each "
            "request is request_started -> one query -> request_finished"
        )
    results = []
    failed = False
    try:
        for alias in aliases:
            result = _demo_alias(alias, databases[alias], args, show_progress)
            results.append(result)
            failed = failed or _failed(result)
            # An alias that cannot connect is skipped; a failed run (or an earlier
            # alias that could not connect) ends the demo after this alias.
            if failed and "error" not in result:
                break
        final = pool_status({a: databases[a] for a in aliases})
        if not args.json:
            print()
            print("final pool stats (this process):")
            print(render_pool_status(final))
    finally:
        _close_pools(aliases)
    if args.json:
        print_json(
            {
                "requests": args.requests,
                "threads": args.threads,
                "source": origin,
                "aliases": results,
                "final_pool_stats": final,
                "ok": not failed,
            }
        )
    return EXIT_PROBLEMS if failed else EXIT_OK


def _setup(masker: Masker) -> tuple[str, dict[str, Any]]:
    """Django set up (the user's settings, or ours from the environment); returns
    ``(where the settings come from, DATABASES)``."""
    from django.conf import settings

    configured_by_us = not os.environ.get("DJANGO_SETTINGS_MODULE")
    already = settings.configured
    setup_django(None if already or not configured_by_us else load_source(masker))
    masker.add_databases(settings.DATABASES)
    if configured_by_us and not already:
        origin = "Django configured by multipool from the environment (no DJANGO_SETTINGS_MODULE)"
    elif configured_by_us:
        origin = "Django settings already configured in this process"
    else:
        origin = f"Django settings {os.environ['DJANGO_SETTINGS_MODULE']}"
    return origin, dict(settings.DATABASES)


def _demo_aliases(requested: list[str] | None, databases: Mapping[str, Any]) -> list[str]:
    """The ``--alias`` ones (each must use a multipool backend), else every multipool alias."""
    if requested:
        unknown = [a for a in requested if a not in databases]
        if unknown:
            raise UsageError(f"unknown alias {', '.join(unknown)}")
        aliases = list(requested)
    else:
        aliases = [a for a, e in databases.items() if is_multipool(e)]
    not_ours = [a for a in aliases if not is_multipool(databases[a])]
    if not_ours:
        raise UsageError(f"not a multipool alias: {', '.join(not_ours)}")
    if not aliases:
        raise UsageError("no database alias uses a multipool backend")
    return aliases


def _demo_alias(
    alias: str, entry: Mapping[str, Any], args: argparse.Namespace, show_progress: bool
) -> dict[str, Any]:
    """An untimed warm-up, then the unpooled and the pooled run (printed unless
    ``--json``). A result with ``error`` means the alias could not connect."""
    from multipool.config import spec_from_settings
    from multipool.pools import manager

    spec = spec_from_settings(alias, entry)
    if not args.json:
        print()
        print(
            f"alias {alias!r}: {_demo_target(entry)} "
            f"(pool_size {spec.pool.size}, max_overflow {spec.pool.max_overflow}"
            f"{', pooling DISABLED in the settings' if not spec.pool.enabled else ''})"
        )
    # Untimed warm-up (imports, first-use setup): the timed runs compare steady states.
    warm = run_load(
        alias,
        requests=args.threads,
        threads=args.threads,
        pooled=False,
        progress=Progress("", 1, False),
    )
    if warm["error"]:
        if not args.json:
            print(f"  cannot connect: {warm['error']}", file=sys.stderr)
        return {"alias": alias, "vendor": spec.vendor, "error": warm["error"]}
    runs = _timed_runs(alias, args, show_progress)
    stats = manager.stats(alias).get(alias)
    result: dict[str, Any] = {
        "alias": alias,
        "vendor": spec.vendor,
        "target": _demo_target(entry),
        "pool_size": spec.pool.size,
        "max_overflow": spec.pool.max_overflow,
        "conn_max_age": spec.conn_max_age,
        "unpooled": runs.get(_LABELS["unpooled"]),
        "pooled": runs.get(_LABELS["pooled"]),
        "pool_stats": stats.as_dict() if stats is not None else None,
    }
    p, u = result["pooled"], result["unpooled"]
    if p and u and p["requests_per_second"] and u["requests_per_second"]:
        result["speedup"] = p["requests_per_second"] / u["requests_per_second"]
    if not args.json:
        _print_demo_result(result)
    return result


def _demo_target(entry: Mapping[str, Any]) -> str:
    """``postgresql db.example:5432/app`` or ``sqlite /path/db.sqlite3``."""
    vendor = vendor_label(entry)
    if vendor == "sqlite":
        return f"sqlite {entry.get('NAME')}"
    host = entry.get("HOST") or "localhost"
    port = entry.get("PORT") or DEFAULT_PORTS.get(vendor, "")
    return f"{vendor} {host}:{port}/{entry.get('NAME')}"


def _timed_runs(
    alias: str, args: argparse.Namespace, show_progress: bool
) -> dict[str, dict[str, Any]]:
    """Label -> result of the unpooled run, then of the pooled one (unless the first failed)."""
    runs = {}
    for mode in ("unpooled", "pooled"):
        label = _LABELS[mode]
        runs[label] = run_load(
            alias,
            requests=args.requests,
            threads=args.threads,
            pooled=mode == "pooled",
            progress=Progress(label, args.requests, show_progress),
        )
        if runs[label]["error"]:
            break
    return runs


def _failed(result: Mapping[str, Any]) -> bool:
    """The alias could not connect, or one of its runs failed."""
    runs = [result.get("pooled"), result.get("unpooled")]
    return "error" in result or any(run and run["error"] for run in runs)


def _close_pools(aliases: list[str]) -> None:
    """Close this process's connections and the demo's pools."""
    from django.db import connections

    from multipool.pools import manager

    with contextlib.suppress(Exception):
        connections.close_all()
    for alias in aliases:
        manager.dispose(alias)


def _print_demo_result(result: Mapping[str, Any]) -> None:
    runs = [(k, result[k]) for k in ("pooled", "unpooled") if result.get(k)]

    def fmt(run: Mapping[str, Any], key: str) -> str:
        value = run.get(key)
        if value is None:
            return "-"
        if key == "requests_per_second":
            return f"{value:,.0f}"
        if key == "seconds":
            return f"{value:.3f} s"
        if key.endswith("_seconds"):
            return ms(value)
        return str(value)

    metrics = [
        ("requests", "requests"),
        ("requests/s", "requests_per_second"),
        ("total time", "seconds"),
        ("latency p50", "latency_p50_seconds"),
        ("latency p95", "latency_p95_seconds"),
        ("connects", "connects"),
        ("server sessions", "server_sessions"),
    ]
    rows = [[name, *(fmt(run, key) for _, run in runs)] for name, key in metrics]
    print(render_table(["", *(_LABELS[mode] for mode, _ in runs)], rows, indent="  "))
    for mode, run in runs:
        if run.get("error"):
            print(f"  {_LABELS[mode]} run failed: {run['error']}", file=sys.stderr)
    p, u = result.get("pooled"), result.get("unpooled")
    if result.get("speedup") and p and u:
        print(
            f"  pooled: {result['speedup']:.1f}x the requests/s, "
            f"{p['connects']} connects instead of {u['connects']}"
        )
    if result.get("conn_max_age") not in (0,):
        print(
            "  note: CONN_MAX_AGE is not 0, so each thread keeps its connection checked out "
            "(see multipool.W003)"
        )
