"""``multipool check``: the system checks; ``--connect`` also connects to each alias."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from multipool.cli.connect import probe
from multipool.cli.masking import Masker
from multipool.cli.output import EXIT_OK, EXIT_PROBLEMS, ms, plural, print_json, render_table
from multipool.cli.sources import Source, ensure_settings, load_source, select_aliases

#: Django's check message levels (``--fail-level``)
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_LEVEL_NAMES = {number: name for name, number in _LEVELS.items()}
#: the HOST NAME column: whether the driver checked the certificate's names
_HOST_NAME: dict[Any, str] = {True: "verified", False: "not verified"}


def _message_dict(message: Any) -> dict[str, Any]:
    return {
        "id": message.id,
        "level": _LEVEL_NAMES.get(message.level, str(message.level)),
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
    source = load_source(masker)
    databases = select_aliases(source, args.alias)
    messages = _run_checks(source, databases, deploy=args.deploy)
    failing = [m for m in messages if m.level >= _LEVELS[args.fail_level]]
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
    print(f"source: {source.label} ({plural(len(databases), 'alias', 'aliases')})")
    _print_messages(messages)
    if args.connect:
        _print_probes(probes)
    return code


def _run_checks(source: Source, databases: Mapping[str, Any], *, deploy: bool) -> list[Any]:
    """multipool's checks (and the deployment checks with ``deploy``), reported for
    ``databases`` only; the silenced ones left out."""
    from multipool.checks import check_databases, check_deployment

    ensure_settings()
    # every alias counts (a replica names its primary); only the selected are reported
    messages = check_databases(source.databases, source.routers, aliases=databases)
    if deploy:
        messages += check_deployment(source.databases, aliases=databases)
    return _not_silenced(messages)


def _print_messages(messages: list[Any]) -> None:
    """The messages and the summary line, as ``manage.py check`` prints them."""
    for m in messages:
        print(str(m))
    if not messages:
        print("System check identified no issues.")
        return
    errors = sum(1 for m in messages if m.is_serious())
    print(
        f"System check identified {plural(len(messages), 'issue')} "
        f"({plural(errors, 'error')}, {plural(len(messages) - errors, 'warning')})."
    )


def _print_probes(probes: list[dict[str, Any]]) -> None:
    """The table of ``--connect``; failed connects on stderr."""
    rows = []
    for p in probes:
        tls = p.get("tls_protocol") or (
            "n/a" if p["vendor"] == "sqlite" else "none" if p["ok"] else None
        )
        rows.append(
            [
                p["alias"],
                "ok" if p["ok"] else "FAILED",
                p.get("server"),
                tls,
                p.get("tls_cipher"),
                _HOST_NAME.get(p.get("host_name_verified")) if p.get("tls_protocol") else None,
                ms(p.get("connect_seconds")),
                ms(p.get("rtt_seconds")),
            ]
        )
    print()
    headers = ["ALIAS", "STATUS", "SERVER", "TLS", "CIPHER", "HOST NAME", "CONNECT", "RTT"]
    print(render_table(headers, rows))
    for p in probes:
        if p.get("note"):
            print(f"{p['alias']}: {p['note']}")
        if not p["ok"]:
            print(f"{p['alias']}: connect failed: {p['error']}", file=sys.stderr)
