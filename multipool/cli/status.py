"""``multipool status``: live pool statistics of this process (see :mod:`multipool.status`)."""

from __future__ import annotations

import argparse
import os
import sys

from multipool.cli.masking import Masker
from multipool.cli.output import EXIT_OK, EXIT_PROBLEMS, print_json
from multipool.cli.sources import load_source, setup_django
from multipool.status import pool_status, render_pool_status, warm_pools


def cmd_status(args: argparse.Namespace, masker: Masker) -> int:
    source = load_source(masker)
    setup_django(source)
    from django.conf import settings

    masker.add_databases(settings.DATABASES)
    failures = warm_pools(settings.DATABASES) if args.connect else {}
    rows = pool_status(settings.DATABASES)
    if args.json:
        print_json(
            {"source": source.label, "pid": os.getpid(), "aliases": rows,
             "connect_errors": failures}
        )
    else:
        print(f"source: {source.label}")
        print(f"pool statistics of this process (pid {os.getpid()}):")
        print(render_pool_status(rows))
        for alias, error in failures.items():
            print(f"{alias}: connect failed: {error}", file=sys.stderr)
    return EXIT_PROBLEMS if failures else EXIT_OK
