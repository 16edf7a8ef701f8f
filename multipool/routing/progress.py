"""Replica lag from replication positions, not clocks.

A primary's position is sampled at most once per interval (shared by every
replica of its group); a replica's lag is how long ago the primary first held
something the replica has not replayed yet:

* the replica has replayed the newest sample: lag 0, however long ago the last
  commit was (an idle primary cannot fake lag);
* it has replayed sample *i* but not *i + 1*: it misses something written after
  sample *i*, and at the latest at sample *i + 1*: lag is at least the time
  since sample *i + 1* -- known to within the sampling interval;
* it is behind every sample kept: at least the time since the oldest.

No clock of any server is read, so clock skew between servers does not matter.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from multipool import forking
from multipool.routing.positions import Position, reached

__all__ = ["PrimaryProgress", "progress"]

#: samples kept per primary (at the default 5 s interval: about 20 minutes)
KEPT_SAMPLES = 256


class PrimaryProgress:
    """Timed samples of each primary's position (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._samples: dict[str, deque[tuple[float, Position]]] = {}
        self._claimed: dict[str, float] = {}

    def sample_due(self, primary: str, interval: float) -> bool:
        """True for one caller once ``interval`` seconds passed since the last sample."""
        now = self.clock()
        with self._lock:
            if now - self._claimed.get(primary, float("-inf")) < interval:
                return False
            self._claimed[primary] = now
            return True

    def record(self, primary: str, position: Position) -> None:
        with self._lock:
            samples = self._samples.setdefault(primary, deque(maxlen=KEPT_SAMPLES))
            samples.append((self.clock(), position))

    def lag(self, primary: str, replayed: Position | None) -> float | None:
        """Seconds ``replayed`` is behind ``primary`` (None: no sample, or unknown)."""
        with self._lock:
            samples = list(self._samples.get(primary, ()))
        if not samples or replayed is None:
            return None
        now = self.clock()
        later = None  # the oldest sample after the newest one replayed
        for taken_at, position in reversed(samples):
            if reached(replayed, position):
                return 0.0 if later is None else max(0.0, now - later)
            later = taken_at
        return max(0.0, now - samples[0][0])

    def reset(self) -> None:
        with self._lock:
            self._samples.clear()
            self._claimed.clear()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


#: The process-wide samples the router uses.
progress = PrimaryProgress()

forking.in_child_after_fork("state", progress._after_fork_in_child)
