"""Live pool statistics of this process, per database alias.

Used by ``manage.py multipool_status`` and ``multipool status``; call
:func:`pool_status` from inside a running web worker (an admin-only view, say)
to see that worker's pools. Nothing here prints a password: the rows hold
counters, alias names and vendors only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from multipool.config import ENGINES, engine_vendor
from multipool.errors import ConfigurationError

__all__ = ["pool_status", "render_pool_status", "render_table", "warm_pools"]

#: PoolStats field -> column header of :func:`render_pool_status`
_STATS_COLUMNS = (
    ("pool_size", "SIZE"),
    ("max_overflow", "OVERFLOW MAX"),
    ("open", "OPEN"),
    ("checked_out", "IN USE"),
    ("idle", "IDLE"),
    ("overflow", "OVERFLOW"),
    ("checkouts", "CHECKOUTS"),
    ("connects", "CONNECTS"),
    ("waits", "WAITS"),
    ("timeouts", "TIMEOUTS"),
    ("invalidations", "INVALIDATED"),
    ("pings", "PINGS"),
    ("ping_failures", "PING FAILURES"),
    ("pending", "WAITING NOW"),
)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """A plain-text table: header, dashes, one line per row (``None`` shows as ``-``).

    The one table format of multipool's output: the ``multipool`` command uses it too.
    """
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return indent + "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(cells[0]), line(["-" * w for w in widths])]
    out.extend(line(row) for row in cells[1:])
    return "\n".join(out)


def _engine(entry: Mapping[str, Any]) -> str:
    engine = entry.get("ENGINE")
    return engine if isinstance(engine, str) else ""


def _vendor_label(entry: Mapping[str, Any]) -> str:
    """``postgresql``/``mysql``/``sqlite``, else the engine's last dotted component."""
    engine = _engine(entry)
    return engine_vendor(engine) or engine.rsplit(".", 1)[-1] or "?"


def _state(alias: str, entry: Mapping[str, Any]) -> str:
    """What an alias without a pool in this process shows instead of its numbers."""
    if _engine(entry) not in ENGINES.values():
        return "not pooled"
    from multipool.config import spec_from_settings

    try:
        enabled = spec_from_settings(alias, entry).pool.enabled
    except ConfigurationError:  # the backend refuses it too: no pool will ever come
        return "invalid settings"
    return "no pool yet" if enabled else "pool disabled"


def pool_status(databases: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Live pool statistics of this process, one dict per alias.

    ``databases`` (default ``settings.DATABASES``) lists the aliases; an alias
    without a pool yet (no connection made in this process) has ``state``
    ``"no pool yet"``; one whose settings turn the pool off ``"pool disabled"``
    (read as the configuration reads them: ``"no"``, ``"off"``, ``0`` ...); one
    whose settings cannot be read ``"invalid settings"``; a stock-engine alias
    ``"not pooled"``.
    """
    from multipool.pools import manager

    if databases is None:
        from django.conf import settings

        databases = settings.DATABASES
    stats = manager.stats()
    out = []
    for alias, entry in databases.items():
        row: dict[str, Any] = {"alias": alias, "vendor": _vendor_label(entry)}
        if alias in stats:
            row.update(stats[alias].as_dict(), state="active")
        else:
            row["state"] = _state(alias, entry)
        out.append(row)
    for alias, st in stats.items():  # pools of aliases no longer in the settings
        if alias not in databases:
            out.append({**st.as_dict(), "state": "active"})
    return out


def render_pool_status(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table of :func:`pool_status`."""
    table = []
    for r in rows:
        if r["state"] == "active":
            table.append([r["alias"], r["vendor"], r["state"], *(r[k] for k, _ in _STATS_COLUMNS)])
        else:
            table.append([r["alias"], r["vendor"], r["state"], *("" for _ in _STATS_COLUMNS)])
    return render_table(["ALIAS", "VENDOR", "STATE", *(h for _, h in _STATS_COLUMNS)], table)


def _error_text(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def warm_pools(databases: Mapping[str, Any]) -> dict[str, str]:
    """Check out and return one connection per pooled alias (creates the pools).

    Returns alias -> error text for the aliases that could not connect.
    """
    from django.db import connections

    failures = {}
    for alias, entry in databases.items():
        if _engine(entry) not in ENGINES.values():
            continue
        try:
            connections[alias].ensure_connection()
        except Exception as exc:
            failures[alias] = _error_text(exc)
        finally:
            connections[alias].close()
    return failures
