"""Real application servers (gunicorn, uvicorn) for tests and benchmarks.

Four parts, usable alone (the names below are the stable API):

* **Recipes** -- :func:`gunicorn_sync` (``workers``, ``preload``, ``max_requests`` +
  ``max_requests_jitter``, ``config``), :func:`gunicorn_gthread` (``workers`` x
  ``threads``) and :func:`uvicorn` (``workers``) return an :class:`AppServer`: the
  command line of one server (``python -m gunicorn|uvicorn``), nothing started.
* **Running** -- :func:`start_app_server` is a context manager: it starts the recipe
  as a subprocess (its own process group) on a free port of 127.0.0.1 with a Django
  settings module and extra environment variables, waits (bounded) until
  ``GET ready_path`` gets any HTTP answer, and on exit stops it: SIGTERM to the
  master, SIGKILL to the whole group after ``stop_timeout``, then waits until master
  and workers are gone. It yields a :class:`RunningAppServer` (``base_url``, ``pid``,
  ``worker_pids()``, ``log_text()``); its ``log`` is the server's whole output once
  stopped (:meth:`RunningAppServer.stop` returns it too)::

      recipe = gunicorn_sync("tests.project.wsgi:application", workers=4, preload=True)
      with start_app_server(recipe, settings="tests.project.appserver_settings",
                            env={"DATABASE_URL": url}, ready_path="/ping/") as app:
          with ConnectionSampler(pg, user="app", database="multipool") as sampler:
              report = run_load(app.base_url, [("GET", "/read/"), ("POST", "/write/")],
                                requests=2000, concurrency=16)
      print(report.summary(), sampler.peak, app.log)

* **Load** -- :func:`run_load` sends ``requests`` HTTP requests from ``concurrency``
  threads (stdlib ``http.client``), request ``i`` being ``mix[i % len(mix)]``
  (``(method, path)`` pairs or :class:`Request`), and returns a :class:`LoadReport`:
  one :class:`Result` per request (status, latency, error, body), ``errors``,
  ``statuses``, ``requests_per_second``, ``p50``/``p99`` latencies, ``summary()``.
  It lives in :mod:`multipool.testing.load_client` and is re-exported here.
* **Measuring** -- :class:`ConnectionSampler` reads a test server's
  ``connection_count(user=..., database=...)`` in a background thread while a block
  runs and keeps the ``peak`` (and every sample); :func:`connection_budget` is the
  most connections the application servers may open: ``workers x (pool_size +
  max_overflow)``, + 1 for a pre-fork master that queried while loading the app;
  :func:`protocol_errors` picks the TLS and protocol errors
  (:data:`PROTOCOL_ERROR_PATTERNS`) out of log lines; :func:`report_line` puts a run
  on one line.

Nothing here prints the environment it passes on (it holds database URLs).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from multipool.testing.load_client import LoadReport, Request, Result, run_load
from multipool.testing.servers import ServerStartError, free_port, remove_tree

__all__ = [
    "PROTOCOL_ERROR_PATTERNS",
    "AppServer",
    "ConnectionSampler",
    "LoadReport",
    "Request",
    "Result",
    "RunningAppServer",
    "connection_budget",
    "gunicorn_gthread",
    "gunicorn_sync",
    "protocol_errors",
    "report_line",
    "run_load",
    "start_app_server",
    "uvicorn",
]

#: what a log line says when a TLS session or the wire protocol broke (lower case)
PROTOCOL_ERROR_PATTERNS = (
    "unexpected eof",
    "ssl error",
    "ssl syscall error",
    "bad record mac",
    "decryption failed",
    "lost connection",
    "server closed the connection",
    "server has gone away",
    "connection reset by peer",
    "could not receive data from client",
    "aborted connection",
    "got an error reading communication packets",
    "got packets out of order",
    "invalid frontend message",
    "unexpected message",
    "commands out of sync",
)


# -- recipes ------------------------------------------------------------------------


@dataclass(frozen=True)
class AppServer:
    """One application server's command line (see :func:`gunicorn_sync` & co.).

    ``app`` is ``module:attribute`` (a WSGI application for gunicorn, an ASGI
    application for uvicorn); ``config`` a gunicorn configuration file or
    ``python:module``; ``extra_args`` go at the end of the command line.
    """

    kind: str  # "gunicorn-sync", "gunicorn-gthread" or "uvicorn"
    app: str
    workers: int = 1
    threads: int = 1
    preload: bool = False
    max_requests: int = 0
    max_requests_jitter: int = 0
    config: str | None = None
    graceful_timeout: int = 10
    extra_args: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``gunicorn-sync 4w preload max-requests=100+50`` and the like."""
        parts = [self.kind, f"{self.workers}w"]
        if self.threads > 1:
            parts[-1] += f"x{self.threads}t"
        if self.preload:
            parts.append("preload")
        if self.max_requests:
            parts.append(f"max-requests={self.max_requests}+{self.max_requests_jitter}")
        return " ".join(parts)

    @property
    def preforks_app(self) -> bool:
        """Whether a master process loads the application before it forks workers."""
        return self.preload

    def command(self, host: str, port: int) -> list[str]:
        """The command line, run with this interpreter (``python -m ...``)."""
        if self.kind == "uvicorn":
            return [
                sys.executable, "-m", "uvicorn", self.app,
                "--host", host, "--port", str(port),
                "--workers", str(self.workers),
                "--timeout-graceful-shutdown", str(self.graceful_timeout),
                "--no-access-log", *self.extra_args,
            ]
        worker_class = {"gunicorn-sync": "sync", "gunicorn-gthread": "gthread"}[self.kind]
        cmd = [
            sys.executable, "-m", "gunicorn", self.app,
            "--bind", f"{host}:{port}",
            "--worker-class", worker_class,
            "--workers", str(self.workers),
            "--threads", str(self.threads),
            "--graceful-timeout", str(self.graceful_timeout),
            "--no-control-socket",
        ]
        if self.config:
            cmd += ["--config", self.config]
        if self.preload:
            cmd.append("--preload")
        if self.max_requests:
            cmd += ["--max-requests", str(self.max_requests),
                    "--max-requests-jitter", str(self.max_requests_jitter)]
        return [*cmd, *self.extra_args]


