"""multipool.asgi: the lifespan wrapper that closes the pools when an ASGI server stops.

The wrapper's messages are checked with a fake server; that the pools really close is
checked against the real servers here, and under uvicorn in tests/appservers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from multipool.asgi import close_pools_at_shutdown
from multipool.pools import manager
from tests.test_pool_lifecycle import backend_id


class Recorder:
    """A wrapped application that notes what reaches it."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Any, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls.append((scope, receive, send))


def run_lifespan(app: Any, messages: list[str]) -> list[dict[str, Any]]:
    """Feed ``messages`` (``lifespan.startup``...) to ``app``; what it sent back."""
    inbox = [{"type": m} for m in messages]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app({"type": "lifespan"}, receive, send), timeout=30))
    return sent


def test_other_scopes_reach_the_application_unchanged():
    inner = Recorder()
    app = close_pools_at_shutdown(inner)
    scope = {"type": "http", "path": "/"}

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("not called")

    asyncio.run(app(scope, receive, send))
    assert inner.calls == [(scope, receive, send)]


def test_lifespan_is_answered_without_the_application():
    inner = Recorder()
    sent = run_lifespan(close_pools_at_shutdown(inner), ["lifespan.startup", "lifespan.shutdown"])
    assert sent == [{"type": "lifespan.startup.complete"},
                    {"type": "lifespan.shutdown.complete"}]
    assert inner.calls == []


def test_shutdown_closes_the_pooled_connections(server, make_alias):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0")
    conn.ensure_connection()
    session = backend_id(conn)
    conn.close()  # back to the pool, idle and open
    assert manager.stats(conn.alias)[conn.alias].open == 1
    assert session in server.connection_ids(user="app")

    run_lifespan(close_pools_at_shutdown(Recorder()), ["lifespan.startup", "lifespan.shutdown"])

    assert manager.get(conn.alias) is None
    deadline = time.monotonic() + 10  # the server drops a closed session asynchronously
    while session in server.connection_ids(user="app") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session not in server.connection_ids(user="app")


def test_request_wrappers_share_the_spec_and_see_replaced_settings(server, make_alias):
    """Under ASGI Django makes a wrapper per request, all with the alias's settings dict:
    they share one spec, and a replaced ``OPTIONS`` or a rewritten ``NAME`` reaches the
    next wrapper."""
    from django.db import connections

    conn = make_alias(POOL_SIZE="2")
    first, second = (connections.create_connection(conn.alias) for _ in range(2))
    assert first.multipool_spec() is second.multipool_spec()
    settings = connections.settings[conn.alias]
    settings["OPTIONS"] = {**settings["OPTIONS"], "pool_size": 3}
    assert connections.create_connection(conn.alias).multipool_spec().pool.size == 3
    name = settings["NAME"]
    settings["NAME"] = "test_" + name  # what Django's test runner does in place
    assert connections.create_connection(conn.alias).multipool_spec().name == "test_" + name
    settings["NAME"] = name


def test_a_pooled_wrapper_refuses_the_event_loop_as_django_does(make_alias):
    """Connecting, or taking back the connection kept between requests, blocks on the
    pool: from an event loop both raise Django's SynchronousOnlyOperation."""
    import pytest
    from django.core.exceptions import SynchronousOnlyOperation
    from django.core.signals import request_finished

    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0")

    async def in_the_loop(call: Any) -> None:
        call()

    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(in_the_loop(conn.ensure_connection))
    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(in_the_loop(conn.connect))
    backend_id(conn)
    request_finished.send(sender=None)  # given back, kept for this wrapper
    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(in_the_loop(conn.ensure_connection))
    assert manager.stats(conn.alias)[conn.alias].checked_out == 0
    backend_id(conn)  # outside the loop it takes its connection back
    request_finished.send(sender=None)
