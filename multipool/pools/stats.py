"""What a pool reports: :class:`PoolStats`, a snapshot of one alias's pool."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Counters", "PoolStats"]


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of one alias's pool. ``open`` counts physical connections."""

    alias: str
    vendor: str
    pool_size: int
    max_overflow: int
    open: int
    checked_out: int
    idle: int
    overflow: int
    pending: int  # threads waiting for a connection now
    checkouts: int
    waits: int
    timeouts: int
    connects: int
    invalidations: int
    pings: int
    ping_failures: int
    retired: int = 0  # closed because their certificate files were replaced

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Counters:
    """Event counts of one pool, changed only under the pool's lock (exact, not sampled)."""

    __slots__ = (
        "checkouts",
        "connects",
        "invalidations",
        "ping_failures",
        "pings",
        "timeouts",
        "waits",
    )

    def __init__(self) -> None:
        self.checkouts = 0
        self.waits = 0
        self.timeouts = 0
        self.connects = 0
        self.invalidations = 0
        self.pings = 0
        self.ping_failures = 0
