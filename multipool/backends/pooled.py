"""What the pooled backends share: checkout in ``get_new_connection``, checkin in ``_close``.

Each backend (``postgresql``, ``mysql``, ``sqlite3``) subclasses Django's own
``DatabaseWrapper`` with :class:`PooledWrapperMixin` first in the bases and
overrides only a few small vendor hooks. Django's connection life cycle is
unchanged: ``connect()`` calls ``get_new_connection()`` (here: borrow from the
alias's pool; Django's own ``get_new_connection`` opens the physical
connection, once), ``close()`` calls ``_close()`` (here: give it back).

Per-connection setup:

* Work that belongs to the physical connection -- the driver's connect, the
  adapters and isolation level Django sets in ``get_new_connection`` -- runs
  once, when the pool opens the connection.
* ``set_autocommit`` and ``init_connection_state`` run on every checkout, as
  Django expects, except where a backend declares them safe to skip: MySQL's
  session ``SET``\\ s run once per physical connection (``init_once``);
  PostgreSQL's (the time zone, ``assume_role``) are skipped for a connection
  given back at a request's end whose session was checked there
  (``release_checks_setup``: the time zone, read from the connection's
  parameter status, and no ``assume_role``).
* ``connection_created`` fires whenever Django connects the wrapper: on a
  checkout, not when a thread goes on with the connection it kept.

The request boundary: with ``CONN_MAX_AGE=0`` Django closes every connection
at ``request_finished``. A pooled wrapper in a clean state gives its
connection back to the pool there but keeps a claim on it (``KEPT``, see
:meth:`PooledWrapperMixin.close_if_unusable_or_obsolete`). Between requests
``connection.connection`` is ``None``, as with stock Django; the next
``ensure_connection()`` takes the connection back, or finds it gone to another
thread and connects as Django would. What the wrapper holds of the pool is one
object, :attr:`PooledWrapperMixin.pool_binding`.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from django.db.backends.base.base import NO_DB_ALIAS
from django.utils.asyncio import async_unsafe

from multipool import exiting, forking
from multipool.backends.binding import (
    BROKEN,
    IDLE,
    IN_TRANSACTION,
    KEPT,
    LENT,
    PARKED,
    PoolBinding,
    SessionState,
)
from multipool.backends.diagnosis import explain_connect_error
from multipool.config import POOL_OPTION_KEYS, spec_from_settings
from multipool.metrics.events import log_event
from multipool.metrics.recorder import recorder_for
from multipool.pools import ConnectionFacts, manager
from multipool.secrets import material_for, rotation_for
from multipool.tls import TLS_OPTION_NAMES

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec
    from multipool.pools import AliasPool, Lease

logger = logging.getLogger("multipool.backends")

_MISSING = object()

#: what get_connection_params() returns inside connect(): "build them if you need them"
_DEFERRED: dict[str, Any] = {}

#: (alias, id of a settings dict) -> (the dict, its fingerprint, its spec)
_entry_specs: dict[tuple[str, int], tuple[Mapping[str, Any], tuple[Any, ...], DatabaseSpec]] = {}
_entry_specs_lock = threading.Lock()
_ENTRY_SPECS_MAX = 256

#: key in a physical connection's ``info``: Django's session setup has run on it.
SETUP_DONE = "multipool.setup_done"
#: key in a physical connection's ``info``: given back at a request's end with its
#: session checked as Django's setup leaves it, for this time zone name
SESSION_CHECKED = "multipool.session_checked"


#: multipool's own OPTIONS keys: the driver never sees them
_OWN_OPTION_KEYS = POOL_OPTION_KEYS | TLS_OPTION_NAMES


class PooledWrapperMixin:
    """Mix into a Django ``DatabaseWrapper`` subclass to lend connections from a pool."""

    #: "postgresql" | "mysql" | "sqlite"
    multipool_vendor: ClassVar[str]
    #: run ``init_connection_state`` once per physical connection, not per checkout
    init_once: ClassVar[bool] = False
    #: whether an idle connection can go stale (server restart, idle timeout)
    needs_ping: ClassVar[bool] = True
    #: whether Django's ``get_connection_params`` only reads the settings (then a
    #: checkout that reuses a connection skips it); MySQL's also sets wrapper state
    params_only_read_settings: ClassVar[bool] = False

    # Attributes Django's BaseDatabaseWrapper provides (for type checkers).
    if TYPE_CHECKING:
        alias: str
        settings_dict: dict[str, Any]
        errors_occurred: bool
        in_atomic_block: bool
        needs_rollback: bool
        autocommit: bool
        run_on_commit: list[Any]

        connection: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: what this wrapper holds of its alias's pool
        self.pool_binding = PoolBinding()
        self._deferring_params = False  # inside connect(): see there

    # -- configuration -----------------------------------------------------------
    def multipool_spec(self) -> DatabaseSpec:
        """The normalized spec of this alias's current settings.

        Cached behind a cheap fingerprint, for every wrapper made with the same
        settings dict (Django hands each wrapper of an alias the same one, and
        under ASGI makes a wrapper per request): the scalar settings Django
        itself rewrites in place (the test runner switches ``NAME``) and the
        identity of the nested dicts. Replace ``OPTIONS`` rather than editing
        it in place to change pool or TLS settings at run time.
        """
        sd = self.settings_dict
        fingerprint = (
            sd.get("ENGINE"),
            sd.get("NAME"),
            sd.get("USER"),
            sd.get("PASSWORD"),
            sd.get("HOST"),
            sd.get("PORT"),
            sd.get("CONN_MAX_AGE", _MISSING),
            id(sd.get("OPTIONS")),
            id(sd.get("MULTIPOOL")),
            id(sd.get("POOL_OPTIONS")),
        )
        key = (self.alias, id(sd))
        cached = _entry_specs.get(key)
        if cached is not None and cached[0] is sd and cached[1] == fingerprint:
            return cached[2]
        spec = spec_from_settings(self.alias, sd)
        with _entry_specs_lock:
            if len(_entry_specs) >= _ENTRY_SPECS_MAX:
                _entry_specs.clear()
            _entry_specs[key] = (sd, fingerprint, spec)  # the dict kept: its id stays its own
        return spec

    def _pool_for_checkout(self, spec: DatabaseSpec) -> AliasPool | None:
        if self.alias == NO_DB_ALIAS:
            # Django's maintenance connection (CREATE/DROP DATABASE): never pooled.
            return None
        if not spec.pool.enabled or not self.pool_supported():
            return None
        current = manager.current(spec)
        if current is not None:
            return current
        if not self.needs_ping:
            return manager.pool(spec, recorder=recorder_for, describe=self.describe_connection)
        return manager.pool(
            spec,
            ping=self.ping_connection,
            fileno=self.connection_fileno,
            rotation=rotation_for,
            recorder=recorder_for,
            describe=self.describe_connection,
        )

    def pool_supported(self) -> bool:
        """Whether this alias's database can be pooled (in-memory SQLite cannot)."""
        return True

    def connect(self) -> None:
        # Django's connect() builds the connection parameters before it asks
        # for the connection. A checkout that reuses a pooled connection never
        # needs them (under ASGI that is every request): where building them
        # only reads the settings, get_new_connection() builds them only when
        # it opens a connection. (Django's connect() refuses an async context
        # before it does anything, and is what calls get_new_connection().)
        if not self.params_only_read_settings:
            super().connect()  # type: ignore[misc]
            return
        self._deferring_params = True
        try:
            super().connect()  # type: ignore[misc]
        finally:
            self._deferring_params = False

    def get_connection_params(self) -> dict[str, Any]:
        if self._deferring_params:
            return _DEFERRED
        return self._connection_params()

    def _connection_params(self) -> dict[str, Any]:
        spec = self.multipool_spec()  # first: a settings problem is the error to report
        params: dict[str, Any] = super().get_connection_params()  # type: ignore[misc]
        # multipool's own OPTIONS and every TLS spelling make way for the
        # canonical driver arguments.
        for key in _OWN_OPTION_KEYS.intersection(params):
            del params[key]
        params.update(spec.tls.driver_kwargs(self.multipool_vendor))
        for key, value in self.network_params(spec).items():
            params.setdefault(key, value)  # a driver option the user wrote wins
        return params

    def network_params(self, spec: DatabaseSpec) -> dict[str, Any]:
        """Hook: driver parameters that bound a connect and detect a silent network
        (``CONNECT_TIMEOUT``, ``NETWORK_TIMEOUT``)."""
        return {}

    # -- checkout ----------------------------------------------------------------
    @async_unsafe
    def ensure_connection(self) -> None:
        if self.connection is not None:
            return  # Django's ensure_connection() does nothing more when connected
        binding = self.pool_binding
        if binding.hold is KEPT:
            lease, pool = binding.lease, binding.pool
            assert lease is not None and pool is not None
            if pool.take_back(lease):
                # Another wrapper of this alias may have used it meanwhile: it
                # gave it back in the same clean state, on the same physical
                # connection. Django's state on this wrapper is as it was left.
                lease.info.pop(SESSION_CHECKED, None)  # true when given back, not after
                binding.hold = LENT
                self.connection = lease.connection
                return
            binding.clear()  # another thread took it, or it failed its check
        super().ensure_connection()  # type: ignore[misc]

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        spec = self.multipool_spec()
        pool = self._pool_for_checkout(spec)
        lease = self._take_back_own(pool)
        if pool is None:
            return self._connect_with(conn_params, spec)
        if lease is None:
            lease = pool.checkout(partial(self._connect_with, conn_params, spec))
        self.pool_binding.set(LENT, lease, pool)
        self.prepare_checkout(lease.connection)
        return lease.connection

    def _connect_with(self, conn_params: dict[str, Any], spec: DatabaseSpec) -> Any:
        """A new physical connection, building the parameters if connect() left that
        to now."""
        if conn_params is _DEFERRED:
            conn_params = self._connection_params()
        return self.connect_physical(conn_params, spec)

    def _take_back_own(self, pool: AliasPool | None) -> Lease | None:
        """The connection this wrapper gave back and kept a claim on, if it is still
        there: ``connect()`` (after ``close()``, or called directly) goes on with it."""
        binding = self.pool_binding
        if binding.hold not in (KEPT, PARKED):
            return None
        lease, own_pool = binding.lease, binding.pool
        assert lease is not None and own_pool is not None
        binding.clear()
        if not own_pool.take_back(lease):
            return None
        if own_pool is not pool:
            own_pool.checkin(lease)  # the settings moved on
            return None
        return lease

    def connect_physical(self, conn_params: dict[str, Any], spec: DatabaseSpec) -> Any:
        """Open a new physical connection: Django's own ``get_new_connection``.

        Certificate files and credentials that can change while the process runs
        (``*_FILE`` variables, a credential provider, certificate files) come from
        the alias's :class:`~multipool.secrets.material.Material`, read now: the
        validated copies of the certificate files, the password as it is now.
        A driver error the settings explain becomes a
        :class:`~multipool.errors.ConnectError`; a connection that is not
        encrypted although the settings ask for it is closed and refused
        (:meth:`confirm_encryption`), once per physical connection.
        """
        material = material_for(spec)
        if material is None:
            return self._open_physical(conn_params, spec)
        return material.open(lambda params: self._open_physical(params, spec), conn_params)

    def login(self) -> tuple[str, str]:
        """The user and password this alias logs in with now, for a session reset
        that logs in again (MySQL ``COM_CHANGE_USER``): the last login the server
        accepted when they come from a file or a provider (nothing is read)."""
        settings = self.settings_dict
        material = material_for(self.multipool_spec())
        credentials = material.credentials if material is not None else None
        accepted = credentials.last_accepted() if credentials is not None else None
        if accepted is not None:
            return accepted.user or settings["USER"] or "", accepted.password
        return settings["USER"] or "", settings["PASSWORD"] or ""

    def _open_physical(self, conn_params: dict[str, Any], spec: DatabaseSpec) -> Any:
        try:
            connection = super().get_new_connection(conn_params)  # type: ignore[misc]
        except Exception as exc:
            explained = explain_connect_error(spec, exc)
            if explained is None:
                raise
            raise explained from exc
        try:
            if spec.encryption_setting() is not None:
                self.confirm_encryption(connection, spec)
            self.configure_socket(connection, spec)
        except BaseException:
            _close_quietly(connection)
            raise
        return connection

    def configure_socket(self, connection: Any, spec: DatabaseSpec) -> None:
        """Hook: socket options of a new connection the driver cannot set itself."""

    def confirm_encryption(self, connection: Any, spec: DatabaseSpec) -> None:
        """Hook: raise :class:`~multipool.errors.EncryptionRequired` if the new
        ``connection`` is not encrypted. Nothing to do where the driver itself
        refuses plain text when TLS is required (libpq does)."""

    def prepare_checkout(self, connection: Any) -> None:
        """Hook: restore wrapper-side state Django's ``get_new_connection`` would set."""

    def init_connection_state(self) -> None:
        binding = self.pool_binding
        lease, pool = binding.lease, binding.pool
        if (
            lease is not None
            and pool is not None
            and self._session_set_up(lease)
            # Behind a multiplexing pooler the server session may change
            # between checkouts: apply Django's setup every time.
            and pool.spec.pool.pooler is None
        ):
            return
        super().init_connection_state()  # type: ignore[misc]
        if lease is not None:
            lease.info[SETUP_DONE] = True

    def _session_set_up(self, lease: Lease) -> bool:
        """Whether Django's session setup can be skipped for ``lease`` now: it runs
        once per connection (``init_once``), or the connection was given back at a
        request's end with its session checked, for the time zone in force now."""
        checked = lease.info.pop(SESSION_CHECKED, _MISSING)
        if self.init_once:
            return bool(lease.info.get(SETUP_DONE))
        return checked is not _MISSING and checked == self.timezone_name  # type: ignore[attr-defined]

    # -- the request boundary ----------------------------------------------------------
    def close_if_unusable_or_obsolete(self) -> None:
        """Django's hook at ``request_started`` and ``request_finished``.

        With ``CONN_MAX_AGE=0`` stock Django closes the connection here, and
        the next request connects again: parameters, checkout, session setup,
        ``connection_created``. A pooled wrapper in a clean state (no
        transaction, autocommit as configured, no error) instead gives its
        connection back to the pool *and keeps a claim on it*: if no other
        thread takes it meanwhile, the next request of this thread goes on with
        it for the cost of one dictionary operation, as with a persistent
        connection. A wrapper in any other state is closed as Django would.
        """
        binding = self.pool_binding
        if binding.hold is KEPT:
            return  # given back at the end of the last request; nothing to check
        lease, pool, connection = binding.lease, binding.pool, self.connection
        settings = self.settings_dict
        if (
            binding.hold is not LENT
            or connection is None
            or pool is None
            or not pool.keeps_between_requests
            or settings["CONN_MAX_AGE"] != 0
            or self.in_atomic_block
            or self.errors_occurred
            or self.needs_rollback
            # Django's get_autocommit() minus ensure_connection(): connected here
            or self.autocommit != settings["AUTOCOMMIT"]
        ):
            super().close_if_unusable_or_obsolete()  # type: ignore[misc]
            return
        assert lease is not None
        state = self.release_state(connection)
        if state is not IDLE and not self._restore_for_next_request(connection, state):
            return
        if self.run_on_commit:
            self.run_on_commit = []
        if self.release_checks_setup():
            lease.info[SESSION_CHECKED] = self.timezone_name  # type: ignore[attr-defined]
        if pool.keep(lease):
            binding.hold = KEPT  # kept for this wrapper, unless another thread needs it
        else:
            binding.clear()  # a waiting thread has it now: the wrapper is closed
        self.connection = None

    def _restore_for_next_request(self, connection: Any, state: SessionState) -> bool:
        """Roll back and restore the session; ``False``: the wrapper was closed."""
        if state is BROKEN:
            super().close_if_unusable_or_obsolete()  # type: ignore[misc]
            return False
        try:
            if state is IN_TRANSACTION:
                self.rollback_transaction(connection)
            self.restore_session(connection)
        except Exception as exc:
            log_event(
                logger, logging.INFO, "session_restore_failed", self.alias,
                "multipool: alias %r: rollback or session restore at the end of a request "
                "failed (%s); closing the connection", self.alias, type(exc).__name__,
                error=type(exc).__name__,
            )  # fmt: skip
            self.close()  # as Django would: the connection is discarded
            return False
        return True

    def release_state(self, connection: Any) -> SessionState:
        """Hook: the state of the connection at the end of a request, as cheaply as
        the driver can tell. Anything but ``IDLE`` at the request boundary runs
        :meth:`restore_session` (after a rollback for ``IN_TRANSACTION``)."""
        if self.connection_is_broken(connection):
            return BROKEN
        if self.transaction_may_be_open(connection):
            return IN_TRANSACTION
        return IDLE

    def release_checks_setup(self) -> bool:
        """Hook: whether a request end that finds the session ``IDLE`` (or restores
        it) has checked all that Django's session setup sets. Then the next checkout
        of the connection skips that setup."""
        return False

    def rollback_transaction(self, connection: Any) -> None:
        """Hook: roll back the transaction open on the server, however it was opened."""
        connection.rollback()

    def restore_session(self, connection: Any) -> None:
        """Hook: undo the session changes :meth:`release_state` reported (``CHANGED``)
        or a rolled-back transaction may have left."""

    # -- checkin -----------------------------------------------------------------
    @async_unsafe
    def close(self) -> None:
        binding = self.pool_binding
        if binding.hold is KEPT:
            # Given back at the end of the last request: ``connection`` is None,
            # so Django's close() has nothing to close; the next connect() may
            # still take the connection back.
            binding.hold = PARKED
        super().close()  # type: ignore[misc]

    def _close(self) -> None:
        binding = self.pool_binding
        if binding.hold is not LENT:
            super()._close()  # type: ignore[misc]
            return
        lease, pool = binding.lease, binding.pool
        assert lease is not None and pool is not None
        broken = self._clean_for_checkin(self.connection, lease, pool)
        binding.clear()
        # Like Django's own pool: the wrapper can no longer use this connection.
        self.connection = None
        if broken is not None:
            pool.checkin(lease, broken=True, reason=broken)
        elif pool.keep(lease):
            # Kept for this wrapper's next connect(), unless another thread
            # needs a connection first.
            binding.set(PARKED, lease, pool)

    def _clean_for_checkin(self, connection: Any, lease: Lease, pool: AliasPool) -> str | None:
        """Roll back (and reset the session if so configured); else why it is broken
        (``unusable_after_error``, ``broken``, ``rollback_failed``, ``reset_failed``)."""
        # After an error, is_usable() decides (and its probe may itself open
        # a transaction, so the state is read after it).
        if self.errors_occurred and not self.is_usable():
            return "unusable_after_error"
        state = self.release_state(connection)
        if state is BROKEN:
            return "broken"
        step = "rollback_failed"
        try:
            if state is IN_TRANSACTION:
                self.rollback_transaction(connection)
            if pool.spec.pool.reset == "session":
                step = "reset_failed"
                lease.info.pop(SETUP_DONE, None)  # Django's session setup must run again
                self.reset_session(connection)
        except Exception:
            return step  # the pool logs it (connection_invalidated)
        return None

    def is_usable(self) -> bool:
        if self.connection is None and self.pool_binding.hold is KEPT:
            self.ensure_connection()  # between requests: check the kept connection
        return bool(super().is_usable())  # type: ignore[misc]

    def connection_is_broken(self, connection: Any) -> bool:
        """Hook: the driver already knows this connection is closed or unusable."""
        return False

    def reset_session(self, connection: Any) -> None:
        """Hook: undo every session setting (``POOL_RESET=session``); no transaction is open."""

    def transaction_may_be_open(self, connection: Any) -> bool:
        """Hook: whether a rollback is needed before the connection is lent again."""
        return self.in_atomic_block or not self.autocommit or self.needs_rollback

    def connection_fileno(self, connection: Any) -> int:
        """Hook: the socket of a physical connection (to poll it without a round trip)."""
        return int(connection.fileno())

    def describe_connection(self, connection: Any, tls: bool) -> ConnectionFacts:
        """What a new physical connection is: the database system (OpenTelemetry's
        ``db.system.name``) and, with ``tls``, its TLS protocol (for the log). Never
        raises: a protocol that cannot be read is ``None``."""
        protocol = None
        if tls:
            try:
                protocol = self.tls_protocol(connection)
            except Exception:
                logger.debug("multipool: the TLS protocol could not be read", exc_info=True)
        return ConnectionFacts(self.db_system_name(connection), protocol)

    def db_system_name(self, connection: Any) -> str:
        """Hook: ``postgresql``, ``mysql``, ``mariadb`` or ``sqlite``; no round trip."""
        return self.multipool_vendor

    def tls_protocol(self, connection: Any) -> str | None:
        """Hook: the TLS protocol of a new connection (``TLSv1.3``), ``"none"`` if it
        is not encrypted, ``None`` if it cannot be told. May cost a round trip."""
        return None

    def ping_connection(self, connection: Any) -> None:
        """Hook: one round trip; raise if the connection is dead."""
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT 1")
            cursor.fetchall()
        finally:
            cursor.close()


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:
        logger.debug("multipool: error while closing a refused connection", exc_info=True)


def abandon_inherited_connections() -> None:
    """After ``fork()``, in the child: drop the connections this thread inherited.

    The child must never talk on its parent's sockets, and must not close them
    either (closing sends a goodbye the server would apply to the parent's
    session). The leases are handed to the pool manager, which keeps them
    referenced and untouched; Django then opens fresh ones on first use.
    """
    if "django.db" not in sys.modules:
        return
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        binding = getattr(conn, "pool_binding", None)
        if binding is None:
            continue
        if binding.hold is LENT:
            manager.abandon((binding.lease, conn.connection))
            conn.connection = None
        binding.clear()  # a kept or parked connection stays with the parent's pool


def give_back_thread_connections() -> None:
    """At exit: this thread's Django connections go back to their pools (which then
    close them with the protocol's goodbye)."""
    if "django.db" not in sys.modules:
        return
    from django.conf import settings
    from django.db import connections

    if settings.configured:
        connections.close_all()


forking.in_child_after_fork("connections", abandon_inherited_connections)
exiting.at_exit("connections", give_back_thread_connections)
