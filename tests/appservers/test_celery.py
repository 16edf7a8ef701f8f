"""multipool under a real Celery worker: the prefork pool, a real broker, TLS servers.

``celery worker --pool prefork --concurrency 4 --max-tasks-per-child 25`` runs the
test project's Celery app (``tests/project/celery_app.py``, which calls
``multipool.celery.setup()``) with the harness's Redis as broker and result backend,
against the PostgreSQL and MariaDB test servers over TLS (``verify-full``), with
``POOL_SIZE=1`` and ``MAX_OVERFLOW=0``. Its main process reads the database at
start-up. The test sends 200 tasks (reads and writes), samples the server's
connections while they run, then stops the worker with SIGTERM (a warm shutdown).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from multipool.testing.app_servers import ConnectionSampler, protocol_errors
from tests.conftest import alias_entry, registered_alias

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 4
POOL_SIZE = 1
MAX_OVERFLOW = 0
#: what the worker may hold on the server: one pool per child process
BUDGET = CONCURRENCY * (POOL_SIZE + MAX_OVERFLOW)
TASKS = 200
MAX_TASKS_PER_CHILD = 25
TASK_MODULE = "tests.project.testapp.tasks"

#: what servers log for a connection dropped without a goodbye, or a TLS/protocol error
SERVER_PROBLEMS = (
    "reset by peer", "Aborted connection", "unexpected EOF", "could not receive data",
    "SSL", "TLS", "protocol", "FATAL", "ERROR",
)
#: beside the TLS and protocol errors of the harness (``protocol_errors``)
WORKER_PROBLEMS = ("ERROR", "CRITICAL", "Traceback")


@pytest.fixture
def database(server: Any) -> Iterator[str]:
    """A database of the test's own, with the ``Item`` table; dropped afterwards."""
    from tests.project.testapp.models import Item

    name = f"celery_{secrets.token_hex(4)}"
    server.create_database(name)
    try:
        with _alias(server, name) as conn, conn.schema_editor() as editor:
            editor.create_model(Item)
        yield name
    finally:
        server.drop_database(name)


@contextmanager
def _alias(server: Any, database: str) -> Iterator[Any]:
    """A Django alias of the test process on ``database`` (TLS verify-full)."""
    alias = f"celerycheck{secrets.token_hex(3)}"
    with registered_alias(alias, alias_entry(server, alias, {}, database=database)) as conn:
        yield conn


