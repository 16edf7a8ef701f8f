"""The ``multipool`` argument parser: one subcommand per command module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeAlias

from multipool import __version__
from multipool.cli.budget import cmd_budget
from multipool.cli.certs import cmd_certs_client, cmd_certs_init
from multipool.cli.check import cmd_check
from multipool.cli.config import cmd_config
from multipool.cli.demo import cmd_demo
from multipool.cli.masking import Masker
from multipool.cli.metrics import cmd_metrics
from multipool.cli.output import EXIT_USAGE
from multipool.cli.status import cmd_status

_EPILOG = "exit codes: 0 ok, 1 problems found, 2 usage or configuration error"

#: a command: (parsed arguments, the output's masker) -> exit code
Handler: TypeAlias = Callable[[argparse.Namespace, Masker], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser() -> argparse.ArgumentParser:
    """The ``multipool`` parser; each subcommand sets ``handler``, the function that runs it."""
    parser = argparse.ArgumentParser(
        prog="multipool",
        description="Connection pools of your Django database aliases: configuration, "
        "checks, certificates, connection budget, a pooled-vs-unpooled demo, statistics "
        "and metrics. "
        "Aliases come from the Django settings when DJANGO_SETTINGS_MODULE is set, "
        "else from the environment (multipool.databases()).",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"multipool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # in the order --help lists them
    for add in (
        _add_config, _add_check, _add_certs, _add_budget, _add_demo, _add_status, _add_metrics
    ):
        add(sub)
    return parser


def _command(
    sub: Subparsers, name: str, help_text: str, handler: Handler
) -> argparse.ArgumentParser:
    """A subcommand whose description is its help text, run by ``handler``."""
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG)
    p.set_defaults(handler=handler)
    return p


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _alias_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alias", action="append", metavar="ALIAS", help="only this alias (repeatable)")


def _add_config(sub: Subparsers) -> None:
    p = _command(
        sub, "config", "Show every alias as resolved (passwords shown as ***).", cmd_config
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="for every value of every alias, the setting and the source it came from "
        "(environment, .env or settings.ini with its path, a databases() keyword "
        "argument, the primary, or the default)",
    )
    _alias_flag(p)
    _json_flag(p)


def _add_check(sub: Subparsers) -> None:
    p = _command(
        sub,
        "check",
        "Run multipool's system checks on the configured aliases; --connect also connects.",
        cmd_check,
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="connect to each alias (no pool) and report server version, TLS protocol "
        "and cipher (as the server sees them) and round-trip time",
    )
    p.add_argument("--deploy", action="store_true", help="also run the deployment checks")
    p.add_argument(
        "--fail-level",
        choices=["ERROR", "WARNING", "INFO"],
        default="ERROR",
        help="message level that makes the exit code 1 (default ERROR)",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="connect timeout in seconds (default 10)"
    )
    _alias_flag(p)
    _json_flag(p)


def _add_certs(sub: Subparsers) -> None:
    certs = sub.add_parser(
        "certs", help="Development certificates.", description="Development certificates."
    )
    actions = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    certs.set_defaults(handler=lambda a, m: _missing_action(certs))
    p = actions.add_parser(
        "init",
        help="Create a dev CA, a server certificate and client certificates.",
        description="Create a development CA (ca.crt/ca.key), a server certificate "
        "(server.crt/server.key, for localhost, 127.0.0.1, ::1 and --host names) and "
        "client certificates (client-USER.crt/.key). Keys are written 0600, unencrypted. "
        "Existing files are never overwritten without --force.",
        epilog=_EPILOG,
    )
    p.set_defaults(handler=cmd_certs_init)
    p.add_argument("directory", nargs="?", default="certs", help="directory (default: certs)")
    p.add_argument("--host", action="append", help="extra server name or IP (repeatable)")
    p.add_argument(
        "--client",
        action="append",
        metavar="USER",
        help="client certificate for this database user (repeatable; default certuser)",
    )
    _cert_options(p)
    p = actions.add_parser(
        "client",
        help="Add client certificates signed by an existing CA.",
        description="Issue client certificates (client-USER.crt/.key) signed by the CA "
        "in DIRECTORY (ca.crt/ca.key, from certs init); nothing else changes. Existing "
        "files are never overwritten without --force.",
        epilog=_EPILOG,
    )
    p.set_defaults(handler=cmd_certs_client)
    p.add_argument("directory", help="the bundle's directory (with ca.crt and ca.key)")
    p.add_argument("user", nargs="+", help="database user (one certificate each)")
    _cert_options(p)


def _cert_options(p: argparse.ArgumentParser) -> None:
    """What certs init and certs client share."""
    p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    p.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="default ec")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    _json_flag(p)


def _add_budget(sub: Subparsers) -> None:
    p = _command(
        sub,
        "budget",
        "Worst-case server connections of the fleet (workers x hosts x (pool_size + "
        "max_overflow)) against the server's max_connections.",
        cmd_budget,
    )
    p.add_argument("--workers", type=int, required=True, help="worker processes per host")
    p.add_argument("--hosts", type=int, required=True, help="application hosts")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per worker, for aliases that are not pooled (default 1)",
    )
    p.add_argument(
        "--no-master",
        action="store_true",
        help="do not count a pre-fork master per host (its one connection per alias, "
        "left by a query at import time under gunicorn --preload)",
    )
    limit = p.add_mutually_exclusive_group()
    limit.add_argument(
        "--max-connections", type=int, metavar="K", help="the server's connection limit"
    )
    limit.add_argument(
        "--connect",
        action="store_true",
        help="read the limit from each server (PostgreSQL: max_connections minus reserved "
        "connections; MySQL: @@max_connections)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    _alias_flag(p)
    _json_flag(p)


def _add_demo(sub: Subparsers) -> None:
    p = _command(
        sub,
        "demo",
        "Simulated request load through Django: pooled vs a new connection per request.",
        cmd_demo,
    )
    p.add_argument("--requests", type=int, default=500, help="requests per run (default 500)")
    p.add_argument("--threads", type=int, default=4, help="concurrent threads (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _alias_flag(p)
    _json_flag(p)


def _add_status(sub: Subparsers) -> None:
    p = _command(
        sub,
        "status",
        "Pool statistics of this process (see manage.py multipool_status).",
        cmd_status,
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="check out and return one connection per pooled alias first",
    )
    _json_flag(p)


def _add_metrics(sub: Subparsers) -> None:
    p = _command(
        sub,
        "metrics",
        "The pools' metrics in Prometheus' text format: with PROMETHEUS_MULTIPROC_DIR set, "
        "those of every process of the application server (summed); else this process's.",
        cmd_metrics,
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="without PROMETHEUS_MULTIPROC_DIR: check out and return one connection per "
        "pooled alias first",
    )


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: choose an action (init or client)", file=sys.stderr)
    return EXIT_USAGE
