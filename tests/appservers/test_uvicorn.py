"""uvicorn runs the test project (ASGI) against TLS PostgreSQL and MariaDB (verify-full).

1,000 requests, 16 at a time, to async views using Django's async ORM (``acount``,
``afirst``, ``aget``, ``acreate``) and to sync views, in two worker processes. The
assertions are those of the gunicorn tests (see ``test_gunicorn``); the absence of
abandoned sessions after the stop is what ``multipool.asgi.close_pools_at_shutdown``
provides: uvicorn ends its processes by raising the caught SIGTERM again, so
``atexit`` never runs there. (1,000 rather than the gunicorn tests' 2,000: two
uvicorn workers serve about 130 requests/s on a shared 2-core machine, and the suite
must stay fast.)
"""

from __future__ import annotations

import json
import time
from typing import Any

from multipool.testing.app_servers import RunningAppServer, run_load, start_app_server, uvicorn
from tests.appservers.scenario import (
    ASGI,
    ASYNC_MIX,
    SETTINGS,
    SYNC_MIX,
    assert_all,
    run_scenario,
)


def test_async_and_sync_views_in_two_workers(server, app_database):
    recipe = uvicorn(ASGI, workers=2)
    outcome = run_scenario(
        server, app_database, recipe, pool_size=4, max_overflow=4, mix=ASYNC_MIX + SYNC_MIX,
        requests=1000,
    )
    assert_all(outcome)


def test_after_a_burst_a_trickle_of_requests_lets_the_pool_shrink(server, app_database):
    """No request takes its connection back under uvicorn (each runs in a thread of
    its own) and the next one takes the connection kept first, so a trickle of
    requests uses the kept connections in turn. The ones a burst opened above
    ``POOL_SIZE`` must still close, one per ``POOL_OVERFLOW_IDLE``, without a
    connection opened again."""
    env = {
        "DATABASE_URL": server.url("app", tls="verify-full", database=app_database),
        "DATABASE_POOL_SIZE": "4",
        "DATABASE_MAX_OVERFLOW": "4",
        "DATABASE_POOL_OVERFLOW_IDLE": "0.3",
    }
    with start_app_server(uvicorn(ASGI), settings=SETTINGS, env=env, ready_path="/ping/") as app:
        burst = run_load(app.base_url, SYNC_MIX + ASYNC_MIX, requests=128, concurrency=16)
        assert not burst.errors, burst.errors[0]
        after_burst = default_pool(app)
        assert after_burst["open"] > 4  # the burst opened connections above POOL_SIZE
        deadline = time.monotonic() + 30
        while server.connection_count(user="app", database=app_database) > 4:
            assert time.monotonic() < deadline, "the connections above POOL_SIZE stayed open"
            trickle = run_load(app.base_url, [("GET", "/aread/")], requests=1, concurrency=1)
            assert not trickle.errors, trickle.errors[0]
        after_trickle = default_pool(app)
    assert after_trickle["open"] == 4
    assert after_trickle["connects"] == after_burst["connects"]  # none opened again


def default_pool(app: RunningAppServer) -> dict[str, Any]:
    """The statistics of the pool of the alias ``default`` (one uvicorn process)."""
    report = run_load(app.base_url, [("GET", "/pool/")], requests=1, concurrency=1)
    (result,) = report.results
    assert result.status == 200, result.error
    return dict(json.loads(result.body)["pools"]["default"])
