"""One SQLAlchemy pool per database alias, for the whole process.

* :mod:`multipool.pools.manager` -- :data:`manager`, the process-wide registry:
  one pool per alias, created lazily, replaced when the alias's spec changes,
  rebuilt after ``fork``;
* :mod:`multipool.pools.pool` -- :class:`AliasPool`, who gets a connection and
  when it is checked, over a SQLAlchemy ``QueuePool``; :class:`Lease`, the
  handle lent to a backend;
* :mod:`multipool.pools.waiting` -- a thread waiting for a connection;
* :mod:`multipool.pools.staleness` -- when an idle connection is checked;
* :mod:`multipool.pools.stats` -- :class:`PoolStats`; :class:`Recorder`, what a
  pool tells its metrics (:mod:`multipool.metrics`);
* :mod:`multipool.pools.reports` -- its timeout error and its log events.

This package knows nothing of Django's connection objects.
"""

from multipool.pools.manager import PoolManager, manager
from multipool.pools.pool import AliasPool, Lease
from multipool.pools.stats import ConnectionFacts, PoolStats, Recorder

__all__ = [
    "AliasPool",
    "ConnectionFacts",
    "Lease",
    "PoolManager",
    "PoolStats",
    "Recorder",
    "manager",
]
