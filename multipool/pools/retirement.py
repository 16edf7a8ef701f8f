"""Replacing a pool's connections after its certificate files rotated, one at a time.

A pool may be given a :class:`Rotation` (multipool's per-alias secrets): each
physical connection is tagged with the generation of the files it was opened
with. When the generation moves on, connections of an older one are
*retired*: closed when given back (or, idle, when next taken) instead of being
lent again. :class:`Retirement` paces that: one connection at a time, the next
once a connection with the new files has opened (or after
:data:`RETIRE_PACE` seconds), so a rotation never empties the pool at once or
sends every thread to reconnect together -- and if the server refuses the new
files, only the one connection opened to try them is affected.

The per-request cost: one float compare (is the look at the files due?) and
one int compare (is this connection's generation the current one?).
"""

from __future__ import annotations

import threading
from typing import Protocol

__all__ = ["RETIRE_PACE", "Retirement", "Rotation"]

#: seconds after a retirement before the next one, if no replacement opened sooner
RETIRE_PACE = 1.0


class Rotation(Protocol):
    """What a pool needs of an alias's rotating files
    (:class:`multipool.secrets.material.Material`)."""

    #: the generation new connections are opened with
    generation: int
    #: monotonic time from which :meth:`check` looks at the files again
    next_check: float

    def check(self, now: float) -> None:
        """Look at the files (cheap; one thread at a time)."""

    def opened_generation(self) -> int:
        """The generation of the connection this thread just opened."""


class Retirement:
    """The pace of retirements of one pool (see the module doc)."""

    __slots__ = ("_lock", "_next", "retired")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time from which the next retirement may happen
        #: connections closed because their files were replaced
        self.retired = 0

    def may_retire(self, now: float) -> bool:
        """Whether a connection of an older generation may be closed now (if so, it
        counts as retired, and the next one waits)."""
        with self._lock:
            if now < self._next:
                return False
            self._next = now + RETIRE_PACE
            self.retired += 1
            return True

    def replaced(self) -> None:
        """A connection with the current files opened: the next one may go."""
        with self._lock:
            self._next = 0.0

    def count(self) -> int:
        with self._lock:
            return self.retired
