"""One :class:`~multipool.secrets.material.Material` per alias, for the whole process.

An alias needs one when its certificate files can change (given as paths) or
its login comes from a file or a provider; :func:`material_for` returns
``None`` for the others, which then cost nothing. A changed spec (Django's
test runner switches ``NAME``) gets a new one.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from multipool import forking
from multipool.secrets.material import Material
from multipool.secrets.tls_files import watched_paths

if TYPE_CHECKING:
    from multipool.config.specs import DatabaseSpec

__all__ = ["material_for", "rotation_for", "status"]

_lock = threading.Lock()
#: alias -> (the spec, its material or None)
_materials: dict[str, tuple[DatabaseSpec, Material | None]] = {}


def _needs_material(spec: DatabaseSpec) -> bool:
    tls = spec.tls
    return (
        not spec.secrets.is_empty
        or bool(watched_paths(tls))
        or tls.cert is not None
        or tls.ca not in (None, "system")
    )


def material_for(spec: DatabaseSpec) -> Material | None:
    """The alias's material (created on first use), or ``None`` if it needs none."""
    with _lock:
        known = _materials.get(spec.alias)
        if known is not None and (known[0] is spec or known[0] == spec):
            return known[1]
        material = Material(spec) if _needs_material(spec) else None
        _materials[spec.alias] = (spec, material)
        return material


def rotation_for(spec: DatabaseSpec) -> Material | None:
    """What the alias's pool watches: its material when a certificate file can change."""
    material = material_for(spec)
    return material if material is not None and material.rotates else None


def status(alias: str) -> dict[str, Any] | None:
    """The rotation status of ``alias`` in this process (``None``: nothing to show)."""
    with _lock:
        known = _materials.get(alias)
    material = known[1] if known is not None else None
    return material.status() if material is not None else None


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # a thread that held it did not survive the fork
    for _, material in _materials.values():
        if material is not None:
            material.after_fork()


forking.in_child_after_fork("state", _after_fork)
