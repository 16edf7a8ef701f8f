"""Variables that look like multipool's and are not: misspellings and orphans.

A misspelled variable (``DATABASE_SSL_MODE`` for ``DATABASE_SSLMODE``) is
otherwise ignored without a word, and so is the URL of an alias nobody
declared (``LEGACY_DATABASE_URL`` without ``DATABASE_ALIASES=legacy``). Every
variable of the source with a multipool prefix -- ``DATABASE_``, and
``<ALIAS>_DATABASE_`` -- is compared with the keys of the table that generates
the configuration reference; the system checks report what does not fit
(``multipool.W006``, ``W007``; errors ``E007``, ``E008`` with
``DATABASE_STRICT=true``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from multipool.config.keys import ALIAS_KEYS, ENV_KEYS, env_prefix

__all__ = ["Stray", "stray_variables"]

#: a name with a multipool prefix: ``DATABASE_X`` or ``SOMETHING_DATABASE_X``
_CANDIDATE = re.compile(r"(?:[A-Z][A-Z0-9_]*_)?DATABASE_[A-Z0-9_]+")
_SUFFIXES = frozenset(key.suffix for key in ENV_KEYS)


@dataclass(frozen=True)
class Stray:
    """One variable multipool does not read.

    ``kind``: ``unknown`` (a declared alias's prefix, an unknown key; ``suggestion``
    is the closest known variable) or ``undeclared`` (a known key of an alias that
    ``DATABASE_ALIASES`` and every ``*_DATABASE_REPLICAS`` leave out).
    """

    variable: str
    alias: str
    kind: str
    suggestion: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stray_variables(names: Iterable[str], aliases: Iterable[str]) -> list[Stray]:
    """The variables among ``names`` that look like multipool's and are not read,
    given the declared ``aliases`` (``default``, primaries and replicas)."""
    declared = list(aliases)
    known = _known_names(declared)
    # the longest prefix first: an alias may itself end in "_database"
    prefixes = sorted(((env_prefix(a), a) for a in declared), key=lambda p: -len(p[0]))
    found = []
    for name in sorted(set(names)):
        if name in known or not _CANDIDATE.fullmatch(name):
            continue
        owner = next(((alias, p) for p, alias in prefixes if name.startswith(p)), None)
        if owner is not None:
            alias, prefix = owner
            found.append(Stray(name, alias, "unknown", _closest(name, prefix, known)))
            continue
        alias, _, suffix = name.rpartition("_DATABASE_")
        if alias and suffix in _SUFFIXES:
            found.append(Stray(name, alias.lower(), "undeclared"))
    return found


def _closest(name: str, prefix: str, known: set[str]) -> str | None:
    """The known variable of the same prefix whose key is closest to ``name``'s
    (the keys are compared without the prefix, which every candidate shares)."""
    keys = {other[len(prefix):]: other for other in known if other.startswith(prefix)}
    close = difflib.get_close_matches(name[len(prefix):], sorted(keys), n=1, cutoff=0.6)
    return keys[close[0]] if close else None


def _known_names(aliases: list[str]) -> set[str]:
    known = {key.name() for key in ENV_KEYS if key.scope == "global"}
    for alias in aliases:
        known |= {key.name(alias) for key in ALIAS_KEYS}
    return known
