"""The configurations the application-server benchmark compares, as ``DATABASES`` entries.

Every configuration reads the same environment: ``DATABASE_URL`` (server, user,
TLS options), ``DATABASE_POOL_SIZE`` and ``DATABASE_MAX_OVERFLOW``. multipool's
entry is built from it as users build it (``multipool.databases()``); the
others are derived from that entry (:func:`benchmarks.common.stock_entry`), so
that every configuration talks to the same server as the same user with the
same TLS options. Every pool (the three, and the A/A control's) gets the same
connection limit per process: ``POOL_SIZE + MAX_OVERFLOW``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.common import LABELS, NATIVE_POOL_CONFIGS, stock_entry

#: the environment variable naming the configuration of an application server
CONFIG_VARIABLE = "MPBENCH_CONFIG"

#: configuration -> what it is
APP_CONFIGS: dict[str, str] = {
    "conn_per_request": "stock Django, CONN_MAX_AGE=0: a new connection per request",
    "conn_max_age_60": (
        "stock Django, CONN_MAX_AGE=60: a connection per thread, kept up to 60 s"
    ),
    "django_pool": (
        "Django's native pool (psycopg 3, psycopg_pool): "
        "min_size=POOL_SIZE, max_size=POOL_SIZE+MAX_OVERFLOW"
    ),
    "dj_db_conn_pool": (
        "django-db-connection-pool: POOL_SIZE, MAX_OVERFLOW, its defaults otherwise"
    ),
    "multipool": "multipool: DATABASE_POOL_SIZE, DATABASE_MAX_OVERFLOW, defaults otherwise",
    "django_pool_control": (
        "Django's native pool again, in processes and a database of its own: the A/A "
        "control, what two processes of one configuration differ by"
    ),
}
APP_LABELS: dict[str, str] = {
    **LABELS,
    "conn_max_age_60": "Django CONN_MAX_AGE=60",
    "django_pool_control": "Django native pool (A/A control)",
}
#: the configurations whose connections a pool caps at POOL_SIZE + MAX_OVERFLOW per process
POOLED = ("django_pool", "dj_db_conn_pool", "multipool", "django_pool_control")
#: the configurations a run leaves out unless they are named (``--configs``)
OPT_IN = ("django_pool_control",)
#: the configurations a run compares when none are named
DEFAULT_CONFIGS = tuple(c for c in APP_CONFIGS if c not in OPT_IN)


def engine_configs(engine: str, configs: Sequence[str] | None = None) -> tuple[str, ...]:
    """The configurations of ``engine`` among ``configs`` (default:
    :data:`DEFAULT_CONFIGS`), in :data:`APP_CONFIGS` order: Django's native pool
    is PostgreSQL's only."""
    chosen = DEFAULT_CONFIGS if configs is None else configs
    return tuple(
        c for c in APP_CONFIGS
        if c in chosen and (engine == "postgresql" or c not in NATIVE_POOL_CONFIGS)
    )


def database_entry(
    config: str, environ: Mapping[str, str] = os.environ, *, name: str | None = None
) -> dict[str, Any]:
    """``DATABASES["default"]`` of ``config``, from ``environ``'s ``DATABASE_*`` variables
    (``name``: another database on the same server)."""
    import multipool
    from multipool.config import engine_vendor

    if config not in APP_CONFIGS:
        known = ", ".join(APP_CONFIGS)
        raise ValueError(f"{CONFIG_VARIABLE}={config!r} is no configuration; use one of {known}")
    mp = dict(multipool.databases()["default"])
    if name is not None:
        mp["NAME"] = name
    if config == "multipool":
        return mp
    vendor = engine_vendor(mp["ENGINE"])
    assert vendor is not None, mp["ENGINE"]
    pool_size = int(environ["DATABASE_POOL_SIZE"])
    max_overflow = int(environ["DATABASE_MAX_OVERFLOW"])
    entry = stock_entry(mp, vendor)
    entry["CONN_MAX_AGE"] = 60 if config == "conn_max_age_60" else 0
    if config in NATIVE_POOL_CONFIGS:
        if vendor != "postgresql":
            raise ValueError("Django's native pool exists for PostgreSQL only")
        entry["OPTIONS"]["pool"] = {"min_size": pool_size, "max_size": pool_size + max_overflow}
    elif config == "dj_db_conn_pool":
        entry["ENGINE"] = f"dj_db_conn_pool.backends.{vendor}"
        entry["POOL_OPTIONS"] = {"POOL_SIZE": pool_size, "MAX_OVERFLOW": max_overflow}
    return entry
