"""PrimaryReplicaRouter, pinning and replica health against real servers.

PostgreSQL: a real streaming replica of the primary (``postgres_replica``);
which server answered is told by ``pg_is_in_recovery()``. MySQL/MariaDB: the
"replica" alias reaches the same server through a TCP proxy the test can cut,
as the ``plain`` user (``CURRENT_USER()`` tells which alias answered).
Aliases are configured from environment variables, as users do.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished, request_started
from django.db import connections, router, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.urls import path

from multipool.config import databases
from multipool.errors import ConfigurationError
from multipool.health import DOWN, LAGGING, UP, health
from multipool.middleware import PinningMiddleware
from multipool.pools import manager
from multipool.routers import (
    ALL,
    PrimaryReplicaRouter,
    build_topology,
    current_pin_state,
    is_pinned,
    pin,
    pin_scope,
    pinned,
    router_settings,
    topology,
    unpin,
)
from multipool.testing.servers import free_port
from tests.conftest import patched_environ, registered_alias
from tests.project.testapp.models import Item

ROUTER = "multipool.routers.PrimaryReplicaRouter"

_counter = iter(range(1, 1_000_000))
_counter_lock = threading.Lock()


def next_alias(prefix: str) -> str:
    with _counter_lock:
        return f"{prefix}{next(_counter)}"


# -- helpers -------------------------------------------------------------------------------


class Tune:
    """``tune.MULTIPOOL_X = value``: an ``override_settings`` undone after the test."""

    def __init__(self, stack: ExitStack) -> None:
        object.__setattr__(self, "_stack", stack)

    def __setattr__(self, name: str, value: Any) -> None:
        self._stack.enter_context(override_settings(**{name: value}))


@pytest.fixture
def tune() -> Iterator[Tune]:
    with ExitStack() as stack:
        yield Tune(stack)


@pytest.fixture(autouse=True)
def _isolated_pins() -> Iterator[None]:
    """No pin made by a test outlives it (pytest runs every test in one context)."""
    with pin_scope():
        yield


@pytest.fixture
def routing() -> Iterator[None]:
    """The router installed, with a short back-off; health forgotten afterwards."""
    health.reset()
    with override_settings(
        DATABASE_ROUTERS=[ROUTER],
        MULTIPOOL_REPLICA_BACKOFF=0.5,
        MULTIPOOL_REPLICA_BACKOFF_MAX=2.0,
    ):
        yield
    health.reset()


def ensure_item_table(alias: str) -> None:
    conn = connections[alias]
    with conn.schema_editor() as editor:
        if Item._meta.db_table not in conn.introspection.table_names():
            editor.create_model(Item)
    conn.close()


@pytest.fixture
def make_group() -> Iterator[Callable[..., tuple[str, list[str]]]]:
    """``make_group(primary_url, [replica_url, ...], **env)`` -> (primary, replicas).

    The group is configured the way a user does it: ``<P>_DATABASE_URL``,
    ``<P>_DATABASE_REPLICAS=r1,r2``, ``<R>_DATABASE_URL``, through
    ``multipool.databases()``.
    """
    stack = ExitStack()

    def make(
        primary_url: str,
        replica_urls: list[str],
        *,
        prefix: str = "grp",
        table: bool = True,
        **env: str,
    ) -> tuple[str, list[str]]:
        primary = next_alias(f"{prefix}p")
        replicas = [next_alias(f"{prefix}r") for _ in replica_urls]
        environ = {
            f"{primary.upper()}_DATABASE_URL": primary_url,
            f"{primary.upper()}_DATABASE_REPLICAS": ",".join(replicas),
        }
        for alias, url in zip(replicas, replica_urls, strict=True):
            environ[f"{alias.upper()}_DATABASE_URL"] = url
        for key, value in env.items():
            environ[f"{primary.upper()}_DATABASE_{key}"] = value
        with patched_environ(environ):
            dbs = databases(DATABASE_ALIASES=primary)
        for alias in (primary, *replicas):
            stack.enter_context(registered_alias(alias, dbs[alias]))
        if table:
            ensure_item_table(primary)
        return primary, replicas

    yield make
    stack.close()


@contextmanager
def web_request() -> Iterator[None]:
    """What a WSGI server does around one request (no middleware): signals + a pin scope."""
    request_started.send(sender=None)
    try:
        with pin_scope():
            yield
    finally:
        request_finished.send(sender=None)  # closes the connections (CONN_MAX_AGE=0)


def pg_read() -> tuple[str, bool]:
    """Read through the ORM's read routing: (alias used, answered by a standby)."""
    rows = list(Item.objects.raw("SELECT 1 AS id, pg_is_in_recovery() AS standby"))
    return rows[0]._state.db, bool(rows[0].standby)


