"""What a pool tells its metrics: :class:`PoolRecorder`, made by :func:`recorder_for`.

The backends give :func:`recorder_for` to the pool manager, which calls it when
it creates an alias's pool. A pool gets a recorder when the alias's
``POOL_METRICS`` is on (the default) and OpenTelemetry's API or
``prometheus_client`` is installed; otherwise ``None``, and the pool pays one
``None`` check where it would record.

A recorder sends each measurement to the libraries the application uses: to
OpenTelemetry once it has imported the metrics API
(:func:`multipool.metrics.otel.in_use`), to Prometheus once it has imported
``prometheus_client`` or set ``PROMETHEUS_MULTIPROC_DIR``
(:func:`multipool.metrics.prometheus.in_use`). Until then a record is two
dictionary lookups and imports nothing: an installed library that the
application does not use is never loaded (about 37 ms of start-up and 3.5 MB
per process for the two). A recorder carries the pool's names for both: the
alias, the database system and the role (``primary``, or ``replica`` for an
alias with ``replica_of``). The database system is the backend's vendor until
the first connection tells MySQL from MariaDB.

Recording never fails a request: an error of a metrics library is logged
once and the request goes on.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import TYPE_CHECKING

from multipool.metrics import otel, prometheus
from multipool.metrics.names import DB_SYSTEM, POOL_NAME, ROLE

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec
    from multipool.metrics.prometheus import PoolChildren

__all__ = ["PoolRecorder", "recorder_for"]

logger = logging.getLogger("multipool.metrics")

_failure_logged = False


class PoolRecorder:
    """One pool's measurements (see the module doc)."""

    __slots__ = ("_prometheus", "alias", "attributes", "db_system", "labels", "role")

    def __init__(self, alias: str, role: str, db_system: str) -> None:
        self.alias = alias
        self.role = role
        self._name(db_system)

    def _name(self, db_system: str) -> None:
        self.db_system = db_system
        #: OpenTelemetry attributes
        self.attributes = {POOL_NAME: self.alias, DB_SYSTEM: db_system, ROLE: self.role}
        #: Prometheus label values
        self.labels = (self.alias, db_system, self.role)
        self._prometheus: PoolChildren | None = None

    def _prom(self) -> PoolChildren | None:
        """This pool's Prometheus series, made at its first record once Prometheus
        records (:attr:`~multipool.metrics.prometheus.PrometheusInstruments.recording`):
        by then its first connection has told MySQL from MariaDB."""
        if self._prometheus is None:
            made = prometheus.in_use()
            if made is not None and made.recording:
                self._prometheus = made.children(self.labels)
        return self._prometheus

    def created(self, seconds: float, db_system: str) -> None:
        try:
            if db_system != self.db_system:
                self._name(db_system)
            instruments = otel.in_use()
            if instruments is not None:
                instruments.create_time.record(seconds, self.attributes)
            children = self._prom()
            if children is not None:
                children.create_time.observe(seconds)
        except Exception:
            _failed(self.alias)

    def waited(self, seconds: float) -> None:
        try:
            instruments = otel.in_use()
            if instruments is not None:
                instruments.wait_time.record(seconds, self.attributes)
            children = self._prom()
            if children is not None:
                children.wait_time.observe(seconds)
        except Exception:
            _failed(self.alias)

    def used(self, seconds: float) -> None:
        try:
            instruments = otel.in_use()
            if instruments is not None:
                instruments.use_time.record(seconds, self.attributes)
            children = self._prom()
            if children is not None:
                children.use_time.observe(seconds)
        except Exception:
            _failed(self.alias)

    def timed_out(self) -> None:
        try:
            instruments = otel.in_use()
            if instruments is not None:
                instruments.timeouts.add(1, self.attributes)
            children = self._prom()
            if children is not None:
                children.timeouts.inc()
        except Exception:
            _failed(self.alias)

    def invalidated(self) -> None:
        try:
            instruments = otel.in_use()
            if instruments is not None:
                instruments.invalidations.add(1, self.attributes)
            children = self._prom()
            if children is not None:
                children.invalidations.inc()
        except Exception:
            _failed(self.alias)


def _failed(alias: str) -> None:
    global _failure_logged
    if not _failure_logged:
        _failure_logged = True
        logger.exception(
            "multipool: alias %r: recording a pool metric failed; the request goes on "
            "(logged once per process)",
            alias,
        )


@functools.cache
def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it; a dotted name
    imports its parent package)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def recorder_for(spec: DatabaseSpec) -> PoolRecorder | None:
    """The recorder of a new pool for ``spec``, or ``None``: metrics off for the alias
    (``POOL_METRICS``), or neither OpenTelemetry nor ``prometheus_client`` installed.
    With ``PROMETHEUS_MULTIPROC_DIR`` set, the Prometheus instruments are made now and
    this process starts writing its observed values."""
    if not spec.pool.metrics:
        return None
    if not (_installed(otel.API_MODULE) or _installed(prometheus.CLIENT_MODULE)):
        return None
    role = "primary" if spec.replica_of is None else "replica"
    recorder = PoolRecorder(spec.alias, role, spec.vendor)
    if prometheus.multiprocess_dir() is not None:
        made = prometheus.instruments()
        if made is not None:
            made.pool_added()
    return recorder
