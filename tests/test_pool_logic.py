"""The pool's logic with a fake connector: fast, and exact about who gets what.

The real-server tests (``test_pool_lifecycle.py``, ``test_request_boundary.py``,
``reliability/``) show the behaviour with PostgreSQL and MariaDB; these pin
down the rules of :class:`multipool.pools.AliasPool` itself: never more than
``pool_size + max_overflow`` connections open, waiters served first come
first served, a timeout within its bound, surplus connections kept then
closed, a connection that failed its check never lent again, and a forked
child that cannot reach its parent's sockets.
"""

from __future__ import annotations

import gc
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from multipool.config import DatabaseSpec, PoolSpec
from multipool.errors import PoolTimeout
from multipool.pools import AliasPool, Lease, manager
from multipool.pools.pool import RETURNED_AT

pytestmark = pytest.mark.timeout(30)


class FakeConnection:
    """A driver connection: a socket pair whose far end plays the server."""

    opened = 0
    open_now = 0
    most_open = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        self.sock, self.server = socket.socketpair()
        self.alive = True
        self.closed = False
        with FakeConnection.lock:
            FakeConnection.opened += 1
            FakeConnection.open_now += 1
            FakeConnection.most_open = max(FakeConnection.most_open, FakeConnection.open_now)

    def fileno(self) -> int:
        return self.sock.fileno()

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
            with FakeConnection.lock:
                FakeConnection.open_now -= 1

    def server_closes(self) -> None:
        """What a server restart looks like from the client: EOF on the socket."""
        self.alive = False
        self.server.close()


def ping(connection: FakeConnection) -> None:
    if not connection.alive:
        raise OSError("server closed the connection")


def fileno(connection: FakeConnection) -> int:
    return connection.fileno()


_aliases = itertools.count(1)


@pytest.fixture(autouse=True)
def _counts() -> Iterator[None]:
    # An earlier test's pool, collected during this test, would close its connections
    # and lower this test's count: collect it first.
    gc.collect()
    FakeConnection.opened = FakeConnection.open_now = FakeConnection.most_open = 0
    yield


def make_pool(**settings: Any) -> AliasPool:
    spec = DatabaseSpec(
        alias=f"fake{next(_aliases)}", vendor="postgresql", name="fake", pool=PoolSpec(**settings)
    )
    return AliasPool(spec, ping=ping, fileno=fileno)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds (bounded); for states no event announces."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_never_more_than_size_plus_overflow_open_or_lent() -> None:
    pool = make_pool(size=3, max_overflow=2, timeout=5.0, overflow_idle=0.0)
    lent_now = 0
    most_lent = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal lent_now, most_lent
        for i in range(200):
            lease = pool.checkout(FakeConnection)
            with lock:
                lent_now += 1
                most_lent = max(most_lent, lent_now)
            with lock:
                lent_now -= 1
            if i % 3 == 0:
                pool.checkin(lease)
            elif not pool.keep(lease) or not pool.take_back(lease):
                continue
            else:
                pool.checkin(lease)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most_lent <= 5
    assert FakeConnection.most_open <= 5
    stats = pool.stats()
    assert stats.checked_out == 0 and stats.pending == 0
    assert stats.open == FakeConnection.open_now <= 5


def test_waiters_are_served_first_come_first_served() -> None:
    pool = make_pool(size=1, max_overflow=0, timeout=5.0)
    held = pool.checkout(FakeConnection)
    served: list[int] = []

    def waiter(n: int) -> None:
        lease = pool.checkout(FakeConnection)
        served.append(n)
        pool.checkin(lease)

    threads = []
    for n in range(6):
        t = threading.Thread(target=waiter, args=(n,))
        t.start()
        threads.append(t)
        wait_until(lambda n=n: pool.stats().pending == n + 1)  # queued in this order
    pool.checkin(held)
    for t in threads:
        t.join()
    assert served == list(range(6))
    assert pool.stats().waits == 6
    assert FakeConnection.opened == 1  # the one connection went from hand to hand


