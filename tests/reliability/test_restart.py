"""A database restart under load costs only the requests in flight during the outage."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.db import connections

from tests.test_pool_lifecycle import request_cycle, stats

THREADS = 8


@dataclass
class Outcome:
    started: float
    ended: float
    ok: bool
    error: str = ""


def test_server_restart_under_load(server, make_alias):
    conn = make_alias(POOL_SIZE=str(THREADS), MAX_OVERFLOW="0", POOL_TIMEOUT="5")
    alias = conn.alias
    stop = threading.Event()
    warmed = threading.Barrier(THREADS + 1)
    recovered = [threading.Event() for _ in range(THREADS)]
    restarted_at: list[float] = []
    outcomes: list[list[Outcome]] = [[] for _ in range(THREADS)]

    def worker(i: int) -> None:
        c = connections[alias]
        try:
            for _ in range(20):  # every thread holds a pooled connection before the outage
                request_cycle(c)
            warmed.wait(30)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    request_cycle(c)
                except Exception as exc:
                    outcomes[i].append(Outcome(started, time.monotonic(), False, repr(exc)))
                    continue
                outcomes[i].append(Outcome(started, time.monotonic(), True))
                if restarted_at and started > restarted_at[0]:
                    recovered[i].set()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    warmed.wait(30)
    down_at = time.monotonic()
    server.restart()
    restarted_at.append(time.monotonic())
    try:
        for event in recovered:
            assert event.wait(10), "a thread never succeeded after the restart"
    finally:
        stop.set()
        for t in threads:
            t.join(30)

    up = restarted_at[0]
    failures = [o for per in outcomes for o in per if not o.ok]
    # Only requests in flight during the outage failed.
    late = [o for o in failures if o.started > up]
    assert late == [], f"requests started after the restart failed: {late[:3]}"
    assert all(o.ended >= down_at for o in failures)
    # Every thread's first request after the restart succeeded, within 2 s.
    for per in outcomes:
        after = [o for o in per if o.started > up]
        assert after and after[0].ok
        assert after[0].ended - up < 2.0
    st = stats(conn)
    assert st.checked_out == 0
    # The old sessions were detected and discarded, never lent as if healthy.
    assert st.invalidations >= 1
    print(
        f"\n{server.engine}: restart took {up - down_at:.2f}s, "
        f"{len(failures)} requests failed during it, "
        f"{sum(len(p) for p in outcomes)} requests in all, "
        f"recovery {max(next(o for o in p if o.started > up).ended - up for p in outcomes):.3f}s"
    )
