"""Pooled backends against real TLS servers: what a Django user relies on.

Every test runs against PostgreSQL and MySQL/MariaDB (the ``server`` fixture),
over TLS verify-full, with aliases configured from environment variables.
Connection counts are read from the server, not from the pool.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.core.signals import request_finished, request_started
from django.db import OperationalError, transaction

from multipool.errors import PoolTimeout
from multipool.pools import manager


def request_cycle(conn, *statements: str) -> list:
    """What Django does around one request with CONN_MAX_AGE=0: the rows of the last
    of ``statements`` (default ``SELECT 1``)."""
    request_started.send(sender=None)
    try:
        with conn.cursor() as cursor:
            for sql in statements or ("SELECT 1",):
                cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]
    finally:
        request_finished.send(sender=None)


def backend_id(conn) -> int:
    sql = "SELECT pg_backend_pid()" if conn.vendor == "postgresql" else "SELECT CONNECTION_ID()"
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return int(cursor.fetchone()[0])


def stats(conn):
    return manager.stats(conn.alias)[conn.alias]


def in_threads(count: int, body, timeout: float = 120) -> list[BaseException]:
    """Run ``body()`` in ``count`` threads at once, each with Django
    connections of its own (closed when it ends); the errors they raised."""
    from django.db import connections

    errors: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), f"threads still running after {timeout}s"
    return errors


def test_request_cycles_reuse_at_most_pool_size_server_connections(server, make_alias):
    conn = make_alias(POOL_SIZE="3", MAX_OVERFLOW="0")
    baseline = server.connection_count(user="app", database=server.database)
    seen_max = 0
    for i in range(1000):
        request_cycle(conn)
        if i % 100 == 0:
            seen_max = max(seen_max, server.connection_count(user="app", database=server.database))
    assert conn.connection is None, "request_finished must give the connection back"
    assert stats(conn).checked_out == 0
    assert seen_max - baseline <= 3
    st = stats(conn)
    assert st.checked_out == 0
    assert st.connects <= 3
    assert st.checkouts >= 1000
    # One thread, sequential requests: one physical connection served all of them.
    assert st.connects == 1


def test_connection_is_given_back_on_close_and_reused(make_alias):
    conn = make_alias()
    conn.ensure_connection()
    first = backend_id(conn)
    assert stats(conn).checked_out == 1
    conn.close()
    assert conn.connection is None
    assert stats(conn).checked_out == 0
    conn.ensure_connection()
    assert backend_id(conn) == first
    conn.close()


def test_uncommitted_work_is_rolled_back_on_return(make_alias, item_model):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    marker = f"rollback-{os.getpid()}-{time.monotonic_ns()}"
    conn.ensure_connection()
    first = backend_id(conn)
    transaction.set_autocommit(False, using=conn.alias)
    item_model.objects.using(conn.alias).create(name=marker)
    conn.close()  # request ends with the transaction still open
    # The next borrower gets the same physical connection, clean.
    conn.ensure_connection()
    assert backend_id(conn) == first
    assert conn.get_autocommit() is True
    assert not item_model.objects.using(conn.alias).filter(name=marker).exists()
    conn.close()
    # Nothing was committed: a separate connection does not see the row either.
    other = make_alias()
    assert not item_model.objects.using(other.alias).filter(name=marker).exists()
    other.close()


def test_committed_work_survives_return(server, make_alias, item_model):
    conn = make_alias()
    marker = f"commit-{os.getpid()}-{time.monotonic_ns()}"
    with transaction.atomic(using=conn.alias):
        item_model.objects.using(conn.alias).create(name=marker)
    conn.close()
    assert item_model.objects.using(conn.alias).filter(name=marker).count() == 1
    item_model.objects.using(conn.alias).filter(name=marker).delete()
    conn.close()


def session_state(conn) -> tuple[str, str]:
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            cursor.execute("SHOW TIME ZONE")
            tz = cursor.fetchone()[0]
            cursor.execute("SHOW transaction_isolation")
            iso = cursor.fetchone()[0]
        else:
            cursor.execute("SELECT @@session.time_zone")
            tz = cursor.fetchone()[0]
            cursor.execute("SELECT @@session.tx_isolation")
            iso = cursor.fetchone()[0]
    return tz, iso.lower().replace("-", " ")


def test_session_is_what_django_expects_on_every_checkout(make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    conn.ensure_connection()
    expected = session_state(conn)
    assert expected[1] in {"read committed"}
    if conn.vendor == "postgresql":
        assert expected[0] == "UTC"
    conn.close()
    for _ in range(5):
        conn.ensure_connection()
        assert conn.get_autocommit() is True
        assert session_state(conn) == expected
        conn.close()


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_postgresql_time_zone_changed_by_user_code_is_restored(make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    conn.ensure_connection()
    with conn.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
    conn.close()
    conn.ensure_connection()
    assert session_state(conn)[0] == "UTC"
    conn.close()


def test_session_setup_costs_no_round_trip_per_checkout(server, make_alias):
    """Django's per-connection setup runs once per physical connection."""
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    conn.ensure_connection()
    pid = backend_id(conn)
    conn.close()
    if server.engine == "postgresql":
        before = server.query(
            "SELECT query, state_change FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
    else:
        before = server.query("SHOW GLOBAL STATUS LIKE 'Com_set_option'")
    for _ in range(50):
        conn.ensure_connection()
        conn.close()
    conn.ensure_connection()
    assert backend_id(conn) == pid
    conn.close()
    if server.engine == "postgresql":
        after = server.query(
            "SELECT query, state_change FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        # The only statement the server saw since is the pid probe itself.
        assert "pg_backend_pid" in after[0][0]
        assert before[0][0] != after[0][0] or before[0][1] != after[0][1]
    else:
        after = server.query("SHOW GLOBAL STATUS LIKE 'Com_set_option'")
        assert after == before
    assert stats(conn).pings == 0


def test_terminated_connection_is_discarded_and_next_request_succeeds(server, make_alias):
    # POOL_POLL_IDLE=0: check the socket however recently the connection was used
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0", POOL_POLL_IDLE="0")
    conn.ensure_connection()
    victim = backend_id(conn)
    conn.close()
    assert server.terminate(user="app", database=server.database) >= 1
    # The idle pooled connection is dead; the next request must not notice.
    assert request_cycle(conn) == [(1,)]
    conn.ensure_connection()
    assert backend_id(conn) != victim
    conn.close()
    st = stats(conn)
    assert st.invalidations >= 1
    assert st.ping_failures >= 1


def test_recently_used_connection_is_lent_unchecked_within_poll_idle(server, make_alias):
    """The trade-off POOL_POLL_IDLE makes (as HikariCP's bypass window): a
    connection used a moment ago is lent without a system call. If the server
    closed it in that moment, that one request fails; the pool then discards
    the connection, suspects its siblings, and the next request succeeds."""
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0", POOL_POLL_IDLE="3600")
    conn.ensure_connection()
    victim = backend_id(conn)
    conn.close()
    assert server.terminate(user="app", database=server.database) >= 1
    with pytest.raises(OperationalError):
        request_cycle(conn)
    assert request_cycle(conn) == [(1,)]
    conn.ensure_connection()
    assert backend_id(conn) != victim
    conn.close()
    assert stats(conn).invalidations >= 1


def test_connection_killed_while_lent_is_never_lent_again(server, make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    conn.ensure_connection()
    victim = backend_id(conn)
    server.terminate(user="app", database=server.database)
    with pytest.raises(OperationalError), conn.cursor() as cursor:
        cursor.execute("SELECT 1")
    conn.close()  # request end: Django saw the error, the pool must discard it
    assert stats(conn).invalidations >= 1
    conn.ensure_connection()
    assert backend_id(conn) != victim
    conn.close()


def test_ping_only_when_idle_longer_than_threshold(make_alias):
    busy = make_alias(POOL_PING_IDLE="3600")
    for _ in range(20):
        request_cycle(busy)
    assert stats(busy).pings == 0

    eager = make_alias(POOL_PING_IDLE="0")
    before = stats(eager).pings
    for _ in range(20):
        request_cycle(eager)
    # every checkout reuses the connection the fixture opened: each is pinged
    assert stats(eager).pings - before == 20


def test_pre_ping_pings_every_reused_connection(make_alias):
    conn = make_alias(POOL_PRE_PING="true", POOL_PING_IDLE="3600")
    before = stats(conn).pings
    for _ in range(10):
        request_cycle(conn)
    assert stats(conn).pings - before == 10


def test_exhausted_pool_times_out_with_a_clear_error(make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="1", POOL_TIMEOUT="0.5")
    alias = conn.alias
    holding = threading.Barrier(3)
    release = threading.Event()

    def hold():
        from django.db import connections

        c = connections[alias]
        c.ensure_connection()
        holding.wait()
        release.wait(30)
        c.close()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    holding.wait()
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        conn.ensure_connection()
    waited = time.monotonic() - started
    assert isinstance(info.value, OperationalError)
    message = str(info.value)
    assert f"'{alias}'" in message
    assert "pool_size=1" in message and "max_overflow=1" in message
    prefix = f"{alias.upper()}_DATABASE_"
    assert f"{prefix}POOL_SIZE" in message and f"{prefix}POOL_TIMEOUT" in message
    assert 0.45 <= waited < 0.5 * 1.1 + 0.2
    assert stats(conn).timeouts == 1
    release.set()
    for t in threads:
        t.join()
    conn.ensure_connection()  # a connection is free again
    conn.close()


def test_releasing_a_connection_unblocks_a_waiter(make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_TIMEOUT="10")
    alias = conn.alias
    conn.ensure_connection()
    got = threading.Event()

    def wait_for_it():
        from django.db import connections

        c = connections[alias]
        c.ensure_connection()
        got.set()
        c.close()

    t = threading.Thread(target=wait_for_it)
    t.start()
    assert not got.wait(0.3)  # blocked while we hold the only connection
    conn.close()
    assert got.wait(5)
    t.join()
    assert stats(conn).waits >= 1


class Holder:
    """A thread that checks out a connection of ``alias`` and holds it until released."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.holding = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.holding.wait(10)

    def _run(self) -> None:
        from django.db import connections

        c = connections[self.alias]
        c.ensure_connection()
        self.holding.set()
        self.release.wait(30)
        c.close()
        connections.close_all()

    def give_back(self) -> None:
        self.release.set()
        self.thread.join(10)


def burst(conn) -> None:
    """Two connections at once: the pool's one plus one overflow."""
    holder = Holder(conn.alias)
    conn.ensure_connection()
    holder.give_back()  # back to the pool's queue, which then is full
    conn.close()  # an overflow connection given back to a full pool


def overflow_ids(server, baseline: set[int]) -> set[int]:
    return server.connection_ids(user="app", database=server.database) - baseline


def test_overflow_connections_are_reused_then_closed_once_idle(server, make_alias):
    baseline = server.connection_ids(user="app", database=server.database)
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="1", POOL_OVERFLOW_IDLE="0.5")
    burst(conn)
    first = overflow_ids(server, baseline)
    assert len(first) == 2, "the surplus connection stays open while it may be reused"
    for _ in range(5):
        burst(conn)
    st = stats(conn)
    assert st.connects == 2, "bursts above pool_size reuse the kept connection"
    assert overflow_ids(server, baseline) == first
    assert st.open == 2 and st.checked_out == 0
    time.sleep(0.6)  # the surplus connection now sat idle past POOL_OVERFLOW_IDLE
    request_cycle(conn)  # a checkin closes it
    assert stats(conn).open == 1
    deadline = time.monotonic() + 5
    while len(overflow_ids(server, baseline)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # the server drops a closed connection asynchronously
    left = overflow_ids(server, baseline)
    assert len(left) == 1 and left < first


def test_overflow_idle_zero_closes_overflow_on_return(server, make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="1", POOL_OVERFLOW_IDLE="0")
    for _ in range(3):
        burst(conn)
    st = stats(conn)
    assert st.open == 1
    assert st.connects == 4, "SQLAlchemy's behaviour: each burst opens a new overflow connection"


def test_threads_share_one_pool(server, make_alias):
    conn = make_alias(POOL_SIZE="4", MAX_OVERFLOW="0")
    alias = conn.alias

    def worker():
        from django.db import connections

        for _ in range(50):
            request_cycle(connections[alias])

    assert in_threads(8, worker) == []
    st = stats(conn)
    assert st.checkouts >= 400
    assert st.connects <= 4
    assert st.checked_out == 0
    assert server.connection_count(user="app", database=server.database) <= 4


def test_async_views_through_sync_to_async(make_alias):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0")
    alias = conn.alias

    def view() -> int:
        from django.db import connections

        return request_cycle(connections[alias])[0][0]

    async def main() -> list[int]:
        return await asyncio.gather(*(sync_to_async(view)() for _ in range(10)))

    assert asyncio.run(main()) == [1] * 10
    assert stats(conn).checked_out == 0


# The harness and asgiref keep threads; the child only runs Django code.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_child_never_uses_parent_sockets(server, make_alias):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0")
    alias = conn.alias
    request_cycle(conn)  # one idle connection in the pool
    conn.ensure_connection()  # and one lent to this thread at fork time
    parent_ids = {backend_id(conn)}
    parent_ids |= server.connection_ids(user="app", database=server.database)
    children = []
    for _ in range(2):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.close(read_fd)
                from django.db import connections

                c = connections[alias]
                os.write(write_fd, str(backend_id(c)).encode())
                c.close()
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        children.append((pid, read_fd))
    child_ids = set()
    for pid, read_fd in children:
        with os.fdopen(read_fd) as f:
            child_ids.add(int(f.read() or -1))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert -1 not in child_ids
    assert not child_ids & parent_ids
    # The parent's connections are intact: the lent one and the idle one.
    assert backend_id(conn) in parent_ids
    conn.close()
    for _ in range(3):
        assert request_cycle(conn) == [(1,)]
    assert stats(conn).invalidations == 0


def test_dict_valued_ssl_options_are_accepted(mysql_server):
    """The seed's crash: Django's MySQL ``ssl={...}`` made the pool key unhashable."""
    from tests.conftest import registered_alias

    entry = {
        "ENGINE": "multipool.backends.mysql",
        "NAME": mysql_server.database,
        "USER": "app",
        "PASSWORD": mysql_server.users["app"].password,
        "HOST": mysql_server.host,
        "PORT": str(mysql_server.port),
        "OPTIONS": {
            "ssl": {"ca": str(mysql_server.certs.ca_cert)},
            "ssl_mode": "VERIFY_IDENTITY",
            "pool_size": 2,
        },
    }
    with registered_alias("handwritten_mysql", entry) as conn:
        for _ in range(3):
            assert request_cycle(conn) == [(1,)]
        with conn.cursor() as cursor:
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
            assert cursor.fetchone()[1].startswith("TLS")
        conn.close()
        assert stats(conn).connects == 1
