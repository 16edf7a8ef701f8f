"""Existing test servers, named by ``MULTIPOOL_TEST_POSTGRES_URL`` / ``MULTIPOOL_TEST_MYSQL_URL``.

multipool does not start or stop these: it logs in as the admin user of the URL,
creates or updates the users and the database of the contract (passwords derived
from the admin URL, so concurrent sessions agree), and reads the CA and client
certificates from ``MULTIPOOL_TEST_*CERTS``. See :mod:`multipool.testing`.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from multipool.certs import load_dev_certs
from multipool.testing import mysql, postgres
from multipool.testing.servers import (
    ENV_CERTS,
    ENV_MYSQL_CERTS,
    ENV_MYSQL_URL,
    ENV_POSTGRES_CERTS,
    ENV_POSTGRES_URL,
    ExternalController,
    ServerStartError,
)

__all__ = ["ExternalTarget", "external_target", "start_mysql_external", "start_postgres_external"]


class ExternalTarget(NamedTuple):
    """An existing test server named by environment variables."""

    url: str  # the admin URL as given
    host: str
    port: int | None
    admin_user: str
    admin_password: str
    database: str  # the URL's path, unquoted ("" when none)
    certs_dir: str


def external_target(
    url_variable: str, certs_variable: str, schemes: tuple[str, ...], example: str
) -> ExternalTarget:
    """Read and check the admin URL and cert directory of an external test server.

    Raises :class:`ServerStartError` naming the variables when either is missing.
    """
    url = os.environ.get(url_variable, "")
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.username or not parts.hostname:
        raise ServerStartError(f"{url_variable} must look like {example}")
    certs_dir = os.environ.get(certs_variable) or os.environ.get(ENV_CERTS)
    if not certs_dir:
        raise ServerStartError(
            f"{url_variable} is set but neither {certs_variable} nor {ENV_CERTS} "
            "names the directory with the server's ca.crt (and client-certuser.crt/.key)"
        )
    return ExternalTarget(
        url=url,
        host=parts.hostname,
        port=parts.port,
        admin_user=unquote(parts.username),
        admin_password=unquote(parts.password or ""),
        database=unquote(parts.path.lstrip("/")),
        certs_dir=certs_dir,
    )


def start_postgres_external() -> postgres.PostgresServer:
    """Attach to the server named by ``MULTIPOOL_TEST_POSTGRES_URL``."""
    started = time.monotonic()
    target = external_target(
        ENV_POSTGRES_URL,
        ENV_POSTGRES_CERTS,
        ("postgres", "postgresql"),
        "postgresql://ADMIN:PASSWORD@HOST:PORT/DBNAME",
    )
    users = postgres.default_users(derive_from=target.url)
    port = target.port or 5432
    server = postgres.PostgresServer(
        host=target.host,
        port=port,
        certs=load_dev_certs(target.certs_dir),
        admin_user=target.admin_user,
        admin_password=target.admin_password,
        users=users,
        database="multipool",
        admin_database=target.database or "postgres",
        controller=ExternalController(f"external server {target.host}:{port}"),
    )
    try:
        postgres.bootstrap(
            lambda db: postgres.server_connect(server, db), users=users, database="multipool",
            admin_user=server.admin_user, admin_password=None,
        )
        server.refresh_version()
    except BaseException:
        server.close()
        raise
    server._register(started)
    return server


def start_mysql_external() -> mysql.MySQLServer:
    """Attach to the server named by ``MULTIPOOL_TEST_MYSQL_URL``."""
    started = time.monotonic()
    target = external_target(
        ENV_MYSQL_URL, ENV_MYSQL_CERTS, ("mysql", "mariadb"), "mysql://ADMIN:PASSWORD@HOST:PORT/"
    )
    users = mysql.default_users(derive_from=target.url)
    port = target.port or 3306
    server = mysql.MySQLServer(
        host=target.host, port=port, certs=load_dev_certs(target.certs_dir),
        admin_user=target.admin_user, admin_password=target.admin_password,
        users=users, database="multipool",
        controller=ExternalController(f"external server {target.host}:{port}"),
    )
    try:
        with contextlib.closing(server.connect_admin()) as conn:
            mysql.bootstrap(conn, users=users, database="multipool",
                            admin_user=server.admin_user, admin_password=None)
        server.refresh_version()
    except BaseException:
        server.close()
        raise
    server._register(started)
    return server