def gunicorn_sync(
    app: str,
    *,
    workers: int = 4,
    preload: bool = False,
    max_requests: int = 0,
    max_requests_jitter: int = 0,
    config: str | None = None,
    extra_args: Sequence[str] = (),
) -> AppServer:
    """gunicorn with ``sync`` workers (one request at a time per worker); with
    ``max_requests`` each worker is replaced after that many requests (plus up to
    ``max_requests_jitter``)."""
    return AppServer(
        "gunicorn-sync", app, workers=workers, preload=preload, max_requests=max_requests,
        max_requests_jitter=max_requests_jitter, config=config, extra_args=tuple(extra_args),
    )


def gunicorn_gthread(
    app: str,
    *,
    workers: int = 4,
    threads: int = 8,
    preload: bool = False,
    config: str | None = None,
    extra_args: Sequence[str] = (),
) -> AppServer:
    """gunicorn with ``gthread`` workers: ``workers`` processes x ``threads`` threads."""
    return AppServer(
        "gunicorn-gthread", app, workers=workers, threads=threads, preload=preload,
        config=config, extra_args=tuple(extra_args),
    )


def uvicorn(app: str, *, workers: int = 1, extra_args: Sequence[str] = ()) -> AppServer:
    """uvicorn serving an ASGI application with ``workers`` processes."""
    return AppServer("uvicorn", app, workers=workers, extra_args=tuple(extra_args))


# -- running ------------------------------------------------------------------------


class RunningAppServer:
    """A started application server (see :func:`start_app_server`)."""

    def __init__(
        self, recipe: AppServer, process: subprocess.Popen[bytes], host: str, port: int,
        log_path: Path, *, stop_timeout: float,
    ) -> None:
        self.recipe = recipe
        self.process = process
        self.host = host
        self.port = port
        self.stop_timeout = stop_timeout
        #: the server's whole output, set by :meth:`stop`
        self.log: str | None = None
        self._log_path = log_path

    @property
    def pid(self) -> int:
        """The master's pid (also its process group id)."""
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"<RunningAppServer {self.recipe.label} pid={self.pid} {self.base_url}>"

    def log_text(self) -> str:
        """What the server has written so far (its whole log once stopped)."""
        if self.log is not None:
            return self.log
        try:
            return self._log_path.read_text(errors="replace")
        except OSError:
            return ""

    def worker_pids(self) -> set[int]:
        """The master's live workers now: its child processes, but for the resource
        tracker that ``multiprocessing`` starts beside uvicorn's workers."""
        children = {pid for pid, (ppid, _) in _processes().items() if ppid == self.pid}
        return {pid for pid in children if not _is_resource_tracker(pid)}

    def stop(self) -> str:
        """SIGTERM, then SIGKILL to the group after ``stop_timeout``; wait until every
        process of the group is gone; return the log. Safe to call twice."""
        if self.log is not None:
            return self.log
        try:
            _terminate_group(self.process, self.stop_timeout)
        finally:
            self.log = self.log_text()
        return self.log


@contextlib.contextmanager
def start_app_server(
    recipe: AppServer,
    *,
    settings: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    ready_path: str = "/",
    start_timeout: float = 60.0,
    stop_timeout: float = 20.0,
) -> Iterator[RunningAppServer]:
    """Run ``recipe`` while the block runs (see the module doc).

    The server inherits this process's environment plus ``DJANGO_SETTINGS_MODULE=
    settings``, ``env`` and ``cwd`` (default: the current directory) at the head of
    ``PYTHONPATH``. It is ready when ``GET ready_path`` gets any HTTP response.
    """
    workdir = Path(tempfile.mkdtemp(prefix="multipool-appserver-"))
    running: RunningAppServer | None = None
    try:
        running = _spawn(recipe, settings, env or {}, Path(cwd or os.getcwd()), workdir,
                         stop_timeout=stop_timeout)
        _wait_until_ready(running, ready_path, start_timeout)
        yield running
    finally:
        try:
            if running is not None:
                running.stop()
        finally:
            remove_tree(workdir)


