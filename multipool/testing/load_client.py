"""An HTTP load client for tests and benchmarks (stdlib ``http.client``, threads).

:func:`run_load` sends ``requests`` requests from ``concurrency`` threads, request
``i`` being ``mix[i % len(mix)]``, and returns a :class:`LoadReport`: one
:class:`Result` per request (status, latency, error, body), requests/s and p50/p99
latencies. :mod:`multipool.testing.app_servers` re-exports all of it.
"""

from __future__ import annotations

import http.client
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["LoadReport", "Request", "Result", "run_load"]


@dataclass(frozen=True)
class Request:
    """One request of a load mix."""

    method: str
    path: str
    body: bytes = b""


@dataclass(frozen=True)
class Result:
    """What one request got: ``status`` ``None`` and ``error`` set when no response came."""

    index: int
    method: str
    path: str
    status: int | None
    latency: float  # seconds
    error: str | None = None
    body: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class LoadReport:
    """The results of :func:`run_load`, in request order, and what they add up to."""

    results: list[Result]
    elapsed: float  # seconds, first request sent to last answer
    concurrency: int

    @property
    def statuses(self) -> Counter[int | None]:
        return Counter(r.status for r in self.results)

    @property
    def errors(self) -> list[Result]:
        """Requests with no response or a status other than 2xx."""
        return [r for r in self.results if r.error or r.status is None or r.status >= 300]

    @property
    def requests_per_second(self) -> float:
        return len(self.results) / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        """Latency (seconds) of the answered requests at ``fraction`` (nearest rank)."""
        latencies = sorted(r.latency for r in self.results if r.status is not None)
        if not latencies:
            return math.nan
        return latencies[max(0, math.ceil(fraction * len(latencies)) - 1)]

    @property
    def p50(self) -> float:
        return self.percentile(0.50)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)

    def summary(self) -> str:
        """``2000 requests, 16 concurrent: 301 req/s, p50 41.2 ms, p99 120.3 ms, 0 errors``."""
        return (
            f"{len(self.results)} requests, {self.concurrency} concurrent: "
            f"{self.requests_per_second:.0f} req/s, p50 {self.p50 * 1000:.1f} ms, "
            f"p99 {self.p99 * 1000:.1f} ms, {len(self.errors)} errors"
        )


def run_load(
    base_url: str,
    mix: Sequence[Request | tuple[str, str]],
    *,
    requests: int,
    concurrency: int,
    timeout: float = 30.0,
    deadline: float = 600.0,
    keep_alive: bool = True,
) -> LoadReport:
    """Send ``requests`` requests from ``concurrency`` threads (see the module doc).

    ``timeout`` bounds each request, ``deadline`` the whole run (requests not sent by
    then are reported with the error ``"not sent: deadline passed"``). With
    ``keep_alive=False`` every request has a connection of its own.
    """
    if not mix:
        raise ValueError("run_load needs at least one request in the mix")
    plan = [m if isinstance(m, Request) else Request(*m) for m in mix]
    split = urlsplit(base_url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    results: list[Result | None] = [None] * requests
    counter = itertools.count()
    lock = threading.Lock()
    end = time.monotonic() + deadline

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while True:
            with lock:
                index = next(counter)
            if index >= requests:
                break
            request = plan[index % len(plan)]
            if time.monotonic() >= end:
                results[index] = Result(index, request.method, request.path, None, 0.0,
                                        "not sent: deadline passed")
                continue
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            results[index], reusable = _send(conn, index, request, keep_alive)
            if not reusable:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, name=f"load-{n}", daemon=True)
               for n in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, end - time.monotonic()) + timeout + 5)
    elapsed = time.perf_counter() - started
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"load clients still running {deadline + timeout:.0f}s after start")
    return LoadReport([r for r in results if r is not None], elapsed, concurrency)


def _send(
    conn: http.client.HTTPConnection, index: int, request: Request, keep_alive: bool
) -> tuple[Result, bool]:
    """``(result, whether the connection may carry the next request)``."""
    headers = {"Connection": "keep-alive" if keep_alive else "close"}
    if request.method != "GET":
        headers["Content-Type"] = "application/octet-stream"
    started = time.perf_counter()
    try:
        conn.request(request.method, request.path, body=request.body or None, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        latency = time.perf_counter() - started
        error = f"{type(exc).__name__}: {exc}"
        return Result(index, request.method, request.path, None, latency, error), False
    latency = time.perf_counter() - started
    result = Result(index, request.method, request.path, response.status, latency, None, body)
    return result, keep_alive and not response.will_close
