"""Pooled connections say goodbye when the process ends.

A connection dropped by the operating system at exit -- no protocol goodbye --
is logged by the server ("could not receive data from client: Connection
reset by peer" on PostgreSQL, "Aborted connection" on MariaDB), once per
pooled connection. So at exit the stages run in order:

1. ``connections`` -- Django's connection wrappers of the exiting thread give
   their connections back (:mod:`multipool.backends.pooled`);
2. ``pools`` -- every pool closes its connections through the driver, which
   sends the goodbye (:mod:`multipool.pools.manager`).

They run at interpreter exit (``atexit``), and in a ``multiprocessing`` child
-- Django's ``manage.py test --parallel`` workers -- which ends with
``os._exit()`` and skips ``atexit``: there through ``multiprocessing``'s own
exit finalizers (``multiprocessing.util.Finalize``: registered at once when this
module is first imported in such a child, and by
``multiprocessing.util.register_after_fork`` in every child forked later). Like
:mod:`multipool.forking`, this module imports nothing of multipool.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import threading
from collections.abc import Callable

__all__ = ["STAGES", "at_exit", "run_exit_hooks"]

logger = logging.getLogger("multipool.exiting")

STAGES = ("connections", "pools")

_hooks: dict[str, list[Callable[[], None]]] = {stage: [] for stage in STAGES}
_lock = threading.Lock()


def at_exit(stage: str, hook: Callable[[], None]) -> None:
    """Run ``hook`` when this process (or a process forked from it) ends, in ``stage``."""
    if stage not in _hooks:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    with _lock:
        _hooks[stage].append(hook)


def run_exit_hooks() -> None:
    """Run every stage's hooks now, in order (what exit does)."""
    for stage in STAGES:
        for hook in list(_hooks[stage]):
            try:
                hook()
            except Exception:  # one part failing must not keep the others from running
                logger.exception("multipool: at exit, %s stage: %r failed", stage, hook)


class _Registration:
    """What ``multiprocessing.util.register_after_fork`` holds on to (weakly)."""

    def after_fork(self) -> None:
        multiprocessing.util.Finalize(None, run_exit_hooks, exitpriority=100)


_registration = _Registration()
atexit.register(run_exit_hooks)
multiprocessing.util.register_after_fork(_registration, _Registration.after_fork)
if multiprocessing.parent_process() is not None:  # imported in a multiprocessing child
    _registration.after_fork()
