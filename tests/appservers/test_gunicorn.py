"""gunicorn runs the test project against TLS PostgreSQL and MariaDB (verify-full).

Each test drives 2,000 requests, 16 at a time, half of them writes, and asserts what
a user relies on: every request served and every write stored; the server-side
connections sampled during the load within the budget (workers x (POOL_SIZE +
MAX_OVERFLOW), plus the pre-fork master's connection when it keeps one); after the
load the server holds exactly what the pools hold; after gunicorn stops, nothing; no
TLS or protocol error in gunicorn's or the database server's log, and no session
ended without the protocol's goodbye.
"""

from __future__ import annotations

from pathlib import Path

from multipool.testing.app_servers import gunicorn_gthread, gunicorn_sync
from tests.appservers.scenario import WSGI, assert_all, run_scenario

#: the example deployment's gunicorn settings: its when_ready hook closes the master's pools
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "example" / "gunicorn.conf.py"


def test_sync_preload_master_keeps_the_connection_of_its_warm_up(server, app_database):
    recipe = gunicorn_sync(WSGI, workers=4, preload=True)
    outcome = run_scenario(
        server, app_database, recipe, pool_size=1, max_overflow=1, master_connections=1,
        env={"APPSERVER_QUERY_AT_LOAD": "1"},
    )
    # The query made while the master loaded the application left its connection open
    # before any request; the workers never used it and it is counted in the budget.
    assert outcome.before_load == 1
    assert_all(outcome)


def test_sync_max_requests_replaces_workers_under_load(server, app_database):
    # A worker serves at most 300 requests: 2,000 need at least 7 worker lives, so at
    # least 3 workers are replaced while the load runs.
    recipe = gunicorn_sync(WSGI, workers=4, preload=True, max_requests=250,
                           max_requests_jitter=50, config=str(EXAMPLE_CONFIG))
    outcome = run_scenario(
        server, app_database, recipe, pool_size=1, max_overflow=1,
        env={"APPSERVER_QUERY_AT_LOAD": "1"},
    )
    # when_ready (multipool.close_all()) closed the master's warm-up connection.
    assert outcome.before_load == 0
    assert outcome.app_log.count("Autorestarting worker") >= 3, outcome.app_log[-4000:]
    assert len(outcome.writers) > 4, f"rows written by workers {sorted(outcome.writers)}"
    assert_all(outcome)


def test_gthread_workers_share_a_pool_between_threads(server, app_database):
    recipe = gunicorn_gthread(WSGI, workers=4, threads=8)
    outcome = run_scenario(server, app_database, recipe, pool_size=4, max_overflow=4)
    assert_all(outcome)