def mysql_read() -> tuple[str, str]:
    rows = list(Item.objects.raw("SELECT 1 AS id, CURRENT_USER() AS who"))
    return rows[0]._state.db, str(rows[0].who).split("@")[0]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def marker(label: str) -> str:
    return f"{label}-{os.getpid()}-{time.monotonic_ns()}"


@pytest.fixture
def pg_group(
    postgres_server: Any, postgres_replica: Any, make_group: Any, routing: None
) -> Iterator[tuple[str, str]]:
    """A group (primary, replica) over the real PostgreSQL primary and its replica,
    with the test app routed to it."""
    primary, (replica,) = make_group(
        postgres_server.url(), [postgres_replica.url()], prefix="pg", POOL_SIZE="3"
    )
    postgres_replica.wait_for_replay()  # the Item table exists on the replica too
    with override_settings(MULTIPOOL_ROUTES={"testapp": primary}):
        yield primary, replica


# -- the test harness's replica ---------------------------------------------------------------


def test_replica_streams_the_primarys_writes(postgres_server, postgres_replica):
    assert postgres_replica.in_recovery()
    assert postgres_replica.port != postgres_server.port
    assert postgres_replica.certs.ca_cert == postgres_server.certs.ca_cert
    name = f"streamed_{os.getpid()}_{time.monotonic_ns()}"
    postgres_server.query(f"CREATE TABLE {name} (v text)")
    try:
        postgres_server.query(f"INSERT INTO {name} VALUES ('hello')")
        waited = postgres_replica.wait_for_replay(timeout=10)
        assert postgres_replica.query(f"SELECT v FROM {name}") == [("hello",)]
        assert waited < 10
        # WAL the primary writes in the background (checkpoints, vacuum) may be
        # received and not yet replayed for a moment: the time-based lag is then
        # briefly above 0 although every commit so far was replayed.
        lag = postgres_replica.lag()
        assert lag is not None and lag < 1.0
    finally:
        postgres_server.query(f"DROP TABLE {name}")
    slots = postgres_server.query(
        "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (postgres_replica.slot,)
    )
    assert slots == [(True,)]