def test_a_connection_kept_while_others_wait_goes_to_them() -> None:
    pool = make_pool(size=1, max_overflow=0, timeout=5.0)
    lease = pool.checkout(FakeConnection)
    got: list[Lease] = []
    t = threading.Thread(target=lambda: got.append(pool.checkout(FakeConnection)))
    t.start()
    wait_until(lambda: pool.stats().pending == 1)
    assert pool.keep(lease) is False  # not kept: the waiter has it
    t.join()
    assert got == [lease]
    assert pool.take_back(lease) is False


def test_timeout_within_its_bound_names_the_alias_and_frees_nothing() -> None:
    pool = make_pool(size=1, max_overflow=0, timeout=0.2)
    held = pool.checkout(FakeConnection)
    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.checkout(FakeConnection)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.7
    assert f"database alias '{pool.alias}'" in str(info.value)
    stats = pool.stats()
    assert (stats.timeouts, stats.pending, stats.checked_out) == (1, 0, 1)
    pool.checkin(held)
    pool.checkin(pool.checkout(FakeConnection))  # the slot is usable again


def test_a_waiter_served_just_as_its_wait_times_out_gets_the_connection(monkeypatch) -> None:
    from multipool.pools import waiting

    pool = make_pool(size=1, max_overflow=0, timeout=5.0)
    held = pool.checkout(FakeConnection)
    wait = waiting.Waiter.wait

    def served_then_timed_out(waiter: Any, timeout: float) -> bool:
        assert wait(waiter, timeout)  # served...
        return False  # ...but the wait reports its timeout

    monkeypatch.setattr(waiting.Waiter, "wait", served_then_timed_out)
    got: list[Lease] = []
    t = threading.Thread(target=lambda: got.append(pool.checkout(FakeConnection)))
    t.start()
    wait_until(lambda: pool.stats().pending == 1)
    pool.checkin(held)
    t.join()
    assert got == [held]  # not lost, and no PoolTimeout
    stats = pool.stats()
    assert (stats.waits, stats.timeouts, stats.pending, stats.checked_out) == (1, 0, 0, 1)
    pool.checkin(got[0])
    assert FakeConnection.opened == 1


def test_surplus_connections_are_kept_then_closed_once_idle() -> None:
    pool = make_pool(size=1, max_overflow=2, timeout=1.0, overflow_idle=0.05)
    leases = [pool.checkout(FakeConnection) for _ in range(3)]
    for lease in leases:
        pool.checkin(lease)
    assert FakeConnection.open_now == 3  # kept for the next burst
    again = [pool.checkout(FakeConnection) for _ in range(3)]
    assert FakeConnection.opened == 3  # reused, no new connection
    for lease in again:
        pool.checkin(lease)
    time.sleep(0.1)  # let the surplus sit idle past overflow_idle
    pool.checkin(pool.checkout(FakeConnection))  # a checkin reaps one surplus connection
    pool.checkin(pool.checkout(FakeConnection))
    assert FakeConnection.open_now == 1
    assert pool.stats().open == 1


def test_under_steady_load_above_pool_size_each_thread_keeps_its_connection() -> None:
    """Connections above ``pool_size`` stay with the threads that use them while the
    load needs them: each thread takes its own back, as below ``pool_size``."""
    pool = make_pool(size=2, max_overflow=2, timeout=1.0, overflow_idle=30.0, poll_idle=60.0)
    leases = [pool.checkout(FakeConnection) for _ in range(4)]  # four threads, two overflow
    for _ in range(3):  # requests: given back at the end, taken back at the next start
        assert all(pool.keep(lease) for lease in leases)
        assert all(pool.take_back(lease) for lease in leases)
    assert FakeConnection.opened == 4 and pool.stats().checkouts == 16


