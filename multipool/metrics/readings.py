"""What the observed metrics read: each pool of this process that reports metrics.

A pool reports metrics when it was created with a recorder (its alias's
``POOL_METRICS`` is on and a metrics library is installed). Its recorder
carries the pool's OpenTelemetry attributes and Prometheus label values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from multipool.pools import PoolStats, manager

__all__ = ["Labelled", "pool_readings"]


class Labelled(Protocol):
    """How a pool is named in its metrics (:class:`multipool.metrics.recorder.PoolRecorder`)."""

    #: OpenTelemetry attributes: pool name, database system, role
    attributes: Mapping[str, str]
    #: Prometheus label values, in :data:`multipool.metrics.names.LABELS` order
    labels: tuple[str, ...]


def pool_readings() -> list[tuple[PoolStats, Labelled]]:
    """``(stats, recorder)`` of every pool of this process that reports metrics."""
    found = []
    for alias, stats in manager.stats().items():
        pool = manager.get(alias)
        recorder = pool.recorder if pool is not None else None
        if recorder is not None and hasattr(recorder, "labels"):
            found.append((stats, recorder))
    return found  # type: ignore[return-value]