def test_replica_speaks_tls_with_the_primarys_users(postgres_replica):
    import psycopg

    for user, kw in (("app", {}), ("certuser", {"client_cert": True})):
        params = postgres_replica.connect_params(user, **kw)
        with psycopg.connect(**params, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT ssl, pg_is_in_recovery() FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
        assert row == (True, True)


# -- reads, writes, read-your-writes ---------------------------------------------------------


def test_reads_go_to_the_replica_and_writes_to_the_primary(pg_group, postgres_replica):
    primary, replica = pg_group
    with web_request():
        assert pg_read() == (replica, True)
        assert router.db_for_write(Item) == primary
    name = marker("rw")
    with web_request():
        item = Item.objects.create(name=name)
        assert item._state.db == primary
    started = time.monotonic()
    postgres_replica.wait_for_replay()
    with web_request():
        found = Item.objects.filter(name=name).first()
        assert found is not None and found._state.db == replica
    # The bounded wait above is the replication lag of this write (reported in the summary).
    assert time.monotonic() - started < 10


def test_a_write_pins_later_reads_of_the_request_to_the_primary(pg_group, postgres_replica):
    primary, replica = pg_group
    postgres_replica.pause_replay()  # whatever we write now, the replica will not show
    try:
        name = marker("pin")
        with web_request():
            assert pg_read() == (replica, True)
            Item.objects.create(name=name)
            assert is_pinned(primary)
            assert pg_read() == (primary, False)
            # read-your-writes, although the replica is behind
            assert Item.objects.filter(name=name).count() == 1
        with web_request():  # the next request starts unpinned
            assert pg_read() == (replica, True)
            assert Item.objects.filter(name=name).count() == 0
    finally:
        postgres_replica.resume_replay()
    postgres_replica.wait_for_replay()


def test_explicit_pins_and_atomic_blocks(pg_group):
    primary, replica = pg_group
    with web_request():
        with pinned():
            assert pg_read() == (primary, False)
        assert pg_read() == (replica, True)
        with pinned(replica):  # any alias of the group names the group
            assert pg_read()[0] == primary
        pin(primary)
        assert pg_read()[0] == primary
        unpin()
        assert pg_read()[0] == replica
        with transaction.atomic(using=primary):
            assert pg_read() == (primary, False)
        assert pg_read()[0] == replica
        pin()  # every group
        assert current_pin_state().pinned == {ALL}
        assert pg_read()[0] == primary


def test_pins_are_per_thread_and_per_task(pg_group):
    primary, replica = pg_group
    seen: list[str] = []

    def other_thread() -> None:
        try:
            seen.append(router.db_for_read(Item))
        finally:
            connections.close_all()

    with web_request():
        pin()
        assert router.db_for_read(Item) == primary
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert seen == [replica]

    async def task(do_pin: bool) -> tuple[bool, str]:
        if do_pin:
            pin()
        await asyncio.sleep(0.01)
        # from the event loop: no connection is opened, the health record decides
        return is_pinned(primary), router.db_for_read(Item)

    async def main(shared: bool) -> list[tuple[bool, str]]:
        if not shared:
            return list(await asyncio.gather(task(True), task(False)))
        with pin_scope():  # one scope (a request): its tasks share it
            return list(await asyncio.gather(task(True), task(False)))

    # no scope: each task gets its own on its first pin
    fresh = contextvars.Context()
    assert fresh.run(asyncio.run, main(False)) == [(True, primary), (False, replica)]
    assert asyncio.run(main(True)) == [(True, primary), (True, primary)]


def test_write_pin_made_in_sync_to_async_reaches_the_async_caller(pg_group):
    primary, _ = pg_group

    def write() -> None:
        Item.objects.create(name=marker("async"))
        connections.close_all()

    async def request() -> tuple[bool, bool]:
        with pin_scope():
            before = is_pinned(primary)
            await sync_to_async(write)()
            return before, is_pinned(primary)

    assert asyncio.run(request()) == (False, True)


# -- replica health -------------------------------------------------------------------------


def test_stopped_replica_reads_fall_back_to_the_primary_with_no_failed_request(
    pg_group, postgres_replica, tune
):
    primary, replica = pg_group
    tune.MULTIPOOL_REPLICA_BACKOFF = 1.0
    tune.MULTIPOOL_REPLICA_BACKOFF_MAX = 2.0
    for _ in range(3):  # warm: the replica's pool holds an idle connection
        with web_request():
            assert pg_read() == (replica, True)
    assert manager.stats(replica)[replica].idle >= 1
    postgres_replica.stop()
    try:
        answers = []
        for _ in range(5):
            with web_request():  # any exception here is a failed request
                answers.append(pg_read())
        assert answers == [(primary, False)] * 5
        status = health.status(replica)[replica]
        assert status.state == DOWN and status.failures == 1
        assert status.last_error == "ServerUnreachable"  # an OperationalError: refused
        remaining, noted = status.down_for, time.monotonic()
        assert 0.5 < remaining <= 1.0
    finally:
        postgres_replica.start()
    with web_request():  # back-off not over: the replica is not tried yet
        assert health.status(replica)[replica].down_for > 0
        assert pg_read() == (primary, False)

    def replica_used() -> bool:
        with web_request():
            return pg_read() == (replica, True)

    wait_until(replica_used, timeout=10)
    assert time.monotonic() - noted >= remaining
    assert health.status(replica)[replica].state == UP
    postgres_replica.wait_for_replay()


def test_connection_failures_back_off_exponentially_and_probe_once(pg_group, tune):
    """A replica that stays unreachable is probed once per back-off period, not per read."""
    primary, replica = pg_group
    tune.MULTIPOOL_REPLICA_BACKOFF = 0.2
    tune.MULTIPOOL_REPLICA_BACKOFF_MAX = 0.4
    dead = next_alias("pgdead")
    entry = dict(connections.settings[replica])  # the replica's settings, a port nobody uses
    entry.update(PORT=free_port(), MULTIPOOL={"replica_of": primary, "replicas": []})
    with registered_alias(dead, entry):
        assert set(topology().replicas[primary]) == {replica, dead}
        started = time.monotonic()
        for _ in range(40):
            with web_request():
                assert router.db_for_read(Item) in (primary, replica)
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        status = health.status(dead)[dead]
        # back-offs 0.2, 0.4, 0.4, ...: about 1 + elapsed/0.4 probes, not 40
        assert 2 <= status.failures <= 2 + elapsed / 0.4
        assert status.state == DOWN
    assert topology().replicas[primary] == (replica,)


def test_lagging_replica_is_skipped_until_it_catches_up(pg_group, postgres_replica, tune):
    primary, replica = pg_group
    tune.MULTIPOOL_REPLICA_MAX_LAG = 0.3
    tune.MULTIPOOL_REPLICA_LAG_INTERVAL = 0.05
    with web_request():
        Item.objects.create(name=marker("lag-base"))
    postgres_replica.wait_for_replay()
    with web_request():
        assert pg_read() == (replica, True)
    postgres_replica.pause_replay()
    try:
        with web_request():
            Item.objects.create(name=marker("lag"))
        wait_until(lambda: (postgres_replica.lag() or 0) > 0.4, timeout=10)

        def routed_to_primary() -> bool:
            time.sleep(0.06)
            with web_request():
                return pg_read() == (primary, False)

        wait_until(routed_to_primary, timeout=5)
        status = health.status(replica)[replica]
        assert status.state == LAGGING and status.lag is not None and status.lag > 0.3
    finally:
        postgres_replica.resume_replay()
    postgres_replica.wait_for_replay()

    def routed_to_replica() -> bool:
        time.sleep(0.06)
        with web_request():
            return pg_read() == (replica, True)

    wait_until(routed_to_replica, timeout=5)
    assert health.status(replica)[replica].state == UP


# -- strategies -------------------------------------------------------------------------------


@pytest.fixture
def two_replica_group(postgres_server, postgres_replica, make_group, routing):
    primary, replicas = make_group(
        postgres_server.url(), [postgres_replica.url(), postgres_replica.url()], prefix="rr"
    )
    postgres_replica.wait_for_replay()
    with override_settings(MULTIPOOL_ROUTES={"testapp": primary}):
        yield primary, replicas


def reads_per_request(n: int) -> list[str]:
    out = []
    for _ in range(n):
        with web_request():
            out.append(pg_read()[0])
    return out


def test_round_robin_alternates_between_requests_and_sticks_within_one(two_replica_group):
    _, (r1, r2) = two_replica_group
    seen = reads_per_request(6)
    assert set(seen) == {r1, r2}
    assert all(a != b for a, b in itertools.pairwise(seen))
    with web_request():  # affinity: the connection this request holds is reused
        first = pg_read()[0]
        assert [pg_read()[0] for _ in range(4)] == [first] * 4


def test_random_strategy_uses_every_replica(two_replica_group, tune):
    _, (r1, r2) = two_replica_group
    tune.MULTIPOOL_READ_STRATEGY = "random"
    assert set(reads_per_request(40)) == {r1, r2}


def test_least_busy_avoids_the_replica_with_checked_out_connections(two_replica_group, tune):
    _, (r1, r2) = two_replica_group
    tune.MULTIPOOL_READ_STRATEGY = "least-busy"
    reads_per_request(2)  # both pools exist
    holding, release = threading.Event(), threading.Event()

    def hold(alias: str) -> None:
        conns = [connections[alias]]
        conns[0].ensure_connection()
        holding.set()
        release.wait(10)
        connections.close_all()

    thread = threading.Thread(target=hold, args=(r1,))
    thread.start()
    try:
        assert holding.wait(10)
        assert manager.stats(r1)[r1].checked_out == 1
        assert reads_per_request(6) == [r2] * 6
    finally:
        release.set()
        thread.join()
    assert set(reads_per_request(6)) == {r1, r2}


# -- several groups, relations, migrations ---------------------------------------------------


def test_several_groups_route_independently(postgres_server, postgres_replica, make_group, routing):
    main, (main_r,) = make_group(postgres_server.url(), [postgres_replica.url()], prefix="main")
    legacy, (leg_r1, leg_r2) = make_group(
        postgres_server.url("plain"),
        [postgres_replica.url("plain"), postgres_replica.url("plain")],
        prefix="leg",
        table=False,
    )
    routes = {"testapp": main, "auth": legacy, "contenttypes.ContentType": legacy}
    with override_settings(MULTIPOOL_ROUTES=routes):
        topo = topology()
        assert topo.replicas[main] == (main_r,)
        assert topo.replicas[legacy] == (leg_r1, leg_r2)
        with web_request():
            assert router.db_for_read(Item) == main_r
            assert router.db_for_read(User) in (leg_r1, leg_r2)
            assert router.db_for_read(ContentType) in (leg_r1, leg_r2)
            assert router.db_for_write(User) == legacy
            # the write pinned the legacy group only
            assert router.db_for_read(User) == legacy
            assert router.db_for_read(Item) == main_r
            # an object's database decides for it and for its related lookups
            obj = Item(name="x")
            obj._state.db = leg_r2
            assert router.db_for_write(Item, instance=obj) == legacy
            item = Item(name="y")
            item._state.db = main_r
            assert router.db_for_read(User, instance=item) == main_r
        with web_request():
            assert router.db_for_read(User) in (leg_r1, leg_r2)
        # unrouted models belong to the default group (no replicas here)
        with override_settings(MULTIPOOL_ROUTES={"auth": legacy}):
            assert router.db_for_read(Item) == "default"
            assert router.db_for_write(Item) == "default"

        r = PrimaryReplicaRouter()
        item_main, item_rep, user = Item(), Item(), User()
        item_main._state.db, item_rep._state.db, user._state.db = main, main_r, leg_r1
        assert r.allow_relation(item_main, item_rep) is True
        assert r.allow_relation(item_main, user) is False
        assert r.allow_relation(Item(), item_rep) is True  # unsaved: its route's group
        assert router.allow_relation(item_main, item_rep) is True

        assert r.allow_migrate(main, "testapp", "item") is True
        assert r.allow_migrate(main_r, "testapp", "item") is False
        assert r.allow_migrate(legacy, "testapp", "item") is False
        assert r.allow_migrate(legacy, "auth", "user") is True
        assert r.allow_migrate(leg_r1, "auth", "user") is False
        assert r.allow_migrate(legacy, "contenttypes", "contenttype") is True
        assert r.allow_migrate("default", "contenttypes", "contenttype") is False
        assert r.allow_migrate("default", "contenttypes") is True  # RunPython etc.: the app's
        assert r.allow_migrate("default", "sessions") is True
        assert r.allow_migrate("default", "auth", model=User) is False
        assert router.allow_migrate_model(main_r, Item) is False
        assert router.allow_migrate_model(main, Item) is True


def test_default_group_and_topology_follows_settings_changes(routing):
    """The ``default`` group (SQLite here): unrouted models read from its replica."""
    default = connections.settings["default"]
    replica = next_alias("sqlr")
    entry = {k: v for k, v in default.items() if k != "MULTIPOOL"}
    entry["MULTIPOOL"] = {"replica_of": "default", "replicas": []}
    assert topology().replicas["default"] == ()
    assert router.db_for_read(ContentType) == "default"
    with registered_alias(replica, entry):
        # ``replica_of`` on the replica alone is enough
        assert topology().replicas["default"] == (replica,)
        with web_request():
            assert router.db_for_read(ContentType) == replica
            with connections[router.db_for_read(ContentType)].cursor() as cursor:
                cursor.execute("SELECT 1")
            assert router.db_for_write(ContentType) == "default"
            assert router.db_for_read(ContentType) == "default"
        assert router.allow_migrate(replica, "contenttypes") is False
        assert router.allow_migrate("default", "contenttypes") is True
        # Edit the topology in place: the router follows.
        connections.settings[replica]["MULTIPOOL"] = {"replica_of": None, "replicas": []}
        assert topology().replicas["default"] == ()
        assert topology().replicas[replica] == ()
        assert router.db_for_read(ContentType) == "default"
        assert router.allow_migrate(replica, "contenttypes") is False  # not its route
        connections.settings[replica]["MULTIPOOL"] = {"replica_of": "default", "replicas": []}
        assert router.db_for_read(ContentType) == replica
    # the alias is gone from DATABASES: so is the replica
    assert topology().replicas["default"] == ()
    assert router.db_for_read(ContentType) == "default"


def test_configuration_mistakes_are_reported_clearly(routing):
    with pytest.raises(ConfigurationError, match="'ghost', which is not in DATABASES"):
        build_topology({"default": {"MULTIPOOL": {"replicas": ["ghost"]}}})
    with pytest.raises(ConfigurationError, match="is already a replica of"):
        build_topology(
            {
                "default": {"MULTIPOOL": {"replicas": ["r"]}},
                "other": {"MULTIPOOL": {"replicas": ["r"]}},
                "r": {},
            }
        )
    with pytest.raises(ConfigurationError, match=r"cannot have replicas|is itself a replica"):
        build_topology(
            {
                "default": {"MULTIPOOL": {"replicas": ["r"]}},
                "r": {"MULTIPOOL": {"replicas": ["x"]}},
                "x": {},
            }
        )
    with pytest.raises(ConfigurationError, match="'ghost', which is not in DATABASES"):
        build_topology({"default": {}, "r": {"MULTIPOOL": {"replica_of": "ghost"}}})
    dbs = {"default": {"MULTIPOOL": {"replicas": ["r"]}}, "r": {}}
    with pytest.raises(ConfigurationError, match="is a replica of 'default'"):
        build_topology(dbs, {"billing.Invoice": "r"})
    with pytest.raises(ConfigurationError, match="not in DATABASES"):
        build_topology(dbs, {"billing": "legacy"})
    with pytest.raises(ImproperlyConfigured, match=r"app_label\.ModelName"):
        build_topology(dbs, {"a.b.c": "default"})
    topo = build_topology(dbs, {"billing.Invoice": "default"})
    assert topo.route("billing", "invoice") == "default"
    assert topo.primary_of == {"default": "default", "r": "default"}
    # settings are checked when Django creates the router and the middleware (start-up)
    with override_settings(MULTIPOOL_READ_STRATEGY="fastest"), pytest.raises(
        ImproperlyConfigured, match="round-robin, random, least-busy"
    ):
        PrimaryReplicaRouter()
    with override_settings(MULTIPOOL_REPLICA_BACKOFF=-1), pytest.raises(
        ImproperlyConfigured, match="MULTIPOOL_REPLICA_BACKOFF"
    ):
        PinningMiddleware(lambda request: HttpResponse())
    with override_settings(MULTIPOOL_PIN_COOKIE="a b"), pytest.raises(
        ImproperlyConfigured, match="cookie name"
    ):
        router_settings()
    with override_settings(MULTIPOOL_READ_STRATEGY="LEAST_BUSY", MULTIPOOL_REPLICA_MAX_LAG=3):
        assert router_settings().strategy == "least-busy"
        assert router_settings().max_lag == 3.0


# -- middleware ---------------------------------------------------------------------------------


def _view_reads(request: HttpRequest) -> JsonResponse:
    alias, standby = pg_read()
    return JsonResponse({"db": alias, "standby": standby})


def _view_writes(request: HttpRequest) -> JsonResponse:
    item = Item.objects.create(name=request.GET.get("name") or request.POST.get("name", "x"))
    alias, standby = pg_read()
    return JsonResponse({"id": item.pk, "db": alias, "standby": standby})


def _view_count(request: HttpRequest) -> JsonResponse:
    count = Item.objects.filter(name=request.GET["name"]).count()
    return JsonResponse({"count": count})


urlpatterns = [
    path("read/", _view_reads),
    path("write/", _view_writes),
    path("count/", _view_count),
]


@pytest.fixture
def site(pg_group):
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["multipool.middleware.PinningMiddleware"],
        MULTIPOOL_PIN_SECONDS=15,
    ):
        yield pg_group


