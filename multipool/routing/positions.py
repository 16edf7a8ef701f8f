"""Replication positions: where a primary is, and how far a replica has replayed.

* PostgreSQL: a WAL position (LSN, ``16/B374D848``), compared as a number. The
  primary's is the end of the WAL inserted so far (``pg_current_wal_insert_lsn()``);
  a replica's ``pg_last_wal_replay_lsn()``.
* MariaDB: a GTID position (``0-1-100,1-2-7``: domain-server-sequence, one per
  replication domain). Sequence numbers grow within a domain, so a replica has
  replayed a position when, for every domain of it, the replica's sequence is at
  least as high. The primary's is ``@@gtid_binlog_pos``; a replica's
  ``@@gtid_slave_pos``.
* MySQL (Oracle) GTID sets and other vendors: not read (``None``); the router
  then treats a write as a pin for ``MULTIPOOL_CAUSAL_MAX_AGE``.

A position travels in the pin cookie as its text; :func:`parse` reads it back
and refuses anything malformed (the cookie is signed, but stays input).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GtidPosition",
    "Lsn",
    "Position",
    "parse",
    "primary_position",
    "reached",
    "replayed_position",
]

_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
_GTID = re.compile(r"(\d{1,10})-(\d{1,10})-(\d{1,20})")


@dataclass(frozen=True, order=True)
class Lsn:
    """A PostgreSQL WAL position."""

    value: int

    @classmethod
    def parse(cls, text: str) -> Lsn:
        match = _LSN.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a WAL position: {text[:40]!r}")
        high, low = (int(part, 16) for part in match.groups())
        return cls((high << 32) | low)

    def covers(self, other: Position) -> bool:
        return isinstance(other, Lsn) and self.value >= other.value

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class GtidPosition:
    """A MariaDB GTID position: the last sequence number per replication domain."""

    sequences: tuple[tuple[int, int, int], ...]  # (domain, server, sequence), by domain

    @classmethod
    def parse(cls, text: str) -> GtidPosition:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        found: dict[int, tuple[int, int, int]] = {}
        for part in parts:
            match = _GTID.fullmatch(part)
            if match is None:
                raise ValueError(f"not a GTID position: {text[:60]!r}")
            domain, server, sequence = (int(group) for group in match.groups())
            found[domain] = (domain, server, sequence)
        return cls(tuple(found[domain] for domain in sorted(found)))

    def covers(self, other: Position) -> bool:
        if not isinstance(other, GtidPosition):
            return False
        mine = {domain: sequence for domain, _, sequence in self.sequences}
        return all(mine.get(domain, -1) >= sequence for domain, _, sequence in other.sequences)

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{n}" for d, s, n in self.sequences)


Position = Lsn | GtidPosition


def parse(text: str) -> Position:
    """A position from its text (a cookie, a status page); ``ValueError`` if malformed."""
    return Lsn.parse(text) if "/" in text else GtidPosition.parse(text)


def reached(replayed: Position | None, required: Position | None) -> bool:
    """Whether a replica that replayed up to ``replayed`` has ``required``.
    ``required`` None: nothing is required. ``replayed`` None: unknown, so no."""
    if required is None:
        return True
    return replayed is not None and replayed.covers(required)


def _is_mariadb(connection: Any) -> bool:
    return connection.vendor == "mysql" and bool(getattr(connection, "mysql_is_mariadb", False))


def _one_value(connection: Any, sql: str) -> Any:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        row = cursor.fetchone()
    return None if row is None else row[0]


#: the insert position, and what it takes to step back over a page header
_PG_PRIMARY_SQL = (
    "SELECT pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::int, "
    "pg_size_bytes(current_setting('wal_segment_size'))"
)
#: PostgreSQL's WAL page headers: the first page of a segment has the long one
_SHORT_HEADER, _LONG_HEADER = 24, 40


def _end_of_inserted_wal(lsn: Lsn, block: int, segment: int) -> Lsn:
    """The insert position sits past a page header when the last record ended on the
    page boundary; a replica's replay position stops at the boundary."""
    if lsn.value % segment == _LONG_HEADER:
        return Lsn(lsn.value - _LONG_HEADER)
    if lsn.value % block == _SHORT_HEADER:
        return Lsn(lsn.value - _SHORT_HEADER)
    return lsn


def primary_position(connection: Any) -> Position | None:
    """Where the primary behind ``connection`` is now (one round trip), or None.

    PostgreSQL: the end of the WAL inserted so far, which covers every commit
    made, even with ``synchronous_commit = off`` (the write position may not).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_PG_PRIMARY_SQL)
            text, block, segment = cursor.fetchone()
        return _end_of_inserted_wal(Lsn.parse(str(text)), int(block), int(segment))
    if _is_mariadb(connection):
        value = _one_value(connection, "SELECT @@GLOBAL.gtid_binlog_pos")
        return None if value is None else GtidPosition.parse(str(value))
    return None


def replayed_position(connection: Any) -> Position | None:
    """How far the replica behind ``connection`` has replayed (one round trip), or None
    (unknown, or not a replica)."""
    if connection.vendor == "postgresql":
        value = _one_value(connection, "SELECT pg_last_wal_replay_lsn()::text")
        return None if value is None else Lsn.parse(str(value))
    if _is_mariadb(connection):
        value = _one_value(connection, "SELECT @@GLOBAL.gtid_slave_pos")
        return None if value is None else GtidPosition.parse(str(value))
    return None
