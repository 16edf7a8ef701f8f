"""``multipool check``: the system checks; ``--connect`` also connects to each alias."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from multipool.cli.connect import probe
from multipool.cli.masking import Masker
from multipool.cli.output import EXIT_OK, EXIT_PROBLEMS, ms, print_json, render_table
from multipool.cli.sources import ensure_settings, load_source, select_aliases

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def _message_dict(message: Any) -> dict[str, Any]:
    level = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(
        message.level, str(message.level)
    )
    return {
        "id": message.id,
        "level": level,
        "object": None if message.obj is None else str(message.obj),
        "message": message.msg,
        "hint": message.hint,
    }


def _not_silenced(messages: list[Any]) -> list[Any]:
    """Without the ids in ``SILENCED_SYSTEM_CHECKS`` (Django settings), as ``manage.py check``."""
    from django.conf import settings

    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()) or ())
    return [m for m in messages if m.id not in silenced]


def cmd_check(args: argparse.Namespace, masker: Masker) -> int:
    from multipool.checks import check_databases, check_deployment

    source = load_source(masker)
    databases = select_aliases(source, args.alias)
    ensure_settings()
    # every alias counts (a replica names its primary); only the selected are reported
    messages = check_databases(source.databases, source.routers, aliases=databases)
    if args.deploy:
        messages += check_deployment(source.databases, aliases=databases)
    messages = _not_silenced(messages)
    fail_level = _LEVELS[args.fail_level]
    failing = [m for m in messages if m.level >= fail_level]
    probes = []
    if args.connect:
        probes = [probe(a, e, timeout=args.timeout) for a, e in databases.items()]
    failed_connects = [p for p in probes if not p["ok"]]
    code = EXIT_PROBLEMS if failing or failed_connects else EXIT_OK

    if args.json:
        print_json(
            {
                "source": source.label,
                "aliases": list(databases),
                "messages": [_message_dict(m) for m in messages],
                "connections": probes if args.connect else None,
                "ok": code == EXIT_OK,
            }
        )
        return code

    print(f"source: {source.label} ({len(databases)} alias{'es' if len(databases) != 1 else ''})")
    for m in messages:
        print(str(m))
    errors = sum(1 for m in messages if m.is_serious())
    warnings = len(messages) - errors
    if messages:
        print(
            f"System check identified {len(messages)} issue{'s' if len(messages) != 1 else ''} "
            f"({errors} error{'s' if errors != 1 else ''}, "
            f"{warnings} warning{'s' if warnings != 1 else ''})."
        )
    else:
        print("System check identified no issues.")
    if args.connect:
        rows = []
        for p in probes:
            status = "ok" if p["ok"] else "FAILED"
            rows.append(
                [
                    p["alias"],
                    status,
                    p.get("server"),
                    p.get("tls_protocol")
                    or ("n/a" if p["vendor"] == "sqlite" else "none" if p["ok"] else None),
                    p.get("tls_cipher"),
                    ms(p.get("connect_seconds")),
                    ms(p.get("rtt_seconds")),
                ]
            )
        print()
        print(render_table(["ALIAS", "STATUS", "SERVER", "TLS", "CIPHER", "CONNECT", "RTT"], rows))
        for p in probes:
            if p.get("note"):
                print(f"{p['alias']}: {p['note']}")
            if not p["ok"]:
                print(f"{p['alias']}: connect failed: {p['error']}", file=sys.stderr)
    return code
