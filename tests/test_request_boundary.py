"""The end of a request: the connection goes back to the pool, the wrapper keeps it.

With ``CONN_MAX_AGE=0`` Django closes a connection at ``request_finished``.
A pooled wrapper in a clean state instead parks its connection in the pool
while staying attached to it: the next request of the same thread goes on
with it, unless another thread needed a connection meanwhile and took it.
These tests pin down what a user relies on: the connection really is free
for other threads between requests, two threads never share one, and
nothing a request left behind (an open transaction, a changed time zone)
reaches the next one. Every test runs against PostgreSQL and MySQL/MariaDB
over TLS verify-full.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from tests.test_pool_lifecycle import backend_id, in_threads, request_cycle, stats


class Worker:
    """A thread of its own (its own Django connections) that runs requests on demand."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._todo: list = []
        self._ready = threading.Event()
        self._done = threading.Event()
        self._result: object = None
        self._thread = threading.Thread(target=self._loop)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._ready.wait()
            self._ready.clear()
            fn = self._todo.pop()
            if fn is None:
                connections.close_all()
                self._done.set()
                return
            try:
                self._result = fn(connections[self.alias])
            except BaseException as exc:  # pragma: no cover - re-raised below
                self._result = exc
            self._done.set()

    def run(self, fn):
        self._done.clear()
        self._todo.append(fn)
        self._ready.set()
        assert self._done.wait(30)
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result

    def stop(self) -> None:
        self._done.clear()
        self._todo.append(None)
        self._ready.set()
        self._thread.join(30)


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(alias: str) -> Worker:
        worker = Worker(alias)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def request_with_id(conn) -> int:
    """One request that reports the server session it ran on."""
    from django.core.signals import request_finished, request_started

    request_started.send(sender=None)
    try:
        return backend_id(conn)
    finally:
        request_finished.send(sender=None)


def test_a_thread_keeps_its_connection_across_requests(make_alias):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0")
    first = request_with_id(conn)
    assert conn.connection is None
    assert stats(conn).checked_out == 0, "between requests the connection is back in the pool"
    for _ in range(20):
        assert request_with_id(conn) == first
    st = stats(conn)
    assert st.connects == 1 and st.waits == 0


def test_a_connection_kept_between_requests_serves_another_thread(make_alias, workers):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_TIMEOUT="2")
    a, b = workers(conn.alias), workers(conn.alias)
    session = a.run(request_with_id)
    # The pool's only connection is kept for a between requests, yet b gets it
    # at once (no PoolTimeout), and then a gets it back the same way.
    for _ in range(5):
        assert b.run(request_with_id) == session
        assert a.run(request_with_id) == session
    st = stats(conn)
    assert st.connects == 1
    assert st.timeouts == 0 and st.waits == 0
    assert st.checked_out == 0


def test_two_threads_never_use_one_connection_at_once(make_alias):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0", POOL_TIMEOUT="30")
    alias = conn.alias
    lock = threading.Lock()
    in_use: set[int] = set()
    clashes: list[int] = []

    def worker() -> None:
        from django.core.signals import request_finished, request_started

        c = connections[alias]
        for _ in range(200):
            request_started.send(sender=None)
            session = backend_id(c)
            with lock:
                if session in in_use:
                    clashes.append(session)
                in_use.add(session)
            backend_id(c)  # a second query on the same connection
            with lock:
                in_use.discard(session)
            request_finished.send(sender=None)

    assert in_threads(6, worker) == [] and clashes == []
    st = stats(conn)
    assert st.connects <= 2 and st.checked_out == 0


def test_a_connection_parked_while_others_queue_goes_to_them(make_alias):
    # Parking takes no lock; a thread that queues for the pool's only
    # connection just as its holder parks it must still be served, not left
    # waiting for a connection that sits parked (a PoolTimeout here).
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_TIMEOUT="10")
    alias = conn.alias
    start = threading.Barrier(4)

    def worker() -> None:
        c = connections[alias]
        start.wait()
        for _ in range(300):
            request_cycle(c)

    assert in_threads(4, worker) == []
    st = stats(conn)
    assert st.timeouts == 0
    assert st.waits > 0, "the threads did contend for the connection"
    assert st.connects == 1 and st.checked_out == 0


