"""Replica health: which read replicas the router may use right now.

A small, process-wide, thread-safe circuit breaker per replica alias
(:data:`health`). The router (:mod:`multipool.routers`) is its only writer:

* ``mark_down(alias)`` -- connecting to the replica failed (its pool could not
  lend a connection, or a connection it held turned out dead). The replica is
  skipped for a back-off period: ``backoff`` seconds after the first failure,
  doubling after each further failure, at most ``backoff_max``.
* When the back-off has expired, :meth:`ReplicaHealth.check` hands out **one**
  probe: the first caller gets ``PROBE`` (and must report the result with
  ``mark_up``/``mark_down``); every other caller keeps seeing ``DOWN`` until
  the probe is resolved (or ``probe_grace`` seconds passed, if the prober died).
  So a dead replica costs at most one connection attempt per back-off period,
  never one per request.
* ``mark_up(alias)`` -- a connection was lent: failures are forgotten.
* Replica lag (optional, PostgreSQL): ``lag_due`` lets exactly one caller per
  interval measure the lag; ``record_lag`` stores it; a replica whose last
  measured lag is above the limit is skipped (``LAGGING``) until the next
  measurement says otherwise.

Nothing here talks to a database, starts a thread or sleeps: the checks cost a
dictionary look-up (plus a lock only when the replica is not plainly healthy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from multipool import forking

__all__ = [
    "DOWN",
    "LAGGING",
    "PROBE",
    "UP",
    "ReplicaHealth",
    "ReplicaStatus",
    "health",
]

logger = logging.getLogger("multipool.health")

UP = "up"
DOWN = "down"
PROBE = "probe"
LAGGING = "lagging"


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica's health (see :meth:`ReplicaHealth.status`)."""

    alias: str
    state: str  # UP | DOWN | LAGGING (PROBE is never reported here)
    failures: int  # consecutive failures (0 when up)
    down_for: float  # seconds until the next probe may run (0 when up)
    last_error: str | None  # exception type of the last failure, e.g. "OperationalError"
    lag: float | None  # last measured lag in seconds (None: never measured)


class _State:
    __slots__ = (
        "down_until",
        "failures",
        "lag",
        "lag_checked_at",
        "lagging",
        "last_error",
        "probe_started",
        "probing",
    )

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.probing = False
        self.probe_started = 0.0
        self.last_error: str | None = None
        self.lag: float | None = None
        self.lag_checked_at = float("-inf")
        self.lagging = False


