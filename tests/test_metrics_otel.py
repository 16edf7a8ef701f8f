"""OpenTelemetry metrics of the pools against the real servers (both engines).

Each test gives multipool a MeterProvider of its own with an in-memory reader
(``multipool.metrics.otel.set_meter_provider``: the global provider can be set
only once per process), makes requests, collects, and compares what the
reader received with what happened: the pool's own counters, the server's
view of its connections, and the waits and timeouts the test caused.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from django.db import connections
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from multipool.errors import PoolTimeout
from multipool.metrics import otel
from multipool.pools import manager
from tests.conftest import alias_entry, registered_alias
from tests.test_pool_lifecycle import Holder, in_threads, request_cycle, stats

POOL_NAME = "db.client.connection.pool.name"


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """An in-memory reader of a MeterProvider multipool reports to during the test."""
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    otel.set_meter_provider(provider)
    try:
        yield memory
    finally:
        otel.set_meter_provider(None)
        provider.shutdown()


class Collected:
    """One collection of the reader: multipool's data points, by metric name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.points: dict[str, list[Any]] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                if scope.scope.name == "multipool":
                    for metric in scope.metrics:
                        self.points.setdefault(metric.name, []).extend(metric.data.data_points)

    def point(self, name: str, alias: str, **attributes: str) -> Any:
        found = [
            p
            for p in self.points.get(name, [])
            if p.attributes.get(POOL_NAME) == alias
            and all(p.attributes.get(k) == v for k, v in attributes.items())
        ]
        assert len(found) == 1, f"{name} of {alias} {attributes}: {found}"
        return found[0]

    def value(self, name: str, alias: str, **attributes: str) -> float:
        return self.point(name, alias, **attributes).value

    def count(self, name: str, alias: str) -> int:
        """A histogram's count (0 when nothing was recorded yet)."""
        if not any(p.attributes.get(POOL_NAME) == alias for p in self.points.get(name, [])):
            return 0
        return int(self.point(name, alias).count)

    def used_idle(self, alias: str) -> tuple[float, float]:
        count = "db.client.connection.count"
        state = "db.client.connection.state"
        return self.value(count, alias, **{state: "used"}), self.value(
            count, alias, **{state: "idle"}
        )


def poll(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Whether ``check()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


@pytest.fixture
def two_aliases(server: Any) -> Iterator[tuple[Any, Any, str]]:
    """Two aliases on a database of their own (its connections are theirs alone)."""
    database = f"metrics_{secrets.token_hex(4)}"
    server.create_database(database)
    try:
        with ExitStack() as stack:
            made = []
            for name, env in (("busy", {"POOL_SIZE": "2", "MAX_OVERFLOW": "0"}),
                              ("roomy", {"POOL_SIZE": "3", "MAX_OVERFLOW": "2"})):  # fmt: skip
                alias = f"{name}{secrets.token_hex(3)}"
                entry = alias_entry(server, alias, env, database=database)
                made.append(stack.enter_context(registered_alias(alias, entry)))
            yield made[0], made[1], database
    finally:
        server.drop_database(database)


def test_metrics_of_two_aliases_match_what_happened(server, two_aliases, reader):
    busy, roomy, database = two_aliases  # four threads share busy's two connections
    for conn in (busy, roomy):
        request_cycle(conn)
    before = Collected(reader)
    checkouts = {c.alias: stats(c).checkouts for c in (busy, roomy)}
    per_thread, threads = 25, 4

    def requests() -> None:
        for _ in range(per_thread):
            request_cycle(connections[busy.alias])
            request_cycle(connections[roomy.alias], "SELECT 2")

    assert in_threads(threads, requests) == []
    after = Collected(reader)
    for conn in (busy, roomy):
        alias, st = conn.alias, stats(conn)
        # every request used one connection of each alias, once
        used = after.count("db.client.connection.use_time", alias)
        assert used - before.count("db.client.connection.use_time", alias) == per_thread * threads
        assert st.checkouts - checkouts[alias] == per_thread * threads
        # each physical connect and each wait for a connection: one record
        assert after.count("db.client.connection.create_time", alias) == st.connects
        assert after.count("db.client.connection.wait_time", alias) == st.waits
        assert after.used_idle(alias) == (0, st.open)
        assert after.value("db.client.connection.pending_requests", alias) == 0
        assert after.value("db.client.connection.max", alias) == st.pool_size + st.max_overflow
        assert after.value("db.client.connection.idle.max", alias) == st.pool_size
        assert after.value("db.client.connection.idle.min", alias) == 0
        point = after.point("db.client.connection.max", alias)
        assert point.attributes["db.system.name"] == server.flavor
        assert point.attributes["multipool.role"] == "primary"
    assert after.used_idle(busy.alias)[1] <= 2
    # the open connections the metrics report are the ones the server sees
    opened = sum(after.used_idle(c.alias)[1] for c in (busy, roomy))
    assert server.wait_for_connection_count(opened, user="app", database=database) == opened


def test_exhausted_pool_reports_use_wait_and_timeout(make_alias, reader):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_TIMEOUT="10")
    alias = conn.alias
    holder = Holder(alias)
    assert Collected(reader).used_idle(alias) == (1, 0)
    got = threading.Event()

    def wait_for_it() -> None:
        connections[alias].ensure_connection()
        got.set()
        connections[alias].close()
        connections.close_all()

    waiter = threading.Thread(target=wait_for_it)
    started = time.monotonic()
    waiter.start()

    def pending() -> float:
        return Collected(reader).value("db.client.connection.pending_requests", alias)

    assert poll(lambda: pending() == 1)
    waiting = time.monotonic()  # the waiter is in line by now
    assert not got.wait(0.2)  # and stays there while the connection is held
    released = time.monotonic()
    holder.give_back()
    assert got.wait(10)
    served = time.monotonic()
    waiter.join(10)
    after = Collected(reader)
    waited = after.point("db.client.connection.wait_time", alias)
    assert waited.count == 1 == stats(conn).waits
    assert released - waiting <= waited.sum <= served - started
    assert after.value("db.client.connection.pending_requests", alias) == 0
    assert after.used_idle(alias) == (0, 1)


