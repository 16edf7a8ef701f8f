"""One load scenario against a real application server and a real TLS database server.

:func:`run_scenario` starts the application server on the test project (every alias
from the environment, ``DATABASE_URL`` as the ``app`` user with ``verify-full``),
drives the load while a sampler reads the database server's connections, reads every
worker's pool statistics, stops the server and gathers what the tests assert on:
:class:`Outcome`. The asserting helpers below name what went wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from multipool.testing.app_servers import (
    AppServer,
    ConnectionSampler,
    LoadReport,
    RunningAppServer,
    connection_budget,
    protocol_errors,
    report_line,
    run_load,
    start_app_server,
)
from tests.conftest import alias_entry, registered_alias

SETTINGS = "tests.project.appserver_settings"
WSGI = "tests.project.wsgi:application"
ASGI = "tests.project.asgi:application"
SYNC_MIX = (("GET", "/read/"), ("POST", "/write/"))
ASYNC_MIX = (("GET", "/aread/"), ("POST", "/awrite/"))
REQUESTS = 2000
CONCURRENCY = 16


@dataclass
class Outcome:
    """What one scenario saw."""

    recipe: AppServer
    report: LoadReport
    sampler: ConnectionSampler
    budget: int
    before_load: int  # server connections after start-up, before any request
    after_load: int  # server connections once the load ended
    pools_hold: int  # what the workers' pools (and the master) hold then
    after_stop: int  # server connections once the application server stopped
    app_log: str
    db_log: list[str]
    abandoned: int  # sessions that ended without the protocol's goodbye
    rows: set[int]  # the ids in the table afterwards
    writers: set[int]  # the pids of the processes that wrote them
    written: list[int]  # the ids the write views returned

    def line(self) -> str:
        return (f"{report_line(self.recipe, self.report, self.sampler, self.budget)}; "
                f"after load {self.after_load} (pools hold {self.pools_hold}), "
                f"after stop {self.after_stop}")


def run_scenario(
    server: Any,
    database: str,
    recipe: AppServer,
    *,
    pool_size: int,
    max_overflow: int,
    master_connections: int = 0,
    mix: Sequence[tuple[str, str]] = SYNC_MIX,
    env: Mapping[str, str] | None = None,
    requests: int = REQUESTS,
) -> Outcome:
    """Run ``recipe`` under load (see the module doc). ``master_connections``: what a
    pre-fork master holds after loading the application (counted in the budget)."""
    environ = {
        "DATABASE_URL": server.url("app", tls="verify-full", database=database),
        "DATABASE_POOL_SIZE": str(pool_size),
        "DATABASE_MAX_OVERFLOW": str(max_overflow),
        **(env or {}),
    }
    budget = connection_budget(workers=recipe.workers, pool_size=pool_size,
                               max_overflow=max_overflow,
                               preloaded_master=master_connections > 0)
    abandoned_before = abandoned_sessions(server, database)
    with server.new_log_lines() as db_log:
        with start_app_server(recipe, settings=SETTINGS, env=environ, ready_path="/ping/") as app:
            # What the master holds before any request (servers drop a closed session
            # asynchronously: wait, bounded, for the expected count).
            before = server.wait_for_connection_count(master_connections, user="app",
                                                      database=database, timeout=5)
            with ConnectionSampler(server, user="app", database=database) as sampler:
                report = run_load(app.base_url, mix, requests=requests, concurrency=CONCURRENCY)
            after, held = settled_count(server, database, app, master_connections)
        after_stop = server.wait_for_connection_count(0, user="app", database=database,
                                                      timeout=10)
    abandoned = abandoned_sessions(server, database) - abandoned_before
    outcome = Outcome(
        recipe, report, sampler, budget, before, after, held, after_stop,
        app.log or "", db_log, abandoned, *table_rows(server, database),
        [json.loads(r.body)["id"] for r in report.results
         if r.method == "POST" and r.status == 200],
    )
    print(outcome.line())
    return outcome


def settled_count(
    server: Any, database: str, app: RunningAppServer, master: int, timeout: float = 30.0
) -> tuple[int, int]:
    """``(server connections, what the pools hold)`` once they agree, or the last
    reading at ``timeout``: every live worker's pool ``open`` count (read over HTTP
    from ``/pool/``) plus the master's ``master`` connections."""
    deadline = time.monotonic() + timeout
    while True:
        held = sum(_open(pools) for pools in worker_pools(app, deadline).values()) + master
        count = server.connection_count(user="app", database=database)
        if count == held or time.monotonic() >= deadline:
            return count, held
        time.sleep(0.1)


