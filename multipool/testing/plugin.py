"""pytest plugin: real database servers for tests (see :mod:`multipool.testing`).

Fixtures (session scope): ``postgres_server``, ``mysql_server``,
``postgres_replica`` (a streaming replica of ``postgres_server``), ``mysql_replica``
(a MariaDB GTID replica of ``mysql_server``) and ``postgres_server_without_tls`` /
``mysql_server_without_tls`` (TLS off), and ``redis_server`` (a broker for Celery).
Tests using the database servers get the ``postgresql`` / ``mysql`` marker
automatically. When a server cannot be started the tests needing it
are skipped with the reason, or fail with it when ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest

from multipool.testing.servers import ENV_BACKEND, STARTUP_LOG, in_ci
from multipool.testing.start import start_mysql, start_postgres

if TYPE_CHECKING:
    from multipool.testing.mysql import MySQLServer
    from multipool.testing.mysql_replica import MySQLReplica
    from multipool.testing.postgres import PostgresServer
    from multipool.testing.replica import PostgresReplica


class _Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)

_MARKERS = {
    "postgres_server": "postgresql",
    "postgres_replica": "postgresql",
    "mysql_server": "mysql",
    "mysql_replica": "mysql",
    "postgres_server_without_tls": "postgresql",
    "mysql_server_without_tls": "mysql",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in (
        ("postgresql", "needs the PostgreSQL test server"),
        ("mysql", "needs the MySQL/MariaDB test server"),
    ):
        config.addinivalue_line("markers", f"{name}: {help_text}")


def pytest_report_header(config: pytest.Config) -> str:
    backend = os.environ.get(ENV_BACKEND, "auto") or "auto"
    ci = "yes (unavailable servers fail)" if in_ci() else "no (unavailable servers skip)"
    return f"multipool test servers: backend={backend}, CI={ci}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in _MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in STARTUP_LOG:
        terminalreporter.write_line(line)


def _server(label: str, starter: Callable[[], S]) -> Iterator[S]:
    try:
        server = starter()
    except Exception as exc:
        reason = f"multipool: cannot start the {label} test server: {type(exc).__name__}: {exc}"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server with TLS (:class:`multipool.testing.PostgresServer`)."""
    yield from _server("PostgreSQL", start_postgres)


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLServer]:
    """A MySQL/MariaDB server with TLS (:class:`multipool.testing.MySQLServer`)."""
    yield from _server("MySQL/MariaDB", start_mysql)


@pytest.fixture(scope="session")
def postgres_server_without_tls() -> Iterator[PostgresServer]:
    """A PostgreSQL server with TLS off (local binaries), for the refusal tests."""
    from multipool.testing.postgres import start_local

    yield from _server("PostgreSQL (TLS off)", lambda: start_local(tls=False))


@pytest.fixture(scope="session")
def mysql_server_without_tls() -> Iterator[MySQLServer]:
    """A MariaDB server with TLS off (local binaries); only ``plain`` can log in."""
    from multipool.testing.mysql import start_local

    yield from _server("MySQL/MariaDB (TLS off)", lambda: start_local(tls=False))


@pytest.fixture(scope="session")
def postgres_replica(postgres_server: PostgresServer) -> Iterator[PostgresReplica]:
    """A streaming replica of ``postgres_server`` (:class:`multipool.testing.PostgresReplica`).

    Stopped and removed (its replication slot dropped) at the end of the session.
    """
    from multipool.testing.replica import start_replica

    yield from _server("PostgreSQL replica", lambda: start_replica(postgres_server))


@pytest.fixture(scope="session")
def mysql_replica(mysql_server: MySQLServer) -> Iterator[MySQLReplica]:
    """A MariaDB GTID replica of ``mysql_server`` (:class:`multipool.testing.MySQLReplica`).

    Stopped and removed (its replication user dropped) at the end of the session.
    """
    from multipool.testing.mysql_replica import start_replica

    yield from _server("MariaDB replica", lambda: start_replica(mysql_server))


# -- PgBouncer ------------------------------------------------------------------------------

_MARKERS["pgbouncer_server"] = "postgresql"


@pytest.fixture(scope="session")
def pgbouncer_server(postgres_server: PostgresServer) -> Iterator[PgBouncerServer]:
    """A PgBouncer in front of ``postgres_server`` (:class:`multipool.testing.PgBouncerServer`).

    Transaction pooling, TLS on both sides, SCRAM auth for ``app``/``plain``, every
    database reachable (wildcard entry). Stopped and removed at the end of the session.
    """
    from multipool.testing.pgbouncer import start_pgbouncer

    yield from _server("PgBouncer", lambda: start_pgbouncer(postgres_server))


if TYPE_CHECKING:
    from multipool.testing.pgbouncer import PgBouncerServer


# -- Redis (a broker for Celery) ------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis with a password (:class:`multipool.testing.RedisServer`): a
    broker and result backend for Celery. Stopped and removed at the end of the session.
    """
    from multipool.testing.redis_process import start_redis

    yield from _server("Redis", start_redis)


if TYPE_CHECKING:
    from multipool.testing.redis_process import RedisServer
