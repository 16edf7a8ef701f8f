"""What a pool reports: :class:`PoolStats`, a snapshot of one alias's pool; and what it
tells a :class:`Recorder` (metrics) as things happen."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = ["ConnectionFacts", "Counters", "PoolStats", "Recorder"]


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


@dataclass(frozen=True)
class ConnectionFacts:
    """What a backend tells of a physical connection it just opened."""

    db_system: str  # postgresql | mysql | mariadb | sqlite
    tls: str | None = None  # the TLS protocol (TLSv1.3), "none", or None: not looked up


class Recorder(Protocol):
    """Told by a pool what it measures, where it happens (``multipool.metrics``).

    Each call costs what recording the value costs; a pool without a recorder
    (metrics off, or no metrics library installed) makes none."""

    def created(self, seconds: float, db_system: str) -> None:
        """A physical connection opened in ``seconds``."""

    def waited(self, seconds: float) -> None:
        """A checkout found the pool exhausted and got a connection after ``seconds``."""

    def used(self, seconds: float) -> None:
        """A connection came back ``seconds`` after it was lent."""

    def timed_out(self) -> None:
        """A checkout gave up after ``pool_timeout``."""

    def invalidated(self) -> None:
        """A connection was discarded as broken."""
