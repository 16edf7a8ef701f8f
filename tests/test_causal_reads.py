"""Causal reads: a client reads its own writes, from a replica as soon as the replica
has them, and from the primary until then -- with the middleware alone.

A real primary and its replica over TLS, on both engines (PostgreSQL streaming
replication, MariaDB GTID replication), Django's test clients going through
``PinningMiddleware``. Replay is paused on the replica to make it lag for as
long as a test needs: the writer must see its write every time, while another
client provably reads the (stale) replica.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.signals import request_finished
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import path

from multipool.health import UP, health
from multipool.routing import causal
from multipool.routing.settings import router_settings
from tests.project.testapp.models import Item
from tests.test_routing import (  # noqa: F401 - fixtures
    make_group,
    marker,
    routing,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

COOKIE = "multipool_pin"
#: whether the server is a replica, per engine (the group's engine is set by ``site``)
STANDBY_SQL = {
    "postgresql": "SELECT 1 AS id, pg_is_in_recovery() AS standby",
    "mysql": "SELECT 1 AS id, @@read_only AS standby",
}
#: the query that reads a primary's position, per engine
POSITION_SQL = {"postgresql": "pg_current_wal_insert_lsn", "mysql": "gtid_binlog_pos"}
ENGINE: list[str] = ["postgresql"]


def answered_by() -> dict[str, Any]:
    """Which alias the ORM read from, and whether that server is a standby."""
    row = next(iter(Item.objects.raw(STANDBY_SQL[ENGINE[0]])))
    return {"db": row._state.db, "standby": bool(row.standby)}


def _write(request: HttpRequest) -> JsonResponse:
    Item.objects.create(name=request.POST["name"])
    return JsonResponse({"written": True})


def _count(request: HttpRequest) -> JsonResponse:
    count = Item.objects.filter(name=request.GET["name"]).count()
    return JsonResponse({"count": count, **answered_by()})


def _read(request: HttpRequest) -> JsonResponse:
    return JsonResponse(answered_by())


urlpatterns = [path("write/", _write), path("count/", _count), path("read/", _read)]


@pytest.fixture(params=["postgresql", "mysql"])
def engine(request: pytest.FixtureRequest) -> tuple[str, Any, Any]:
    """``(engine, primary server, replica server)``."""
    if request.param == "postgresql":
        servers = ("postgres_server", "postgres_replica")
    else:
        servers = ("mysql_server", "mysql_replica")
    primary, replica = (request.getfixturevalue(name) for name in servers)
    return request.param, primary, replica


@pytest.fixture
def site(
    engine: tuple[str, Any, Any], make_group: Any, routing: None  # noqa: F811
) -> Iterator[tuple[str, str]]:
    name, primary_server, replica_server = engine
    primary, (replica,) = make_group(
        primary_server.url(), [replica_server.url()], prefix=name[:2], POOL_SIZE="3"
    )
    replica_server.wait_for_replay()  # the Item table exists on the replica too
    ENGINE[0] = name
    with override_settings(
        MULTIPOOL_ROUTES={"testapp": primary},
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["multipool.middleware.PinningMiddleware"],
    ):
        yield primary, replica


@pytest.fixture
def replica_server(engine: tuple[str, Any, Any]) -> Any:
    return engine[2]


@pytest.fixture
def paused(site: tuple[str, str], replica_server: Any) -> Iterator[Any]:
    replica_server.pause_replay()
    try:
        yield replica_server
    finally:
        replica_server.resume_replay()
        replica_server.wait_for_replay()


def served(response: HttpResponse) -> dict[str, Any]:
    """The test client does not give connections back between requests; a server does."""
    assert response.status_code == 200, response.content[:300]
    request_finished.send(sender=None)
    return json.loads(response.content)


def test_causal_reads_are_on_by_default() -> None:
    cfg = router_settings()
    assert cfg.causal_reads and cfg.carries_positions and cfg.pin_seconds == 0


def test_the_writer_reads_its_write_while_others_read_the_lagging_replica(
    site: tuple[str, str], paused: Any
) -> None:
    primary, replica = site
    writer, other = Client(), Client()
    name = marker("causal")
    served(writer.post("/write/", {"name": name}))
    cookie = writer.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert int(cookie["max-age"]) == 60
    for _ in range(200):
        assert served(writer.get("/count/", {"name": name})) == {
            "count": 1, "db": primary, "standby": False,
        }
    # the replica really is behind: a client without the cookie reads it there
    assert served(other.get("/count/", {"name": name})) == {
        "count": 0, "db": replica, "standby": True,
    }
    assert COOKIE not in other.cookies


def test_reads_return_to_the_replica_as_soon_as_it_has_replayed_the_write(
    site: tuple[str, str], replica_server: Any
) -> None:
    primary, replica = site
    writer = Client()
    name = marker("resume")
    replica_server.pause_replay()
    try:
        served(writer.post("/write/", {"name": name}))
        assert served(writer.get("/count/", {"name": name}))["db"] == primary
    finally:
        replica_server.resume_replay()
    resumed = time.monotonic()

    def on_the_replica() -> dict[str, Any] | None:
        body = served(writer.get("/count/", {"name": name}))
        return body if body["db"] == replica else None

    body = wait_until(on_the_replica, timeout=5, interval=0.01)
    assert time.monotonic() - resumed < 1.0  # not after a fixed pin time
    assert body == {"count": 1, "db": replica, "standby": True}  # and it has the write
    # every replica has the position now: the cookie is deleted
    served(writer.get("/read/"))
    assert writer.cookies[COOKIE].value == ""


def test_requests_that_did_not_write_cost_nothing_extra(site: tuple[str, str]) -> None:
    primary, replica = site
    client = Client()
    served(client.get("/read/"))  # warm
    with CaptureQueriesContext(connections[primary]) as on_primary, CaptureQueriesContext(
        connections[replica]
    ) as on_replica:
        for _ in range(5):
            served(client.get("/read/"))
    assert len(on_primary) == 0
    assert len(on_replica) == 5  # the view's own read, nothing else
    assert COOKIE not in client.cookies


def test_a_request_that_wrote_reads_the_primarys_position_once(site: tuple[str, str]) -> None:
    primary, _replica = site
    client = Client()
    with CaptureQueriesContext(connections[primary]) as on_primary:
        served(client.post("/write/", {"name": marker("once")}))
    position_reads = [q for q in on_primary if POSITION_SQL[ENGINE[0]] in q["sql"]]
    assert len(position_reads) == 1


def test_a_forged_or_foreign_cookie_is_ignored(site: tuple[str, str], paused: Any) -> None:
    primary, replica = site
    client = Client()
    client.cookies[COOKIE] = "eyJwIjp7fX0:forged:signature"
    assert served(client.get("/read/"))["db"] == replica
    client.cookies[COOKIE] = primary  # a time-pin cookie: not a position cookie
    assert served(client.get("/read/"))["db"] == replica


def test_a_position_that_could_not_be_read_sends_reads_to_the_primary(
    site: tuple[str, str]
) -> None:
    primary, _replica = site
    client = Client()
    client.cookies[COOKIE] = causal.cookie_value({primary: None})
    assert served(client.get("/read/"))["db"] == primary


def test_the_time_pin_is_still_an_option(site: tuple[str, str], paused: Any) -> None:
    primary, _replica = site
    client = Client()
    with override_settings(MULTIPOOL_PIN_SECONDS=2):
        served(client.post("/write/", {"name": marker("time")}))
        assert client.cookies[COOKIE].value == primary
        assert served(client.get("/read/"))["db"] == primary


def test_causal_reads_under_the_async_handler(site: tuple[str, str], paused: Any) -> None:
    import asyncio

    from asgiref.sync import sync_to_async

    primary, _replica = site
    name = marker("async")

    async def scenario() -> list[dict[str, Any]]:
        client = AsyncClient()
        out = []
        try:
            response = await client.post("/write/", {"name": name})
            assert response.status_code == 200
            await sync_to_async(request_finished.send)(sender=None)
            for _ in range(3):
                response = await client.get("/count/", {"name": name})
                out.append(json.loads(response.content))
                await sync_to_async(request_finished.send)(sender=None)
        finally:
            await sync_to_async(connections.close_all)()
        return out

    assert asyncio.run(scenario()) == [{"count": 1, "db": primary, "standby": False}] * 3


def test_health_lists_every_replica_with_its_position(site: tuple[str, str]) -> None:
    primary, replica = site
    health.reset()
    status = health.status()[replica]  # never failed, never measured: listed all the same
    assert (status.primary, status.state, status.position) == (primary, UP, None)
    client = Client()
    served(client.post("/write/", {"name": marker("health")}))
    wait_until(lambda: served(client.get("/read/"))["db"] == replica, timeout=5)
    status = health.status()[replica]
    assert status.position is not None and status.position_age is not None
    as_dict = json.loads(json.dumps(health.as_dict()))
    assert as_dict[replica]["primary"] == primary and as_dict[replica]["state"] == "up"
