"""Many threads, a small pool: no errors, no starvation, never more server
connections than pool_size + max_overflow (sampled from the server)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections

from multipool.errors import PoolTimeout
from tests.test_pool_lifecycle import request_cycle, stats

THREADS = 64
REQUESTS = 500
POOL_SIZE = 8
MAX_OVERFLOW = 4


def test_64_threads_share_a_pool_of_8_plus_4(server, make_alias):
    conn = make_alias(POOL_SIZE=str(POOL_SIZE), MAX_OVERFLOW=str(MAX_OVERFLOW), POOL_TIMEOUT="30")
    alias = conn.alias
    baseline = server.connection_ids(user="app", database=server.database)
    errors: list[BaseException] = []
    slowest_wait = [0.0]
    done = threading.Event()
    samples: list[int] = []

    def sampler() -> None:
        while not done.is_set():
            ids = server.connection_ids(user="app", database=server.database)
            samples.append(len(ids - baseline))
            done.wait(0.02)

    def worker() -> None:
        c = connections[alias]
        try:
            for _ in range(REQUESTS):
                started = time.monotonic()
                request_cycle(c)
                slowest_wait[0] = max(slowest_wait[0], time.monotonic() - started)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    watch = threading.Thread(target=sampler)
    watch.start()
    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - began
    done.set()
    watch.join()

    assert errors == [], errors[:3]
    assert not any(isinstance(e, PoolTimeout) for e in errors)
    assert samples and max(samples) <= POOL_SIZE + MAX_OVERFLOW
    st = stats(conn)
    assert st.checked_out == 0
    assert st.checkouts >= THREADS * REQUESTS
    # Surplus connections above pool_size are kept while the load lasts
    # (POOL_OVERFLOW_IDLE): no connection is opened twice.
    assert st.connects <= POOL_SIZE + MAX_OVERFLOW
    assert st.timeouts == 0
    assert slowest_wait[0] < 30  # nobody starved up to the pool timeout
    print(
        f"\n{server.engine}: {THREADS}x{REQUESTS} requests in {elapsed:.1f}s "
        f"({THREADS * REQUESTS / elapsed:.0f}/s), server connections max {max(samples)} "
        f"of {POOL_SIZE}+{MAX_OVERFLOW} ({len(samples)} samples), connects {st.connects}, "
        f"waits {st.waits}, slowest request {slowest_wait[0] * 1000:.0f} ms"
    )


@pytest.mark.parametrize("timeout", [1.0])
def test_exhausted_pool_fails_within_timeout_and_release_unblocks(make_alias, timeout):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="1", POOL_TIMEOUT=str(timeout))
    alias = conn.alias
    holders = [connections.create_connection(alias) for _ in range(3)]
    for h in holders:
        h.ensure_connection()
    assert stats(conn).checked_out == 3

    started = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        conn.ensure_connection()
    waited = time.monotonic() - started
    assert timeout <= waited <= timeout * 1.1
    assert "pool_size=2" in str(info.value) and "max_overflow=1" in str(info.value)

    # A waiter is unblocked as soon as one connection is given back.
    got = threading.Event()
    waiter_error: list[BaseException] = []

    def waiter() -> None:
        c = connections[alias]
        try:
            c.ensure_connection()
            got.set()
            c.close()
        except BaseException as exc:
            waiter_error.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert not got.wait(0.2)
    holders[0].close()
    assert got.wait(timeout)
    t.join()
    assert waiter_error == []
    for h in holders[1:]:
        h.close()
    assert stats(conn).checked_out == 0
