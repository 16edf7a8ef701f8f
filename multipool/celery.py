"""Celery's prefork pool: what multipool adds to Celery's own Django fix-up.

Call :func:`setup` once in the module that creates the Celery app::

    app = Celery("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.autodiscover_tasks()
    multipool.celery.setup()

What is already taken care of, without this module:

* Celery's Django fix-up (installed when ``DJANGO_SETTINGS_MODULE`` is set) closes
  Django's connections before and after every task; a pooled connection goes back
  to the child's pool there, and the next task takes it again.
* A child forked by the prefork pool never touches the sockets it inherited, and
  opens its own connections (:mod:`multipool.forking`).

What :func:`setup` adds, two signal handlers:

* ``worker_before_create_process`` -- in the worker's main process, just before it
  forks a child: :func:`multipool.close_all`. The main process runs no task, but a
  query at start-up (a check, a warm-up in ``AppConfig.ready()``) would leave a
  connection per alias open in it for the worker's whole life.
* ``worker_process_shutdown`` -- in a child, when it exits (a warm shutdown,
  ``--max-tasks-per-child``, ``--max-memory-per-child``): :func:`multipool.close_all`.
  billiard ends a child with ``os._exit()``, which skips ``atexit`` and
  ``multiprocessing``'s exit finalizers; without this the child's pooled
  connections would be dropped without the protocol's goodbye, and the server would
  log each one ("Connection reset by peer", "Aborted connection").

Importing this module imports Celery; multipool itself does not depend on it.
"""

from __future__ import annotations

from typing import Any

import multipool

try:
    from celery import signals
except ImportError as exc:  # pragma: no cover - Celery is installed with the test extra
    raise ImportError(
        "multipool.celery needs Celery, which multipool does not install: pip install celery"
    ) from exc

__all__ = ["setup"]

_BEFORE_FORK_UID = "multipool.celery.close_before_fork"
_CHILD_EXIT_UID = "multipool.celery.close_at_child_exit"


def close_before_fork(**kwargs: Any) -> None:
    """``worker_before_create_process``: the main process keeps no pooled connection."""
    multipool.close_all()


def close_at_child_exit(**kwargs: Any) -> None:
    """``worker_process_shutdown``: the child closes its pools with the protocol's goodbye."""
    multipool.close_all()


def setup() -> None:
    """Connect the handlers (see the module doc). Calling it again changes nothing."""
    signals.worker_before_create_process.connect(
        close_before_fork, weak=False, dispatch_uid=_BEFORE_FORK_UID
    )
    signals.worker_process_shutdown.connect(
        close_at_child_exit, weak=False, dispatch_uid=_CHILD_EXIT_UID
    )