# mysqlclient does not report the server's transaction state, so on MySQL a raw
# BEGIN in autocommit mode goes unnoticed: the documented limit (docs/pools.md).
# Transactions opened through Django's API are covered for both below.
@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_an_open_transaction_is_rolled_back_at_request_end(server, make_alias, item_model):
    from django.core.signals import request_finished, request_started

    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    table = item_model._meta.db_table
    request_started.send(sender=None)
    with conn.cursor() as cursor:
        # Raw SQL, behind Django's back: a transaction the ORM knows nothing of.
        cursor.execute("BEGIN")
        cursor.execute(
            f"INSERT INTO {table} (name, value, created) "
            "VALUES ('uncommitted', 0, CURRENT_TIMESTAMP)"
        )
    request_finished.send(sender=None)
    assert request_cycle(conn, f"SELECT count(*) FROM {table} WHERE name = 'uncommitted'") == [
        (0,)
    ]


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_an_open_transaction_is_rolled_back_by_close(make_alias, item_model):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    table = item_model._meta.db_table
    with conn.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute(
            f"INSERT INTO {table} (name, value, created) "
            "VALUES ('closed-uncommitted', 0, CURRENT_TIMESTAMP)"
        )
    conn.close()  # an explicit close, outside any request
    assert request_cycle(
        conn, f"SELECT count(*) FROM {table} WHERE name = 'closed-uncommitted'"
    ) == [(0,)]


