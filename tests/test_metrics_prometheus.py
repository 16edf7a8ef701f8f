"""Prometheus metrics of the pools against the real servers.

* one process: the Django view (``multipool.views.metrics``) and ``multipool
  metrics --connect`` show this process's pools;
* multiprocess (``PROMETHEUS_MULTIPROC_DIR``): worker processes of their own,
  each with its pool, and a scrape from yet another process (``multipool
  metrics``) shows their sum; a worker that ends keeps counting in the totals
  and drops out of the connection counts once marked dead.
"""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import RequestFactory
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.parser import text_string_to_metric_families

from multipool.metrics.names import prometheus_names
from multipool.views import metrics
from tests.test_cli import assert_no_secrets, clean_env, password_of, run
from tests.test_pool_lifecycle import request_cycle, stats


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, pool: str, **labels: str) -> float:
    """The one sample ``name`` of pool ``pool`` with ``labels`` (others may differ)."""
    matching = [
        v
        for (sample, have), v in found.items()
        if sample == name
        and ("pool_name", pool) in have
        and all((k, v_) in have for k, v_ in labels.items())
        and ("le" in labels or not any(k == "le" for k, _ in have))
    ]
    assert len(matching) == 1, f"{name} {pool} {labels}: {matching}"
    return matching[0]


# -- one process ------------------------------------------------------------------------


