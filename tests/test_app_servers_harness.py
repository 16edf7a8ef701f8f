"""The application-server harness itself (multipool.testing.app_servers), without a
database: the load client against a local HTTP server, the sampler with a fake
server, the budget arithmetic, and starting and stopping real process groups."""

from __future__ import annotations

import http.server
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from multipool.testing.app_servers import (
    AppServer,
    ConnectionSampler,
    LoadReport,
    Result,
    connection_budget,
    gunicorn_sync,
    protocol_errors,
    run_load,
    start_app_server,
)
from multipool.testing.servers import ServerStartError, free_port


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the client says close
    connections = 0
    lock = threading.Lock()

    def setup(self) -> None:
        with Handler.lock:
            Handler.connections += 1
        super().setup()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = f"{self.command} {self.path} {len(self.rfile.read(length))}".encode()
        self.send_response(500 if self.path == "/fail/" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    Handler.connections = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_load_sends_the_mix_in_order_and_counts_every_request(http_server):
    report = run_load(http_server, [("GET", "/a/"), ("POST", "/b/"), ("GET", "/fail/")],
                      requests=30, concurrency=4)
    assert [r.index for r in report.results] == list(range(30))
    assert [(r.method, r.path) for r in report.results[:3]] == [
        ("GET", "/a/"), ("POST", "/b/"), ("GET", "/fail/")]
    assert report.results[1].body == b"POST /b/ 0"
    assert report.statuses == {200: 20, 500: 10}
    assert [r.path for r in report.errors] == ["/fail/"] * 10
    assert report.requests_per_second > 0
    assert 0 < report.p50 <= report.p99
    # Four clients, each keeping its connection: four connections in all.
    assert Handler.connections == 4


def test_load_without_keep_alive_opens_a_connection_per_request(http_server):
    report = run_load(http_server, [("GET", "/a/")], requests=12, concurrency=3,
                      keep_alive=False)
    assert report.statuses == {200: 12}
    assert Handler.connections == 12


def test_load_reports_requests_nobody_answered():
    report = run_load(f"http://127.0.0.1:{free_port()}", [("GET", "/")], requests=5,
                      concurrency=2, timeout=5)
    assert len(report.errors) == 5
    assert all(r.status is None and "ConnectionRefusedError" in (r.error or "")
               for r in report.results)


def test_percentiles_are_nearest_rank_over_answered_requests():
    results = [Result(i, "GET", "/", 200, latency=(i + 1) / 1000) for i in range(100)]
    results.append(Result(100, "GET", "/", None, 9.0, "refused"))
    report = LoadReport(results, elapsed=2.0, concurrency=1)
    assert report.p50 == 0.050
    assert report.p99 == 0.099
    assert report.requests_per_second == 50.5
    assert "101 requests, 1 concurrent: 50 req/s" in report.summary()


@dataclass
class FakeServer:
    counts: list[int]
    fail: bool = False

    def connection_count(self, *, user: str | None = None, database: str | None = None) -> int:
        if self.fail:
            raise ConnectionError("server down")
        return self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]


def test_sampler_keeps_the_peak():
    server = FakeServer([1, 7, 3, 2])
    with ConnectionSampler(server, interval=0.01) as sampler:
        deadline = time.monotonic() + 10
        while len(sampler.samples) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [count for _, count in sampler.samples[:5]] == [1, 7, 3, 2, 2]
    assert sampler.peak == 7


def test_sampler_stops_when_the_block_ends_not_at_its_next_reading():
    with ConnectionSampler(FakeServer([1]), interval=60) as sampler:
        deadline = time.monotonic() + 10
        while not sampler.samples and time.monotonic() < deadline:
            time.sleep(0.01)
        ended = time.monotonic()
    assert time.monotonic() - ended < 5
    assert sampler.samples and sampler.peak == 1


def test_sampler_raises_what_failed():
    with pytest.raises(ConnectionError, match="server down"):  # noqa: SIM117
        with ConnectionSampler(FakeServer([0], fail=True), interval=0.01) as sampler:
            deadline = time.monotonic() + 10
            while not sampler.errors and time.monotonic() < deadline:
                time.sleep(0.01)


def test_budget_counts_workers_overflow_and_a_preloaded_master():
    assert connection_budget(workers=4, pool_size=2, max_overflow=3) == 20
    assert connection_budget(workers=4, pool_size=2, max_overflow=3, preloaded_master=True) == 21
    assert connection_budget(workers=2, pool_size=1, max_overflow=0, preloaded_master=True,
                             aliases=2) == 6


def test_protocol_errors_picks_the_tls_and_wire_errors():
    log = (
        "LOG:  connection authorized: user=app\n"
        "LOG:  could not receive data from client: Connection reset by peer\n"
        "[Warning] Aborted connection 12 to db: 'x' user: 'app'\n"
        "psycopg.OperationalError: SSL error: bad record mac\n"
        "INFO: Booting worker"
    )
    assert protocol_errors(log) == log.splitlines()[1:4]


def test_a_server_that_cannot_load_its_app_fails_with_its_log():
    recipe = gunicorn_sync("tests.no_such_module:application", workers=1)
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"(?s)exited with code \d+.*no_such_module"):  # noqa: SIM117
        with start_app_server(recipe, settings="tests.project.appserver_settings",
                              start_timeout=60):
            pass
    assert time.monotonic() - started < 60


#: a master that ignores SIGTERM, answers HTTP, and has a child that ignores it too
STUBBORN = """
import http.server, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    while True:
        time.sleep(1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        self.wfile.write(str(os.getpid()).encode())
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@dataclass(frozen=True)
class Stubborn(AppServer):
    def command(self, host: str, port: int) -> list[str]:
        return [sys.executable, "-c", STUBBORN, str(port)]


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that runs (a zombie awaiting its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_stop_kills_a_group_that_ignores_sigterm():
    with start_app_server(Stubborn("stubborn", "-"), settings="unused",
                          stop_timeout=1) as app:
        workers = app.worker_pids()
        assert len(workers) == 1
        started = time.monotonic()
    assert time.monotonic() - started < 15
    assert app.process.returncode == -9  # the master, killed and reaped
    assert not any(running(pid) for pid in [app.pid, *workers])