def served(response: HttpResponse) -> dict[str, Any]:
    """The client does not close connections between requests; a server does."""
    assert response.status_code == 200
    request_finished.send(sender=None)
    return json.loads(response.content)


def test_middleware_carries_the_pin_to_the_next_requests_with_a_cookie(site, postgres_replica):
    primary, replica = site
    client = Client()
    assert served(client.get("/read/")) == {"db": replica, "standby": True}
    postgres_replica.pause_replay()
    try:
        name = marker("cookie")
        body = served(client.post("/write/", {"name": name}))
        assert body["db"] == primary  # pinned by the POST itself and by the write
        cookie = client.cookies["multipool_pin"]
        assert cookie.value == primary
        assert cookie["max-age"] == 15 and cookie["httponly"] and cookie["samesite"] == "Lax"
        # the redirect after the POST reads its write, although the replica is behind
        assert served(client.get("/count/", {"name": name})) == {"count": 1}
        assert served(client.get("/read/"))["db"] == primary
        # another client (no cookie) reads from the replica, which does not show it yet
        other = Client()
        assert served(other.get("/count/", {"name": name})) == {"count": 0}
        assert "multipool_pin" not in other.cookies
        # a GET that writes pins as well
        served(other.get("/write/", {"name": marker("get-write")}))
        assert other.cookies["multipool_pin"].value == primary
    finally:
        postgres_replica.resume_replay()
    postgres_replica.wait_for_replay()
    client.cookies.clear()
    assert served(client.get("/read/"))["db"] == replica


