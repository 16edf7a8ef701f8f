"""One message per problem per process.

A certificate about to expire is a problem worth one line, not one per
``manage.py`` command part: the system checks report it (``multipool.W001``)
every time they run, and a pool logs it when it is created only if nothing
reported it in this process yet. A forked child starts with nothing reported.
"""

from __future__ import annotations

import threading

from multipool import forking

__all__ = ["first_report"]

_reported: set[tuple[str, str]] = set()
_lock = threading.Lock()


def first_report(alias: str, message: str) -> bool:
    """Whether ``message`` about ``alias`` is reported for the first time in this
    process (and, from now on, counts as reported)."""
    key = (alias, message)
    with _lock:
        if key in _reported:
            return False
        _reported.add(key)
        return True


def _forget() -> None:
    global _lock
    _lock = threading.Lock()  # a thread that held it did not survive the fork
    _reported.clear()


forking.in_child_after_fork("state", _forget)
