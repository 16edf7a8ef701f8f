"""``start_postgres()`` / ``start_mysql()``: the backend chosen as :mod:`multipool.testing` says.

external (a ``MULTIPOOL_TEST_*_URL`` is set), else a container (a Docker engine
answers), else local binaries; ``MULTIPOOL_TEST_BACKEND`` forces one. A container
that fails falls back to local binaries unless the container backend was forced.
This module sits above the backends: it imports them, none of them imports it.
"""

from __future__ import annotations

import logging
import os

from multipool.testing import containers, external, mysql, postgres
from multipool.testing.servers import (
    ENV_BACKEND,
    ENV_MYSQL_URL,
    ENV_POSTGRES_URL,
    ServerStartError,
)

__all__ = ["BACKENDS", "choose_backend", "start_mysql", "start_postgres"]

logger = logging.getLogger("multipool.testing")

BACKENDS = ("auto", "external", "container", "local")


def _forced_backend() -> str:
    """The value of ``MULTIPOOL_TEST_BACKEND`` (``auto`` when unset)."""
    return os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"


def choose_backend(url_variable: str) -> str:
    """``external``, ``container`` or ``local`` for one engine (see the module docs)."""
    forced = _forced_backend()
    if forced not in BACKENDS:
        raise ServerStartError(f"{ENV_BACKEND}={forced!r}: expected one of {', '.join(BACKENDS)}")
    if forced != "auto":
        return forced
    if os.environ.get(url_variable):
        return "external"
    return "container" if containers.docker_available() else "local"


def start_postgres(workdir: str | os.PathLike[str] | None = None) -> postgres.PostgresServer:
    """Start (or attach to) a PostgreSQL test server; the backend is chosen as
    documented in :mod:`multipool.testing`. Call ``close()`` when done."""
    backend = choose_backend(ENV_POSTGRES_URL)
    if backend == "external":
        return external.start_postgres_external()
    if backend == "container":
        try:
            return containers.start_postgres_container(workdir)
        except Exception as exc:
            if _forced_backend() == "container":
                raise
            logger.warning("multipool: PostgreSQL container failed (%s); using local binaries", exc)
    return postgres.start_local(workdir)


def start_mysql(workdir: str | os.PathLike[str] | None = None) -> mysql.MySQLServer:
    """Start (or attach to) a MySQL/MariaDB test server (see :func:`start_postgres`)."""
    backend = choose_backend(ENV_MYSQL_URL)
    if backend == "external":
        return external.start_mysql_external()
    if backend == "container":
        try:
            return containers.start_mysql_container(workdir)
        except Exception as exc:
            if _forced_backend() == "container":
                raise
            logger.warning("multipool: MySQL container failed (%s); using local binaries", exc)
    return mysql.start_local(workdir)