@contextmanager
def celery_worker(
    server: Any, database: str, broker_url: str, queue: str, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``celery worker`` process group; killed and reaped afterwards if still there."""
    env = {k: v for k, v in os.environ.items()
           if "DATABASE_" not in k and not k.startswith("CELERY")}
    env.update(
        DATABASE_URL=server.url("app", database=database),
        DATABASE_POOL_SIZE=str(POOL_SIZE),
        DATABASE_MAX_OVERFLOW=str(MAX_OVERFLOW),
        DJANGO_SETTINGS_MODULE="tests.project.settings",
        CELERY_BROKER_URL=broker_url,
        PYTHONPATH=str(ROOT),
    )
    command = [
        sys.executable, "-m", "celery", "-A", "tests.project.celery_app", "worker",
        "--pool", "prefork", "--concurrency", str(CONCURRENCY),
        "--max-tasks-per-child", str(MAX_TASKS_PER_CHILD),
        "--queues", queue, "--hostname", f"{queue}@%h", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=log.parent, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's children, if any are left
        proc.wait(timeout=10)


def wait_for_log(proc: subprocess.Popen[bytes], log: Path, pattern: str, timeout: float) -> str:
    """The first match of ``pattern`` in the worker's log (group 1 if any), polled."""
    deadline = time.monotonic() + timeout
    while True:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return match.group(1) if match.groups() else match.group(0)
        if proc.poll() is not None or time.monotonic() >= deadline:
            pytest.fail(f"the worker did not log {pattern!r}:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def poll_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition()`` became true within ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def group_is_gone(pgid: int) -> bool:
    """Whether no process of the group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


class ConnectionIdSampler(ConnectionSampler):
    """The harness's sampler, noting the ids of the server's connections to one
    database at each reading."""

    def __init__(self, server: Any, database: str) -> None:
        super().__init__(server, user="app", database=database, interval=0.02)
        self.ids: list[set[int]] = []

    def read(self) -> int:
        ids = self.server.connection_ids(user="app", database=self.database)
        self.ids.append(ids)
        return len(ids)


def run_tasks(broker_url: str, queue: str, prefix: str) -> list[dict[str, int]]:
    """Send ``TASKS`` tasks (every other one a write) and wait for every result."""
    from celery import Celery

    client = Celery("multipool-tests-client", broker=broker_url, backend=broker_url,
                    set_as_current=False)
    try:
        results = [
            client.send_task(f"{TASK_MODULE}.add_item", args=[f"{prefix}{i}"], queue=queue)
            if i % 2 else
            client.send_task(f"{TASK_MODULE}.count_items", args=[prefix], queue=queue)
            for i in range(TASKS)
        ]
        deadline = time.monotonic() + 60
        return [r.get(timeout=max(0.1, deadline - time.monotonic())) for r in results]
    finally:
        client.close()


def test_prefork_worker_children_pool_apart_and_say_goodbye(
    server: Any, database: str, redis_server: Any, tmp_path: Path
) -> None:
    queue, prefix = f"celery-{server.engine}", f"task-{secrets.token_hex(3)}-"
    log = tmp_path / "worker.log"
    with server.new_log_lines() as logged, celery_worker(
        server, database, redis_server.url(), queue, log
    ) as worker:
        start_up_id = int(wait_for_log(worker, log, r"start-up check on connection (\d+)", 60))
        wait_for_log(worker, log, r" ready\.", 60)
        # the main process gave its start-up connection back before forking
        assert poll_until(
            lambda: start_up_id not in server.connection_ids(user="app", database=database), 5
        ), "the main process keeps its start-up connection"
        started = time.monotonic()
        with ConnectionIdSampler(server, database) as sampler:
            outcomes = run_tasks(redis_server.url(), queue, prefix)
        elapsed = time.monotonic() - started

        worker.send_signal(signal.SIGTERM)  # a warm shutdown
        assert worker.wait(timeout=30) == 0, log.read_text()[-4000:]
        assert poll_until(lambda: group_is_gone(worker.pid), 10), "a child is still running"
        assert server.wait_for_connection_count(0, user="app", database=database, timeout=10) == 0

    check_connections(outcomes, sampler.ids, start_up_id)
    check_writes(server, database, prefix)
    check_logs(logged, log.read_text(errors="replace"), server, redis_server)
    print(
        f"\n{server.engine}: {TASKS} tasks in {elapsed:.2f}s, "
        f"{len({o['pid'] for o in outcomes})} children, "
        f"{len({o['connection_id'] for o in outcomes})} server connections, "
        f"peak {sampler.peak} open (budget {BUDGET}), "
        f"{len(sampler.ids)} samples"
    )


def check_connections(
    outcomes: list[dict[str, int]], samples: list[set[int]], start_up_id: int
) -> None:
    """Children never share a connection, each keeps one, and the server never had
    more than the budget, nor any connection of the main process."""
    pids_of: dict[int, set[int]] = defaultdict(set)
    ids_of: dict[int, set[int]] = defaultdict(set)
    for outcome in outcomes:
        pids_of[outcome["connection_id"]].add(outcome["pid"])
        ids_of[outcome["pid"]].add(outcome["connection_id"])
    assert len(ids_of) >= TASKS // MAX_TASKS_PER_CHILD, "children were not replaced"
    shared = {cid: pids for cid, pids in pids_of.items() if len(pids) > 1}
    assert not shared, f"connections used by more than one child: {shared}"
    # POOL_SIZE=1: each child kept one connection for all its tasks
    assert all(len(ids) == 1 for ids in ids_of.values()), dict(ids_of)
    assert samples, "no sample was taken"
    assert max(len(s) for s in samples) <= BUDGET, max(samples, key=len)
    seen = set().union(*samples)
    # every connection the server had belonged to a child running tasks
    assert seen <= set(pids_of), seen - set(pids_of)
    assert start_up_id not in seen


def check_writes(server: Any, database: str, prefix: str) -> None:
    """Every write task's row is there, once."""
    from tests.project.testapp.models import Item

    with _alias(server, database) as conn:
        names = list(
            Item.objects.using(conn.alias).filter(name__startswith=prefix)
            .values_list("name", flat=True)
        )
    assert sorted(names) == sorted(f"{prefix}{i}" for i in range(1, TASKS, 2))


def check_logs(server_lines: list[str], worker_log: str, server: Any, redis: Any) -> None:
    """No dropped connection or TLS/protocol error on either side; no password logged."""
    problems = [line for line in server_lines if any(p in line for p in SERVER_PROBLEMS)]
    assert not problems, problems
    lines = worker_log.splitlines()
    bad = protocol_errors(lines)
    bad += [line for line in lines if any(p in line for p in WORKER_PROBLEMS)]
    assert not bad, bad
    for secret in (server.user("app").password, redis.password):
        assert secret not in worker_log
