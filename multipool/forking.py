"""What a forked child does with what it inherited, in one place and one order.

A pre-fork server (gunicorn ``--preload``, uwsgi, Celery's prefork pool) forks
a process that may hold pooled connections. The child must never talk on its
parent's sockets -- not even to close them: a goodbye would end the parent's
session. Each part of multipool that holds something registers what to do in
the child under a named stage; after ``fork()`` the stages run in
:data:`STAGES` order, whatever the order the modules were imported in:

1. ``connections`` -- Django's connection wrappers of the forking thread drop
   their leases (:mod:`multipool.backends.pooled`);
2. ``pools`` -- the pool manager detaches the inherited sockets and starts
   with no pools (:mod:`multipool.pools.manager`);
3. ``state`` -- process-wide state with locks (replica health) starts afresh.

This module imports nothing of multipool, so that every part can register here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

__all__ = ["STAGES", "in_child_after_fork"]

logger = logging.getLogger("multipool.forking")

STAGES = ("connections", "pools", "state")

_hooks: dict[str, list[Callable[[], None]]] = {stage: [] for stage in STAGES}
_lock = threading.Lock()


def in_child_after_fork(stage: str, hook: Callable[[], None]) -> None:
    """Run ``hook`` in every child process forked from now on, in ``stage``."""
    if stage not in _hooks:
        raise ValueError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    with _lock:
        _hooks[stage].append(hook)


def _after_fork_in_child() -> None:
    for stage in STAGES:
        for hook in _hooks[stage]:
            try:
                hook()
            except Exception:  # one part failing must not keep the others from running
                logger.exception("multipool: after fork, %s stage: %r failed", stage, hook)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
