"""Pool events as structured log records.

An event is one log record whose ``extra`` carries its fields, namespaced
``multipool_*``, so that a JSON formatter or a log pipeline can select and
count events without parsing messages:

* ``multipool_event`` -- the event's name (:data:`EVENTS`);
* ``multipool_alias`` -- the database alias;
* the event's own fields, ``multipool_<field>`` (``multipool_seconds``...).

The thread an event happened in is the record's own ``threadName``. No field
holds a secret: no URL, no connection parameter, no driver error message (a
driver's message may quote the connection string): an error is named by its
class. The message says the same in words, for a plain log.

Nothing is built unless the record will be emitted (one ``isEnabledFor`` call).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["EVENTS", "fields_of", "log_event", "log_tls_warning"]

#: event -> (logger, level, its fields): what ``docs/metrics.md`` lists
EVENTS: Mapping[str, tuple[str, str, tuple[str, ...]]] = {
    "connection_opened": (
        "multipool.pools", "INFO", ("seconds", "db_system", "tls", "open", "role"),
    ),
    "connection_invalidated": (
        "multipool.pools", "INFO (DEBUG when retired)", ("reason", "error", "open"),
    ),
    "checkout_timeout": (
        "multipool.pools",
        "WARNING",
        ("waited", "timeout", "pool_size", "max_overflow", "in_use", "waiting"),
    ),
    "pool_retired": ("multipool.pools", "INFO", ("reason",)),
    "certificate_expiring": (
        "multipool.pools, multipool.secrets", "WARNING", ("setting", "expires", "days_left"),
    ),
    "tls_warning": ("multipool.pools, multipool.secrets", "WARNING", ()),
    "replica_down": (
        "multipool.health", "WARNING (INFO for a failed probe)", ("error", "backoff", "attempt"),
    ),
    "replica_up": ("multipool.health", "WARNING", ("attempts",)),
    "replica_lagging": ("multipool.health", "WARNING", ("lag", "max_lag")),
    "replica_caught_up": ("multipool.health", "WARNING", ("lag",)),
    "session_restore_failed": ("multipool.backends", "INFO", ("error",)),
}  # fmt: skip


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    alias: str,
    message: str,
    *args: Any,
    **fields: Any,
) -> None:
    """Log ``message % args`` as ``event`` of ``alias`` with ``fields`` in ``extra``."""
    if not logger.isEnabledFor(level):
        return
    extra = {"multipool_event": event, "multipool_alias": alias}
    for name, value in fields.items():
        extra[f"multipool_{name}"] = value
    logger.log(level, message, *args, extra=extra, stacklevel=2)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``multipool_*`` fields of a record, without the prefix (for tests and filters)."""
    return {
        key.removeprefix("multipool_"): value
        for key, value in vars(record).items()
        if key.startswith("multipool_")
    }


def log_tls_warning(logger: logging.Logger, alias: str, message: str) -> None:
    """A TLS warning of :func:`multipool.tls.validate_tls`: ``certificate_expiring`` (with
    the setting, the expiry date in ISO 8601 and the days left) or ``tls_warning``."""
    from multipool.tls.validation import ExpiryWarning

    if isinstance(message, ExpiryWarning):
        expires = message.expires.isoformat() if message.expires is not None else None
        log_event(
            logger, logging.WARNING, "certificate_expiring", alias, "%s", message,
            setting=message.setting, expires=expires, days_left=message.days_left,
        )  # fmt: skip
    else:
        log_event(logger, logging.WARNING, "tls_warning", alias, "%s", message)
