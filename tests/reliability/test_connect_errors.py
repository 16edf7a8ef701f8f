"""What a user sees when a connection cannot be made, or is closed under it.

Connects that fail -- a closed port, a server that never answers, a wrong
password -- raise multipool's ``ConnectError`` subclasses naming the alias,
``host:port`` and the setting, within the connect timeout. A connection the
network or the server closes fails with the driver's own message, which
``docs/troubleshooting.md`` lists: each one is triggered here for real (the
server ends the session, or a TCP relay in between drops the connection as a
restart, a failover or a load balancer does), the pool discards the dead
connection, and the alias's next request gets a working one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db.utils import OperationalError

from multipool.errors import AuthenticationFailed, ConnectTimeout, ServerUnreachable
from multipool.pools import manager
from multipool.testing.servers import free_port
from tests.conftest import registered_alias
from tests.reliability.test_tls_enforcement import entry_from_env, new_alias, setting

pytestmark = pytest.mark.timeout(60)

TROUBLESHOOTING = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"


class Relay:
    """A TCP relay to ``target`` on 127.0.0.1; :meth:`cut` drops every connection it
    carries (without a TLS goodbye), and it keeps accepting new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for s in self.sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.sockets = []
        time.sleep(0.2)  # the relay's threads pass the end on

    def close(self) -> None:
        self.cut()
        self.listener.close()


@contextmanager
def relay_to(server: Any) -> Iterator[Relay]:
    relay = Relay((server.host, server.port))
    try:
        yield relay
    finally:
        relay.close()


def url(
    server: Any,
    *,
    port: int | None = None,
    user: str = "app",
    password: str | None = None,
    tls: bool = True,
    connect_timeout: int | None = 5,
) -> str:
    """The server's URL, verify-full (or no TLS at all), with these changes."""
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    secret = quote(password if password is not None else server.users[user].password, safe="")
    ca = quote(str(server.certs.ca_cert))
    query = [f"connect_timeout={connect_timeout}"] if connect_timeout is not None else []
    if scheme == "postgresql":
        query += ["sslmode=verify-full", f"sslrootcert={ca}"] if tls else ["sslmode=disable"]
    else:
        query += ["ssl_mode=VERIFY_IDENTITY", f"ssl_ca={ca}"] if tls else ["ssl_mode=DISABLED"]
    return (f"{scheme}://{user}:{secret}@{server.host}:{port or server.port}/{server.database}"
            f"?{'&'.join(query)}")


def refused(alias: str, entry: dict) -> tuple[OperationalError, float]:
    with registered_alias(alias, entry) as conn:
        started = time.monotonic()
        with pytest.raises(OperationalError) as info:
            conn.ensure_connection()
        elapsed = time.monotonic() - started
        conn.close()
        assert manager.get(alias).stats().open == 0
    return info.value, elapsed


# -- connects that fail ----------------------------------------------------------------


def test_a_closed_port_names_host_port_and_the_url(server: Any) -> None:
    port = free_port(server.host)
    alias = new_alias(server)
    exc, elapsed = refused(alias, entry_from_env(alias, {"URL": url(server, port=port)}))
    assert type(exc) is ServerUnreachable
    assert exc.setting == setting(alias, "URL")
    assert exc.problem.startswith(f"nothing accepts connections at {server.host}:{port} (")
    assert "listens there" in exc.fix
    assert elapsed < 5


def test_a_silent_server_times_out_within_connect_timeout(server: Any) -> None:
    """A listener that never answers (a dropped route looks the same to the client)."""
    for spelled in ("CONNECT_TIMEOUT", "URL"):  # DATABASE_CONNECT_TIMEOUT=1, ?connect_timeout=1
        alias = new_alias(server)
        with socket.create_server(("127.0.0.1", 0)) as silent:
            port = silent.getsockname()[1]
            if spelled == "URL":
                env = {"URL": url(server, port=port, connect_timeout=1)}
            else:
                env = {"URL": url(server, port=port, connect_timeout=None), spelled: "1"}
            exc, elapsed = refused(alias, entry_from_env(alias, env))
        assert type(exc) is ConnectTimeout
        assert isinstance(exc, ServerUnreachable)
        assert exc.setting == setting(alias, spelled)
        assert exc.problem.startswith(f"{server.host}:{port} did not answer within 1 s (")
        assert exc.fix.endswith(f"raise {setting(alias, spelled)}")
        assert 0.9 < elapsed < 4, elapsed


