"""The pools' metrics for Prometheus (``pip install multipool[prometheus]``).

The same metrics as OpenTelemetry's, in Prometheus naming
(:mod:`multipool.metrics.names`), labelled ``pool_name``, ``db_system_name``
and ``role`` (and ``state`` for the connection count). Two modes, chosen by
``prometheus_client`` itself from ``PROMETHEUS_MULTIPROC_DIR``:

* **One process** (the variable unset): the histograms and counters live in
  this process; the observed values (connections by state, limits, waiting
  checkouts) are read from the pools at scrape time by a collector registered
  in ``prometheus_client``'s default registry -- also what any other exporter
  of that registry serves. The histograms and counters record from the first
  scrape on (:attr:`PrometheusInstruments.recording`): an application that has
  ``prometheus_client`` installed but is never scraped pays nothing per request.
* **Multiprocess** (gunicorn and other pre-fork servers): every process writes
  its values to files in that directory and a scrape of any process sums the
  files of all of them (:func:`exposition`). Counters and histograms are
  written where they happen and summed over every process that ever ran,
  so recycled workers keep counting. Another process's pools cannot be read at
  scrape time, so each process writes its observed values every
  :data:`~multipool.metrics.publisher.PUBLISH_INTERVAL` seconds from a
  background thread (:mod:`multipool.metrics.publisher`) -- nothing per request --
  as ``livesum`` gauges, which count live processes only once the server calls
  ``prometheus_client.multiprocess.mark_process_dead(pid)`` for each exited
  worker (gunicorn's ``child_exit``).

``prometheus_client`` is imported when the application uses it: with
``PROMETHEUS_MULTIPROC_DIR`` set, when the first pool that reports metrics is
created; in one process, at the first record after the application (an
exporter, django-prometheus, multipool's view) has imported it
(:func:`in_use`). A process that has it installed but does not use it does not
load it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from multipool import forking
from multipool.metrics.names import (
    BUCKETS,
    COUNTED,
    INVALIDATIONS,
    LABELS,
    OBSERVED,
    STATE_LABEL,
    TIMED,
    TIMEOUTS,
)
from multipool.metrics.publisher import Publisher
from multipool.metrics.readings import pool_readings

__all__ = [
    "CLIENT_MODULE",
    "MULTIPROC_DIR",
    "MetricsUnavailable",
    "PoolChildren",
    "PrometheusInstruments",
    "current",
    "exposition",
    "in_use",
    "instruments",
    "multiprocess_dir",
    "start_recording",
]

logger = logging.getLogger("multipool.metrics")

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: the module whose presence says the application uses Prometheus
CLIENT_MODULE = "prometheus_client"

#: the instruments pools record to (None: not created yet in this process)
current: PrometheusInstruments | None = None
_unavailable = False
_registered = False  # the one-process collector is in the default registry
_lock = threading.Lock()


def multiprocess_dir() -> str | None:
    """The multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``), if set."""
    return os.environ.get(MULTIPROC_DIR) or os.environ.get(MULTIPROC_DIR.lower()) or None


class PoolChildren:
    """One pool's labelled histograms and counters (looked up once per pool)."""

    __slots__ = ("create_time", "invalidations", "timeouts", "use_time", "wait_time")

    def __init__(self, metrics: dict[str, Any], labels: tuple[str, ...]) -> None:
        create, wait, use = (metrics[t.name].labels(*labels) for t in TIMED)
        self.create_time, self.wait_time, self.use_time = create, wait, use
        self.timeouts = metrics[TIMEOUTS.name].labels(*labels)
        self.invalidations = metrics[INVALIDATIONS.name].labels(*labels)


class PrometheusInstruments:
    """The histograms and counters of this process (and, multiprocess, its publisher)."""

    def __init__(self, directory: str | None) -> None:
        from prometheus_client import Counter, Histogram

        self.multiprocess = directory is not None
        #: whether pools record their histograms and counters: from the first
        #: scrape on in one process (:func:`start_recording`); always multiprocess
        self.recording = self.multiprocess
        # registry=None: never registered twice; the collector below (one process)
        # or the files (multiprocess) expose them
        self.metrics: dict[str, Any] = {
            t.name: Histogram(t.prometheus, t.description, LABELS, buckets=BUCKETS, registry=None)
            for t in TIMED
        }
        self.metrics.update(
            {c.name: Counter(c.prometheus, c.description, LABELS, registry=None) for c in COUNTED}
        )
        self.publisher = Publisher() if self.multiprocess else None

    def children(self, labels: tuple[str, ...]) -> PoolChildren:
        return PoolChildren(self.metrics, labels)

    def pool_added(self) -> None:
        """A pool that reports metrics was created: multiprocess, publish from now on."""
        if self.publisher is not None:
            self.publisher.start()