def test_middleware_under_the_async_handler(site):
    primary, replica = site

    async def scenario() -> list[Any]:
        client = AsyncClient()
        out = []
        try:
            for method, url in (("get", "/read/"), ("post", "/write/"), ("get", "/read/")):
                response = await getattr(client, method)(url, {"name": marker("async")})
                assert response.status_code == 200
                out.append(json.loads(response.content)["db"])
                await sync_to_async(request_finished.send)(sender=None)
            out.append(client.cookies["multipool_pin"].value)
        finally:
            await sync_to_async(connections.close_all)()
        return out

    assert asyncio.run(scenario()) == [replica, primary, primary, primary]


def test_middleware_without_pin_seconds_or_causal_reads_sets_no_cookie(site, tune):
    primary, replica = site
    tune.MULTIPOOL_PIN_SECONDS = 0
    tune.MULTIPOOL_CAUSAL_READS = False
    client = Client()
    body = served(client.get("/write/", {"name": marker("nocookie")}))
    assert body["db"] == primary
    assert "multipool_pin" not in client.cookies
    assert served(client.get("/read/"))["db"] == replica


def test_middleware_sync_and_async_with_request_factory(pg_group, tune):
    primary, replica = pg_group
    tune.MULTIPOOL_PIN_SECONDS = 5
    factory = RequestFactory()
    seen: list[tuple[str, bool]] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append((router.db_for_read(Item), bool(request.GET.get("write"))))
        if request.GET.get("write"):
            router.db_for_write(Item)
        return HttpResponse("ok")

    outer = current_pin_state()
    mw = PinningMiddleware(view)
    assert not mw.async_mode
    response = mw(factory.get("/"))
    assert "multipool_pin" not in response.cookies
    response = mw(factory.get("/", {"write": "1"}))
    assert response.cookies["multipool_pin"].value == primary
    mw(factory.post("/"))
    request = factory.get("/")
    request.COOKIES["multipool_pin"] = f"{primary}.unknownalias"
    mw(request)
    request = factory.get("/")
    request.COOKIES["multipool_pin"] = "unknownalias"
    mw(request)
    assert seen == [
        (replica, False),
        (replica, True),
        (primary, False),  # POST: pinned
        (primary, False),  # cookie
        (replica, False),  # a cookie naming no known group is ignored
    ]
    # nothing leaked out of the requests
    assert current_pin_state() is outer and not outer.pinned and not outer.carry

    async def async_view(request: HttpRequest) -> HttpResponse:
        def work() -> None:
            seen.append((router.db_for_read(Item), True))
            router.db_for_write(Item)
            seen.append((router.db_for_read(Item), True))
            connections.close_all()

        await sync_to_async(work)()
        return HttpResponse("ok")

    amw = PinningMiddleware(async_view)
    assert amw.async_mode and asyncio.iscoroutinefunction(amw)
    seen.clear()
    response = asyncio.run(amw(factory.get("/")))
    assert seen == [(replica, True), (primary, True)]
    assert response.cookies["multipool_pin"].value == primary


