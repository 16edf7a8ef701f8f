"""A frozen server -- a hung VM, a paused container, a stopped process -- never hangs a
request past its bound.

The server process is stopped with SIGSTOP (the kernel still accepts TCP
connections into the listen backlog and acknowledges data, which is what makes
a frozen process hard to tell from a slow one) and resumed with SIGCONT:

* a new connection fails after ``CONNECT_TIMEOUT`` (2 s here) with ``ConnectTimeout``
  (a Django ``OperationalError``) naming the alias, the host and the setting,
  instead of waiting for the server forever;
* on PostgreSQL a frozen postmaster does not stop a warm pool: the sessions it
  already forked still answer; a frozen backend blocks only its own session;
* after SIGCONT the alias works again, with no restart of anything.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connections
from django.db.utils import OperationalError

from multipool.errors import ConnectTimeout
from multipool.pools import manager
from tests.test_pool_lifecycle import request_cycle, stats

pytestmark = pytest.mark.timeout(120)

CONNECT_TIMEOUT = 2.0
#: what a bound may be late by: process scheduling, the driver's own rounding
SLACK = 1.5


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def server_pid(server: Any) -> int:
    pid = getattr(server.controller, "pid", None)
    if pid is None:
        pytest.skip("the server is not a local process of this test run")
    return int(pid)


def test_a_new_connection_to_a_frozen_server_fails_within_the_connect_timeout(
    server: Any, make_alias: Any
) -> None:
    conn = make_alias(CONNECT_TIMEOUT=str(CONNECT_TIMEOUT), POOL_SIZE="1", MAX_OVERFLOW="0")
    alias = conn.alias
    conn.close()
    manager.dispose(alias)  # no idle connection left: the next checkout connects
    with frozen(server_pid(server)):
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as failed:
            connections[alias].ensure_connection()
        elapsed = time.monotonic() - started
    assert CONNECT_TIMEOUT - 0.1 <= elapsed < CONNECT_TIMEOUT + SLACK, elapsed
    message = str(failed.value)
    assert isinstance(failed.value, OperationalError)  # what Django code catches
    setting = f"{alias.upper()}_DATABASE_CONNECT_TIMEOUT"
    for part in (f"'{alias}'", f"{server.host}:{server.port}", setting):
        assert part in message, message
    assert stats(conn).checked_out == 0  # the failed connect left its slot free
    assert request_cycle(connections[alias]) == [(1,)]  # resumed: works at once


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_a_frozen_postmaster_does_not_stop_a_warm_pool(server: Any, make_alias: Any) -> None:
    conn = make_alias(CONNECT_TIMEOUT=str(CONNECT_TIMEOUT))
    assert request_cycle(conn) == [(1,)]  # one pooled connection, kept by this thread
    with frozen(server_pid(server)):
        started = time.monotonic()
        for _ in range(20):
            assert request_cycle(conn) == [(1,)]  # its backend answers; no new connect
        assert time.monotonic() - started < 1.0
    assert stats(conn).connects == 1


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_a_frozen_backend_blocks_only_its_own_session(server: Any, make_alias: Any) -> None:
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0", POOL_TIMEOUT="5")
    alias = conn.alias
    backend = request_cycle(conn, "SELECT pg_backend_pid()")[0][0]
    other: list[Any] = []
    with frozen(int(backend)):
        # another thread's request goes through the other connection, at once
        def request() -> None:
            started = time.monotonic()
            other.append((request_cycle(connections[alias]), time.monotonic() - started))
            connections[alias].close()

        thread = threading.Thread(target=request)
        thread.start()
        thread.join(10)
    assert other and other[0][0] == [(1,)] and other[0][1] < 1.0
    # resumed: the frozen session carries on, nothing lost
    assert request_cycle(conn, "SELECT pg_backend_pid()") == [(backend,)]


def test_connects_and_silent_networks_are_bounded_by_default(server: Any, make_alias: Any) -> None:
    """With no setting at all: a 10 s connect timeout and a 30 s network timeout."""
    conn = make_alias()
    params = conn.get_connection_params()
    assert params["connect_timeout"] == 10
    if conn.vendor == "postgresql":
        assert params["tcp_user_timeout"] == 30_000
        assert (params["keepalives"], params["keepalives_idle"]) == (1, 10)
    conn.ensure_connection()
    raw = conn.connection
    import socket

    sock = socket.socket(fileno=os.dup(raw.fileno()))
    try:  # what the kernel has for the connection's socket, whoever set it
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
    finally:
        sock.close()
    conn.close()
