"""What a pool tells its metrics: :class:`PoolRecorder`, made by :func:`recorder_for`.

The backends give :func:`recorder_for` to the pool manager, which calls it when
it creates an alias's pool. A pool gets a recorder when the alias's
``POOL_METRICS`` is on (the default) and OpenTelemetry's API or
``prometheus_client`` is installed; otherwise ``None``, and the pool pays one
``None`` check where it would record.

A recorder sends each measurement to OpenTelemetry (the instruments of the
moment, :data:`multipool.metrics.otel.current`) and to Prometheus (this pool's
labelled children), and carries the pool's names for both: the alias, the
database system and the role (``primary``, or ``replica`` for an alias with
``replica_of``). The database system is the backend's vendor until the first
connection tells MySQL from MariaDB.

Recording never fails a request: an error of a metrics library is logged
once and the request goes on.
"""

from __future__ import annotations

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

    __slots__ = ("_prometheus", "_prometheus_on", "alias", "attributes", "db_system", "labels",
                 "role")  # fmt: skip

    def __init__(self, alias: str, role: str, db_system: str) -> None:
        self.alias = alias
        self.role = role
        self._prometheus_on = prometheus.current is not None
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
        if self._prometheus is None and self._prometheus_on:
            made = prometheus.current
            if made is not None and made.recording:
                self._prometheus = made.children(self.labels)
        return self._prometheus

    def created(self, seconds: float, db_system: str) -> None:
        try:
            if db_system != self.db_system:
                self._name(db_system)
            instruments = otel.current
            if instruments is not None:
                instruments.create_time.record(seconds, self.attributes)
            children = self._prom()
            if children is not None:
                children.create_time.observe(seconds)
        except Exception:
            _failed(self.alias)

    def waited(self, seconds: float) -> None:
        try:
            instruments = otel.current
            if instruments is not None:
                instruments.wait_time.record(seconds, self.attributes)
            children = self._prom()
            if children is not None:
                children.wait_time.observe(seconds)
        except Exception:
            _failed(self.alias)

    def used(self, seconds: float) -> None:
        try:
            instruments = otel.current
            if instruments is not None:
                instruments.use_time.record(seconds, self.attributes)
            children = self._prom()
            if children is not None:
                children.use_time.observe(seconds)
        except Exception:
            _failed(self.alias)

    def timed_out(self) -> None:
        try:
            instruments = otel.current
            if instruments is not None:
                instruments.timeouts.add(1, self.attributes)
            children = self._prom()
            if children is not None:
                children.timeouts.inc()
        except Exception:
            _failed(self.alias)

    def invalidated(self) -> None:
        try:
            instruments = otel.current
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


def recorder_for(spec: DatabaseSpec) -> PoolRecorder | None:
    """The recorder of a new pool for ``spec``, or ``None``: metrics off for the alias
    (``POOL_METRICS``), or neither OpenTelemetry nor ``prometheus_client`` installed."""
    if not spec.pool.metrics:
        return None
    has_otel = otel.instruments() is not None
    made = prometheus.instruments()
    if not has_otel and made is None:
        return None
    role = "primary" if spec.replica_of is None else "replica"
    recorder = PoolRecorder(spec.alias, role, spec.vendor)
    if made is not None:
        made.pool_added()
    return recorder
