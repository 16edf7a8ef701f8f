"""When an idle connection must be checked before it is lent again, and how.

A busy, healthy pool pays no round trip per checkout. Before a connection is
lent again its socket is looked at (a zero-timeout ``poll()``, no round trip):
an idle client connection has nothing to read, since the server only speaks
when asked, so data or end-of-file there means the server closed it (a
restart, ``pg_terminate_backend``, ``KILL``, an idle timeout) or sent an
asynchronous message. The connection is then pinged (one round trip) -- and
also when it sat idle longer than ``ping_idle``, when it was given back before
a connection of its pool was found broken (a broken one usually means the
server restarted), or when ``pre_ping`` is set.

With ``poll_idle`` above 0, a connection used less than ``poll_idle`` seconds
ago is lent without even the ``poll()`` (HikariCP's "alive bypass window").

The ``poll()`` is libc's, called through ``ctypes.PyDLL``, which keeps the GIL:
``select.poll().poll(0)`` releases it even with a zero timeout, and under load
the thread then waits to win it back while it holds the connection it is
checking (docs/benchmark-methodology.md, "The socket poll on checkout"). Each
:class:`SocketWatch` has its own ``pollfd``: a connection is checked only by
the thread that is taking it.
"""

from __future__ import annotations

import ctypes
import enum
import select
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "SocketWatch", "Staleness"]

_READABLE = getattr(select, "POLLIN", 1) | getattr(select, "POLLPRI", 2)


class Check(enum.Enum):
    """What a connection needs before it is lent again."""

    NONE = "none"
    POLL = "poll"  # look at its socket; ping if something is there
    PING = "ping"  # one round trip


NO_CHECK, POLL, PING = Check


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


def _libc_poll() -> Any:
    """libc's ``poll(2)``, called without releasing the GIL; ``None`` where there is none."""
    try:
        poll = ctypes.PyDLL(None).poll
    except (OSError, AttributeError):  # pragma: no cover - no libc poll (Windows)
        return None
    poll.argtypes = [ctypes.POINTER(_PollFd), ctypes.c_ulong, ctypes.c_int]
    poll.restype = ctypes.c_int
    return poll


_POLL = _libc_poll()


class SocketWatch:
    """A zero-timeout look at one connection's socket, set up once per connection."""

    __slots__ = ("_poller", "_pollfd")

    def __init__(self, fd: int) -> None:
        self._pollfd = _PollFd(fd, _READABLE, 0)
        self._poller = None
        if _POLL is None:  # pragma: no cover - libc poll always found on POSIX
            self._poller = select.poll()
            self._poller.register(fd, _READABLE)

    def readable(self) -> bool:
        """Whether the socket has something to read (or an error) right now."""
        if self._poller is not None:  # pragma: no cover - see __init__
            return bool(self._poller.poll(0))
        return bool(_POLL(self._pollfd, 1, 0) != 0)  # -1 (an error): let the ping decide


@dataclass(frozen=True)
class Staleness:
    """The health-check policy of one pool (see the module doc)."""

    pre_ping: bool
    ping_idle: float
    poll_idle: float
    can_ping: bool = True

    def check(self, idle: float, *, suspect: bool) -> Check:
        """What a connection idle ``idle`` seconds needs before it is lent;
        ``suspect``: it was given back before a broken connection was found."""
        if not self.can_ping:
            return NO_CHECK
        if self.pre_ping or suspect or idle > self.ping_idle:
            return PING
        return POLL if idle >= self.poll_idle else NO_CHECK