def scrape_view() -> dict[Any, float]:
    response = metrics(RequestFactory().get("/metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(response.content.decode())


def test_view_shows_this_process_pools(server, make_alias):
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="1")
    request_cycle(conn)
    scrape_view()  # (one process: the histograms and counters record from a first scrape on)
    before, st0 = scrape_view(), stats(conn)
    for _ in range(5):
        request_cycle(conn)
    found = scrape_view()
    alias, st = conn.alias, stats(conn)

    def grew(name: str, **labels: str) -> float:
        # (a pool's series appear with its first record after the first scrape)
        had = any(n == name and ("pool_name", alias) in have for n, have in before)
        earlier = value(before, name, alias, **labels) if had else 0.0
        return value(found, name, alias, **labels) - earlier

    assert value(found, "db_client_connection_count", alias, state="idle") == st.idle
    assert value(found, "db_client_connection_count", alias, state="used") == 0
    assert value(found, "db_client_connection_max", alias) == 3
    assert value(found, "db_client_connection_idle_max", alias) == 2
    assert value(found, "db_client_connection_pending_requests", alias) == 0
    assert value(found, "db_client_connection_timeouts_total", alias) == 0
    assert grew("db_client_connection_use_time_seconds_count") == 5 == st.checkouts - st0.checkouts
    assert grew("db_client_connection_use_time_seconds_bucket", le="+Inf") == 5
    assert grew("db_client_connection_create_time_seconds_count") == st.connects - st0.connects
    labels = dict(next(have for (n, have) in found if ("pool_name", alias) in have))
    assert labels["db_system_name"] == server.flavor and labels["role"] == "primary"
    # every metric multipool exports, under the names the docs and the dashboard use
    # (besides prometheus_client's own _created timestamps of one process)
    exported = {
        name for name, have in found if ("pool_name", alias) in have and "_created" not in name
    }
    assert exported == prometheus_names()


def test_view_speaks_openmetrics_when_asked():
    request = RequestFactory().get(
        "/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0"
    )
    response = metrics(request)
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")
    assert metrics(RequestFactory().post("/metrics")).status_code == 405


#: a process with multipool's pool for DATABASE_URL and requests(count) to make
APPLICATION = textwrap.dedent(
    """
    import sys
    import django
    from django.conf import settings
    import multipool
    settings.configure(DATABASES=multipool.databases())
    django.setup()
    from django.core.signals import request_finished, request_started
    from django.db import connection

    def requests(count):
        for _ in range(count):
            request_started.send(sender=None)
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            request_finished.send(sender=None)
    """
)

UNSCRAPED = APPLICATION + textwrap.dedent(
    """
    from multipool.metrics.prometheus import exposition
    requests(4)
    print(exposition()[0].decode())
    requests(3)
    print(exposition()[0].decode())
    """
)


def test_one_process_records_from_the_first_scrape_on(postgres_server, tmp_path):
    """An application with prometheus_client installed that nobody scrapes pays
    nothing per request for it; the first scrape starts the histograms."""
    env = clean_env(DATABASE_URL=postgres_server.url("app"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", UNSCRAPED], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    first, second = (samples(part) for part in out.stdout.split("\n\n", 1))
    assert value(first, "db_client_connection_count", "default", state="idle") == 1
    assert not any(name.startswith("db_client_connection_use_time") for name, _ in first)
    assert value(second, "db_client_connection_use_time_seconds_count", "default") == 3


UNUSED_THEN_EXPORTED = APPLICATION + textwrap.dedent(
    """
    requests(3)
    print(sorted(m for m in ("prometheus_client", "opentelemetry.metrics") if m in sys.modules))
    import prometheus_client  # the application's exporter, after the first pool
    requests(1)
    print(prometheus_client.generate_latest().decode())
    requests(2)
    print(prometheus_client.generate_latest().decode())
    """
)


def test_installed_but_unused_libraries_are_not_loaded(postgres_server, tmp_path):
    """A process that has prometheus_client and the OpenTelemetry API installed but
    uses neither never loads them; once the application imports prometheus_client
    (an exporter of the default registry), the next request puts multipool's
    metrics in that registry, and the first scrape starts the histograms."""
    env = clean_env(DATABASE_URL=postgres_server.url("app"))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", UNUSED_THEN_EXPORTED], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded, rest = out.stdout.split("\n", 1)
    assert loaded == "[]"
    first, second = (samples(part) for part in rest.split("\n\n", 1))
    assert value(first, "db_client_connection_count", "default", state="idle") == 1
    assert not any(name.startswith("db_client_connection_use_time") for name, _ in first)
    assert value(second, "db_client_connection_use_time_seconds_count", "default") == 2


def test_cli_connect_shows_the_command_own_pool(server, tmp_path):
    env = clean_env(DATABASE_URL=server.url("app"), DATABASE_POOL_SIZE="3")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = run("metrics", "--connect", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = samples(result.stdout)
    assert value(found, "db_client_connection_count", "default", state="idle") == 1
    assert value(found, "db_client_connection_max", "default") == 3 + 5
    assert value(found, "db_client_connection_use_time_seconds_count", "default") == 1
    assert value(found, "db_client_connection_create_time_seconds_count", "default") == 1
    assert_no_secrets(result.stdout + result.stderr, password_of(server))


# -- multiprocess ------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    import django
    from django.conf import settings
    import multipool
    settings.configure(DATABASES=multipool.databases())
    django.setup()
    from django.core.signals import request_finished, request_started
    from django.db import connection
    from multipool.metrics.prometheus import exposition
    from multipool.pools import manager

    for _ in range(int(sys.argv[1])):
        request_started.send(sender=None)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        request_finished.send(sender=None)
    exposition()  # as when a scrape reaches this worker: it writes its own values first
    print("ready", flush=True)
    for line in sys.stdin:  # "dispose", or the end: exit
        manager.dispose()
        exposition()
        print("disposed", flush=True)
    """
)


class Worker:
    """A process with a pool of its own, writing to the multiprocess directory."""

    def __init__(self, server: Any, directory: Path, requests: int) -> None:
        env = clean_env(
            DATABASE_URL=server.url("app"),
            DATABASE_POOL_SIZE="2",
            PROMETHEUS_MULTIPROC_DIR=str(directory),
        )
        self.requests = requests
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(requests)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.expect("ready")

    def expect(self, line: str, timeout: float = 60) -> None:
        """The worker's next line is ``line`` (one line per step: nothing is buffered)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the worker said nothing in {timeout}s"
        got = self.proc.stdout.readline().strip()
        assert got == line, f"worker said {got!r}; stderr: {self.stderr()}"

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return "(running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def dispose(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("dispose\n")
        self.proc.stdin.flush()
        self.expect("disposed")

    def end(self) -> int:
        """Let it exit; its pid (to mark it dead)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0, self.stderr()
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "prometheus"
    path.mkdir()
    return path


@pytest.fixture
def workers(directory: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.kill()


def scrape(directory: Path, cwd: Path) -> dict[Any, float]:
    """``multipool metrics`` from another process, as an operator on the host runs it."""
    result = run("metrics", env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return samples(result.stdout)


def test_multiprocess_scrape_sums_every_worker(postgres_server, directory, workers, tmp_path):
    server = postgres_server
    workers.extend(Worker(server, directory, n) for n in (3, 5, 7))
    found = scrape(directory, tmp_path)
    assert value(found, "db_client_connection_use_time_seconds_count", "default") == 15
    assert value(found, "db_client_connection_create_time_seconds_count", "default") == 3
    assert value(found, "db_client_connection_count", "default", state="idle") == 3
    assert value(found, "db_client_connection_max", "default") == 3 * (2 + 5)
    # a worker that ended (a recycled one): its requests still count, its pool does not
    first = workers[0]
    mark_process_dead(first.end(), str(directory))
    found = scrape(directory, tmp_path)
    assert value(found, "db_client_connection_use_time_seconds_count", "default") == 15
    assert value(found, "db_client_connection_count", "default", state="idle") == 2
    assert value(found, "db_client_connection_max", "default") == 2 * (2 + 5)
    # its successor adds its own
    workers.append(Worker(server, directory, 4))
    found = scrape(directory, tmp_path)
    assert value(found, "db_client_connection_use_time_seconds_count", "default") == 19
    assert value(found, "db_client_connection_count", "default", state="idle") == 3
    # a live worker whose pool is gone reports none of its connections
    workers[1].dispose()
    found = scrape(directory, tmp_path)
    assert value(found, "db_client_connection_count", "default", state="idle") == 2
    assert value(found, "db_client_connection_max", "default") == 2 * (2 + 5)


def test_cli_multiprocess_refuses_connect_and_a_missing_directory(tmp_path):
    env = clean_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "absent"))
    result = run("metrics", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "PROMETHEUS_MULTIPROC_DIR" in result.stderr and "create it" in result.stderr
    result = run("metrics", "--connect", env={**env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "--connect" in result.stderr
    assert not list(tmp_path.glob("*.db"))  # nothing written


def test_view_without_prometheus_client_says_what_to_install(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None  # not installed
        import django
        from django.conf import settings
        settings.configure()
        django.setup()
        from django.test import RequestFactory
        from multipool.views import metrics
        response = metrics(RequestFactory().get("/metrics"))
        print(response.status_code, response.content.decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=clean_env(), cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("500 ")
    assert "pip install 'multipool[prometheus]'" in out.stdout