def test_a_wrong_password_is_named_never_shown(server: Any) -> None:
    wrong = "Wr0ng-p@ss:w%rd/+!"
    alias = new_alias(server)
    exc, _ = refused(alias, entry_from_env(alias, {"URL": url(server, password=wrong)}))
    assert type(exc) is AuthenticationFailed
    assert exc.setting == setting(alias, "URL")
    assert "user 'app'" in exc.problem
    for secret in (wrong, quote(wrong, safe=""), server.users["app"].password):
        assert secret not in str(exc) and secret not in repr(exc)


# -- connections closed under the application -------------------------------------------


def documented(message: str) -> None:
    page = TROUBLESHOOTING.read_text()
    assert message in page, f"docs/troubleshooting.md does not list {message!r}"


def error_text(exc: BaseException) -> str:
    return " ".join(str(exc).split())


#: what each driver says on a connection dropped without a goodbye, with TLS and without
DROPPED = {
    ("psycopg", True): "SSL error: unexpected eof while reading",
    ("psycopg", False): "server closed the connection unexpectedly",
    ("psycopg2", True): "SSL SYSCALL error: EOF detected",
    ("psycopg2", False): "server closed the connection unexpectedly",
    ("MySQLdb", True): "TLS/SSL error: unexpected eof while reading",
    ("MySQLdb", False): "Lost connection to server during query",
}
#: what they say when the server ends the session itself (restart, pg_terminate_backend, KILL)
ENDED = {
    "psycopg": "terminating connection due to administrator command",
    "psycopg2": "SSL connection has been closed unexpectedly",
    "MySQLdb": "TLS/SSL error: unexpected eof while reading",
}
#: on the same connection afterwards
AFTERWARDS = {
    "psycopg": "the connection is closed",
    "psycopg2": "connection already closed",
    "MySQLdb": "Server has gone away",
}


def driver(conn: Any) -> str:
    """The driver Django uses for ``conn``: psycopg, psycopg2 or MySQLdb."""
    return str(conn.Database.__name__)


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_a_dropped_connection_fails_its_next_query_then_the_pool_recovers(
    server: Any, tls: bool
) -> None:
    user = "app" if tls else "plain"
    with relay_to(server) as relay:
        alias = new_alias(server)
        entry = entry_from_env(alias, {"URL": url(server, port=relay.port, user=user, tls=tls)})
        with registered_alias(alias, entry) as conn:
            conn.ensure_connection()
            relay.cut()  # the connection is lent: its next query fails
            with pytest.raises(OperationalError) as info, conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            said = error_text(info.value)
            assert DROPPED[(driver(conn), tls)] in said, said
            documented(DROPPED[(driver(conn), tls)])
            conn.close()  # the broken connection is discarded
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            conn.close()  # back to the pool, idle
            relay.cut()  # dropped while idle: the checkout's socket check sees it
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            stats = manager.get(alias).stats()
            assert stats.connects == 3, stats


def test_a_session_the_server_ends_fails_its_next_query_with_a_documented_message(
    server: Any,
) -> None:
    alias = new_alias(server)
    with registered_alias(alias, entry_from_env(alias, {"URL": url(server)})) as conn:
        conn.ensure_connection()
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        server.terminate(user="app")
        time.sleep(0.2)
        with pytest.raises(OperationalError) as info, conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        assert ENDED[driver(conn)] in error_text(info.value)
        documented(ENDED[driver(conn)])
        with pytest.raises(conn.Database.Error) as info:  # the same connection, the driver's
            conn.connection.cursor().execute("SELECT 1")
        assert AFTERWARDS[driver(conn)] in error_text(info.value)
        documented(AFTERWARDS[driver(conn)])
        conn.close()
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")


def test_psycopg2_says_it_in_its_own_words(postgres_server: Any) -> None:
    """psycopg2 (the other PostgreSQL driver Django supports) words both cases otherwise."""
    import psycopg2

    params = postgres_server.connect_params("app")
    with relay_to(postgres_server) as relay:
        dropped = psycopg2.connect(**{**params, "port": relay.port}, connect_timeout=5)
        relay.cut()
        with pytest.raises(psycopg2.OperationalError) as info:
            dropped.cursor().execute("SELECT 1")
        assert "SSL SYSCALL error: EOF detected" in error_text(info.value)
        documented("SSL SYSCALL error: EOF detected")
    ended = psycopg2.connect(**params, connect_timeout=5)
    postgres_server.terminate(user="app")
    time.sleep(0.2)
    with pytest.raises(psycopg2.OperationalError) as info:
        ended.cursor().execute("SELECT 1")
    assert "SSL connection has been closed unexpectedly" in error_text(info.value)
    documented("SSL connection has been closed unexpectedly")
    with pytest.raises(psycopg2.InterfaceError) as closed:
        ended.cursor()
    assert "connection already closed" in error_text(closed.value)
    documented("connection already closed")
