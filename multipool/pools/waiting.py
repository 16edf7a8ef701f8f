"""A thread waiting for a connection of an :class:`~multipool.pools.AliasPool`.

The pool queues a :class:`Waiter` per checkout that found nothing free, and
serves the longest waiter first with what is given back: a lease, or
:data:`SLOT` when a slot, not a connection, became free.
"""

from __future__ import annotations

import threading

__all__ = ["SLOT", "Waiter"]

#: what a waiter gets when a slot, not a connection, became free
SLOT = object()


class Waiter:
    """A thread waiting for a connection: handed a lease, or :data:`SLOT`.

    ``signal`` is a lock the waiting thread holds from the start and blocks on,
    trying to acquire it again; whoever serves the waiter (under the pool's
    lock) sets ``got`` and releases it -- a lock may be released by any thread.
    """

    __slots__ = ("got", "signal")

    def __init__(self) -> None:
        self.signal = threading.Lock()
        self.signal.acquire()
        self.got: object | None = None

    def wait(self, timeout: float) -> bool:
        """Block until served or ``timeout`` seconds passed; whether served."""
        return self.signal.acquire(timeout=timeout)

    def serve(self, got: object) -> None:
        self.got = got
        self.signal.release()
