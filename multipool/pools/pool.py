"""One alias's pool: who gets a connection, in which order, and when it is checked.

Three roles, kept apart as in SQLAlchemy itself:

* SQLAlchemy's ``QueuePool`` holds the physical connections: their records,
  reconnecting an invalidated one, ``recycle``, events, and the idle
  connections nobody keeps.
* :class:`AliasPool` (here) decides who gets one: at most ``pool_size +
  max_overflow`` connections out at once, waiters served first come, first
  served, connections kept for the thread that gave them back, health checks.
* :class:`Lease` is the handle lent to a backend.

**One lock** (``AliasPool._lock``) guards the free slots, the waiters, the
kept leases and the counters. Nothing slow happens under it: connections are
opened, checked, returned and closed outside. Every slot is in exactly one
place: free, lent (a lease out), kept (a lease in ``_kept``), or in the hands
of one thread that is filling it or giving it back.

A **kept** lease was given back by a thread that will likely want it again
(:meth:`AliasPool.keep`, at the end of a request): it keeps its slot, and its
thread takes it back with :meth:`AliasPool.take_back` -- one dictionary
operation under the lock. Whoever finds no free slot takes a kept lease
instead of waiting, and a waiter gets a lease given back at once.

This module knows nothing of Django: a backend passes in the function that
opens a physical connection, and the pool is built with the functions that
ping a connection, give its socket and describe it, the alias's rotating
certificate files when it has them (:mod:`multipool.pools.retirement`), and
a :class:`~multipool.pools.stats.Recorder` when its metrics are on: it is told
of each connect, wait, use, timeout and invalidation where it happens (a pool
without one pays a ``None`` check). Events are logged with their fields in
``extra`` (:mod:`multipool.metrics.events`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.pool import QueuePool

from multipool.pools.log_names import pool_logger_name
from multipool.pools.reports import log_invalidated, log_opened, log_timeout, timeout_error
from multipool.pools.retirement import Retirement, Rotation
from multipool.pools.staleness import NO_CHECK, POLL, SocketWatch, Staleness
from multipool.pools.stats import ConnectionFacts, Counters, PoolStats, Recorder
from multipool.pools.waiting import SLOT, Waiter

if TYPE_CHECKING:
    from sqlalchemy.pool import PoolProxiedConnection

    from multipool.config import DatabaseSpec

__all__ = ["AliasPool", "Lease"]

logger = logging.getLogger("multipool.pools")

#: keys in a physical connection's ``info`` (SQLAlchemy clears it on reconnect)
RETURNED_AT = "multipool.returned_at"  # when it was last given back (monotonic)
FIRST_LENT_AT = "multipool.first_lent_at"  # when it was first lent (monotonic)
SOCKET_WATCH = "multipool.socket_watch"  # a SocketWatch of its socket
GENERATION = "multipool.generation"  # the generation of the files it was opened with

Connector = Callable[[], Any]
Pinger = Callable[[Any], None]
Fileno = Callable[[Any], int]
#: (a new connection, whether to look up its TLS protocol) -> what it is
Describe = Callable[[Any, bool], ConnectionFacts]


class Lease:
    """A connection lent by an :class:`AliasPool`.

    ``connection`` is the driver's connection; ``info`` the dict SQLAlchemy
    keeps for it (cleared when the connection is replaced). If a lease is lost
    -- its thread died holding it -- its slot is freed when it is collected.
    """

    __slots__ = ("__weakref__", "_handle", "connection", "generation", "lent_at", "slot")

    def __init__(
        self, handle: PoolProxiedConnection, release_slot: Callable[[], None], generation: int = 0
    ) -> None:
        self._handle = handle
        self.connection = handle.dbapi_connection
        self.slot = weakref.finalize(self, release_slot)
        #: the generation of the certificate files it was opened with (0: none rotate)
        self.generation = generation
        #: when it was last lent (monotonic; set only when the pool has a recorder)
        self.lent_at = 0.0

    @property
    def info(self) -> dict[Any, Any]:
        return self._handle.info

    def __repr__(self) -> str:
        return f"<Lease {self.connection!r}>"


class AliasPool:
    """The pool of one alias (see the module doc)."""

    def __init__(
        self,
        spec: DatabaseSpec,
        *,
        ping: Pinger | None = None,
        fileno: Fileno | None = None,
        rotation: Rotation | None = None,
        recorder: Recorder | None = None,
        describe: Describe | None = None,
    ) -> None:
        pool = spec.pool
        self.spec = spec
        self.alias = spec.alias
        self._ping = ping
        self.fileno = fileno
        #: told what happens, for the alias's metrics (None: metrics off)
        self.recorder = recorder
        self._describe = describe
        #: the alias's rotating certificate files, if any (see multipool.pools.retirement)
        self.rotation = rotation
        self._retirement = Retirement()
        # A replica's connections are checked on every reuse: the router fails
        # a read over to the primary only if it sees a dead connection first.
        self.staleness = Staleness(
            pre_ping=pool.pre_ping,
            ping_idle=float(pool.ping_idle),
            poll_idle=0.0 if spec.replica_of is not None else float(pool.poll_idle),
            can_ping=ping is not None,
        )
        #: whether a backend may keep a connection between requests: not when the
        #: session must be reset, nor behind a pooler whose server session may change
        self.keeps_between_requests = pool.pooler is None and pool.reset == "transaction"
        self._recycle = pool.recycle
        self._overflow_idle = float(pool.overflow_idle)
        self._lock = threading.Lock()
        self._free = pool.size + pool.max_overflow
        self._waiters: deque[Waiter] = deque()
        self._kept: dict[Lease, float] = {}  # lease -> when kept; oldest first
        self._kept_since = 0.0  # since when _kept has not been empty (or the last reap)
        self._suspect_before = float("-inf")
        self._counters = Counters()
        self._physical: weakref.WeakSet[Any] = weakref.WeakSet()
        # the connect function of this thread's checkout, and the generation it opened
        self._connecting = threading.local()
        self.retired = False
        self._queue = QueuePool(
            self._create,
            pool_size=pool.size,
            max_overflow=pool.max_overflow,
            timeout=pool.timeout,
            recycle=-1 if pool.recycle is None else pool.recycle,
            use_lifo=pool.lifo,
            reset_on_return=None,  # the backend rolls back what needs it
            logging_name=pool_logger_name(self.alias),
        )

    def __repr__(self) -> str:
        return f"<AliasPool {self.alias!r} {self._queue.status()}>"

    # -- lending ------------------------------------------------------------------------
    def checkout(self, connect: Connector) -> Lease:
        """Lend a healthy connection, opening one with ``connect()`` if needed.

        Waits at most ``pool_timeout`` for a slot, first come, first served;
        then raises :class:`~multipool.errors.PoolTimeout`. A driver error from
        ``connect()`` propagates as is.
        """
        waiter = None
        with self._lock:
            got = self._take_now()
            if got is None:
                waiter = Waiter()
                self._waiters.append(waiter)
        if waiter is not None:
            got = self._wait(waiter)
        if isinstance(got, Lease) and self._usable(got, got.info.get(RETURNED_AT)):
            lease = got
        else:  # a free slot, or a lease that failed its check (discarded; its slot is ours)
            lease = self._open(connect)
        if self.recorder is not None:
            lease.lent_at = time.monotonic()
        return lease

    def _take_now(self) -> Lease | object | None:
        """Under the lock: a kept lease, ``SLOT`` (a free slot, now ours), or ``None``
        (wait). A kept lease is taken when no slot is free, or when filling one
        would open an overflow connection."""
        if self._waiters:
            return None
        if self._kept and (self._free == 0 or self._would_overflow()):
            lease, kept_at = next(iter(self._kept.items()))
            del self._kept[lease]
            lease.info[RETURNED_AT] = kept_at
            self._counters.checkouts += 1
            return lease
        if self._free > 0:
            self._free -= 1
            return SLOT
        return None

    def _would_overflow(self) -> bool:
        queue = self._queue
        return queue.checkedin() == 0 and queue.overflow() >= 0

    def _wait(self, waiter: Waiter) -> Lease | object:
        """Until ``waiter`` is served (whoever serves it counts the wait) or the pool
        timeout passes (then :class:`~multipool.errors.PoolTimeout`)."""
        started = time.monotonic()
        if not waiter.wait(self.spec.pool.timeout):
            with self._lock:
                timed_out = waiter in self._waiters  # (else served just as the wait timed out)
                if timed_out:
                    self._waiters.remove(waiter)
                    self._counters.timeouts += 1
                    checked_out = self._queue.checkedout() - len(self._kept)
                    waiting = len(self._waiters)
            if timed_out:
                waited = time.monotonic() - started
                if self.recorder is not None:
                    self.recorder.timed_out()
                log_timeout(self.spec, waited, checked_out, waiting)
                raise timeout_error(self.spec, checked_out)
        if self.recorder is not None:
            self.recorder.waited(time.monotonic() - started)
        return waiter.got

    def _open(self, connect: Connector) -> Lease:
        """A connection from the ``QueuePool`` (an idle one, or a new one) for a slot we hold."""
        self._connecting.connect = connect
        self._connecting.generation = None
        try:
            # each failed check discards one connection: at worst every idle one
            for _attempt in range(self.spec.pool.size + self.spec.pool.max_overflow + 1):
                handle = self._queue.connect()
                lease = Lease(handle, self._release_slot, self._generation(handle))
                with self._lock:
                    self._counters.checkouts += 1
                returned_at = handle.info.get(RETURNED_AT)
                if self._usable(lease, returned_at) and not (
                    returned_at is not None and self._retires(lease, time.monotonic())
                ):
                    handle.info.setdefault(FIRST_LENT_AT, time.monotonic())
                    return lease
            raise RuntimeError(f"multipool: pool {self.alias!r} found no healthy connection")
        except BaseException:
            self._release_slot()
            raise
        finally:
            self._connecting.connect = None

    def _create(self) -> Any:
        """The ``QueuePool``'s creator: runs in the thread that checks out."""
        connect: Connector | None = getattr(self._connecting, "connect", None)
        if connect is None:  # pragma: no cover - QueuePool never does this
            raise RuntimeError(f"multipool: pool {self.alias!r}: a connect outside a checkout")
        started = time.monotonic()
        connection = connect()
        seconds = time.monotonic() - started
        rotation = self.rotation
        if rotation is not None:
            opened = self._connecting.generation = rotation.opened_generation()
            if opened == rotation.generation:
                self._retirement.replaced()
        with self._lock:
            self._counters.connects += 1
            if self.fileno is not None:
                self._physical.add(connection)
        try:
            self._opened(connection, seconds)
        except Exception:  # telling of a connection must never cost it
            logger.debug("multipool: recording a new connection failed", exc_info=True)
        return connection

    def _opened(self, connection: Any, seconds: float) -> None:
        """Record and log a physical connection just opened."""
        logged = logger.isEnabledFor(logging.INFO)
        if self.recorder is None and not logged:
            return
        facts = (
            self._describe(connection, logged)
            if self._describe is not None
            else ConnectionFacts(self.spec.vendor)
        )
        if self.recorder is not None:
            self.recorder.created(seconds, facts.db_system)
        log_opened(self.spec, seconds, facts, self._open_count())

    def _generation(self, handle: PoolProxiedConnection) -> int:
        """The generation of the files ``handle``'s connection was opened with (tagged
        when this thread's checkout just opened it)."""
        if self.rotation is None:
            return 0
        opened = getattr(self._connecting, "generation", None)
        if opened is not None:
            self._connecting.generation = None
            handle.info[GENERATION] = opened
        return int(handle.info.get(GENERATION, 0))

    def _retires(self, lease: Lease, now: float) -> bool:
        """Whether ``lease`` is closed instead of lent or kept: its certificate files
        were replaced, and the pace allows a retirement now. Looks at the files when
        that is due."""
        rotation = self.rotation
        if rotation is None:
            return False
        if now >= rotation.next_check:
            rotation.check(now)
        if lease.generation == rotation.generation or not self._retirement.may_retire(now):
            return False
        self._invalidate(lease, None, "certificate_rotated", count=False)
        return True

    # -- health -------------------------------------------------------------------------
    def _usable(self, lease: Lease, returned_at: float | None) -> bool:
        """Whether ``lease`` may be lent; if not, it is discarded (its slot stays)."""
        if returned_at is None:
            return True  # fresh from connect(): nothing to check
        idle = time.monotonic() - returned_at
        check = self.staleness.check(idle, suspect=returned_at <= self._suspect_before)
        if check is NO_CHECK or (check is POLL and not self._readable(lease)):
            return True
        assert self._ping is not None  # no check is asked for without a pinger
        try:
            self._ping(lease.connection)
        except Exception as exc:
            with self._lock:
                self._counters.pings += 1
                self._counters.ping_failures += 1
            self.mark_suspect()
            self._invalidate(lease, exc, "health_check_failed")
            return False
        with self._lock:
            self._counters.pings += 1
        return True

    def _readable(self, lease: Lease) -> bool:
        """Whether the connection's socket has something to read (it should not)."""
        if self.fileno is None:
            return False
        watch = lease.info.get(SOCKET_WATCH)
        if watch is None:
            try:  # a connection keeps its socket for life
                watch = lease.info[SOCKET_WATCH] = SocketWatch(self.fileno(lease.connection))
            except (OSError, ValueError):
                return True  # no usable socket: let the ping decide
        return watch.readable()

    def mark_suspect(self) -> None:
        """Ping every connection given back before now at its next checkout."""
        with self._lock:
            self._suspect_before = time.monotonic()

    # -- giving back --------------------------------------------------------------------
    def keep(self, lease: Lease) -> bool:
        """Keep ``lease`` for this caller's next :meth:`take_back`, unless someone needs
        it first. ``False``: not kept -- a waiter has it now, or it went back to the
        pool (surplus, due for recycling, or the pool retired). The caller has left
        it clean: no transaction open.

        A connection above ``pool_size`` is kept too while the load needs it
        (``overflow_idle`` > 0); once the pool already holds ``pool_size`` idle
        ones it is surplus, kept for no thread and closed after ``overflow_idle``."""
        now = time.monotonic()
        if self.recorder is not None:
            self.recorder.used(now - lease.lent_at)
        if self.rotation is not None and self._retires(lease, now):
            self._release_slot()
            return False
        # (checked before a waiter gets it: a pool that always has one still recycles)
        due = self._recycle is not None and self._recycle_due(lease, now)
        with self._lock:
            if self._waiters and not due:
                lease.info[RETURNED_AT] = now
                self._hand_to_waiter(lease)
                return False
            stays = not due and not self.retired and self._may_keep(now)
            if stays:
                self._add_kept(lease, now)
                return True
        self._checkin(lease)
        return False

    def _may_keep(self, now: float) -> bool:
        """Under the lock: whether a connection given back may stay with its thread.
        Above ``pool_size`` only while no surplus connection is due to close: then
        it goes the way of :meth:`checkin`, which closes one."""
        if self._queue.overflow() <= 0:
            return True
        if self._overflow_idle <= 0 or self._surplus():
            return False
        return not self._reap_due(now)

    def _add_kept(self, lease: Lease, now: float) -> None:
        """Under the lock: ``lease`` joins the kept ones, as the newest."""
        if not self._kept:
            self._kept_since = now
        self._kept[lease] = now

    def _reap_due(self, now: float) -> bool:
        """Under the lock: whether one connection has been more than the load needed
        for ``overflow_idle``: some connection sat kept at every moment since then --
        the oldest kept one, or the kept ones in turn (under ASGI no request takes its
        own back, and the next one takes the connection kept first)."""
        oldest = next(iter(self._kept.values()), None)
        if oldest is None:
            return False
        return min(oldest, self._kept_since) <= now - self._overflow_idle

    def take_back(self, lease: Lease) -> bool:
        """Take back a lease this caller gave to :meth:`keep`. ``False`` if another
        thread took it meanwhile, or it failed its health check (then it is discarded
        and its slot freed)."""
        with self._lock:
            kept_at = self._kept.pop(lease, None)
            if kept_at is None:
                return False
            self._counters.checkouts += 1
        if self._usable(lease, kept_at):
            if self.recorder is not None:
                lease.lent_at = time.monotonic()
            return True
        self._release_slot()
        return False

    def checkin(self, lease: Lease, *, broken: bool = False, reason: str = "broken") -> None:
        """Give ``lease`` back for good; ``broken`` discards the physical connection
        (``reason``: why, for the log). The caller has rolled back (or knows no
        transaction is open)."""
        if self.recorder is not None:
            self.recorder.used(time.monotonic() - lease.lent_at)
        self._checkin(lease, reason if broken else None)

    def _checkin(self, lease: Lease, broken: str | None = None) -> None:
        """:meth:`checkin` once its use is recorded; ``broken``: the reason, or ``None``."""
        if broken is not None:
            self.mark_suspect()
            self._invalidate(lease, None, broken)
        elif self.retired:  # the alias moved on: close, do not keep
            self._invalidate(lease, None, "pool_retired", count=False)
        else:
            now = time.monotonic()
            if self.rotation is not None and self._retires(lease, now):
                self._release_slot()
                return
            if not self._recycle_due(lease, now):
                lease.info[RETURNED_AT] = now
                with self._lock:
                    if self._waiters:
                        self._hand_to_waiter(lease)
                        return
                    if self._overflow_idle > 0 and self._surplus():
                        # Keep a surplus connection for whoever needs one next,
                        # instead of closing it now and opening another (TLS
                        # handshake and all) at the next burst.
                        self._add_kept(lease, now)
                        return
            self._return_to_queue(lease)
            self._reap()
            return
        self._release_slot()

    def _surplus(self) -> bool:
        """Whether a connection given to the ``QueuePool`` now would be closed by it."""
        queue = self._queue
        return queue.overflow() > 0 and queue.checkedin() >= queue.size()

    def _recycle_due(self, lease: Lease, now: float) -> bool:
        recycle = self._recycle
        return recycle is not None and now - lease.info.get(FIRST_LENT_AT, 0.0) > recycle

    def _hand_to_waiter(self, lease: Lease) -> None:
        """Under the lock: the longest waiter gets ``lease`` and its slot."""
        self._counters.waits += 1
        self._counters.checkouts += 1
        self._waiters.popleft().serve(lease)

    def _release_slot(self) -> None:
        """A slot is free again: to the longest waiter, if anyone waits."""
        with self._lock:
            if self._waiters:
                self._counters.waits += 1
                self._waiters.popleft().serve(SLOT)
            else:
                self._free += 1

    def _return_to_queue(self, lease: Lease) -> None:
        """Give the connection to the ``QueuePool`` (which closes it if it has enough)."""
        lease.slot.detach()
        lease._handle.close()
        self._release_slot()

    def _invalidate(
        self, lease: Lease, exc: BaseException | None, reason: str, *, count: bool = True
    ) -> None:
        """Close the physical connection (``reason``: why); the ``QueuePool`` reconnects
        its record when it is next needed. The slot is not freed here. ``count``: as
        broken (else it is retired: files rotated, pool disposed)."""
        lease.slot.detach()
        if count:
            with self._lock:
                self._counters.invalidations += 1
            if self.recorder is not None:
                self.recorder.invalidated()
        log_invalidated(self.alias, reason, exc, broken=count, open_now=self._open_count())
        try:
            lease._handle.invalidate(exc)
        except Exception:  # pragma: no cover - closing a dead socket may fail
            logger.debug("multipool: error while discarding a connection", exc_info=True)

    def _reap(self) -> None:
        """Above ``pool_size``, close one connection once :meth:`_reap_due`; the next
        one after another ``overflow_idle``, or sooner if it sat kept that long itself.

        SQLAlchemy's queue closes a connection given back only when it already holds
        ``pool_size`` idle ones, so the oldest kept ones fill it first and the next
        one closes; with fewer idle than that, nothing is surplus. Runs on checkin,
        so a pool that goes quiet keeps its surplus until the next request.
        """
        queue = self._queue
        if queue.overflow() <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if not self._reap_due(now):
                return
            room = queue.size() - queue.checkedin()
            if len(self._kept) <= room:
                return
            reaped = list(itertools.islice(self._kept.items(), room + 1))
            for lease, kept_at in reaped:
                del self._kept[lease]
                lease.info[RETURNED_AT] = kept_at
            self._kept_since = now
        for lease, _kept_at in reaped:
            self._return_to_queue(lease)

    # -- observability and teardown -------------------------------------------------------
    def _open_count(self) -> int:
        """Physical connections open now (as :meth:`stats` counts them)."""
        return max(0, self._queue.size() + self._queue.overflow())

    def stats(self) -> PoolStats:
        queue = self._queue
        with self._lock:
            c = self._counters
            kept = len(self._kept)
            pending = len(self._waiters)
            counts = (c.checkouts, c.waits, c.timeouts, c.connects, c.invalidations, c.pings)
            ping_failures = c.ping_failures
        size, overflow = queue.size(), queue.overflow()
        checkouts, waits, timeouts, connects, invalidations, pings = counts
        return PoolStats(
            alias=self.alias,
            vendor=self.spec.vendor,
            pool_size=size,
            max_overflow=self.spec.pool.max_overflow,
            open=max(0, size + overflow),
            checked_out=max(0, queue.checkedout() - kept),
            idle=queue.checkedin() + kept,
            overflow=max(0, overflow),
            pending=pending,
            checkouts=checkouts,
            waits=waits,
            timeouts=timeouts,
            connects=connects,
            invalidations=invalidations,
            pings=pings,
            ping_failures=ping_failures,
            retired=self._retirement.count(),
        )

    def dispose(self) -> None:
        """Close idle connections now; lent ones are closed when given back."""
        with self._lock:
            self.retired = True
            kept = list(self._kept)
            self._kept.clear()
        for lease in kept:
            self._invalidate(lease, None, "pool_disposed", count=False)
            self._release_slot()
        self._queue.dispose()

    def physical_connections_after_fork(self) -> list[Any]:
        """In a forked child: the driver connections this pool opened that were still
        alive. Read without the lock: the child has one thread, and a thread that
        held the lock at ``fork()`` does not exist there."""
        try:
            return list(self._physical)
        except RuntimeError:  # pragma: no cover - forked in the middle of a change
            return []