def start_recording() -> None:
    """Pools record their histograms and counters from now on (one process: the first
    scrape calls this; ``multipool metrics --connect`` before it connects)."""
    made = instruments()
    if made is not None:
        made.recording = True


class PoolCollector:
    """One process: the pools' metrics, observed ones read now (the default registry's)."""

    def describe(self) -> Iterator[Any]:
        """The metric families, without reading the pools (the registry asks when the
        collector is registered, which happens while the pool manager creates a pool)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for observed in OBSERVED:
            yield GaugeMetricFamily(observed.prometheus, observed.description)
        for counted in COUNTED:
            yield CounterMetricFamily(counted.prometheus, counted.description)
        for timed in TIMED:
            yield HistogramMetricFamily(timed.prometheus, timed.description)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        start_recording()
        readings = pool_readings()
        for observed in OBSERVED:
            labels = [*LABELS, STATE_LABEL] if observed.states else list(LABELS)
            family = GaugeMetricFamily(observed.prometheus, observed.description, labels=labels)
            for stats, pool in readings:
                for state, value in observed.readings(stats):
                    values = [*pool.labels, state] if state is not None else list(pool.labels)
                    family.add_metric(values, value)
            yield family
        made = current
        if made is not None:
            for metric in made.metrics.values():
                yield from metric.collect()


def in_use() -> PrometheusInstruments | None:
    """This process's instruments once the application has imported
    ``prometheus_client`` (created then); ``None`` before, importing nothing."""
    if current is not None or CLIENT_MODULE not in sys.modules:
        return current
    return instruments()


def instruments() -> PrometheusInstruments | None:
    """This process's instruments, created on first use; ``None`` without
    ``prometheus_client`` or with an unusable multiprocess directory (logged once)."""
    global current, _unavailable
    if current is not None or _unavailable:
        return current
    with _lock:
        if current is None and not _unavailable:
            try:
                import prometheus_client  # noqa: F401
            except ImportError:
                _unavailable = True
                return None
            directory = multiprocess_dir()
            if directory is not None and not _usable_directory(directory):
                _unavailable = True
                return None
            current = PrometheusInstruments(directory)
            if directory is None:
                _register_collector()
    return current


def _usable_directory(directory: str) -> bool:
    if os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
        return True
    logger.error(
        "multipool: %s=%s is not a writable directory: no Prometheus metrics are recorded "
        "in this process. Create it (empty) before the server starts, writable by its "
        "workers, or unset %s for one-process metrics.",
        MULTIPROC_DIR, directory, MULTIPROC_DIR,
    )  # fmt: skip
    return False


def _register_collector() -> None:
    global _registered
    if not _registered:
        from prometheus_client import REGISTRY

        REGISTRY.register(PoolCollector())
        _registered = True


class MetricsUnavailable(RuntimeError):
    """No exposition can be made: ``prometheus_client`` is missing, or the
    multiprocess directory is (the message says which, and the fix)."""


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """What a scrape returns, and its content type (OpenMetrics when ``accept``, a
    request's ``Accept`` header, asks for it): in multiprocess mode, every
    process's metrics summed from the directory's files (this process's observed
    values written first); else the default registry, multipool's collector in it.
    Raises :class:`MetricsUnavailable`."""
    try:
        from prometheus_client import REGISTRY, CollectorRegistry
        from prometheus_client.exposition import choose_encoder
    except ImportError:
        raise MetricsUnavailable(
            "multipool: prometheus_client is not installed: pip install 'multipool[prometheus]'"
        ) from None
    encode, content_type = choose_encoder(accept or "")
    directory = multiprocess_dir()
    if directory is None:
        _register_collector()
        return encode(REGISTRY), content_type
    from prometheus_client.multiprocess import MultiProcessCollector

    if not os.path.isdir(directory):
        raise MetricsUnavailable(
            f"multipool: {MULTIPROC_DIR}={directory} does not exist: create it (empty) before "
            f"the application server starts, or unset {MULTIPROC_DIR} for one-process metrics"
        )
    made = current
    if made is not None and made.publisher is not None:
        made.publisher.publish()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return encode(registry), content_type


def _after_fork_in_child() -> None:
    """A forked child starts with no pools: its own metrics start empty (in
    multiprocess mode ``prometheus_client`` gives it files of its own)."""
    global current, _lock
    _lock = threading.Lock()
    current = None


forking.in_child_after_fork("state", _after_fork_in_child)
