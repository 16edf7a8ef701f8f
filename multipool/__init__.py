"""multipool: real connection pooling for every Django database alias, over TLS,
configured from the environment."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "close_all", "databases"]


def databases(**overrides: Any) -> dict[str, dict[str, Any]]:
    """Return a Django ``DATABASES`` dict for every alias configured in the environment.

    See :func:`multipool.config.databases`.
    """
    from multipool.config import databases as _databases

    return _databases(**overrides)


def close_all() -> None:
    """Close every pooled connection of this process, with the protocol's goodbye.

    This thread's Django connections go back to their pools first; connections
    other threads hold close when they are given back. What exit does; call it in
    a pre-fork master after queries made at import (gunicorn's ``when_ready``).
    """
    from multipool.exiting import run_exit_hooks

    run_exit_hooks()
