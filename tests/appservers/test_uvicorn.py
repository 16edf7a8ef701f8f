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

from multipool.testing.app_servers import uvicorn
from tests.appservers.scenario import ASGI, ASYNC_MIX, SYNC_MIX, assert_all, run_scenario


def test_async_and_sync_views_in_two_workers(server, app_database):
    recipe = uvicorn(ASGI, workers=2)
    outcome = run_scenario(
        server, app_database, recipe, pool_size=4, max_overflow=4, mix=ASYNC_MIX + SYNC_MIX,
        requests=1000,
    )
    assert_all(outcome)
