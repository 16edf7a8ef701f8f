"""Transaction and session hygiene: what the next borrower of a connection inherits.

Always undone when a connection goes back (``POOL_RESET=transaction``, the
default): the open transaction (rolled back), autocommit and, on PostgreSQL,
the time zone (Django re-applies them on every checkout). Kept, exactly as
with Django's persistent connections (``CONN_MAX_AGE``): other session state
(``SET`` variables, temporary tables, MySQL user variables). ``POOL_RESET=session``
resets the whole session too. Each test borrows the same physical connection
twice (pool of one) and checks what the second borrower sees.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from django.db import connections, transaction

from tests.test_pool_lifecycle import backend_id, stats


def scalar(conn, sql: str):
    if sql == TEMP_TABLE_EXISTS:
        return temp_table_exists(conn)
    with conn.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
        return None if row is None else row[0]


def execute(conn, sql: str) -> None:
    with conn.cursor() as cursor:
        cursor.execute(sql)


TEMP_TABLE_EXISTS = "temp table leak_tmp exists"


def temp_table_exists(conn) -> int:
    from django.db import DatabaseError

    try:
        with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM leak_tmp")
    except DatabaseError:
        return 0
    return 1


# (statement that changes the session, probe, value when untouched) per vendor
SESSION_STATE = {
    "postgresql": [
        ("SET application_name = 'leaky'", "SHOW application_name", "leaky"),
        ("SET statement_timeout = '123s'", "SHOW statement_timeout", "123s"),
        ("CREATE TEMPORARY TABLE leak_tmp (x int)", TEMP_TABLE_EXISTS, 1),
    ],
    "mysql": [
        ("SET @leak = 42", "SELECT @leak", 42),
        ("SET SESSION sql_mode = 'ANSI_QUOTES'", "SELECT @@SESSION.sql_mode", "ANSI_QUOTES"),
        ("CREATE TEMPORARY TABLE leak_tmp (x int)", TEMP_TABLE_EXISTS, 1),
    ],
}


def test_uncommitted_rows_never_reach_the_next_borrower(make_alias, item_model):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    alias = conn.alias
    marker = f"hygiene-{os.getpid()}-{time.monotonic_ns()}"
    first_pid: list[int] = []
    returned = threading.Event()

    def first_borrower() -> None:
        c = connections[alias]
        c.ensure_connection()
        first_pid.append(backend_id(c))
        transaction.set_autocommit(False, using=alias)
        item_model.objects.using(alias).create(name=marker)
        c.close()  # the request ends mid-transaction
        returned.set()
        connections.close_all()

    t = threading.Thread(target=first_borrower)
    t.start()
    assert returned.wait(10)
    t.join()
    # The next borrower (another thread, same physical connection) sees no row
    # and no open transaction.
    conn.ensure_connection()
    assert backend_id(conn) == first_pid[0]
    assert conn.get_autocommit() is True
    assert not item_model.objects.using(alias).filter(name=marker).exists()
    conn.close()
    assert stats(conn).connects == 1


def test_atomic_block_left_by_an_exception_is_rolled_back(make_alias, item_model):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    marker = f"atomic-{time.monotonic_ns()}"
    with pytest.raises(RuntimeError), transaction.atomic(using=conn.alias):
        item_model.objects.using(conn.alias).create(name=marker)
        raise RuntimeError("view failed")
    conn.close()
    assert not item_model.objects.using(conn.alias).filter(name=marker).exists()
    conn.close()


@pytest.mark.parametrize("case", [0, 1, 2], ids=["variable", "setting", "temp-table"])
def test_default_reset_keeps_session_state_like_persistent_connections(make_alias, case):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    change, probe, changed = SESSION_STATE[conn.vendor][case]
    conn.ensure_connection()
    pid = backend_id(conn)
    execute(conn, change)
    conn.close()
    conn.ensure_connection()
    assert backend_id(conn) == pid
    assert scalar(conn, probe) == changed  # documented: POOL_RESET=transaction keeps it
    conn.close()


@pytest.mark.parametrize("case", [0, 1, 2], ids=["variable", "setting", "temp-table"])
def test_session_reset_leaves_nothing_for_the_next_request(make_alias, case):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_RESET="session")
    change, probe, changed = SESSION_STATE[conn.vendor][case]
    conn.ensure_connection()
    pid = backend_id(conn)
    untouched = scalar(conn, probe)
    assert untouched != changed
    execute(conn, change)
    assert scalar(conn, probe) == changed
    conn.close()
    conn.ensure_connection()
    assert backend_id(conn) == pid  # same physical connection, fresh session
    assert scalar(conn, probe) == untouched
    conn.close()
    assert stats(conn).invalidations == 0


def test_session_reset_keeps_what_django_expects(make_alias):
    """After a full reset Django's own session setup is applied again."""
    from tests.test_pool_lifecycle import session_state

    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_RESET="session")
    conn.ensure_connection()
    expected = session_state(conn)
    conn.close()
    for _ in range(3):
        conn.ensure_connection()
        assert conn.get_autocommit() is True
        assert session_state(conn) == expected
        conn.close()


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_session_reset_releases_advisory_locks(make_alias):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_RESET="session")
    other = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")
    conn.ensure_connection()
    assert scalar(conn, "SELECT pg_try_advisory_lock(4242)") is True
    conn.close()
    # Had the lock leaked with the pooled session, nobody else could take it.
    assert scalar(other, "SELECT pg_try_advisory_lock(4242)") is True
    execute(other, "SELECT pg_advisory_unlock(4242)")
    other.close()
