"""What a Django connection wrapper holds of its alias's pool, as one object."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multipool.pools import AliasPool, Lease

__all__ = [
    "BROKEN",
    "CHANGED",
    "IDLE",
    "IN_TRANSACTION",
    "KEPT",
    "LENT",
    "NONE",
    "PARKED",
    "Hold",
    "PoolBinding",
    "SessionState",
]


class Hold(enum.Enum):
    """How a wrapper holds its lease."""

    #: no lease: not connected, or connected without a pool
    NONE = "none"
    #: connected through the lease: ``wrapper.connection`` is its connection
    LENT = "lent"
    #: given back at the end of a request in a clean state; the wrapper's
    #: Django state stays as it was, and the next ``ensure_connection()`` takes
    #: the connection back without reconnecting the wrapper
    KEPT = "kept"
    #: given back by ``close()``; the next ``connect()`` takes it back
    PARKED = "parked"


class SessionState(enum.Enum):
    """What a backend finds when a connection comes back (``release_state``)."""

    #: clean: no transaction, session as Django set it up
    IDLE = "idle"
    #: a transaction to roll back
    IN_TRANSACTION = "in transaction"
    #: unusable: discard it
    BROKEN = "broken"
    #: no transaction, but a session setting to restore (``restore_session``)
    CHANGED = "changed"


# The members as plain names: the request boundary reads them a few times per
# request, and a module global is faster to read than an Enum class attribute.
NONE, LENT, KEPT, PARKED = Hold
IDLE, IN_TRANSACTION, BROKEN, CHANGED = SessionState


class PoolBinding:
    """The lease a wrapper holds, the pool it came from, and how it is held.

    ``lease`` and ``pool`` are set exactly when ``hold`` is not ``NONE``.
    """

    __slots__ = ("hold", "lease", "pool")

    def __init__(self) -> None:
        self.hold = NONE
        self.lease: Lease | None = None
        self.pool: AliasPool | None = None

    def set(self, hold: Hold, lease: Lease, pool: AliasPool) -> None:
        self.hold, self.lease, self.pool = hold, lease, pool

    def clear(self) -> None:
        self.hold, self.lease, self.pool = NONE, None, None

    def __repr__(self) -> str:
        return f"<PoolBinding {self.hold.value} {self.lease!r}>"