def test_checkout_timeout_is_counted(make_alias, reader):
    conn = make_alias(POOL_SIZE="1", MAX_OVERFLOW="0", POOL_TIMEOUT="0.3")
    alias = conn.alias
    holder = Holder(alias)
    try:
        for _ in range(2):
            with pytest.raises(PoolTimeout):
                conn.ensure_connection()
        collected = Collected(reader)
    finally:
        holder.give_back()
    assert collected.value("db.client.connection.timeouts", alias) == 2 == stats(conn).timeouts
    assert collected.count("db.client.connection.wait_time", alias) == 0  # none was served
    assert collected.used_idle(alias) == (1, 0)


def test_broken_connection_is_counted_as_invalidated(server, make_alias, reader):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="0", POOL_POLL_IDLE="0")
    conn.ensure_connection()
    conn.close()
    assert server.terminate(user="app", database=server.database) >= 1
    assert request_cycle(conn) == [(1,)]
    st = stats(conn)
    assert st.invalidations == 1
    assert Collected(reader).value("multipool.pool.invalidations", conn.alias) == 1


def test_pool_metrics_off_records_nothing(make_alias, reader):
    conn = make_alias(POOL_METRICS="false")
    for _ in range(3):
        request_cycle(conn)
    assert manager.get(conn.alias).recorder is None
    collected = Collected(reader)
    for points in collected.points.values():
        assert all(p.attributes.get(POOL_NAME) != conn.alias for p in points)
    # another alias of the same process still reports
    other = make_alias()
    request_cycle(other)
    assert Collected(reader).count("db.client.connection.use_time", other.alias) >= 1


def test_provider_configured_after_the_pools_were_created(tmp_path):
    """The API's global provider, set after multipool created its pools (a fresh
    process: the global provider can be set once)."""
    script = textwrap.dedent(
        f"""
        import django
        from django.conf import settings
        settings.configure(DATABASES={{"default": {{
            "ENGINE": "multipool.backends.sqlite3", "NAME": {str(tmp_path / "db.sqlite3")!r}}}}})
        django.setup()
        from django.db import connection
        from django.core.signals import request_finished, request_started

        def request():
            request_started.send(sender=None)
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            request_finished.send(sender=None)

        request()  # the pool and its instruments exist before the provider
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        for _ in range(3):
            request()
        for rm in reader.get_metrics_data().resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        value = p.count if hasattr(p, "count") else p.value
                        print(m.name, dict(p.attributes).get("db.client.connection.state", ""),
                              value)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    lines = set(out.stdout.splitlines())
    # the records made after the provider was set, and the pool's state now
    assert "db.client.connection.use_time  3" in lines
    assert "db.client.connection.count idle 1" in lines
    assert "db.client.connection.max  10" in lines
