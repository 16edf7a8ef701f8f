"""The pool's log lines name connections without their parameters.

SQLAlchemy's pool logs ``Created new connection %r``, ``checked out``,
``being returned`` and ``Closing`` with the driver connection's ``repr``.
psycopg2's holds its whole connection string with only ``password`` masked,
so a key passphrase (``sslpassword``) would reach the logs at DEBUG. Each
alias's pool logs under its own logger, ``sqlalchemy.pool.impl.QueuePool.<alias>``,
and a filter there puts a plain name in place of every object that is not a
number or a string. The filter runs only for records that are emitted.
"""

from __future__ import annotations

import logging

_PLAIN = (str, int, float, type(None))


def plain_name(value: object) -> object:
    if isinstance(value, _PLAIN):
        return value
    kind = type(value)
    return f"<{kind.__module__}.{kind.__qualname__} at {id(value):#x}>"


class ConnectionNames(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(plain_name(arg) for arg in record.args)
        return True


_names = ConnectionNames()


def pool_logger_name(alias: str) -> str:
    """The ``logging_name`` of an alias's pool, its logger filtered (once)."""
    logger = logging.getLogger(f"sqlalchemy.pool.impl.QueuePool.{alias}")
    if _names not in logger.filters:
        logger.addFilter(_names)
    return alias
