"""One SQLAlchemy pool per database alias, for the whole process.

Three roles, kept apart as in SQLAlchemy itself:

* :class:`PoolManager` -- the process-wide registry (``multipool.pools.manager``):
  one :class:`AliasPool` per alias, created lazily, replaced when the alias's
  spec changes (Django's test runner switching ``NAME``), rebuilt after ``fork``.
* :class:`AliasPool` -- one ``sqlalchemy.pool.QueuePool`` plus the health policy
  (ping only what may be stale) and counters.
* the lease -- SQLAlchemy's own pooled-connection handle, lent to a backend by
  :meth:`AliasPool.checkout` and given back with :meth:`AliasPool.checkin`.

This module knows nothing of Django's connection objects: a backend passes in
the function that opens a physical connection and the function that pings one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from multipool.errors import PoolTimeout

if TYPE_CHECKING:
    from sqlalchemy.pool import PoolProxiedConnection

    from multipool.config import DatabaseSpec

__all__ = ["AliasPool", "PoolManager", "PoolStats", "manager"]

logger = logging.getLogger("multipool.pools")

#: key in a physical connection's ``info`` dict: when it was last given back
#: (``time.monotonic()``); absent on a connection that was never lent.
CHECKED_IN_AT = "multipool.checked_in_at"
#: key in a physical connection's ``info`` dict: when it was first lent
#: (SQLAlchemy clears ``info`` when it reconnects a record).
FIRST_LENT_AT = "multipool.first_lent_at"
#: key in a physical connection's ``info`` dict: its socket's file descriptor.
SOCKET_FD = "multipool.socket_fd"

Connector = Callable[[], Any]
Pinger = Callable[[Any], None]
Fileno = Callable[[Any], int]


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


def _libc_poll() -> Any:
    """libc's ``poll(2)`` called *without releasing the GIL* (``PyDLL``).

    ``select.poll().poll(0)`` releases the GIL even with a zero timeout, so
    with several threads every checkout would have to win the GIL back; a
    zero-timeout poll never blocks, so holding the GIL costs nothing.
    """
    try:
        poll = ctypes.PyDLL(None).poll
    except (OSError, AttributeError):  # pragma: no cover - no libc poll (Windows)
        return None
    poll.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int]
    poll.restype = ctypes.c_int
    return poll


_POLL = _libc_poll()
_POLL_EVENTS = getattr(select, "POLLIN", 1) | getattr(select, "POLLPRI", 2)
# One pollfd for every call: the call holds the GIL from filling it in to
# reading the result, so no other thread can use it meanwhile.
_POLL_FD = _PollFd(-1, _POLL_EVENTS, 0)
_POLL_FD_ADDRESS = ctypes.addressof(_POLL_FD)


def socket_readable(fd: int) -> bool:
    """Whether ``fd`` has something to read right now (no waiting).

    An idle client connection has nothing to read: the server only speaks
    when asked. Data or end-of-file on an idle socket means the server
    closed it (restart, ``pg_terminate_backend``, ``KILL``, idle timeout) or
    sent an asynchronous message; either way the connection deserves a ping.
    """
    if fd < 0:
        return True
    if _POLL is not None:
        _POLL_FD.fd = fd
        return bool(_POLL(_POLL_FD_ADDRESS, 1, 0) != 0)  # -1: let the ping decide
    if hasattr(select, "poll"):  # pragma: no cover - libc poll always found on POSIX
        poller = select.poll()
        poller.register(fd, _POLL_EVENTS)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover
    return bool(readable)


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
    checkouts: int
    waits: int
    timeouts: int
    connects: int
    invalidations: int
    pings: int
    ping_failures: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Counters:
    """Plain integer counters. Updates happen under the GIL from the thread
    that owns the event; a lost increment under a data race only skews a
    statistic, never pool behaviour."""

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


class _Waiter:
    __slots__ = ("baton", "lease")

    def __init__(self) -> None:
        self.baton = threading.Lock()
        self.baton.acquire()
        self.lease: Any = None


class _FairGate:
    """At most ``capacity`` leases out at once; waiters served first come, first served.

    SQLAlchemy's ``QueuePool`` lets a thread that has just given a connection
    back take it again before the waiter it woke gets to run, so under
    contention a waiter can starve for seconds. Here a connection given back
    while someone waits goes straight to the longest waiter (with its slot),
    without passing through the pool's queue; a freed slot does the same.

    A *parked* lease was given back by a thread that will likely want it
    again: it keeps its slot, and its thread takes it back by popping it from
    ``_parked`` (:meth:`AliasPool.unpark`); anyone who finds no free slot
    takes it instead of waiting.
    A surplus connection (above ``pool_size``) that nobody wants right now
    is parked the same way, with no owner, until it is wanted or it has sat
    idle long enough to be closed (:meth:`reap`).

    ``_parked`` maps ``id(lease)`` to ``(lease, parked_at)`` (``time.monotonic()``).
    Parking and taking back -- twice per request in a busy application --
    take no lock: each is one atomic ``dict`` operation, and whoever pops a
    lease from ``_parked`` owns it. The lock orders the rest (slots, waiters,
    taking a lease someone else parked). A lease parked while a thread
    queues to wait is not stranded: :meth:`park` adds the lease and then
    looks for waiters, :meth:`acquire` adds its waiter and then looks for
    parked leases (under the lock), so at least one of them sees the other.
    """

    __slots__ = ("_free", "_lock", "_parked", "_waiters")

    def __init__(self, capacity: int) -> None:
        self._lock = threading.Lock()
        self._free = capacity
        self._waiters: deque[_Waiter] = deque()
        self._parked: dict[int, tuple[Any, float]] = {}

    def acquire(
        self, timeout: float, prefer_parked: Callable[[], bool]
    ) -> tuple[bool, Any] | None:
        """A slot: ``(waited, lease)``, where ``lease`` is a connection handed
        over or taken from the parked ones, or ``None``: a slot to fill from the
        pool. ``None`` on timeout. A parked connection is taken when no slot is
        free, or when ``prefer_parked()`` says filling a slot would open an
        overflow connection."""
        with self._lock:
            if not self._waiters:
                if self._parked and (self._free == 0 or prefer_parked()):
                    lease = self._pop_parked()
                    if lease is not None:
                        return (False, lease)
                if self._free > 0:
                    self._free -= 1
                    return (False, None)
            waiter = _Waiter()
            self._waiters.append(waiter)
            self._serve_parked()  # a lease parked just before the waiter was queued
        if waiter.baton.acquire(timeout=timeout):
            return (True, waiter.lease)
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                return (True, waiter.lease)  # served just as the wait timed out
        return None

    def _pop_parked(self) -> Any:
        """Take the lease parked the longest, or ``None`` (with the lock held;
        :meth:`AliasPool.unpark` may pop concurrently, without it). Its
        ``CHECKED_IN_AT`` says when it was parked (for the health check)."""
        parked = self._parked
        while parked:
            try:
                key = next(iter(parked))
            except (StopIteration, RuntimeError):  # changed meanwhile: look again
                continue
            entry = parked.pop(key, None)
            if entry is not None:
                lease, parked_at = entry
                lease.info[CHECKED_IN_AT] = parked_at
                return lease
        return None

    def _serve_parked(self) -> None:
        """Hand parked leases to waiters, longest first (with the lock held)."""
        while self._waiters:
            lease = self._pop_parked()
            if lease is None:
                return
            waiter = self._waiters.popleft()
            waiter.lease = lease
            waiter.baton.release()

    def hand_over(self, lease: Any) -> bool:
        """Give ``lease`` and its slot to the longest waiter, if anyone waits."""
        with self._lock:
            if not self._waiters:
                return False
            waiter = self._waiters.popleft()
            waiter.lease = lease
            waiter.baton.release()
            return True

    def park(self, lease: Any, parked_at: float) -> bool:
        """Park ``lease`` (it keeps its slot); ``False``: a waiter took it at once.

        A parked lease may go to a waiter or another thread at any time
        until it is taken back: :meth:`AliasPool.unpark` says whether it still was there."""
        key = id(lease)
        entry = (lease, parked_at)
        self._parked[key] = entry
        if not self._waiters:
            return True
        with self._lock:
            self._serve_parked()
        return self._parked.get(key) is entry

    def reap(self, cutoff: float) -> Any:
        """Take the lease parked the longest if it was parked at ``cutoff`` or
        before, else ``None``."""
        with self._lock:
            parked = self._parked
            try:
                key, (_lease, parked_at) = next(iter(parked.items()))
            except (StopIteration, RuntimeError):
                return None
            if parked_at > cutoff:
                return None
            taken = parked.pop(key, None)
            if taken is None:
                return None
            if taken[1] > cutoff:
                parked[key] = taken  # taken back and parked again meanwhile
                return None
            return taken[0]

    def unpark_all(self) -> list[Any]:
        leases = []
        with self._lock:
            while (lease := self._pop_parked()) is not None:
                leases.append(lease)
        return leases

    def parked(self) -> int:
        return len(self._parked)

    def release(self) -> None:
        """Free a slot: to the longest waiter, if anyone waits."""
        with self._lock:
            if self._waiters:
                self._waiters.popleft().baton.release()
            else:
                self._free += 1


class AliasPool:
    """The pool of one alias: a ``QueuePool`` and the health-check policy.

    Health check: a connection is pinged on checkout only when it may be
    stale -- its socket has something to read although it sat idle at least
    ``pool.poll_idle`` seconds (the server closed it), it sat idle longer
    than ``pool.ping_idle`` seconds, it was given back before a connection
    of this pool was found broken (a broken connection usually means the
    server restarted), or ``pool.pre_ping`` is set. A busy, healthy pool
    therefore pays no round trip per checkout, and no system call for a
    connection used within the last ``poll_idle`` seconds (HikariCP's
    "alive bypass window", pgx's one second): a ``poll()`` costs several
    microseconds of CPU in context, as much as the rest of the take-back.
    """

    def __init__(
        self, spec: DatabaseSpec, *, ping: Pinger | None = None, fileno: Fileno | None = None
    ) -> None:
        self.spec = spec
        self.alias = spec.alias
        pool = spec.pool
        self._ping = ping
        self._fileno = fileno
        self._pre_ping = bool(pool.pre_ping)
        self._ping_idle = float(pool.ping_idle)
        # A replica's connections are checked on every reuse: the router
        # fails a read over to the primary only if it sees a dead connection
        # before the read (see PoolManager.set_replicas).
        self._poll_idle = 0.0 if spec.replica_of is not None else float(pool.poll_idle)
        self._set_fresh_for()
        self._recycle = pool.recycle
        self._overflow_idle = float(pool.overflow_idle)
        #: whether a backend may keep a connection attached to its wrapper between
        #: requests (parked): not when the session must be reset, nor behind a
        #: pooler whose server session may change between transactions
        self.holds_between_requests = pool.pooler is None and pool.reset == "transaction"
        self._max_attempts = pool.size + pool.max_overflow + 1
        self._suspect_before = float("-inf")
        self._local = threading.local()
        self._counters = _Counters()
        self._gate = _FairGate(pool.size + pool.max_overflow)
        # The gate's parked leases, popped here directly on the take-back path
        # (one atomic dict operation, see _FairGate).
        self._parked = self._gate._parked
        # Every physical connection this pool opened and that is still alive
        # (idle or lent), so a forked child can cut itself off from them.
        self._physical: weakref.WeakSet[Any] = weakref.WeakSet()
        self.retired = False
        self._pool = QueuePool(
            self._create,
            pool_size=pool.size,
            max_overflow=pool.max_overflow,
            timeout=pool.timeout,
            recycle=-1 if pool.recycle is None else pool.recycle,
            use_lifo=pool.lifo,
            reset_on_return="rollback",
        )

    def __repr__(self) -> str:
        return f"<AliasPool {self.alias!r} {self._pool.status()}>"

    # -- physical connections -------------------------------------------------
    def _create(self) -> Any:
        # QueuePool calls its creator in the thread that checks out, so the
        # connector of the current checkout is found in a thread-local.
        connect: Connector | None = getattr(self._local, "connect", None)
        if connect is None:  # pragma: no cover - QueuePool never does this
            raise RuntimeError(
                f"multipool: pool {self.alias!r} asked to connect outside a checkout"
            )
        connection = connect()
        self._counters.connects += 1
        if self._fileno is not None:
            self._physical.add(connection)
        return connection

    # -- lending ----------------------------------------------------------------
    def checkout(self, connect: Connector) -> PoolProxiedConnection:
        """Lend a healthy connection, opening one with ``connect()`` if needed.

        Raises :class:`~multipool.errors.PoolTimeout` when none is free within
        the pool timeout; a driver error from ``connect()`` propagates as is.
        """
        counters = self._counters
        served = self._gate.acquire(self.spec.pool.timeout, self._would_overflow)
        if served is None:
            counters.timeouts += 1
            raise self._timeout_error()
        waited, lease = served
        if waited:
            counters.waits += 1
        if lease is not None:
            # Handed over by checkin(), or taken from the parked ones: it
            # brings its slot. It may have sat idle: the usual health policy.
            counters.checkouts += 1
            if self._healthy(lease):
                return lease
            lease._multipool_slot.detach()  # the slot stays ours, for a new lease
        self._local.connect = connect
        try:
            lease = self._lend()
        except BaseException:
            self._gate.release()
            raise
        finally:
            self._local.connect = None
        # The slot is freed when the lease comes back through checkin(), or
        # when it is garbage-collected without (a thread that died holding it).
        lease._multipool_slot = weakref.finalize(lease, self._gate.release)  # type: ignore[attr-defined]
        return lease

    def _would_overflow(self) -> bool:
        """Whether lending from the pool now would open an overflow connection."""
        pool = self._pool
        return pool.checkedin() == 0 and pool.overflow() >= 0

    def _lend(self) -> PoolProxiedConnection:
        pool = self._pool
        for _attempt in range(self._max_attempts):
            try:
                lease = pool.connect()
            except sa_exc.TimeoutError:  # pragma: no cover - the gate keeps a slot free
                self._counters.timeouts += 1
                raise self._timeout_error() from None
            self._counters.checkouts += 1
            if self._healthy(lease):
                lease.info.setdefault(FIRST_LENT_AT, time.monotonic())
                return lease
        raise RuntimeError(  # pragma: no cover - each failed ping retires a record
            f"multipool: pool {self.alias!r} found no healthy connection"
        )

    def _healthy(self, lease: PoolProxiedConnection) -> bool:
        last_used = lease.info.get(CHECKED_IN_AT)
        if last_used is None or self._ping is None:
            return True  # fresh from connect(): nothing to check
        idle = time.monotonic() - last_used
        if not (
            self._pre_ping
            or last_used <= self._suspect_before
            or idle > self._ping_idle
            or (idle >= self._poll_idle and self._socket_readable(lease))
        ):
            return True
        self._counters.pings += 1
        try:
            self._ping(lease.dbapi_connection)
        except Exception as exc:
            self._counters.ping_failures += 1
            logger.info(
                "multipool: alias %r: a pooled connection failed its health check (%s); "
                "discarding it",
                self.alias,
                type(exc).__name__,
            )
            self.mark_suspect()
            self._invalidate(lease, exc)
            return False
        return True

    def _socket_readable(self, lease: PoolProxiedConnection) -> bool:
        if self._fileno is None:
            return False
        info = lease.info
        fd = info.get(SOCKET_FD)
        if fd is None:
            # A connection keeps its socket for life; ``info`` is cleared
            # when the pool closes or replaces the connection.
            try:
                fd = info[SOCKET_FD] = self._fileno(lease.dbapi_connection)
            except (OSError, ValueError):
                return True  # no usable socket: let the ping decide
        return socket_readable(fd)

    def checkin(
        self,
        lease: PoolProxiedConnection,
        *,
        broken: bool = False,
        reset: bool = True,
        park: bool = False,
    ) -> bool:
        """Give a lease back. ``broken`` discards the physical connection;
        ``reset=False`` says the caller already rolled back (or knows no
        transaction is open), which spares a round trip on drivers whose
        ``rollback()`` always talks to the server. ``park=True`` keeps it
        for the caller's next :meth:`unpark` unless someone needs it first
        (not beyond ``pool_size``: overflow connections go back to the pool).
        Returns whether the lease was parked."""
        if lease.dbapi_connection is not None:
            if not broken and reset:
                try:
                    lease.dbapi_connection.rollback()
                except Exception:
                    broken = True
            if broken:
                self.mark_suspect()
                self._invalidate(lease, None)
            elif self.retired:
                # The alias moved on (new NAME, disposed): close, do not keep.
                self._invalidate(lease, None, count=False)
            elif not self._recycle_due(lease):
                now = lease.info[CHECKED_IN_AT] = time.monotonic()
                if park and self._pool.overflow() <= 0:
                    # False: a waiter has it now, with its slot
                    return self._gate.park(lease, now)
                if self._gate.hand_over(lease):
                    return False  # a waiter has it now, with its slot
                if self._overflow_idle > 0 and self._would_close(lease):
                    # A surplus connection: keep it (and its slot) for whoever
                    # needs one next instead of closing it now and opening
                    # another, TLS handshake and all, at the next burst.
                    self._gate.park(lease, now)
                    return False
                lease._checkin(transaction_was_reset=True)
                self._reap()
            else:
                lease.info[CHECKED_IN_AT] = time.monotonic()
                lease._checkin(transaction_was_reset=True)
        slot = getattr(lease, "_multipool_slot", None)
        if slot is not None:
            slot()  # frees the slot once; a no-op if already freed
        return False

    def hold(self, lease: PoolProxiedConnection) -> bool:
        """``checkin(lease, reset=False, park=True)`` for a lease whose caller
        found it clean and alive (a backend at the end of a request): the
        common case without the checks that cannot apply.

        This and :meth:`unpark` run twice per request, between the
        application's own work and the driver's, when little of the pool is
        left in the CPU's caches: each function and object they touch costs a
        cache refill, so they touch as few as they can (the parking time
        travels with the parked entry, not in the lease's ``info``).
        """
        if self.retired or self._recycle is not None or self._pool.overflow() > 0:
            return self.checkin(lease, reset=False, park=True)
        return self._gate.park(lease, time.monotonic())

    def check_every_reuse(self) -> None:
        """Poll the socket on every reuse, whatever ``poll_idle`` says (replicas)."""
        self._poll_idle = 0.0
        self._set_fresh_for()

    def _set_fresh_for(self) -> None:
        """How long after its checkin a lease is taken back with no check at
        all: :meth:`_healthy` would neither poll nor ping it."""
        if self._ping is None:
            self._fresh_for = float("inf")
        elif self._pre_ping:
            self._fresh_for = 0.0
        else:
            self._fresh_for = min(self._poll_idle, self._ping_idle)

    def _would_close(self, lease: PoolProxiedConnection) -> bool:
        """Whether giving ``lease`` back to the ``QueuePool`` now would close it
        (an overflow connection returned to a full pool)."""
        pool = self._pool
        return pool.overflow() > 0 and pool.checkedin() >= pool.size()

    def _reap(self) -> None:
        """Close one surplus connection if it sat parked ``overflow_idle`` seconds.

        Runs on checkin, so a pool that goes quiet keeps its surplus until
        the next request; never more than ``pool_size + max_overflow``.
        """
        if self._pool.overflow() <= 0 or not self._gate.parked():
            return
        cutoff = time.monotonic() - self._overflow_idle
        lease = self._gate.reap(cutoff)
        if lease is None:
            return
        lease._checkin(transaction_was_reset=True)  # closed by the QueuePool if it is full
        slot = getattr(lease, "_multipool_slot", None)
        if slot is not None:
            slot()

    def unpark(self, lease: PoolProxiedConnection) -> bool:
        """Take back a lease parked by :meth:`checkin`: ``False`` if another
        thread took it meanwhile or it failed the health check (then it is
        discarded and its slot freed)."""
        if self.retired:
            return False
        entry = self._parked.pop(id(lease), None)
        if entry is None:
            return False
        self._counters.checkouts += 1
        # The common case of _healthy(), inline (see hold): parked less than
        # ``_fresh_for`` seconds ago, after the last suspect mark.
        parked_at = entry[1]
        if parked_at > self._suspect_before and time.monotonic() - parked_at < self._fresh_for:
            return True
        lease.info[CHECKED_IN_AT] = parked_at
        if self._healthy(lease):
            return True
        slot = getattr(lease, "_multipool_slot", None)
        if slot is not None:
            slot()
        return False

    def _recycle_due(self, lease: PoolProxiedConnection) -> bool:
        recycle = self.spec.pool.recycle
        if recycle is None:
            return False
        return bool(time.monotonic() - lease.info.get(FIRST_LENT_AT, 0.0) > recycle)

    def _invalidate(
        self, lease: PoolProxiedConnection, exc: BaseException | None, *, count: bool = True
    ) -> None:
        if count:
            self._counters.invalidations += 1
        try:
            lease.invalidate(exc)
        except Exception:  # pragma: no cover - closing a dead socket may fail
            logger.debug("multipool: error while discarding a connection", exc_info=True)

    def mark_suspect(self) -> None:
        """Ping every connection given back before now at its next checkout."""
        self._suspect_before = time.monotonic()

    def _timeout_error(self) -> PoolTimeout:
        spec = self.spec
        return PoolTimeout(
            self.alias,
            timeout=spec.pool.timeout,
            pool_size=spec.pool.size,
            max_overflow=spec.pool.max_overflow,
            checked_out=self._pool.checkedout(),
            settings=(
                spec.setting("pool_size"),
                spec.setting("max_overflow"),
                spec.setting("pool_timeout"),
            ),
        )

    # -- observability and teardown ---------------------------------------------
    def stats(self) -> PoolStats:
        pool = self._pool
        c = self._counters
        size = pool.size()
        overflow = pool.overflow()
        parked = self._gate.parked()
        return PoolStats(
            alias=self.alias,
            vendor=self.spec.vendor,
            pool_size=size,
            max_overflow=self.spec.pool.max_overflow,
            open=max(0, size + overflow),
            checked_out=max(0, pool.checkedout() - parked),
            idle=pool.checkedin() + parked,
            overflow=max(0, overflow),
            checkouts=c.checkouts,
            waits=c.waits,
            timeouts=c.timeouts,
            connects=c.connects,
            invalidations=c.invalidations,
            pings=c.pings,
            ping_failures=c.ping_failures,
        )

    def dispose(self) -> None:
        """Close idle connections now; lent ones are closed when given back."""
        self.retired = True
        for lease in self._gate.unpark_all():
            self._invalidate(lease, None, count=False)
            slot = getattr(lease, "_multipool_slot", None)
            if slot is not None:
                slot()
        self._pool.dispose()

    def detach_inherited_sockets(self) -> int:
        """In a forked child: make this pool's connections unable to reach the server.

        Each socket's descriptor is pointed at ``/dev/null`` (``dup2``), in
        this process only. Whatever the child then does with the inherited
        connection objects -- nothing, or close them when it exits -- reaches
        no server, so the parent's sessions are safe. Returns how many.
        """
        if self._fileno is None:
            return 0
        detached = 0
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for connection in list(self._physical):
                try:
                    fd = self._fileno(connection)
                except Exception:
                    continue  # already closed
                if fd >= 0:
                    os.dup2(null, fd, inheritable=False)
                    detached += 1
        finally:
            os.close(null)
        return detached


class PoolManager:
    """Process-wide registry of pools, one per alias.

    ``pool(spec)`` is the only entry point a backend needs. A changed spec
    for an alias (Django's test runner switches ``NAME`` to ``test_...``)
    retires the old pool, closing its idle connections. After ``os.fork()``
    the child starts with no pools and never touches the parent's sockets:
    the sockets of the parent's connections are pointed at ``/dev/null`` in
    the child, and the parent's pools are kept referenced, unclosed, so that
    nothing the child does (including finalizers at exit) reaches the
    parent's sessions.
    """

    def __init__(self) -> None:
        self._pools: dict[str, AliasPool] = {}
        self._lock = threading.Lock()
        self._abandoned: list[Any] = []
        self._replicas: frozenset[str] = frozenset()
        # Pools replaced or disposed while connections may still be lent.
        self._retired: weakref.WeakSet[AliasPool] = weakref.WeakSet()

    def pool(
        self, spec: DatabaseSpec, *, ping: Pinger | None = None, fileno: Fileno | None = None
    ) -> AliasPool:
        """The pool for ``spec.alias``, created (or replaced, if the spec changed) on demand."""
        current = self._pools.get(spec.alias)
        if current is not None and (current.spec is spec or current.spec == spec):
            return current
        with self._lock:
            current = self._pools.get(spec.alias)
            if current is not None and current.spec == spec:
                return current
            if current is not None:
                logger.info("multipool: alias %r settings changed; retiring its pool", spec.alias)
                current.dispose()
                self._retired.add(current)
            created = AliasPool(spec, ping=ping, fileno=fileno)
            if spec.alias in self._replicas:
                created.check_every_reuse()
            self._pools[spec.alias] = created
            logger.debug("multipool: alias %r pool created: %r", spec.alias, spec.pool)
            return created

    def get(self, alias: str) -> AliasPool | None:
        return self._pools.get(alias)

    def set_replicas(self, aliases: frozenset[str]) -> None:
        """The router's replica aliases: their pools check every reuse."""
        if aliases == self._replicas:
            return
        with self._lock:
            self._replicas = aliases
            for alias in aliases:
                pool = self._pools.get(alias)
                if pool is not None:
                    pool.check_every_reuse()

    def stats(self, alias: str | None = None) -> dict[str, PoolStats]:
        """Stats per alias (only aliases whose pool exists in this process)."""
        pools = dict(self._pools)
        if alias is not None:
            pools = {alias: pools[alias]} if alias in pools else {}
        return {name: p.stats() for name, p in sorted(pools.items())}

    def dispose(self, alias: str | None = None) -> None:
        """Close the pool of ``alias`` (all aliases when ``None``).

        Idle connections close now; lent ones close when given back. The
        next checkout builds a fresh pool.
        """
        with self._lock:
            names = list(self._pools) if alias is None else [alias]
            for name in names:
                pool = self._pools.pop(name, None)
                if pool is not None:
                    pool.dispose()
                    self._retired.add(pool)

    def abandon(self, obj: Any) -> None:
        """Keep ``obj`` (a lease or connection inherited over fork) alive, unclosed."""
        self._abandoned.append(obj)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        inherited = [*self._pools.values(), *self._retired]
        for pool in inherited:
            try:
                pool.detach_inherited_sockets()
            except OSError:  # pragma: no cover - nothing sane left to do
                logger.exception("multipool: could not detach inherited sockets")
        self._abandoned.extend(inherited)
        self._pools = {}
        self._retired = weakref.WeakSet()


manager = PoolManager()

if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=manager._after_fork_in_child)
