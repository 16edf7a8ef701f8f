"""multipool: real connection pooling for every Django database alias, over TLS,
configured from the environment."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "databases"]


def databases(**overrides: Any) -> dict[str, dict[str, Any]]:
    """Return a Django ``DATABASES`` dict for every alias configured in the environment.

    See :func:`multipool.config.databases`.
    """
    from multipool.config import databases as _databases

    return _databases(**overrides)