def _spawn(
    recipe: AppServer, settings: str, env: Mapping[str, str], cwd: Path, workdir: Path,
    *, stop_timeout: float,
) -> RunningAppServer:
    host, port = "127.0.0.1", free_port()
    environ = dict(os.environ)
    environ.update(env)
    environ["DJANGO_SETTINGS_MODULE"] = settings
    environ["PYTHONUNBUFFERED"] = "1"
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(cwd), environ.get("PYTHONPATH", "")) if p
    )
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            recipe.command(host, port), cwd=cwd, env=environ, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return RunningAppServer(recipe, process, host, port, log_path, stop_timeout=stop_timeout)


def _wait_until_ready(server: RunningAppServer, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise ServerStartError(
                f"{server.recipe.label} exited with code {server.process.returncode} "
                f"before answering HTTP; its log:\n{_tail(server.log_text())}"
            )
        conn = http.client.HTTPConnection(server.host, server.port, timeout=2)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"{server.recipe.label} did not answer HTTP on {server.base_url} within "
                f"{timeout:.0f}s; its log:\n{_tail(server.log_text())}"
            )
        time.sleep(0.1)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _terminate_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the master; SIGKILL its group if it or a worker outlives ``timeout``."""
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    if not _wait_group_gone(group, deadline):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        process.wait(timeout=10)
        if not _wait_group_gone(group, time.monotonic() + 10):
            raise RuntimeError(f"processes of group {group} survived SIGKILL")


def _wait_group_gone(group: int, deadline: float) -> bool:
    """Poll until no live process (zombies aside) is in process group ``group``."""
    while True:
        if not any(pgid == group for _, pgid in _processes().values()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _is_resource_tracker(pid: int) -> bool:
    try:
        return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _processes() -> dict[int, tuple[int, int]]:
    """``{pid: (ppid, pgid)}`` of the live (not zombie) processes, from ``/proc``."""
    found: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if fields[0] in ("Z", "X"):
            continue
        found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


# -- measuring ----------------------------------------------------------------------------


class _CountsConnections(Protocol):
    def connection_count(
        self, *, user: str | None = None, database: str | None = None
    ) -> int: ...


class ConnectionSampler:
    """Read ``server.connection_count(user=..., database=...)`` every ``interval``
    seconds in a background thread while the ``with`` block runs; keep the peak.

    The thread stops when the block ends (an Event) or after ``max_duration``
    seconds, whichever comes first. A failed read is kept in ``errors`` and the
    first one is raised when the block ends.
    """

    def __init__(
        self,
        server: _CountsConnections,
        *,
        user: str | None = None,
        database: str | None = None,
        interval: float = 0.05,
        max_duration: float = 600.0,
    ) -> None:
        self.server = server
        self.user = user
        self.database = database
        self.interval = interval
        self.max_duration = max_duration
        #: ``(seconds since start, count)`` per read
        self.samples: list[tuple[float, int]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-sampler", daemon=True)

    @property
    def peak(self) -> int:
        """The highest count read (0 before the first read)."""
        return max((count for _, count in self.samples), default=0)

    def read(self) -> int:
        """One reading: the server's connection count (a subclass may note more)."""
        return self.server.connection_count(user=self.user, database=self.database)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError("the connection sampler did not stop within 30s")
        if self.errors and exc_info[0] is None:
            raise self.errors[0]

    def _run(self) -> None:
        started = time.monotonic()
        while True:
            try:
                count = self.read()
                self.samples.append((time.monotonic() - started, count))
            except Exception as exc:
                self.errors.append(exc)
            if time.monotonic() - started >= self.max_duration:
                return
            if self._stop.wait(self.interval):
                return


def connection_budget(
    *, workers: int, pool_size: int, max_overflow: int, preloaded_master: bool = False,
    aliases: int = 1,
) -> int:
    """The most server connections ``aliases`` aliases of one server may take:
    ``workers x (pool_size + max_overflow)``, plus one per alias for a pre-fork master
    that queried while it loaded the application (gunicorn ``--preload``)."""
    per_alias = workers * (pool_size + max_overflow) + (1 if preloaded_master else 0)
    return aliases * per_alias


def protocol_errors(lines: Sequence[str] | str) -> list[str]:
    """The lines that report a TLS or protocol error (:data:`PROTOCOL_ERROR_PATTERNS`)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    return [line for line in lines if any(p in line.lower() for p in PROTOCOL_ERROR_PATTERNS)]


def report_line(recipe: AppServer, report: LoadReport, sampler: ConnectionSampler,
                budget: int) -> str:
    """One line for a test's or benchmark's output."""
    return (f"{recipe.label}: {report.summary()}; server connections peak "
            f"{sampler.peak} (budget {budget})")
