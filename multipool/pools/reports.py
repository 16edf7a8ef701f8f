"""What a pool says: the error of a checkout that timed out, and its events in the log.

The events are log records of the ``multipool.pools`` logger with their fields
in ``extra`` (:mod:`multipool.metrics.events`): ``connection_opened``,
``connection_invalidated`` and ``checkout_timeout``. Nothing is worded unless
the record is emitted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from multipool.errors import PoolTimeout
from multipool.metrics.events import log_event

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec
    from multipool.pools.stats import ConnectionFacts

__all__ = ["log_invalidated", "log_opened", "log_timeout", "timeout_error"]

logger = logging.getLogger("multipool.pools")


def timeout_error(spec: DatabaseSpec, checked_out: int) -> PoolTimeout:
    """The error of a checkout of ``spec``'s pool that waited ``pool_timeout`` in vain."""
    return PoolTimeout(
        spec.alias,
        timeout=spec.pool.timeout,
        pool_size=spec.pool.size,
        max_overflow=spec.pool.max_overflow,
        checked_out=checked_out,
        settings=(
            spec.setting("pool_size"),
            spec.setting("max_overflow"),
            spec.setting("pool_timeout"),
        ),
    )


def log_timeout(spec: DatabaseSpec, waited: float, in_use: int, waiting: int) -> None:
    """``checkout_timeout``: this thread waited ``waited`` seconds and gave up; the pool
    had ``in_use`` connections lent and ``waiting`` other threads in line."""
    pool = spec.pool
    log_event(
        logger, logging.WARNING, "checkout_timeout", spec.alias,
        "multipool: alias %r: a checkout gave up after waiting %.3fs for a connection "
        "(%d in use of %d + %d overflow, %d more waiting; %s)",
        spec.alias, waited, in_use, pool.size, pool.max_overflow, waiting,
        spec.setting("pool_timeout"),
        waited=waited, timeout=pool.timeout, pool_size=pool.size,
        max_overflow=pool.max_overflow, in_use=in_use, waiting=waiting,
    )  # fmt: skip


def log_opened(spec: DatabaseSpec, seconds: float, facts: ConnectionFacts, open_now: int) -> None:
    """``connection_opened``: a physical connection opened in ``seconds``."""
    log_event(
        logger, logging.INFO, "connection_opened", spec.alias,
        "multipool: alias %r: connection opened in %.3fs (%s, TLS %s, %d open)",
        spec.alias, seconds, facts.db_system, facts.tls or "unknown", open_now,
        seconds=seconds, db_system=facts.db_system, tls=facts.tls, open=open_now,
        role="primary" if spec.replica_of is None else "replica",
    )  # fmt: skip


def log_invalidated(
    alias: str, reason: str, exc: BaseException | None, *, broken: bool, open_now: int
) -> None:
    """``connection_invalidated``: a connection was closed for ``reason``; ``broken``:
    found unusable (INFO), else retired on purpose (DEBUG). The error is named by
    its class only: a driver's message may quote connection parameters."""
    error = type(exc).__name__ if exc is not None else None
    log_event(
        logger, logging.INFO if broken else logging.DEBUG, "connection_invalidated", alias,
        "multipool: alias %r: connection discarded (%s%s)",
        alias, reason, f": {error}" if error else "",
        reason=reason, error=error, open=open_now,
    )  # fmt: skip
