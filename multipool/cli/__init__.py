"""The ``multipool`` command (also ``python -m multipool``): an operator's view of the pools.

Subcommands (``multipool SUBCOMMAND --help`` for the options; ``docs/cli.md``)::

    config   every alias as resolved from the environment (passwords masked)
    check    the system checks; --connect also connects to each alias
    certs    certs init [DIR]: a development CA, server and client certificates;
             certs client DIR USER...: more client certificates from that CA
    budget   worst-case server connections of a fleet vs the server's max_connections
    demo     a short simulated request load through Django, pooled vs unpooled
    status   live pool statistics of this process
    metrics  the pools' metrics for Prometheus (every worker's, in multiprocess mode)

Where the aliases come from: the Django settings when ``DJANGO_SETTINGS_MODULE``
is set, else the environment (``multipool.databases()``, reading ``.env`` /
``settings.ini`` from the current directory upward).

Exit codes: 0 ok; 1 problems found (failed check, failed connect, over budget,
refused to overwrite); 2 usage or configuration error.

Nothing printed contains a password, a key passphrase or a private key: the
output never includes them, and every line written to stdout/stderr while the
command runs is filtered through a mask of the secrets found in the
environment and the settings, and of any PEM private key block.

Modules: ``entry`` (``main()``: masked output, exit codes), ``parser``, ``masking``,
``output`` (exit codes, tables, JSON), ``sources`` (where the aliases come from),
``connect`` (one connection bypassing the pool), one module per command
(``config``, ``check``, ``certs``, ``budget``, ``demo`` with its load generator
in ``load``, ``status``, ``metrics``). Pool statistics themselves live in :mod:`multipool.status`.
"""

from multipool.cli.budget import server_connection_limit, server_host
from multipool.cli.config import describe_alias
from multipool.cli.connect import direct_connection, probe
from multipool.cli.entry import main
from multipool.cli.load import run_load
from multipool.cli.masking import MASK, Masker
from multipool.cli.output import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, UsageError, render_table
from multipool.cli.parser import build_parser
from multipool.cli.sources import Source, load_source, setup_django
from multipool.status import pool_status, render_pool_status, warm_pools

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "MASK",
    "Masker",
    "Source",
    "UsageError",
    "build_parser",
    "describe_alias",
    "direct_connection",
    "load_source",
    "main",
    "pool_status",
    "probe",
    "render_pool_status",
    "render_table",
    "run_load",
    "server_connection_limit",
    "server_host",
    "setup_django",
    "warm_pools",
]