def test_work_left_in_a_django_transaction_is_rolled_back(make_alias, item_model):
    from django.core.signals import request_finished, request_started

    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    request_started.send(sender=None)
    conn.set_autocommit(False)
    item_model.objects.using(conn.alias).create(name="never-committed")
    request_finished.send(sender=None)  # autocommit left off: Django closes, we roll back
    request_started.send(sender=None)
    assert not item_model.objects.using(conn.alias).filter(name="never-committed").exists()
    assert conn.get_autocommit() is True
    request_finished.send(sender=None)


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_time_zone_changed_in_a_request_is_restored_for_the_next(make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    from django.core.signals import request_finished, request_started

    session = request_with_id(conn)
    request_started.send(sender=None)
    with conn.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
        cursor.execute("SHOW TIME ZONE")
        assert cursor.fetchone() == ("Asia/Tokyo",)
    request_finished.send(sender=None)
    assert request_cycle(conn, "SHOW TIME ZONE") == [("UTC",)]
    assert request_with_id(conn) == session


def asgi_request(alias: str, *statements: str) -> list:
    """One request as Django runs it under an ASGI server, with a new wrapper (each
    request's sync code runs in a thread of its own): the last statement's rows."""
    connections[alias] = conn = connections.create_connection(alias)
    return request_cycle(conn, *statements)


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_a_session_checked_at_request_end_is_not_set_up_again(make_alias, monkeypatch):
    from django.db.backends.postgresql.base import DatabaseWrapper  # Django's own

    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    setups: list[object] = []
    set_up = DatabaseWrapper.init_connection_state
    monkeypatch.setattr(DatabaseWrapper, "init_connection_state",
                        lambda self: setups.append(self) or set_up(self))  # fmt: skip
    for _ in range(5):
        assert asgi_request(conn.alias, "SHOW TIME ZONE") == [("UTC",)]
    assert len(setups) == 1, "set up when opened; checked at each request end since"
    assert stats(conn).connects == 1


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_a_time_zone_changed_before_a_mid_request_close_is_set_up_again(make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    alias = conn.alias
    assert asgi_request(alias, "SHOW TIME ZONE") == [("UTC",)]  # given back checked
    from django.core.signals import request_finished, request_started

    request_started.send(sender=None)
    conn = connections[alias]
    with conn.cursor() as cursor:  # takes the connection back: no longer checked
        cursor.execute("SET TIME ZONE 'Asia/Tokyo'")
    conn.close()  # given back mid-request, unchecked
    request_finished.send(sender=None)
    assert asgi_request(alias, "SHOW TIME ZONE") == [("UTC",)]


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_a_time_zone_setting_changed_between_requests_reaches_a_checked_session(make_alias):
    from django.test import override_settings

    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    session = request_with_id(conn)  # given back checked, for UTC
    with override_settings(USE_TZ=False, TIME_ZONE="Asia/Tokyo"):
        assert asgi_request(conn.alias, "SHOW TIME ZONE") == [("Asia/Tokyo",)]
    assert asgi_request(conn.alias, "SHOW TIME ZONE") == [("UTC",)]
    assert request_with_id(connections[conn.alias]) == session


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_assume_role_is_set_at_every_checkout(server, make_alias):
    from multipool.pools import manager

    server.query("DROP ROLE IF EXISTS mp_assumed")
    server.query("CREATE ROLE mp_assumed NOLOGIN")
    server.query("GRANT mp_assumed TO app")
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    try:
        options = {**conn.settings_dict["OPTIONS"], "assume_role": "mp_assumed"}
        conn.settings_dict["OPTIONS"] = options  # replaced, not edited: see multipool_spec
        alias = conn.alias
        assert asgi_request(alias, "SELECT current_user") == [("mp_assumed",)]
        assert asgi_request(alias, "RESET ROLE", "SELECT current_user") == [("app",)]
        assert asgi_request(alias, "SELECT current_user") == [("mp_assumed",)]
        assert stats(conn).connects == 1
    finally:
        connections[conn.alias].close()
        manager.dispose(conn.alias)
        server.query("DROP ROLE mp_assumed")


def test_a_connection_the_server_closed_between_requests_is_replaced(server, make_alias):
    # POOL_POLL_IDLE=0: the socket is checked however recently it was used
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_POLL_IDLE="0")
    victim = request_with_id(conn)
    assert server.terminate(user="app", database=server.database) >= 1
    server.wait_for_connection_count(
        lambda n: victim not in server.connection_ids(user="app", database=server.database),
        user="app",
        database=server.database,
    )
    replacement = request_with_id(conn)  # no error reaches the request
    assert replacement != victim
    assert stats(conn).ping_failures >= 1


def test_disposing_the_pool_between_requests_is_safe(make_alias):
    from multipool.pools import manager

    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    before = request_with_id(conn)
    manager.dispose(conn.alias)
    after = request_with_id(conn)
    assert after != before
    assert stats(conn).connects == 1  # the new pool's one connection


def test_explicit_close_between_requests_needs_no_checkout(make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    session = request_with_id(conn)
    checkouts = stats(conn).checkouts
    conn.close()
    assert conn.connection is None
    assert stats(conn).checkouts == checkouts
    assert request_with_id(conn) == session


def test_between_requests_the_wrapper_reads_closed_until_it_needs_its_connection(make_alias):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0")
    session = request_with_id(conn)
    # As with stock Django at CONN_MAX_AGE=0: no connection between requests...
    assert conn.connection is None
    # ...until something needs one: it is the kept one, taken back, not a new checkout.
    assert conn.is_usable()
    assert conn.connection is not None
    assert backend_id(conn) == session
    assert stats(conn).connects == 1


def test_connect_called_directly_between_requests_reuses_the_kept_connection(make_alias):
    from django.core.signals import request_finished

    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0")
    session = request_with_id(conn)
    conn.connect()
    assert backend_id(conn) == session
    assert stats(conn).connects == 1
    request_finished.send(sender=None)
    # given back at the end of the request, as usual: nothing is left checked out
    assert conn.connection is None
    assert stats(conn).checked_out == 0
    assert request_with_id(conn) == session