def worker_pools(app: RunningAppServer, deadline: float) -> dict[int, dict[str, Any]]:
    """``{worker pid: its pools' statistics}`` for every live worker, asked over HTTP
    until each has answered (workers are whichever process accepts a connection)."""
    seen: dict[int, dict[str, Any]] = {}
    workers = app.recipe.workers
    while True:
        report = run_load(app.base_url, [("GET", "/pool/")], requests=4 * workers,
                          concurrency=workers, keep_alive=False)
        for result in report.results:
            if result.status == 200:
                answer = json.loads(result.body)
                seen[answer["pid"]] = answer["pools"]
        serving = app.worker_pids() - exiting_workers(app)
        seen = {pid: pools for pid, pools in seen.items() if pid in serving}
        if set(seen) == serving and len(serving) == workers:
            return seen
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{app.recipe.label}: only workers {sorted(seen)} answered /pool/ "
                f"(serving: {sorted(serving)}); the server's log ends with:\n"
                + "\n".join(app.log_text().splitlines()[-30:])
            )


def exiting_workers(app: RunningAppServer) -> set[int]:
    """gunicorn workers that said they exit (a worker replaced after ``--max-requests``):
    until the master reaps them they are alive, but they have closed their pools at exit
    and answer no request (Python's own shutdown may take a while after that)."""
    log = app.log_text()
    return {pid for pid in app.worker_pids() if f"Worker exiting (pid: {pid})" in log}


def _open(pools: dict[str, Any]) -> int:
    return sum(int(stats["open"]) for stats in pools.values())


def abandoned_sessions(server: Any, database: str) -> int:
    """Sessions of ``database`` that ended without the protocol's goodbye, as the
    server counts them (PostgreSQL >= 14: ``sessions_abandoned``; MariaDB/MySQL:
    ``Aborted_clients``, server-wide)."""
    if server.engine == "postgresql":
        if server.server_version_num < 140000:
            return 0
        rows = server.query(
            "SELECT sessions_abandoned FROM pg_stat_database WHERE datname = %s", (database,)
        )
        return int(rows[0][0]) if rows else 0
    rows = server.query("SHOW GLOBAL STATUS LIKE 'Aborted_clients'")
    return int(rows[0][1])


@contextmanager
def app_alias(server: Any, database: str) -> Iterator[Any]:
    """A connection of this process to ``database`` as ``app`` (closed, pool disposed,
    at the end)."""
    entry = alias_entry(server, "appserver", {}, user="app", database=database)
    with registered_alias("appserver", entry) as conn:
        yield conn


def table_rows(server: Any, database: str) -> tuple[set[int], set[int]]:
    """``(ids, pids of the writers)`` of the rows in the table (a write stores its pid)."""
    from tests.project.testapp.models import Item

    with app_alias(server, database):
        rows = list(Item.objects.using("appserver").values_list("pk", "value"))
    return {pk for pk, _ in rows}, {pid for _, pid in rows}


def create_table(server: Any, database: str) -> None:
    from tests.project.testapp.models import Item

    with app_alias(server, database) as conn, conn.schema_editor() as editor:
        editor.create_model(Item)


# -- what every scenario asserts ---------------------------------------------------


def assert_served(outcome: Outcome) -> None:
    """Every response 200, every write applied exactly once."""
    report = outcome.report
    assert not report.errors, (
        f"{outcome.recipe.label}: {len(report.errors)} failed requests, first: "
        f"{report.errors[0]}; statuses {dict(report.statuses)}"
    )
    writes = sum(1 for r in report.results if r.method == "POST")
    assert len(set(outcome.written)) == len(outcome.written) == writes
    assert outcome.rows == set(outcome.written), (
        f"{len(outcome.rows)} rows in the table, {writes} writes answered"
    )


def assert_connections(outcome: Outcome) -> None:
    """Within the budget during the load; what the pools hold after it; none after stop."""
    assert outcome.sampler.samples, "the sampler read nothing"
    assert 0 < outcome.sampler.peak <= outcome.budget, outcome.line()
    assert outcome.after_load == outcome.pools_hold, outcome.line()
    assert outcome.after_stop == 0, f"connections left by dead workers: {outcome.line()}"


def assert_clean_logs(outcome: Outcome) -> None:
    """No TLS or protocol error on either side; no session ended without a goodbye."""
    assert protocol_errors(outcome.app_log) == [], outcome.app_log[-4000:]
    assert "Traceback" not in outcome.app_log, outcome.app_log[-4000:]
    assert protocol_errors(outcome.db_log) == [], "\n".join(outcome.db_log[-40:])
    assert outcome.abandoned == 0, f"{outcome.abandoned} sessions ended without a goodbye"


def assert_all(outcome: Outcome) -> None:
    assert_served(outcome)
    assert_connections(outcome)
    assert_clean_logs(outcome)
