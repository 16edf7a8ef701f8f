"""Live pool statistics of this process, per database alias.

Used by ``manage.py multipool_status`` and ``multipool status``; call
:func:`pool_status` from inside a running web worker (an admin-only view, say)
to see that worker's pools. Nothing here prints a password: the rows hold
counters, alias names and vendors, and under ``rotation`` the fingerprints and
dates of the certificates and credentials the alias's connections use
(:meth:`multipool.secrets.material.Material.status`).
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
    ("retired", "RETIRED"),
    ("pending", "WAITING NOW"),
)

#: the rotation table's columns
_ROTATION_HEADERS = (
    "ALIAS",
    "CLIENT CERT (SHA-256)",
    "CERT EXPIRES",
    "CA EXPIRES",
    "FILES ROTATED",
    "CREDENTIALS",
    "CREDENTIALS AGE",
    "CREDENTIALS ROTATED",
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
    from multipool.secrets import status as rotation_status

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
    for row in out:
        row["rotation"] = rotation_status(row["alias"])
    return out


def render_pool_status(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table of :func:`pool_status`."""
    table = []
    for r in rows:
        if r["state"] == "active":
            table.append([r["alias"], r["vendor"], r["state"], *(r[k] for k, _ in _STATS_COLUMNS)])
        else:
            table.append([r["alias"], r["vendor"], r["state"], *("" for _ in _STATS_COLUMNS)])
    text = render_table(["ALIAS", "VENDOR", "STATE", *(h for _, h in _STATS_COLUMNS)], table)
    rotating = [r for r in rows if r.get("rotation")]
    if rotating:
        text += "\n\ncertificates and credentials of new connections:\n"
        text += render_table(_ROTATION_HEADERS, [_rotation_row(r) for r in rotating])
        for r in rotating:
            for problem in _rotation_problems(r["rotation"]):
                text += f"\n{r['alias']}: {problem}"
    return text


def _when(iso: str | None) -> str | None:
    """An ISO time as ``YYYY-MM-DD HH:MM`` (UTC)."""
    return None if iso is None else iso[:16].replace("T", " ")


def _age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _rotation_row(row: Mapping[str, Any]) -> list[Any]:
    rotation = row["rotation"]
    cert, ca, login = rotation.get("certificate"), rotation.get("ca"), rotation.get("credentials")
    return [
        row["alias"],
        cert["fingerprint"][:16] if cert else None,
        _when(cert["expires"]) if cert else None,
        _when(ca["expires"]) if ca else None,
        _when(rotation.get("tls_rotated_at")) or ("never" if cert or ca else None),
        login["source"] if login else None,
        _age(login["age_seconds"]) if login else None,
        (_when(login["rotated_at"]) or "never") if login else None,
    ]


def _rotation_problems(rotation: Mapping[str, Any]) -> list[str]:
    found = []
    if rotation.get("tls_problem"):
        found.append(
            f"new certificate files not used (since {_when(rotation['tls_problem_since'])}): "
            f"{rotation['tls_problem']}"
        )
    login = rotation.get("credentials")
    if login and login.get("problem"):
        found.append(f"credentials ({login['source']}): {login['problem']}")
    return found


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
