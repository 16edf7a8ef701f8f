"""Prometheus metrics of gunicorn's workers, scraped through any one of them.

gunicorn (4 sync workers, each replaced after 60 requests) serves the test project
with ``PROMETHEUS_MULTIPROC_DIR`` set and docs/metrics.md's ``child_exit`` hook,
against TLS PostgreSQL, one connection per worker's pool. After 40 reads a scrape
of ``/metrics`` (whichever worker answers) reports 40 checkouts and the
connections the database server sees. After 400 more reads, which replace the
first workers, it reports 440 checkouts (the exited workers' included), and
again exactly the connections the server sees: the live workers', none of the
exited ones'. ``multipool metrics`` on the host reports the same totals.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from multipool.testing.app_servers import gunicorn_sync, run_load, start_app_server
from tests.appservers.scenario import WSGI
from tests.test_cli import clean_env, run

READS = 400  # after 40 first: more than 4 workers x 60 requests


def totals(text: str) -> dict[str, float]:
    """Each sample name of pool ``default``, summed over its other labels."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("pool_name") == "default" and "le" not in sample.labels:
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


def settles(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``check()`` holds within ``timeout`` seconds (a request's checkin follows
    its response; a worker's counts are published every second)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_scrape_of_any_worker_sums_all_of_them(server: Any, app_database: str, tmp_path: Path):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    recipe = gunicorn_sync(WSGI, workers=4, max_requests=60,
                           config="python:tests.project.gunicorn_metrics")  # fmt: skip
    env = {
        "DATABASE_URL": server.url("app", database=app_database),
        "DATABASE_POOL_SIZE": "1",
        "DATABASE_MAX_OVERFLOW": "0",
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    with start_app_server(
        recipe, settings="tests.project.metrics_settings", env=env, ready_path="/ping/"
    ) as app:
        scraped: dict[str, float] = {}

        def scrape() -> dict[str, float]:
            answer = run_load(app.base_url, [("GET", "/metrics")], requests=1, concurrency=1)
            assert answer.results[0].status == 200, answer.results[0]
            scraped.clear()
            scraped.update(totals(answer.results[0].body.decode()))
            return scraped

        def reads(count: int) -> None:
            report = run_load(app.base_url, [("GET", "/read/")], requests=count, concurrency=8)
            assert not report.errors, report.errors[:3]

        def checkouts(expected: int) -> bool:
            return scrape().get("db_client_connection_use_time_seconds_count") == expected

        def connections_match() -> bool:
            # one connection per live worker with a pool (POOL_SIZE=1): the open ones and
            # the limit the workers report are those the server sees
            seen = server.connection_count(user="app", database=app_database)
            now = scrape()
            opened, limit = now.get("db_client_connection_count"), now.get(
                "db_client_connection_max"
            )
            return 0 < seen == opened == limit

        reads(40)
        originals = app.worker_pids()
        # every worker with a pool has written its connections (within a second)
        assert settles(connections_match), scraped
        assert settles(lambda: checkouts(40)), scraped
        reads(READS)  # each worker serves at most 60 requests: the first ones exit
        assert originals - app.worker_pids(), "no worker was recycled"
        assert settles(lambda: checkouts(40 + READS)), scraped
        assert settles(connections_match), scraped  # the exited workers' pools are gone
        assert scraped["db_client_connection_timeouts_total"] == 0
        cli = run("metrics", env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)), cwd=tmp_path)
        assert cli.returncode == 0, cli.stderr
        assert totals(cli.stdout)["db_client_connection_use_time_seconds_count"] == 40 + READS
