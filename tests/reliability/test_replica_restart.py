"""A replica that stops and comes back, under load: reads move to the primary at once,
and return to the replica within seconds of it being ready.

Eight threads read through the router while the replica is stopped and started
(the real process: its sessions end, its port refuses), on both engines. Only reads in flight
when it went away may fail; every read that starts after that succeeds; and
once the replica accepts connections again, reads are back on it within 5 s --
the outage counts once, however many threads saw it fail. With a lag limit, a
replica restarted while the primary writes nothing is not taken for lagging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from multipool.health import UP, health
from multipool.routing.settings import RouterSettings
from tests.project.testapp.models import Item
from tests.test_causal_reads import engine  # noqa: F401 - fixture
from tests.test_routing import (  # noqa: F401 - fixtures
    make_group,
    routing,
    tune,
    wait_until,
    web_request,
)

pytestmark = pytest.mark.timeout(120)

THREADS = 8


def read_once() -> str:
    """One read through the router: the alias that served it."""
    return next(iter(Item.objects.raw("SELECT 1 AS id")))._state.db


@pytest.fixture
def group(engine: tuple[str, Any, Any], make_group: Any, routing: None) -> Iterator[Any]:  # noqa: F811
    """``(primary alias, replica alias, replica server)``, the test app routed to it."""
    from django.test import override_settings

    name, primary_server, replica_server = engine
    primary, (replica,) = make_group(
        primary_server.url(), [replica_server.url()], prefix=name[:2], POOL_SIZE="3"
    )
    replica_server.wait_for_replay()
    with override_settings(MULTIPOOL_ROUTES={"testapp": primary}):
        yield primary, replica, replica_server


@dataclass
class Read:
    started: float
    ended: float
    alias: str | None
    error: str | None


class Readers:
    """Threads reading through the router until stopped; every read is recorded."""

    def __init__(self, threads: int = THREADS) -> None:
        self.reads: list[Read] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with web_request():
                    alias = read_once()
                read = Read(started, time.monotonic(), alias, None)
            except Exception as exc:  # a failed request
                read = Read(started, time.monotonic(), None, type(exc).__name__)
            with self._lock:
                self.reads.append(read)

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def snapshot(self) -> list[Read]:
        with self._lock:
            return list(self.reads)

    def first_on(self, alias: str, after: float) -> float | None:
        """When the first read that started after ``after`` was served by ``alias``."""
        return min((r.started for r in self.snapshot() if r.started >= after
                    and r.alias == alias), default=None)


def test_reads_leave_a_stopped_replica_and_come_back_within_seconds(
    group: Any, tune: Any  # noqa: F811
) -> None:
    """With the default back-off settings."""
    primary, replica, replica_server = group
    tune.MULTIPOOL_REPLICA_BACKOFF = RouterSettings.backoff  # the fixture shortens them
    tune.MULTIPOOL_REPLICA_BACKOFF_MAX = RouterSettings.backoff_max
    with Readers() as readers:
        wait_until(lambda: readers.first_on(replica, 0.0) is not None)
        replica_server.stop()
        stopped = time.monotonic()
        wait_until(lambda: readers.first_on(primary, stopped) is not None)
        time.sleep(3.0)  # the outage lasts several back-offs (a duration, not a wait)
        status = health.status()[replica]
        assert status.state != UP and status.failures <= 3  # outages, not threads
        replica_server.start()  # returns once the replica accepts connections
        ready = time.monotonic()
        back = wait_until(lambda: readers.first_on(replica, ready), timeout=10)
    reads = readers.snapshot()
    failed = [r for r in reads if r.error]
    assert all(r.started < stopped for r in failed), failed  # only reads in flight
    assert len(failed) <= THREADS
    assert back - ready <= 5.0, back - ready
    assert len(reads) > 200  # the load really ran
    replica_server.wait_for_replay()


def test_a_replica_restarted_under_an_idle_primary_is_not_taken_for_lagging(
    group: Any, tune: Any  # noqa: F811
) -> None:
    """The primary writes nothing: the replica's position equals the primary's, so its
    lag is 0 however long ago the last commit was."""
    _primary, replica, replica_server = group
    tune.MULTIPOOL_REPLICA_MAX_LAG = 2.0
    tune.MULTIPOOL_REPLICA_LAG_INTERVAL = 0.2
    tune.MULTIPOOL_REPLICA_BACKOFF = 0.5
    replica_server.wait_for_replay()
    replica_server.stop()
    time.sleep(2.5)  # longer than the lag limit, with nothing written (not a sync wait)
    replica_server.start()

    def read_from_replica() -> bool:
        with web_request():
            return read_once() == replica

    wait_until(read_from_replica, timeout=10, interval=0.05)
    # measured again and again over more than the lag limit: never lagging
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert read_from_replica()
        status = health.status()[replica]
        assert status.state == UP and status.lag in (None, 0.0), status
        time.sleep(0.05)
    assert health.status()[replica].lag == 0.0
