"""Test support: real TLS database servers for pytest, benchmarks and scripts.

pytest (the plugin is registered as the ``multipool`` entry point) gets
session-scoped fixtures, among them ``postgres_server``, ``mysql_server``,
``postgres_replica`` (a streaming replica of ``postgres_server``, see
:mod:`multipool.testing.replica`) and ``mysql_replica`` (a MariaDB GTID replica of
``mysql_server``, see :mod:`multipool.testing.mysql_replica`). Without pytest::

    from multipool.testing import start_postgres
    with start_postgres() as pg:              # close() on exit
        print(pg.url("app"))                  # postgresql://app:...@127.0.0.1:PORT/multipool?...

Every server has TLS on (a throwaway CA from :mod:`multipool.certs`), a database
``multipool`` and these users (random passwords per server):

* ``app`` -- password (with characters URLs must percent-encode), TLS required,
  may create databases (Django's test runner);
* ``certuser`` -- client-certificate login (PostgreSQL: no password; MySQL:
  ``REQUIRE X509`` plus a password);
* ``plain`` -- password, allowed without TLS (for TLS-off benchmarks);
* ``admin`` -- superuser with a password, over TCP+TLS.

Backends, tried in this order for each engine:

1. **external** -- an existing server named by an environment variable;
2. **container** -- testcontainers (``postgres:16``, ``mysql:8``) when a Docker
   engine answers; on failure it falls back to local binaries unless forced;
3. **local** -- throwaway servers from the installed binaries (PostgreSQL
   ``initdb``/``pg_ctl``, run as the ``postgres`` system user when we are root;
   MariaDB ``mariadb-install-db``/``mariadbd``) in a temporary directory on a free
   port of 127.0.0.1.

Modules, each importing only those listed before it: ``servers`` (base classes
and helpers), ``postgres`` and ``mysql`` (the servers, their users, local
binaries), ``containers``, ``external``, ``start`` (picks the backend),
``replica``, ``mysql_replica``, ``pgbouncer_process`` and ``pgbouncer``, ``plugin`` (pytest);
``load_client`` and ``app_servers`` (gunicorn and uvicorn under an HTTP load, with the
server-side connections sampled) import only ``servers``.

Environment variables:

``MULTIPOOL_TEST_BACKEND``
    ``auto`` (default), ``external``, ``container`` or ``local``: force a backend.
``MULTIPOOL_TEST_POSTGRES_URL``
    Admin URL of an existing PostgreSQL server, e.g.
    ``postgresql://admin:secret@db.example:5432/postgres``. The admin must be a
    superuser; the ``app``/``certuser``/``plain`` roles and the ``multipool``
    database are created or updated (new passwords) at start. The server must
    use TLS and a pg_hba.conf equivalent to :func:`multipool.testing.postgres.pg_hba`.
``MULTIPOOL_TEST_MYSQL_URL``
    Admin URL of an existing MySQL/MariaDB server, e.g.
    ``mysql://admin:secret@db.example:3306/`` (needs ALL PRIVILEGES WITH GRANT OPTION).
``MULTIPOOL_TEST_CERTS``, ``MULTIPOOL_TEST_POSTGRES_CERTS``, ``MULTIPOOL_TEST_MYSQL_CERTS``
    For external servers: directory with the server's ``ca.crt`` and the client
    certificate ``client-certuser.crt``/``client-certuser.key`` (the layout of
    :func:`multipool.certs.generate_dev_certs`); the per-engine variable wins.
``MULTIPOOL_TEST_POSTGRES_IMAGE``, ``MULTIPOOL_TEST_MYSQL_IMAGE``
    Container images (defaults ``postgres:16`` and ``mysql:8``).
``MULTIPOOL_TEST_PG_BINDIR``, ``MULTIPOOL_TEST_MYSQLD``
    Where the local PostgreSQL binaries / the ``mariadbd`` binary are (found
    automatically otherwise).
``CI``
    ``CI=true``: a server that cannot be started fails the tests that need it
    (never a silent skip). Otherwise those tests are skipped with the reason.
"""

from multipool.testing.mysql import MySQLServer
from multipool.testing.mysql_replica import MySQLReplica
from multipool.testing.mysql_replica import start_replica as start_mysql_replica
from multipool.testing.pgbouncer import PgBouncerServer, start_pgbouncer
from multipool.testing.postgres import PostgresServer
from multipool.testing.replica import PostgresReplica
from multipool.testing.replica import start_replica as start_postgres_replica
from multipool.testing.servers import (
    STARTUP_LOG,
    ServerControlError,
    ServerStartError,
    TestServer,
    TestUser,
)
from multipool.testing.start import start_mysql, start_postgres

__all__ = [
    "STARTUP_LOG",
    "MySQLReplica",
    "MySQLServer",
    "PgBouncerServer",
    "PostgresReplica",
    "PostgresServer",
    "ServerControlError",
    "ServerStartError",
    "TestServer",
    "TestUser",
    "start_mysql",
    "start_mysql_replica",
    "start_pgbouncer",
    "start_postgres",
    "start_postgres_replica",
]
