"""ASGI servers (uvicorn and the like): close the pools at shutdown, through lifespan.

uvicorn ends a process by raising again the SIGTERM or SIGINT it caught, once it
has finished its requests: the process dies of the signal, and ``atexit`` -- where
multipool closes its pools with the protocol's goodbye (:mod:`multipool.exiting`)
-- never runs. Every pooled connection then ends without a goodbye: PostgreSQL logs
"could not receive data from client: Connection reset by peer" and counts the
session in ``pg_stat_database.sessions_abandoned``; MariaDB logs "Aborted connection
... (Got an error reading communication packets)", once per connection and worker.

Django's ASGI application has no lifespan of its own; wrap it::

    from django.core.asgi import get_asgi_application

    from multipool.asgi import close_pools_at_shutdown

    application = close_pools_at_shutdown(get_asgi_application())

The wrapper answers the ASGI ``lifespan`` scope itself (the wrapped application never
sees it): startup completes at once; at shutdown, after the server has finished its
requests, every pool of the process closes (:func:`multipool.close_all`, in a worker
thread). Every other scope goes to the wrapped application unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["PoolLifespan", "close_pools_at_shutdown"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class PoolLifespan:
    """An ASGI application: ``application`` for every scope but ``lifespan``, which it
    answers itself, closing this process's pools at shutdown."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    def __repr__(self) -> str:
        return f"PoolLifespan({self.application!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.application(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send(await _close_pools())
                return


async def _close_pools() -> Message:
    """Close every pool in a worker thread: Django refuses to close a connection from
    the event loop's thread. (A pool that fails to close is logged, not raised, by
    :func:`multipool.close_all`.)"""
    from multipool import close_all

    await asyncio.to_thread(close_all)
    return {"type": "lifespan.shutdown.complete"}


def close_pools_at_shutdown(application: ASGIApp) -> PoolLifespan:
    """``application`` wrapped so that the server's lifespan shutdown closes this
    process's pools (see the module doc)."""
    return PoolLifespan(application)
