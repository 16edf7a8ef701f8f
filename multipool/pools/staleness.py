"""When an idle connection must be checked before it is lent again.

A busy, healthy pool pays no round trip per checkout. A connection is pinged
only when it may be stale: its socket has something to read although nobody
asked the server anything (the server closed it: a restart,
``pg_terminate_backend``, ``KILL``, an idle timeout), it sat idle longer than
``ping_idle``, it was given back before a connection of its pool was found
broken (a broken one usually means the server restarted), or ``pre_ping`` is
set. The socket itself is looked at only when the connection sat idle at
least ``poll_idle`` seconds: a connection used that recently is lent
unchecked (HikariCP's "alive bypass window", pgx's one second).
"""

from __future__ import annotations

import select
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Staleness", "socket_readable"]

_READABLE = getattr(select, "POLLIN", 1) | getattr(select, "POLLPRI", 2)


def socket_readable(fd: int) -> bool:
    """Whether ``fd`` has something to read right now (no waiting).

    An idle client connection has nothing to read: the server only speaks when
    asked. Data or end-of-file on an idle socket means the server closed it or
    sent an asynchronous message; either way the connection deserves a ping.
    """
    if fd < 0:
        return True
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, _READABLE)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover - not POSIX
    return bool(readable)


@dataclass(frozen=True)
class Staleness:
    """The health-check policy of one pool (see the module doc)."""

    pre_ping: bool
    ping_idle: float
    poll_idle: float
    can_ping: bool = True

    @property
    def fresh_for(self) -> float:
        """Seconds after its return during which a connection is lent with no check
        at all (unless a broken one was found meanwhile)."""
        if not self.can_ping:
            return float("inf")
        if self.pre_ping:
            return 0.0
        return min(self.poll_idle, self.ping_idle)

    def must_ping(self, idle: float, *, suspect: bool, readable: Callable[[], bool]) -> bool:
        """Whether a connection idle ``idle`` seconds must be pinged before it is lent.

        ``suspect``: it was given back before a broken connection was found;
        ``readable()``: whether its socket has data (asked only when it matters).
        """
        if not self.can_ping:
            return False
        if self.pre_ping or suspect or idle > self.ping_idle:
            return True
        return idle >= self.poll_idle and readable()
