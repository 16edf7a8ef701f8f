"""Every metric multipool reports: its name, unit, meaning and where its value comes from.

One table for OpenTelemetry and Prometheus alike. The OpenTelemetry names are
those of the semantic conventions for database client connection pools
(``db.client.connection.*``); the Prometheus names are the same metrics as an
OpenTelemetry-to-Prometheus translation spells them: dots become underscores,
a histogram in seconds gains ``_seconds``, a counter ``_total`` (added by
``prometheus_client``). ``docs/metrics.md`` lists them for users.

Three kinds of values:

* **observed** -- read from :class:`~multipool.pools.PoolStats` when a reader
  collects (OpenTelemetry observable instruments, a Prometheus scrape): no
  work per request;
* **counted** -- counters incremented where the rare event happens (a
  checkout timeout, a connection invalidated);
* **timed** -- histograms recorded where the thing happens (a physical
  connect, a checkout that waited, a connection in use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multipool.pools.stats import PoolStats

__all__ = [
    "ATTRIBUTES",
    "BUCKETS",
    "COUNTED",
    "LABELS",
    "OBSERVED",
    "TIMED",
    "Counted",
    "Observed",
    "Timed",
    "prometheus_names",
]

#: OpenTelemetry attribute names (and the Prometheus label of each)
POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
DB_SYSTEM = "db.system.name"
ROLE = "multipool.role"

#: attribute -> Prometheus label, in label order
ATTRIBUTES = {POOL_NAME: "pool_name", DB_SYSTEM: "db_system_name", ROLE: "role"}
LABELS = tuple(ATTRIBUTES.values())
STATE_LABEL = "state"

#: histogram bucket bounds in seconds: from a fast request's use of a connection
#: (under a millisecond) to a checkout that waits out ``POOL_TIMEOUT``
BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


@dataclass(frozen=True)
class Observed:
    """A value read from the pool's stats when a reader collects (an up-down counter
    in OpenTelemetry, a gauge in Prometheus). ``states``: the value per
    ``db.client.connection.state`` (``count`` only)."""

    name: str
    unit: str
    description: str
    read: Callable[[PoolStats], int] | None = None
    states: tuple[tuple[str, Callable[[PoolStats], int]], ...] = ()

    @property
    def prometheus(self) -> str:
        return self.name.replace(".", "_")

    def readings(self, stats: PoolStats) -> list[tuple[str | None, int]]:
        """``(state or None, value)`` for one pool."""
        if self.states:
            return [(state, read(stats)) for state, read in self.states]
        assert self.read is not None
        return [(None, self.read(stats))]


@dataclass(frozen=True)
class Counted:
    """A counter incremented where its event happens."""

    name: str
    unit: str
    description: str

    @property
    def prometheus(self) -> str:
        return self.name.replace(".", "_")  # prometheus_client adds _total


@dataclass(frozen=True)
class Timed:
    """A histogram of durations in seconds."""

    name: str
    description: str
    unit: str = "s"

    @property
    def prometheus(self) -> str:
        return self.name.replace(".", "_") + "_seconds"


COUNT = Observed(
    "db.client.connection.count",
    "{connection}",
    "Open connections of the pool, by state: used (lent to a thread) or idle",
    states=(("idle", lambda s: s.idle), ("used", lambda s: s.checked_out)),
)
MAX = Observed(
    "db.client.connection.max",
    "{connection}",
    "The most connections the pool may open (POOL_SIZE + MAX_OVERFLOW)",
    read=lambda s: s.pool_size + s.max_overflow,
)
IDLE_MAX = Observed(
    "db.client.connection.idle.max",
    "{connection}",
    "The most idle connections the pool keeps (POOL_SIZE; connections above it close "
    "again, one per POOL_OVERFLOW_IDLE seconds, once the load no longer needs them)",
    read=lambda s: s.pool_size,
)
IDLE_MIN = Observed(
    "db.client.connection.idle.min",
    "{connection}",
    "The fewest idle connections the pool keeps open (0: it opens connections on demand)",
    read=lambda s: 0,
)
PENDING = Observed(
    "db.client.connection.pending_requests",
    "{request}",
    "Checkouts waiting for a connection now",
    read=lambda s: s.pending,
)
TIMEOUTS = Counted(
    "db.client.connection.timeouts",
    "{timeout}",
    "Checkouts that waited POOL_TIMEOUT seconds and failed with PoolTimeout",
)
INVALIDATIONS = Counted(
    "multipool.pool.invalidations",
    "{connection}",
    "Connections discarded as broken: a failed health check, or an error the backend "
    "could not recover the connection from",
)
CREATE_TIME = Timed(
    "db.client.connection.create_time",
    "The time it took to open a new physical connection (TCP, TLS handshake, login)",
)
WAIT_TIME = Timed(
    "db.client.connection.wait_time",
    "The time a checkout that found the pool exhausted waited for a connection to be "
    "given back (checkouts that found one ready record nothing)",
)
USE_TIME = Timed(
    "db.client.connection.use_time",
    "The time between lending a connection and getting it back (one request's use, "
    "for a connection kept between requests)",
)

OBSERVED = (COUNT, MAX, IDLE_MAX, IDLE_MIN, PENDING)
COUNTED = (TIMEOUTS, INVALIDATIONS)
TIMED = (CREATE_TIME, WAIT_TIME, USE_TIME)


def prometheus_names() -> set[str]:
    """The sample names of every metric as a Prometheus scrape shows them."""
    names = {m.prometheus for m in OBSERVED}
    names |= {f"{m.prometheus}_total" for m in COUNTED}
    for timed in TIMED:
        names |= {f"{timed.prometheus}_{suffix}" for suffix in ("bucket", "count", "sum")}
    return names
