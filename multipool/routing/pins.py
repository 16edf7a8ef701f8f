"""Read-your-writes: which groups' reads go to their primary in the current scope.

A write pins its group for the rest of the pin scope (a request under
:class:`~multipool.middleware.PinningMiddleware`, or :func:`pin_scope`);
:func:`pin`, :func:`unpin` and :func:`pinned` do it by hand. A scope may also
carry *required positions* (causal reads): a read of such a group goes to a
replica only once it has replayed the position.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from django.db import DEFAULT_DB_ALIAS

from multipool.routing.positions import Position
from multipool.routing.topology import topology

__all__ = [
    "ALL",
    "PinState",
    "current_pin_state",
    "is_pinned",
    "note_write",
    "pin",
    "pin_scope",
    "pinned",
    "pinned_now",
    "required_position",
    "unpin",
]

#: "every group" in a pin set and in the pin cookie
ALL = "*"


class PinState:
    """What the current pin scope knows (one per request under :class:`PinningMiddleware`).

    ``pinned``: groups (primary aliases, or :data:`ALL`) whose reads go to the
    primary for the rest of the scope. ``carry``: the groups written to (or
    pinned with :func:`pin`) in this scope -- what the middleware's cookie
    carries to the next requests. ``required``: group -> the position a
    replica must have replayed before it serves this scope's reads (``None``:
    a position that could not be read; the primary serves them). The object is
    shared by everything running in the scope (threads of ``sync_to_async``,
    tasks created inside it).
    """

    __slots__ = ("carry", "pinned", "required")

    def __init__(self) -> None:
        self.pinned: set[str] = set()
        self.carry: set[str] = set()
        self.required: dict[str, Position | None] = {}

    def __repr__(self) -> str:
        return (
            f"PinState(pinned={sorted(self.pinned)}, carry={sorted(self.carry)}, "
            f"required={ {g: str(p) for g, p in self.required.items()} })"
        )


_scope: ContextVar[PinState | None] = ContextVar("multipool_pin_scope", default=None)
_forced: ContextVar[frozenset[str]] = ContextVar("multipool_pinned", default=frozenset())


def current_pin_state(*, create: bool = False) -> PinState | None:
    """The pin state of the current context (created on demand with ``create``)."""
    state = _scope.get()
    if state is None and create:
        state = PinState()
        _scope.set(state)
    return state


@contextmanager
def pin_scope() -> Iterator[PinState]:
    """A fresh pin scope for the block (what :class:`PinningMiddleware` does per request).

    Use it around units of work outside requests (a task, a batch step) so that
    a write pins only the reads of that unit.
    """
    state = PinState()
    token = _scope.set(state)
    try:
        yield state
    finally:
        _scope.reset(token)


def _groups(aliases: Iterable[str]) -> set[str]:
    names = list(aliases)
    if not names:
        return {ALL}
    topo = topology()
    out = set()
    for alias in names:
        if alias == ALL:
            out.add(ALL)
            continue
        try:
            out.add(topo.group(alias))
        except KeyError:
            raise ValueError(f"multipool: unknown database alias {alias!r}") from None
    return out


def pin(*aliases: str) -> None:
    """Send the reads of these aliases' groups (all groups by default) to their primaries
    for the rest of the current pin scope; :class:`PinningMiddleware` carries the pin
    to the next requests like a write."""
    groups = _groups(aliases)
    state = current_pin_state(create=True)
    assert state is not None
    state.pinned |= groups
    state.carry |= groups


def unpin(*aliases: str) -> None:
    """Undo :func:`pin` and write pins (of these groups; of all by default)."""
    state = current_pin_state()
    if state is None:
        return
    if not aliases:
        state.pinned.clear()
        state.carry.clear()
        return
    groups = _groups(aliases)
    state.pinned -= groups
    state.carry -= groups


@contextmanager
def pinned(*aliases: str) -> Iterator[None]:
    """Within the block, reads of these aliases' groups (all by default) go to the primary."""
    groups = frozenset(_groups(aliases))
    token = _forced.set(_forced.get() | groups)
    try:
        yield
    finally:
        _forced.reset(token)


def is_pinned(alias: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether reads of ``alias``'s group go to its primary right now (pin, write, block)."""
    return pinned_now(topology().group(alias))


def pinned_now(primary: str) -> bool:
    forced = _forced.get()
    if forced and (ALL in forced or primary in forced):
        return True
    state = _scope.get()
    return state is not None and bool(state.pinned) and (
        ALL in state.pinned or primary in state.pinned
    )


def note_write(primary: str) -> None:
    state = current_pin_state(create=True)
    assert state is not None
    state.pinned.add(primary)
    state.carry.add(primary)


def required_position(primary: str) -> tuple[bool, Position | None]:
    """``(needed, position)``: whether the current scope requires a position of
    ``primary``'s group, and which (``None``: unknown, so the primary)."""
    state = _scope.get()
    if state is None or primary not in state.required:
        return False, None
    return True, state.required[primary]
