"""Read-your-writes for web requests: one pin scope per request, and causal reads
across requests.

``MIDDLEWARE = ["multipool.middleware.PinningMiddleware", ...]`` (early in the
list, so that every other middleware runs inside the request's pin scope).
Sync and async capable. Per request it:

1. opens a fresh pin scope (:func:`multipool.routers.pin_scope`): a write, a
   :func:`~multipool.routers.pin` or a read inside ``transaction.atomic`` on a
   primary affects this request only;
2. pins every group for requests with an unsafe method (``POST``, ``PUT``,
   ``PATCH``, ``DELETE``...) when ``MULTIPOOL_PIN_UNSAFE_METHODS`` (default
   ``True``): a read-modify-write view reads from the primary;
3. **causal reads** (``MULTIPOOL_CAUSAL_READS``, default ``True``): after a
   request that wrote to (or pinned) a group with replicas, reads the
   primary's position and sends it in the signed cookie
   ``MULTIPOOL_PIN_COOKIE`` (default ``multipool_pin``); the client's later
   reads of that group use a replica only once it has replayed the position
   (:mod:`multipool.routing.causal`). Requests that did not write cost nothing;
4. or, with ``MULTIPOOL_PIN_SECONDS > 0``, the time pin instead: the cookie
   lists the groups written, and requests carrying it read them from their
   primaries for that many seconds.

The cookie only moves reads to a primary: a client forging a time-pin cookie
gains nothing but slower reads, and a position cookie is signed.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from multipool.routing import causal
from multipool.routing.pins import ALL, PinState, pin_scope
from multipool.routing.settings import RouterSettings, router_settings
from multipool.routing.topology import topology

__all__ = ["PinningMiddleware"]

_SEPARATOR = "."
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class PinningMiddleware:
    """Per-request pin scope and the pin cookie (see the module doc)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        router_settings()  # report a mistake in the settings at start-up
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        with pin_scope() as state:
            self.process_request(request, state)
            response = self.get_response(request)
            written = self.positions_written(state)
            self.process_response(request, response, state, written)
        return response

    async def __acall__(self, request: Any) -> Any:
        with pin_scope() as state:
            self.process_request(request, state)
            get_response: Callable[[Any], Awaitable[Any]] = self.get_response
            response = await get_response(request)
            written: causal.Required = {}
            if state.carry and router_settings().carries_positions:
                # the request's own (sync) connections: the thread its ORM calls used
                written = await sync_to_async(self.positions_written, thread_sensitive=True)(
                    state
                )
            self.process_response(request, response, state, written)
        return response

    # -- the halves ------------------------------------------------------------------
    def process_request(self, request: Any, state: PinState) -> None:
        cfg = router_settings()
        if cfg.pin_unsafe_methods and request.method not in _SAFE_METHODS:
            state.pinned.add(ALL)
        cookie = request.COOKIES.get(cfg.pin_cookie)
        if cfg.carries_positions:
            state.required.update(causal.read_cookie(cookie, cfg))
        elif cfg.pin_seconds > 0:
            state.pinned |= self.cookie_groups(cookie)

    @staticmethod
    def positions_written(state: PinState) -> causal.Required:
        """The primaries' positions after this request's writes (none: no write)."""
        if not state.carry or not router_settings().carries_positions:
            return {}
        return causal.positions_written(state.carry)

    def process_response(
        self, request: Any, response: Any, state: PinState, written: causal.Required
    ) -> None:
        cfg = router_settings()
        if cfg.carries_positions:
            if state.required or written:
                carried = causal.merged(state.required, written)
                if carried != state.required:
                    causal.set_or_clear(response, request, cfg, carried)
        elif cfg.pin_seconds > 0 and state.carry:
            self._time_pin(request, response, state, cfg)

    def _time_pin(self, request: Any, response: Any, state: PinState, cfg: RouterSettings) -> None:
        carried = set(state.carry) | self.cookie_groups(request.COOKIES.get(cfg.pin_cookie))
        value = ALL if ALL in carried else _SEPARATOR.join(sorted(carried))
        response.set_cookie(
            cfg.pin_cookie,
            value,
            max_age=max(1, math.ceil(cfg.pin_seconds)),
            path="/",
            secure=request.is_secure(),
            httponly=True,
            samesite="Lax",
        )

    @staticmethod
    def cookie_groups(value: str | None) -> set[str]:
        """The groups a time-pin cookie names (unknown aliases ignored)."""
        if not value:
            return set()
        names = set(value.split(_SEPARATOR))
        if ALL in names:
            return {ALL}
        topo = topology()
        return {topo.primary_of[n] for n in names if n in topo.primary_of}
