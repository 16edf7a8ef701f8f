"""Read-your-writes for web requests: one pin scope per request, optionally carried by a cookie.

``MIDDLEWARE = ["multipool.middleware.PinningMiddleware", ...]`` (early in the
list, so that every other middleware runs inside the request's pin scope).
Sync and async capable. Per request it:

1. opens a fresh pin scope (:func:`multipool.routers.pin_scope`): a write, a
   :func:`~multipool.routers.pin` or a read inside ``transaction.atomic`` on a
   primary affects this request only;
2. pins every group for requests with an unsafe method (``POST``, ``PUT``,
   ``PATCH``, ``DELETE``...) when ``MULTIPOOL_PIN_UNSAFE_METHODS`` (default
   ``True``): a read-modify-write view reads from the primary;
3. with ``MULTIPOOL_PIN_SECONDS > 0`` (default ``0``: off): after a request
   that wrote to (or pinned) a group with replicas, sets the cookie
   ``MULTIPOOL_PIN_COOKIE`` (default ``multipool_pin``) for that many seconds;
   requests carrying it read those groups from their primaries -- the redirect
   after a ``POST`` sees what the ``POST`` wrote, whatever the replica lag.

The cookie only moves reads to a primary (a client forging it gains nothing
but slower reads); its value lists group aliases, never data.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

from multipool.routing.pins import ALL, PinState, pin_scope
from multipool.routing.settings import router_settings
from multipool.routing.topology import topology

__all__ = ["PinningMiddleware"]

_SEPARATOR = "."
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class PinningMiddleware:
    """Per-request pin scope and the optional pin cookie (see the module doc)."""

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
            self.process_response(request, response, state)
        return response

    async def __acall__(self, request: Any) -> Any:
        with pin_scope() as state:
            self.process_request(request, state)
            get_response: Callable[[Any], Awaitable[Any]] = self.get_response
            response = await get_response(request)
            self.process_response(request, response, state)
        return response

    # -- the two halves ------------------------------------------------------------
    def process_request(self, request: Any, state: PinState) -> None:
        cfg = router_settings()
        if cfg.pin_unsafe_methods and request.method not in _SAFE_METHODS:
            state.pinned.add(ALL)
        if cfg.pin_seconds > 0:
            state.pinned |= self.cookie_groups(request.COOKIES.get(cfg.pin_cookie))

    def process_response(self, request: Any, response: Any, state: PinState) -> None:
        cfg = router_settings()
        if cfg.pin_seconds <= 0 or not state.carry:
            return
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
        """The groups a pin cookie names (unknown aliases ignored)."""
        if not value:
            return set()
        names = set(value.split(_SEPARATOR))
        if ALL in names:
            return {ALL}
        topo = topology()
        return {topo.primary_of[n] for n in names if n in topo.primary_of}
