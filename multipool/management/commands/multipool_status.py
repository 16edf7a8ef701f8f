"""``manage.py multipool_status [--json] [--connect]``: live pool statistics of this process."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from multipool.status import pool_status, render_pool_status, warm_pools


class Command(BaseCommand):
    help = (
        "Live pool statistics of this process, per database alias: size, open, in use, "
        "idle, overflow, checkouts, connects, waits, timeouts, invalidations, pings."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument(
            "--connect",
            action="store_true",
            help="check out and return one connection per pooled alias first (creates "
            "the pools, checks that each alias connects)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        failures = warm_pools(settings.DATABASES) if options["connect"] else {}
        rows = pool_status(settings.DATABASES)
        if options["json"]:
            self.stdout.write(json.dumps({"aliases": rows, "connect_errors": failures}, indent=2))
        else:
            self.stdout.write(render_pool_status(rows))
        if failures:
            for alias, error in failures.items():
                self.stderr.write(f"{alias}: connect failed: {error}")
            raise CommandError("some aliases could not connect", returncode=1)
