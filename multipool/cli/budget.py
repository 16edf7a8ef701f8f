"""``multipool budget``: worst-case server connections of a fleet vs the server's limit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from multipool.cli.connect import direct_connection, fetch
from multipool.cli.masking import Masker
from multipool.cli.output import (
    EXIT_OK,
    EXIT_PROBLEMS,
    UsageError,
    error_text,
    plural,
    print_json,
    render_table,
)
from multipool.cli.sources import DEFAULT_PORTS, is_multipool, load_source, select_aliases
from multipool.errors import ConfigurationError

#: the transaction pooler the advice suggests per vendor
_POOLER_FOR = {"postgresql": "PgBouncer", "mysql": "ProxySQL"}

#: names of this machine besides 127.0.0.1 and ::1
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def server_host(host: str | None) -> str:
    """One name per server for the budget: every spelling of this machine (no host,
    a Unix socket, localhost, 127.0.0.1, ::1) is ``localhost``; addresses are
    normalized, names lower-cased. (Two names of one remote server still count
    twice: nothing short of asking the servers tells them apart.)"""
    import ipaddress

    if not host or host.startswith("/") or host.lower() in _LOOPBACK_NAMES:
        return "localhost"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower()
    return "localhost" if address.is_loopback else str(address)


def server_connection_limit(conn: Any) -> dict[str, int]:
    """The connections an application can open on this server, read from the server."""
    if conn.vendor == "postgresql":
        rows = fetch(
            conn,
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "COALESCE(current_setting('reserved_connections', true), '0')::int",
        )
        maximum, superuser, reserved = (int(v) for v in rows[0])
        return {
            "max_connections": maximum,
            "reserved": superuser + reserved,
            "available": maximum - superuser - reserved,
        }
    if conn.vendor == "mysql":
        maximum = int(fetch(conn, "SELECT @@max_connections")[0][0])
        return {"max_connections": maximum, "reserved": 0, "available": maximum}
    raise ValueError(f"no connection limit for {conn.vendor}")


def cmd_budget(args: argparse.Namespace, masker: Masker) -> int:
    if args.workers < 1 or args.hosts < 1 or args.threads < 1:
        raise UsageError("--workers, --hosts and --threads must be at least 1")
    if args.max_connections is not None and args.max_connections < 1:
        raise UsageError("--max-connections must be at least 1")
    source = load_source(masker)
    databases = select_aliases(source, args.alias)
    processes = args.workers * args.hosts
    masters = 0 if args.no_master else args.hosts
    groups, skipped = _group_by_server(
        databases, threads=args.threads, processes=processes, masters=masters
    )
    servers = [
        _server_budget(name, members, args, processes, masters) for name, members in groups.items()
    ]
    over = any(s["status"] == "OVER" for s in servers)
    failed = any(s["status"] == "FAILED" for s in servers)
    code = EXIT_PROBLEMS if over or failed else EXIT_OK
    if args.json:
        aliases = [
            {k: v for k, v in m.items() if not k.endswith("_setting") and k != "entry"}
            for members in groups.values()
            for m in members
        ]
        print_json(
            {
                "source": source.label,
                "workers": args.workers,
                "hosts": args.hosts,
                "threads": args.threads,
                "processes": processes,
                "masters": masters,
                "aliases": aliases,
                "servers": servers,
                "skipped": skipped,
                "over_budget": over,
            }
        )
        return code
    print(
        f"fleet: {plural(args.hosts, 'host')} x {plural(args.workers, 'worker')} = "
        f"{processes} processes (source: {source.label})"
    )
    if masters:
        print(
            f"  + {plural(masters, 'pre-fork master')} (1 connection per alias each; "
            "--no-master if they never query)"
        )
    _print_tables(groups, servers, threads=args.threads)
    _print_notes(servers, skipped, connect=args.connect)
    return code


def _group_by_server(
    databases: Mapping[str, Any], *, threads: int, processes: int, masters: int
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """``({server: [alias demand, ...]}, [skipped alias, ...])``: the aliases sharing a
    server add up; SQLite aliases are skipped (no server)."""
    from multipool.config import spec_from_settings

    groups: dict[str, list[dict[str, Any]]] = {}
    skipped: list[dict[str, Any]] = []
    for alias, entry in databases.items():
        try:
            spec = spec_from_settings(alias, entry)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        if spec.vendor == "sqlite":
            skipped.append({"alias": alias, "reason": "SQLite is embedded: no server connections"})
            continue
        pooled = is_multipool(entry) and spec.pool.enabled
        per_process = spec.pool.size + spec.pool.max_overflow if pooled else threads
        port = spec.port or DEFAULT_PORTS.get(spec.vendor)
        server = f"{spec.vendor}://{server_host(spec.host)}:{port}"
        groups.setdefault(server, []).append(
            {
                "alias": alias,
                "entry": entry,
                "vendor": spec.vendor,
                "pooled": pooled,
                "pooler": spec.pool.pooler,
                "pool_size": spec.pool.size if pooled else None,
                "max_overflow": spec.pool.max_overflow if pooled else None,
                "per_process": per_process,
                "fleet": per_process * processes + masters,
                "size_setting": spec.setting("pool_size"),
                "overflow_setting": spec.setting("max_overflow"),
                "pooler_setting": spec.setting("pooler"),
            }
        )
    return groups, skipped


def _server_budget(
    server: str,
    members: list[dict[str, Any]],
    args: argparse.Namespace,
    processes: int,
    masters: int,
) -> dict[str, Any]:
    """One server's worst case against its limit (given, read with ``--connect``, or
    unknown); ``status`` is ``ok``, ``OVER``, ``FAILED`` (connect), ``n/a`` or ``unknown``."""
    demand = sum(m["fleet"] for m in members)
    info: dict[str, Any] = {
        "server": server,
        "vendor": members[0]["vendor"],
        "aliases": [m["alias"] for m in members],
        "demand": demand,
        "available": None,
        "max_connections": None,
        "status": "unknown",
        "advice": [],
    }
    behind_pooler = next((m["pooler"] for m in members if m["pooler"]), None)
    if behind_pooler:
        info["status"] = "n/a"
        info["note"] = (
            f"behind {behind_pooler}: compare with the pooler's client limit "
            "(max_client_conn), not the server's max_connections"
        )
    elif args.max_connections is not None:
        info["available"] = info["max_connections"] = args.max_connections
    elif args.connect:
        first = members[0]
        try:
            with direct_connection(first["alias"], first["entry"], timeout=args.timeout) as conn:
                info.update(server_connection_limit(conn))
        except Exception as exc:
            info["status"] = "FAILED"
            info["error"] = error_text(exc)
    if info["available"] is not None:
        available = int(info["available"])
        if demand > available:
            info["status"] = "OVER"
            info["advice"] = _budget_advice(members, available - masters * len(members), processes)
        else:
            info["status"] = "ok"
        info["headroom"] = available - demand
    return info


def _print_tables(
    groups: Mapping[str, list[dict[str, Any]]], servers: list[dict[str, Any]], *, threads: int
) -> None:
    """Per alias, then per server (nothing when every alias was skipped)."""
    not_pooled = f"not pooled ({plural(threads, 'thread')})"
    rows = [
        [
            m["alias"],
            f"{m['pool_size']}+{m['max_overflow']}" if m["pooled"] else not_pooled,
            m["per_process"],
            m["fleet"],
        ]
        for members in groups.values()
        for m in members
    ]
    if not rows:
        return
    print(render_table(["ALIAS", "POOL", "PER PROCESS", "FLEET WORST CASE"], rows))
    print()
    server_rows = [
        [
            s["server"],
            ", ".join(s["aliases"]),
            s["demand"],
            s.get("max_connections"),
            s.get("available"),
            s["status"],
        ]
        for s in servers
    ]
    headers = ["SERVER", "ALIASES", "WORST CASE", "MAX_CONNECTIONS", "AVAILABLE", "STATUS"]
    print(render_table(headers, server_rows))


def _print_notes(
    servers: list[dict[str, Any]], skipped: list[dict[str, Any]], *, connect: bool
) -> None:
    """Notes, connect errors and advice per server; skipped aliases; what to give next."""
    for s in servers:
        if s.get("note"):
            print(f"{s['server']}: {s['note']}")
        if s.get("error"):
            print(f"{s['server']}: connect failed: {s['error']}", file=sys.stderr)
        if s["status"] == "OVER":
            print()
            print(
                f"{s['server']} is over budget: {s['demand']} worst-case connections > "
                f"{s['available']} available."
            )
            for line in s["advice"]:
                print(f"  - {line}")
    for sk in skipped:
        print(f"{sk['alias']}: skipped ({sk['reason']})")
    if all(s["available"] is None for s in servers) and servers and not connect:
        print("give --max-connections K or --connect to compare with the server's limit")


def _budget_advice(members: list[dict[str, Any]], available: int, processes: int) -> list[str]:
    """How to fit the aliases of one server into ``available`` connections."""
    vendor = members[0]["vendor"]
    share = available // (processes * len(members))
    advice = []
    if share >= 1:
        for m in members:
            if m["pooled"]:
                size = max(1, (share + 1) // 2) if share > 1 else 1
                overflow = share - size
                advice.append(
                    f"{m['alias']}: keep pool_size + max_overflow <= {share} per process, "
                    f"e.g. {m['size_setting']}={size} and {m['overflow_setting']}={overflow}"
                )
            else:
                advice.append(
                    f"{m['alias']}: not pooled; use a multipool backend to cap it at "
                    f"{share} per process"
                )
    else:
        advice.append(
            f"even one connection per process is too many ({processes} processes, "
            f"{available} available)"
        )
    advice.append(
        "or run fewer workers/hosts, or raise max_connections on the server (memory permitting)"
    )
    pooler = _POOLER_FOR.get(vendor)
    if pooler:
        setting = members[0]["pooler_setting"]
        advice.append(
            f"or put {pooler} in front of the server (transaction pooling) and set "
            f"{setting}={pooler.lower()}"
        )
    return advice
