"""Causal reads across requests: the positions a client must see, in a signed cookie.

After a request that wrote to a group with replicas, the primary's position is
read (one round trip per group written, on the request's own connection) and
sent to the client in the pin cookie, signed with Django's signing (the
``SECRET_KEY``) and limited to ``MULTIPOOL_CAUSAL_MAX_AGE``. A later request
carrying it reads that group from a replica only once the replica has replayed
the position. Once every replica of the group is known to have it, the
cookie drops the group, and is deleted when nothing is left.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.core import signing
from django.db import connections
from django.db.utils import Error as DatabaseError

from multipool.routing.health import health
from multipool.routing.pins import ALL
from multipool.routing.positions import Position, parse, primary_position, reached
from multipool.routing.settings import RouterSettings
from multipool.routing.topology import topology

__all__ = [
    "cookie_value",
    "merged",
    "positions_written",
    "read_cookie",
    "set_or_clear",
    "still_needed",
    "written_groups",
]

logger = logging.getLogger("multipool.routers")

_SALT = "multipool.causal-reads"

Required = dict[str, Position | None]


def read_cookie(value: str | None, cfg: RouterSettings) -> Required:
    """The required positions a pin cookie carries (nothing for a missing, forged,
    expired or malformed cookie, or one naming unknown groups)."""
    if not value:
        return {}
    try:
        payload = signing.loads(value, salt=_SALT, max_age=timedelta(seconds=cfg.causal_max_age))
        written = payload["p"]
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return {}
    if not isinstance(written, Mapping):
        return {}
    replicas = topology().replicas
    required: Required = {}
    for group, text in written.items():
        if not isinstance(group, str) or not replicas.get(group):
            continue
        try:
            required[group] = None if text is None else parse(str(text))
        except ValueError:
            continue
    return required


def cookie_value(required: Required) -> str:
    payload = {"p": {group: None if p is None else str(p) for group, p in required.items()}}
    return signing.dumps(payload, salt=_SALT, compress=False)


def written_groups(carry: Iterable[str]) -> list[str]:
    """The groups with replicas among those a scope wrote to (:data:`ALL`: every one)."""
    replicas = topology().replicas
    groups = set(carry)
    if ALL in groups:
        groups = set(replicas)
    return sorted(g for g in groups if replicas.get(g))


def positions_written(carry: Iterable[str]) -> Required:
    """The primaries' positions now, for the groups a scope wrote to (one round trip
    per group; ``None`` where it cannot be read)."""
    out: Required = {}
    for group in written_groups(carry):
        try:
            out[group] = primary_position(connections[group])
        except DatabaseError as exc:
            logger.info(
                "multipool: the position of primary %r could not be read (%s); the "
                "client's next reads of it go to the primary",
                group, type(exc).__name__,
            )  # fmt: skip
            out[group] = None
    return out


def still_needed(required: Required) -> Required:
    """``required`` without the groups every replica is known to have replayed."""
    replicas = topology().replicas
    return {
        group: position
        for group, position in required.items()
        if position is None
        or not all(reached(health.position(r)[0], position) for r in replicas.get(group, ()))
    }


def merged(earlier: Required, written: Required) -> Required:
    """The positions to carry on: what is still needed of ``earlier``, and what was
    written now (newer: it covers the earlier position of the same group)."""
    out = still_needed(earlier)
    out.update(written)
    return out


def set_or_clear(response: Any, request: Any, cfg: RouterSettings, required: Required) -> None:
    if not required:
        response.delete_cookie(cfg.pin_cookie, path="/", samesite="Lax")
        return
    response.set_cookie(
        cfg.pin_cookie,
        cookie_value(required),
        max_age=max(1, int(cfg.causal_max_age)),
        path="/",
        secure=request.is_secure(),
        httponly=True,
        samesite="Lax",
    )