class ReplicaHealth:
    """Health of every replica alias of this process (see the module doc).

    ``clock`` returns monotonic seconds (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}

    # -- reading ------------------------------------------------------------------
    def check(self, alias: str, *, probe_grace: float = 30.0) -> str:
        """``UP``, ``DOWN``, ``LAGGING``, or ``PROBE`` (this caller must probe and report)."""
        state = self._states.get(alias)
        if state is None:
            return UP
        if state.failures == 0:
            return LAGGING if state.lagging else UP
        now = self.clock()
        if now < state.down_until:
            return DOWN
        with self._lock:
            if state.failures == 0:  # resolved meanwhile
                return LAGGING if state.lagging else UP
            if state.probing and now < state.probe_started + probe_grace:
                return DOWN
            state.probing = True
            state.probe_started = now
            return PROBE

    def status(self, alias: str | None = None) -> dict[str, ReplicaStatus]:
        """Snapshots per replica alias known to the tracker (all when ``alias`` is None)."""
        now = self.clock()
        with self._lock:
            items = list(self._states.items())
        out: dict[str, ReplicaStatus] = {}
        for name, st in sorted(items):
            if alias is not None and name != alias:
                continue
            state = DOWN if st.failures else LAGGING if st.lagging else UP
            out[name] = ReplicaStatus(
                alias=name,
                state=state,
                failures=st.failures,
                down_for=max(0.0, st.down_until - now) if st.failures else 0.0,
                last_error=st.last_error,
                lag=st.lag,
            )
        return out

    # -- writing ------------------------------------------------------------------
    def _state(self, alias: str) -> _State:
        state = self._states.get(alias)
        if state is None:
            with self._lock:
                state = self._states.setdefault(alias, _State())
        return state

    def mark_down(
        self,
        alias: str,
        error: BaseException | str | None = None,
        *,
        backoff: float = 5.0,
        backoff_max: float = 60.0,
        detail: str = "",
    ) -> float:
        """Record a failure; return the back-off (seconds) before the next probe."""
        state = self._state(alias)
        kind = error if isinstance(error, str) or error is None else type(error).__name__
        with self._lock:
            state.failures += 1
            failures = state.failures
            delay = _backoff(failures, backoff, backoff_max)
            state.down_until = self.clock() + delay
            state.probing = False
            state.last_error = kind
        log = logger.warning if failures == 1 else logger.info
        log(
            "multipool: replica %r is unavailable (%s%s); reads skip it for %.1fs "
            "(failure %d in a row)",
            alias,
            kind or "error",
            f": {detail}" if detail else "",
            delay,
            failures,
        )
        return delay

    def mark_up(self, alias: str) -> None:
        """Record a successful connection (cheap when the replica was already up)."""
        state = self._states.get(alias)
        if state is None or (state.failures == 0 and not state.probing):
            return
        with self._lock:
            was_down = state.failures
            state.failures = 0
            state.down_until = 0.0
            state.probing = False
        if was_down:
            logger.warning("multipool: replica %r is available again", alias)

    def release_probe(self, alias: str) -> None:
        """Give back a probe handed out by :meth:`check` without a verdict."""
        state = self._states.get(alias)
        if state is not None and state.probing:
            with self._lock:
                state.probing = False

    def lag_due(self, alias: str, interval: float) -> bool:
        """True for exactly one caller once ``interval`` seconds passed since the last check."""
        state = self._state(alias)
        now = self.clock()
        if now - state.lag_checked_at < interval:
            return False
        with self._lock:
            if now - state.lag_checked_at < interval:
                return False
            state.lag_checked_at = now
            return True

    def record_lag(self, alias: str, lag: float | None, max_lag: float | None) -> bool:
        """Store a measured lag; return whether the replica is within ``max_lag``."""
        state = self._state(alias)
        within = lag is not None and (max_lag is None or lag <= max_lag)
        with self._lock:
            was_lagging = state.lagging
            state.lag = lag
            state.lagging = not within
        if state.lagging and not was_lagging:
            shown = "unknown" if lag is None else f"{lag:.1f}s"
            logger.warning(
                "multipool: replica %r lags %s behind its primary (limit %ss); reads skip it",
                alias,
                shown,
                max_lag,
            )
        elif was_lagging and not state.lagging:
            logger.warning("multipool: replica %r caught up with its primary", alias)
        return within

    def forget_lag(self, alias: str) -> None:
        """Drop lag information (lag limit turned off)."""
        state = self._states.get(alias)
        if state is not None and (state.lagging or state.lag is not None):
            with self._lock:
                state.lagging = False
                state.lag = None
                state.lag_checked_at = float("-inf")

    def reset(self, alias: str | None = None) -> None:
        """Forget everything (about ``alias``, or about every replica)."""
        with self._lock:
            if alias is None:
                self._states.clear()
            else:
                self._states.pop(alias, None)

    def peek(self, alias: str) -> str:
        """Like :meth:`check` but never hands out a probe (an expired back-off is ``DOWN``)."""
        state = self._states.get(alias)
        if state is None:
            return UP
        if state.failures:
            return DOWN
        return LAGGING if state.lagging else UP

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """:meth:`status` as plain dicts (for a health endpoint)."""
        return {name: asdict(st) for name, st in self.status().items()}

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


def _backoff(failures: int, initial: float, maximum: float) -> float:
    initial = max(0.0, float(initial))
    maximum = max(initial, float(maximum))
    # 2**n overflows floats only far beyond any useful maximum; cap the exponent.
    return min(initial * (2 ** min(failures - 1, 62)), maximum)


#: The process-wide tracker the router uses.
health = ReplicaHealth()

forking.in_child_after_fork("state", health._after_fork_in_child)
