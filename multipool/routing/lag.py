"""How far a replica is behind its primary."""

from __future__ import annotations

from typing import Any

__all__ = ["replica_lag"]

_PG_LAG_SQL = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


def replica_lag(connection: Any) -> float | None:
    """Seconds a PostgreSQL replica is behind (0 when caught up or not a replica;
    ``None`` when unknown). Other vendors: ``None``. One round trip."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(_PG_LAG_SQL)
        row = cursor.fetchone()
    if row is None or row[0] is None:
        return None
    return max(0.0, float(row[0]))
