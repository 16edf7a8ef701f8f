"""Prometheus multiprocess mode: each process writes its pools' observed values.

A scrape of one worker cannot call into the other workers, so each process
writes its own connection counts, limits and waiting checkouts to the
multiprocess files itself, as ``livesum`` gauges: a scrape shows the sum over
live processes (a process the server declared dead with
``mark_process_dead`` drops out).

**When**: every :data:`PUBLISH_INTERVAL` seconds, from a daemon thread started
with the process's first pool that reports metrics, and by the scraped
process itself just before a scrape. A scrape therefore shows other workers'
values as they were up to :data:`PUBLISH_INTERVAL` seconds ago. Nothing is
written at exit: an exited process's gauges are dropped by
``mark_process_dead``, and its counters and histograms are already written.

**Cost**: a few small file writes per pool per interval, whatever the request
rate -- nothing per request. Writing on every change instead would cost two
gauge writes (a lock and an mmap write each) per checkout and two per checkin.

A pool that is gone (disposed, or replaced by a changed configuration) has its
gauges set to 0, so a live process never reports connections it no longer has.

**Fork**: ``prometheus_client`` guards its files with one lock per process; a
child forked while another thread holds it would wait for it forever. A fork
therefore waits until the publisher is between two writes (``os.register_at_fork``),
and the child starts a publisher of its own when it creates its first pool.
The counters and histograms are not written here: they are written where their
events happen (:mod:`multipool.metrics.prometheus`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

from multipool.metrics.names import LABELS, OBSERVED, STATE_LABEL
from multipool.metrics.readings import pool_readings

__all__ = ["PUBLISH_INTERVAL", "Publisher"]

logger = logging.getLogger("multipool.metrics")

#: seconds between two writes of a process's observed values
PUBLISH_INTERVAL = 1.0


#: the publishers of this process (one, unless replaced after a fork)
_publishers: weakref.WeakSet[Publisher] = weakref.WeakSet()


class Publisher:
    """Writes this process's observed values to the multiprocess files."""

    def __init__(self, interval: float = PUBLISH_INTERVAL) -> None:
        from prometheus_client import Gauge

        self.interval = interval
        self.gauges: dict[str, Any] = {
            observed.name: Gauge(
                observed.prometheus,
                observed.description,
                [*LABELS, STATE_LABEL] if observed.states else list(LABELS),
                multiprocess_mode="livesum",
                registry=None,
            )
            for observed in OBSERVED
        }
        self._written: set[tuple[str, tuple[str, ...]]] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _publishers.add(self)

    def publish(self) -> None:
        """Write every pool's observed values now; zero those of pools that are gone."""
        with self._lock:
            written = set()
            for stats, pool in pool_readings():
                for observed in OBSERVED:
                    for state, value in observed.readings(stats):
                        labels = pool.labels if state is None else (*pool.labels, state)
                        self.gauges[observed.name].labels(*labels).set(value)
                        written.add((observed.name, labels))
            for name, labels in self._written - written:
                self.gauges[name].labels(*labels).set(0)
            self._written = written

    def start(self) -> None:
        """Publish every ``interval`` seconds from now on (once per process)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="multipool-metrics", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)  # a daemon thread: it ends with the process
            try:
                self.publish()
            except Exception:
                logger.exception("multipool: writing the pool metrics failed")


_held: list[Publisher] = []  # the publishers a fork in progress waited for


def _hold_for_fork() -> None:
    _held[:] = list(_publishers)
    for publisher in _held:
        publisher._lock.acquire()


def _release_after_fork() -> None:
    for publisher in _held:
        publisher._lock.release()
    _held.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(
        before=_hold_for_fork,
        after_in_parent=_release_after_fork,
        after_in_child=_release_after_fork,
    )