def test_a_surplus_connection_is_closed_once_idle_while_another_thread_keeps_working() -> None:
    pool = make_pool(size=1, max_overflow=1, timeout=1.0, overflow_idle=0.05, poll_idle=60.0)
    busy, idle = pool.checkout(FakeConnection), pool.checkout(FakeConnection)
    assert pool.keep(idle) and pool.keep(busy)  # the load drops: one thread stops
    deadline = time.monotonic() + 5
    while FakeConnection.open_now > 1:  # the working thread's requests close the surplus
        assert time.monotonic() < deadline, "the idle surplus connection was never closed"
        if pool.take_back(busy):
            pool.keep(busy)
        else:
            busy = pool.checkout(FakeConnection)
            pool.keep(busy)
    assert pool.stats().open == 1 and FakeConnection.opened == 2


def test_a_request_without_a_connection_of_its_own_takes_the_one_kept_first() -> None:
    """Under ASGI every request runs in a thread of its own, so no request takes
    its kept connection back: the next checkout takes the one kept first, as
    psycopg_pool lends its oldest (under uvicorn, lending the one kept last served
    0.957 of Django's pool where this order served 0.979; docs/performance.md)."""
    pool = make_pool(size=1, max_overflow=2, timeout=1.0, poll_idle=60.0)
    leases = [pool.checkout(FakeConnection) for _ in range(3)]
    for lease in leases:
        assert pool.keep(lease)
    assert [pool.checkout(FakeConnection) for _ in range(3)] == leases


@pytest.mark.parametrize(("size", "max_overflow"), [(1, 2), (4, 4)])
def test_connections_every_burst_uses_stay_open(size: int, max_overflow: int) -> None:
    """Under ASGI (nobody takes a connection back): while every burst lends every
    connection, none above ``pool_size`` is surplus, however long the load lasts
    (here six ``overflow_idle``)."""
    pool = make_pool(
        size=size, max_overflow=max_overflow, timeout=1.0, overflow_idle=0.05, poll_idle=60.0
    )
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        burst = [pool.checkout(FakeConnection) for _ in range(size + max_overflow)]
        for lease in burst:
            assert pool.keep(lease)
    assert FakeConnection.opened == size + max_overflow
    assert pool.stats().open == size + max_overflow


@pytest.mark.parametrize(("size", "max_overflow"), [(1, 3), (2, 2), (4, 4)])
def test_after_a_burst_requests_one_at_a_time_let_the_surplus_close(
    size: int, max_overflow: int
) -> None:
    """ASGI again: after a burst opened connections above ``pool_size``, requests
    one at a time take the kept connections in turn, so none sits unused for
    ``overflow_idle`` by itself; still one is more than the load needs, so one
    closes per ``overflow_idle`` until ``pool_size`` remain, none opened again."""
    pool = make_pool(
        size=size, max_overflow=max_overflow, timeout=1.0, overflow_idle=0.05, poll_idle=60.0
    )
    burst = [pool.checkout(FakeConnection) for _ in range(size + max_overflow)]
    for lease in burst:
        assert pool.keep(lease)
    deadline = time.monotonic() + 5
    while FakeConnection.open_now > size:
        assert time.monotonic() < deadline, "the connections above pool_size stayed open"
        pool.keep(pool.checkout(FakeConnection))  # a request: checkout, kept at its end
    assert FakeConnection.opened == size + max_overflow
    stats = pool.stats()
    assert (stats.open, stats.idle, stats.checked_out) == (size, size, 0)


def test_a_connection_the_shrinking_pool_queues_is_checked_before_it_is_lent() -> None:
    """Shrinking gives the oldest kept connections to SQLAlchemy's queue first (it
    closes one only when it holds ``pool_size`` idle): they keep the time they
    were given back, so the health check still sees how long they sat idle."""
    pool = make_pool(size=2, max_overflow=1, timeout=1.0, overflow_idle=0.05, poll_idle=0.0)
    busy, first, second = (pool.checkout(FakeConnection) for _ in range(3))
    assert pool.keep(first) and pool.keep(second)
    time.sleep(0.1)  # both sit kept past overflow_idle: one connection is surplus
    first.connection.server_closes()
    second.connection.server_closes()
    assert not pool.keep(busy)  # to the queue; the kept ones fill it, one closes
    assert pool.stats().open == 2
    lent = [pool.checkout(FakeConnection) for _ in range(2)]
    assert all(lease.connection.alive for lease in lent)
    assert pool.stats().ping_failures == 1


