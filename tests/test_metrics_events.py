"""Pool events as structured log records, against the real servers (both engines).

Each test causes an event and reads the record's ``extra`` fields
(``multipool_event``, ``multipool_alias``, ``multipool_<field>``): a log pipeline
selects and counts events by them. After every test, each event record seen has
exactly the fields :data:`multipool.metrics.events.EVENTS` lists (and
``docs/metrics.md`` shows), and no record holds a password.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError

from multipool.certs import issue_cert, load_ca, write_cert, write_key
from multipool.errors import PoolTimeout
from multipool.metrics.events import EVENTS, fields_of
from multipool.routing.health import ReplicaHealth
from tests.test_cli import assert_no_secrets
from tests.test_pool_lifecycle import Holder, request_cycle


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture, server: Any) -> Iterator[pytest.LogCaptureFixture]:
    """The test's records (multipool's loggers at DEBUG), checked afterwards."""
    caplog.set_level(logging.DEBUG, logger="multipool")
    yield caplog
    checked = caplog.get_records("call")  # (the test's own phase)
    assert any(getattr(r, "multipool_event", None) for r in checked)
    for record in checked:
        assert_no_secrets(record.getMessage(), server.users["app"].password)
        event = getattr(record, "multipool_event", None)
        if event is None:
            continue
        fields = fields_of(record)
        assert_no_secrets(repr(fields), server.users["app"].password)
        assert event in EVENTS, event
        assert set(fields) - {"event", "alias"} == set(EVENTS[event][2]), (event, fields)


def events(records: pytest.LogCaptureFixture, name: str, alias: str) -> list[dict[str, Any]]:
    return [
        {**fields_of(r), "level": r.levelname, "thread": r.threadName}
        for r in records.records
        if getattr(r, "multipool_event", None) == name and r.multipool_alias == alias
    ]


def test_connection_opened_tells_time_system_and_tls(server, make_alias, records):
    conn = make_alias()
    request_cycle(conn)
    opened = events(records, "connection_opened", conn.alias)
    assert opened, "no connection_opened event"
    first = opened[0]
    assert 0 < first["seconds"] < 10
    assert first["db_system"] == server.flavor
    assert first["tls"] in ("TLSv1.2", "TLSv1.3")
    assert first["role"] == "primary" and first["open"] >= 1
    assert first["level"] == "INFO"
    plain = make_alias(user="plain", tls="disable")
    request_cycle(plain)
    assert events(records, "connection_opened", plain.alias)[0]["tls"] == "none"


def test_discarded_connections_say_why(server, make_alias, records):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0", POOL_POLL_IDLE="0")
    request_cycle(conn)
    assert server.terminate(user="app", database=server.database) >= 1
    request_cycle(conn)  # the pool finds the idle connection dead before lending it
    [discarded] = events(records, "connection_invalidated", conn.alias)
    assert discarded["reason"] == "health_check_failed"
    assert discarded["error"].isidentifier()  # the error's class, never its message
    assert discarded["level"] == "INFO"
    # a connection that breaks while a request uses it
    conn.ensure_connection()
    server.terminate(user="app", database=server.database)
    with pytest.raises(OperationalError), conn.cursor() as cursor:
        cursor.execute("SELECT 1")
    conn.close()
    latest = events(records, "connection_invalidated", conn.alias)[-1]
    assert latest["reason"] in ("unusable_after_error", "broken")
    assert latest["error"] is None


def test_checkout_timeout_tells_who_waited_how_long_for_what(make_alias, records):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_TIMEOUT="0.3")
    holder = Holder(conn.alias)
    try:
        with pytest.raises(PoolTimeout):
            conn.ensure_connection()
    finally:
        holder.give_back()
    [timeout] = events(records, "checkout_timeout", conn.alias)
    assert timeout["level"] == "WARNING"
    assert timeout["thread"] == threading.current_thread().name
    assert 0.3 <= timeout["waited"] < 2
    assert timeout["timeout"] == 0.3
    assert (timeout["pool_size"], timeout["max_overflow"]) == (1, 0)
    assert (timeout["in_use"], timeout["waiting"]) == (1, 0)
    message = next(r.getMessage() for r in records.records if getattr(r, "multipool_event", "") ==
                   "checkout_timeout")  # fmt: skip
    assert f"{conn.alias.upper()}_DATABASE_POOL_TIMEOUT" in message


def test_client_certificate_near_expiry(server, make_alias, records, tmp_path: Path):
    ca = load_ca(server.certs.ca_cert, server.certs.ca_key)
    cert, key = issue_cert(ca, "certuser", usage="client", days=10)
    cert_path = write_cert(tmp_path / "client.crt", cert)
    key_path = write_key(tmp_path / "client.key", key)
    conn = make_alias(user="certuser", SSLCERT=str(cert_path), SSLKEY=str(key_path))
    request_cycle(conn)  # the pool is created: it warns once
    [expiring] = events(records, "certificate_expiring", conn.alias)
    assert expiring["level"] == "WARNING"
    assert expiring["setting"] == f"{conn.alias.upper()}_DATABASE_SSLCERT"
    assert dt.datetime.fromisoformat(expiring["expires"]) == cert.not_valid_after_utc
    assert expiring["days_left"] in (9, 10)


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_replica_down_and_up(records):
    now = [0.0]
    health = ReplicaHealth(clock=lambda: now[0])
    health.mark_down("replica1", ConnectionRefusedError("refused"), backoff=1, backoff_max=4)
    now[0] = 1.5
    health.mark_down("replica1", "ServerUnreachable", backoff=1, backoff_max=4, probe=True)
    health.mark_up("replica1")
    down = events(records, "replica_down", "replica1")
    assert [(d["error"], d["backoff"], d["attempt"], d["level"]) for d in down] == [
        ("ConnectionRefusedError", 1.0, 1, "WARNING"),
        ("ServerUnreachable", 2.0, 2, "INFO"),
    ]
    assert events(records, "replica_up", "replica1")[0]["attempts"] == 2
    health.record_lag("replica1", 7.5, 5.0)
    health.record_lag("replica1", 0.5, 5.0)
    [lagging] = events(records, "replica_lagging", "replica1")
    assert (lagging["lag"], lagging["max_lag"]) == (7.5, 5.0)
    assert events(records, "replica_caught_up", "replica1")[0]["lag"] == 0.5