# -- MySQL / MariaDB: a replica alias behind a TCP proxy ---------------------------------------


class TCPProxy:
    """Forward 127.0.0.1:port to a server; ``stop()`` cuts every connection and refuses new ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if self._thread is not None:
            self._thread.join(5)
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def mysql_group(mysql_server, make_group, routing):
    proxy = TCPProxy(mysql_server.host, mysql_server.port)
    proxy.start()
    replica_url = mysql_server.url("plain").replace(
        f":{mysql_server.port}/", f":{proxy.port}/", 1
    )
    try:
        primary, (replica,) = make_group(mysql_server.url(), [replica_url], prefix="my")
        with override_settings(MULTIPOOL_ROUTES={"testapp.Item": primary}):
            yield primary, replica, proxy
    finally:
        proxy.stop()


def test_mysql_replica_alias_routing_fallback_and_recovery(mysql_group, tune):
    primary, replica, proxy = mysql_group
    tune.MULTIPOOL_REPLICA_BACKOFF = 0.3
    tune.MULTIPOOL_REPLICA_BACKOFF_MAX = 0.6
    for _ in range(3):
        with web_request():
            assert mysql_read() == (replica, "plain")
    with web_request():
        name = marker("mysql")
        Item.objects.create(name=name)
        assert mysql_read() == (primary, "app")
        assert Item.objects.filter(name=name).count() == 1
    proxy.stop()
    answers = []
    for _ in range(5):
        with web_request():
            answers.append(mysql_read())
    assert answers == [(primary, "app")] * 5
    assert health.status(replica)[replica].state == DOWN
    proxy.start()

    def replica_used() -> bool:
        with web_request():
            return mysql_read() == (replica, "plain")

    wait_until(replica_used, timeout=10)
    assert health.status(replica)[replica].state == UP


def test_mysql_held_connection_killed_mid_request_later_reads_fall_back(mysql_group):
    """A disconnect on a connection the request holds: the failing query fails (it is
    already sent), the next reads of the request go elsewhere."""
    from django.db import OperationalError

    primary, replica, proxy = mysql_group
    with web_request():
        assert mysql_read() == (replica, "plain")
        proxy.stop()
        with pytest.raises(OperationalError):
            mysql_read()
        assert mysql_read() == (primary, "app")
    assert health.status(replica)[replica].state == DOWN
    proxy.start()