def test_overflow_idle_zero_closes_surplus_on_return() -> None:
    pool = make_pool(size=1, max_overflow=1, timeout=1.0, overflow_idle=0.0)
    first, second = pool.checkout(FakeConnection), pool.checkout(FakeConnection)
    pool.checkin(first)
    pool.checkin(second)
    assert FakeConnection.open_now == 1


def test_a_connection_the_server_closed_is_never_lent_again() -> None:
    pool = make_pool(size=2, max_overflow=0, timeout=1.0, poll_idle=0.0)
    lease = pool.checkout(FakeConnection)
    dead = lease.connection
    assert pool.keep(lease)
    dead.server_closes()  # EOF on the socket: the poll sees it, the ping fails
    assert pool.take_back(lease) is False
    assert dead.closed
    fresh = pool.checkout(FakeConnection)
    assert fresh.connection is not dead and not fresh.connection.closed
    stats = pool.stats()
    assert (stats.ping_failures, stats.invalidations) == (1, 1)


def test_a_broken_return_marks_the_others_suspect() -> None:
    pool = make_pool(size=2, max_overflow=0, timeout=1.0, poll_idle=60.0)
    a, b = pool.checkout(FakeConnection), pool.checkout(FakeConnection)
    pool.checkin(a)
    a.connection.server_closes()  # idle, used a moment ago: no poll would look
    pool.checkin(b, broken=True)  # b found broken: a server restart is likely
    assert b.connection.closed
    lent = [pool.checkout(FakeConnection), pool.checkout(FakeConnection)]
    # a was pinged before it could be lent, and discarded
    assert not {id(a.connection), id(b.connection)} & {id(x.connection) for x in lent}
    assert a.connection.closed
    assert pool.stats().ping_failures == 1


def test_recently_used_connection_is_lent_without_a_system_call() -> None:
    pool = make_pool(size=1, max_overflow=0, poll_idle=60.0)
    lease = pool.checkout(FakeConnection)
    assert pool.keep(lease)
    lease.connection.server_closes()  # nobody looks within poll_idle
    assert pool.take_back(lease) is True
    assert pool.stats().pings == 0


def test_a_lost_lease_frees_its_slot() -> None:
    pool = make_pool(size=1, max_overflow=0, timeout=1.0)

    def lose() -> None:
        pool.checkout(FakeConnection)  # dropped without checkin, like a dead thread's

    lose()
    gc.collect()
    lease = pool.checkout(FakeConnection)  # would time out if the slot were lost
    pool.checkin(lease)


def test_returned_at_is_recorded_for_the_health_check() -> None:
    pool = make_pool(size=1, max_overflow=0)
    lease = pool.checkout(FakeConnection)
    before = time.monotonic()
    pool.checkin(lease)
    again = pool.checkout(FakeConnection)
    assert again.info[RETURNED_AT] >= before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_cannot_reach_its_parents_sockets() -> None:
    spec = DatabaseSpec(alias=f"fake{next(_aliases)}", vendor="postgresql", name="fake")
    pool = manager.pool(spec, ping=ping, fileno=fileno)
    lent = pool.checkout(FakeConnection)
    kept = pool.checkout(FakeConnection)
    assert pool.keep(kept)
    fds = [lent.connection.fileno(), kept.connection.fileno()]
    pid = os.fork()
    if pid == 0:  # the child: no pools, and the inherited sockets lead nowhere
        try:
            ok = manager.get(spec.alias) is None and all(
                os.readlink(f"/proc/self/fd/{fd}") == os.devnull for fd in fds
            )
            for fd in fds:
                os.write(fd, b"child")  # into /dev/null, not to the server
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for lease in (lent, kept):
        lease.connection.server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing arrived, no EOF either
            lease.connection.server.recv(16)
    assert pool.take_back(kept) is True  # the parent's pool is untouched
    pool.checkin(kept)
    pool.checkin(lent)
    manager.dispose(spec.alias)
