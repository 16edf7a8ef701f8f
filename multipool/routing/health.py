"""Replica health: which read replicas the router may use right now.

A small, process-wide, thread-safe record per replica alias (:data:`health`).
The router (:mod:`multipool.routers`) writes it; anyone may read it:

* **Outages, not failures.** ``mark_down(alias)`` -- a connection to the replica
  failed. A replica that was up goes down for ``backoff`` seconds. Failures
  that arrive while it is already down (the other threads that were reading
  from it when it went away) change nothing: an outage counts once.
* **One probe at a time.** When the back-off is over, :meth:`ReplicaHealth.check`
  answers ``PROBE`` to exactly one caller, which tries the replica (the router
  does it on a background thread, so no request waits for it) and reports
  ``mark_up`` or ``mark_down(..., probe=True)``. Only a failed probe doubles the
  back-off, up to ``backoff_max``. A replica that answers "starting up" stays at
  the first back-off (``transient=True``): it is about to be ready.
* **Positions.** How far each replica has replayed (``record_position``), read
  at most once per interval by the caller :meth:`position_due` picks.
* **Lag.** ``lag_due`` lets one caller per interval measure it; ``record_lag``
  stores it; a replica beyond the limit is ``LAGGING`` (skipped) until the next
  measurement says otherwise.

Nothing here talks to a database or sleeps: the checks cost a dictionary
look-up (plus a lock only when the replica is not plainly healthy).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from multipool import forking
from multipool.metrics.events import log_event
from multipool.routing.positions import Position

__all__ = ["DOWN", "LAGGING", "PROBE", "UP", "ReplicaHealth", "ReplicaStatus", "health"]

logger = logging.getLogger("multipool.health")

UP = "up"
DOWN = "down"
PROBE = "probe"
LAGGING = "lagging"


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica's health (see :meth:`ReplicaHealth.status`)."""

    alias: str
    primary: str | None  # the primary it replicates (None: not in the topology)
    state: str  # UP | DOWN | LAGGING
    failures: int  # failed attempts in the current outage (0 when up)
    down_for: float  # seconds until the next probe may run (0 when up)
    last_error: str | None  # exception type of the last failure, e.g. "ServerUnreachable"
    lag: float | None  # last measured lag in seconds (None: never measured)
    position: str | None  # how far it had replayed when last read (None: never read)
    position_age: float | None  # seconds since that was read

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain JSON-ready values."""
        return asdict(self)


class _State:
    __slots__ = (
        "down_until", "failures", "lag", "lag_checked_at", "lagging", "last_error",
        "position", "position_at", "position_claimed_at", "probe_started", "probing",
    )  # fmt: skip

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0
        self.probing = False
        self.probe_started = 0.0
        self.last_error: str | None = None
        self.lag: float | None = None
        self.lag_checked_at = float("-inf")
        self.lagging = False
        self.position: Position | None = None
        self.position_at = float("-inf")
        self.position_claimed_at = float("-inf")


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

    def peek(self, alias: str) -> str:
        """Like :meth:`check` but never hands out a probe."""
        state = self._states.get(alias)
        if state is None:
            return UP
        if state.failures:
            return DOWN
        return LAGGING if state.lagging else UP

    def position(self, alias: str) -> tuple[Position | None, float]:
        """The replica's last read position and its age in seconds (inf: never read)."""
        state = self._states.get(alias)
        if state is None or state.position is None:
            return None, float("inf")
        return state.position, self.clock() - state.position_at

    def status(self, alias: str | None = None) -> dict[str, ReplicaStatus]:
        """A snapshot of every replica the router knows (those of ``DATABASES``, and
        any other with a record here), by alias; of ``alias`` alone if given."""
        now = self.clock()
        with self._lock:
            known = dict(self._states)
        primaries = _topology_replicas()
        out: dict[str, ReplicaStatus] = {}
        for name in sorted(set(primaries) | set(known)):
            if alias is not None and name != alias:
                continue
            st = known.get(name) or _State()
            out[name] = ReplicaStatus(
                alias=name,
                primary=primaries.get(name),
                state=DOWN if st.failures else LAGGING if st.lagging else UP,
                failures=st.failures,
                down_for=max(0.0, st.down_until - now) if st.failures else 0.0,
                last_error=st.last_error,
                lag=st.lag,
                position=None if st.position is None else str(st.position),
                position_age=None if st.position is None else max(0.0, now - st.position_at),
            )
        return out

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """:meth:`status` as plain JSON-ready values (for a health endpoint)."""
        return {name: st.as_dict() for name, st in self.status().items()}

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
        backoff: float = 1.0,
        backoff_max: float = 5.0,
        detail: str = "",
        probe: bool = False,
        transient: bool = False,
    ) -> float:
        """Record a failure; return the seconds until the next probe.

        ``probe``: the failure of the probe :meth:`check` handed out (doubles the
        back-off). Otherwise a failure counts only if the replica was up.
        ``transient``: the replica is starting up; the back-off does not grow.
        """
        state = self._state(alias)
        kind = error if isinstance(error, str) or error is None else type(error).__name__
        now = self.clock()
        with self._lock:
            state.last_error = kind
            if state.failures and not probe:
                return max(0.0, state.down_until - now)  # the same outage
            if probe:
                state.probing = False
            state.failures = 1 if transient else state.failures + 1
            failures = state.failures
            delay = _backoff(failures, backoff, backoff_max)
            state.down_until = now + delay
        log_event(
            logger, logging.WARNING if failures == 1 and not probe else logging.INFO,
            "replica_down", alias,
            "multipool: replica %r is unavailable (%s%s); reads skip it for %.1fs "
            "(attempt %d of this outage)",
            alias, kind or "error", f": {detail}" if detail else "", delay, failures,
            error=kind, backoff=delay, attempt=failures,
        )  # fmt: skip
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
            log_event(
                logger, logging.WARNING, "replica_up", alias,
                "multipool: replica %r is available again", alias, attempts=was_down,
            )  # fmt: skip

    def release_probe(self, alias: str) -> None:
        """Give back a probe handed out by :meth:`check` without a verdict."""
        state = self._states.get(alias)
        if state is not None and state.probing:
            with self._lock:
                state.probing = False

    def _claim(self, alias: str, field: str, interval: float) -> bool:
        state = self._state(alias)
        now = self.clock()
        if now - getattr(state, field) < interval:
            return False
        with self._lock:
            if now - getattr(state, field) < interval:
                return False
            setattr(state, field, now)
            return True

    def position_due(self, alias: str, interval: float) -> bool:
        """True for one caller once ``interval`` seconds passed since the last read."""
        return self._claim(alias, "position_claimed_at", interval)

    def record_position(self, alias: str, position: Position | None) -> None:
        state = self._state(alias)
        with self._lock:
            state.position = position
            state.position_at = self.clock()

    def lag_due(self, alias: str, interval: float) -> bool:
        """True for exactly one caller once ``interval`` seconds passed since the last check."""
        return self._claim(alias, "lag_checked_at", interval)

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
            log_event(
                logger, logging.WARNING, "replica_lagging", alias,
                "multipool: replica %r lags %s behind its primary (limit %ss); reads skip it",
                alias, shown, max_lag, lag=lag, max_lag=max_lag,
            )  # fmt: skip
        elif was_lagging and not state.lagging:
            log_event(
                logger, logging.WARNING, "replica_caught_up", alias,
                "multipool: replica %r caught up with its primary", alias, lag=lag,
            )  # fmt: skip
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

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        for state in self._states.values():
            state.probing = False  # a probe thread of the parent does not exist here


def _topology_replicas() -> dict[str, str]:
    """Replica alias -> its primary, from ``DATABASES`` (empty before Django is set up)."""
    from django.conf import settings

    if not settings.configured:
        return {}
    from multipool.routing.topology import topology

    try:
        replicas = topology().replicas
    except Exception:  # settings the router reports itself; status stays readable
        return {}
    return {replica: primary for primary, group in replicas.items() for replica in group}


def _backoff(failures: int, initial: float, maximum: float) -> float:
    initial = max(0.0, float(initial))
    maximum = max(initial, float(maximum))
    # 2**n overflows floats only far beyond any useful maximum; cap the exponent.
    return min(initial * (2 ** min(failures - 1, 62)), maximum)


#: The process-wide record the router uses.
health = ReplicaHealth()


forking.in_child_after_fork("state", health._after_fork_in_child)
