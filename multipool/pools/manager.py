"""The process-wide registry of pools: one :class:`AliasPool` per alias.

``manager.pool(spec)`` is the only entry point a backend needs. A changed spec
for an alias (Django's test runner switches ``NAME`` to ``test_...``) retires
the old pool, closing its idle connections. After ``os.fork()`` the child
starts with no pools and never touches the parent's sockets: the sockets of
the parent's connections are pointed at ``/dev/null`` in the child, and the
parent's pools are kept referenced, unclosed, so that nothing the child does
(finalizers at exit included) reaches the parent's sessions.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from multipool import exiting, forking
from multipool.metrics.events import log_event, log_tls_warning
from multipool.notices import first_report
from multipool.pools.pool import AliasPool, Describe, Fileno, Pinger
from multipool.pools.retirement import Rotation
from multipool.pools.stats import PoolStats, Recorder

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec

__all__ = ["PoolManager", "manager"]

logger = logging.getLogger("multipool.pools")


class PoolManager:
    """Process-wide registry of pools, one per alias (see the module doc)."""

    def __init__(self) -> None:
        self._pools: dict[str, AliasPool] = {}
        self._lock = threading.Lock()
        self._abandoned: list[Any] = []
        # Pools replaced or disposed while connections may still be lent.
        self._retired: weakref.WeakSet[AliasPool] = weakref.WeakSet()

    def pool(
        self,
        spec: DatabaseSpec,
        *,
        ping: Pinger | None = None,
        fileno: Fileno | None = None,
        rotation: Callable[[DatabaseSpec], Rotation | None] | None = None,
        recorder: Callable[[DatabaseSpec], Recorder | None] | None = None,
        describe: Describe | None = None,
    ) -> AliasPool:
        """The pool for ``spec.alias``, created (or replaced, if the spec changed) on demand.

        Called when the pool is created: ``rotation(spec)`` gives the alias's rotating
        certificate files (see :mod:`multipool.pools.retirement`), ``recorder(spec)``
        what its metrics are told (``None``: metrics off)."""
        with self._lock:
            current = self._pools.get(spec.alias)
            if current is not None and (current.spec is spec or current.spec == spec):
                return current
            if current is not None:
                log_event(
                    logger, logging.INFO, "pool_retired", spec.alias,
                    "multipool: alias %r settings changed; retiring its pool", spec.alias,
                    reason="settings_changed",
                )  # fmt: skip
                current.dispose()
                self._retired.add(current)
            watched = rotation(spec) if rotation is not None else None
            created = AliasPool(
                spec,
                ping=ping,
                fileno=fileno,
                rotation=watched,
                recorder=recorder(spec) if recorder is not None else None,
                describe=describe,
            )
            self._pools[spec.alias] = created
            logger.debug("multipool: alias %r pool created: %r", spec.alias, spec.pool)
        _log_warnings(spec)
        return created

    def current(self, spec: DatabaseSpec) -> AliasPool | None:
        """The pool of ``spec.alias`` if it was made for this very spec, else ``None``
        (then :meth:`pool` makes or replaces it): a checkout's lookup, with no
        callbacks to build."""
        with self._lock:
            found = self._pools.get(spec.alias)
        return found if found is not None and found.spec is spec else None

    def get(self, alias: str) -> AliasPool | None:
        with self._lock:
            return self._pools.get(alias)

    def stats(self, alias: str | None = None) -> dict[str, PoolStats]:
        """Stats per alias (only aliases whose pool exists in this process)."""
        with self._lock:
            pools = dict(self._pools)
        if alias is not None:
            pools = {alias: pools[alias]} if alias in pools else {}
        return {name: p.stats() for name, p in sorted(pools.items())}

    def dispose(self, alias: str | None = None) -> None:
        """Close the pool of ``alias`` (all aliases when ``None``).

        Idle connections close now; lent ones close when given back. The next
        checkout builds a fresh pool.
        """
        with self._lock:
            names = list(self._pools) if alias is None else [alias]
            disposed = [p for p in (self._pools.pop(n, None) for n in names) if p is not None]
            self._retired.update(disposed)
        for pool in disposed:
            pool.dispose()

    def close_all(self) -> None:
        """Close every pool's connections now, through the driver (the protocol's
        goodbye): idle ones at once, lent ones when they are given back."""
        with self._lock:
            pools = [*self._pools.values(), *self._retired]
            self._retired.update(self._pools.values())
            self._pools = {}
        for pool in pools:
            pool.dispose()

    def abandon(self, obj: Any) -> None:
        """Keep ``obj`` (a lease or connection inherited over fork) alive, unclosed."""
        self._abandoned.append(obj)

    def after_fork_in_child(self) -> None:
        """Cut this (forked) process off from the pools it inherited."""
        self._lock = threading.Lock()  # a thread that held it did not survive the fork
        inherited = [*self._pools.values(), *self._retired]
        for pool in inherited:
            try:
                _detach_sockets(pool.physical_connections_after_fork(), pool)
            except OSError:  # pragma: no cover - nothing sane left to do
                logger.exception("multipool: could not detach inherited sockets")
        self._abandoned.extend(inherited)
        self._pools = {}
        self._retired = weakref.WeakSet()


def _log_warnings(spec: DatabaseSpec) -> None:
    """Log what the TLS checks warn about (a certificate about to expire...), once per
    process: not again if the system checks reported it already."""
    from multipool.errors import ConfigurationError
    from multipool.tls import validate_tls

    try:
        messages = validate_tls(
            spec.alias, spec.tls, settings=spec.setting_names, vendor=spec.vendor
        )
    except ConfigurationError:
        return  # the connect fails and says why
    for message in messages:
        if first_report(spec.alias, message):
            log_tls_warning(logger, spec.alias, message)


def _detach_sockets(connections: list[Any], pool: AliasPool) -> int:
    """Point each inherited connection's socket at ``/dev/null``, in this process only.

    Whatever the child then does with the inherited connection objects --
    nothing, or close them when it exits -- reaches no server.
    """
    fileno = pool.fileno
    if fileno is None:
        return 0
    detached = 0
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for connection in connections:
            try:
                fd = fileno(connection)
            except Exception:
                continue  # already closed
            if fd >= 0:
                os.dup2(null, fd, inheritable=False)
                detached += 1
    finally:
        os.close(null)
    return detached


manager = PoolManager()
forking.in_child_after_fork("pools", manager.after_fork_in_child)
exiting.at_exit("pools", manager.close_all)
