"""``multipool metrics``: the pools' metrics in Prometheus' text format.

With ``PROMETHEUS_MULTIPROC_DIR`` set, the metrics every process of the host's
application server wrote there, summed as a scrape of any worker shows them
(the command itself opens no pool). Otherwise those of this process, which has
pools only with ``--connect`` (see :mod:`multipool.metrics.prometheus`).
"""

from __future__ import annotations

import argparse
import sys

from multipool.cli.masking import Masker
from multipool.cli.output import EXIT_OK, EXIT_PROBLEMS, UsageError
from multipool.cli.sources import load_source, setup_django
from multipool.metrics.prometheus import (
    MULTIPROC_DIR,
    MetricsUnavailable,
    exposition,
    multiprocess_dir,
    start_recording,
)
from multipool.status import warm_pools


def cmd_metrics(args: argparse.Namespace, masker: Masker) -> int:
    failures: dict[str, str] = {}
    if multiprocess_dir() is not None:
        if args.connect:
            raise UsageError(
                f"--connect shows this process's own pools; with {MULTIPROC_DIR} set the "
                "command shows the application server's processes: leave out --connect"
            )
    else:
        source = load_source(masker)
        setup_django(source)
        from django.conf import settings

        masker.add_databases(settings.DATABASES)
        if args.connect:
            start_recording()  # as if scraped before: the connect and the checkout count
            failures = warm_pools(settings.DATABASES)
    try:
        body, _ = exposition()
    except MetricsUnavailable as exc:
        raise UsageError(str(exc).removeprefix("multipool: ")) from None
    sys.stdout.write(body.decode())
    for alias, error in failures.items():
        print(f"{alias}: connect failed: {error}", file=sys.stderr)
    return EXIT_PROBLEMS if failures else EXIT_OK
