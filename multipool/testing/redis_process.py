"""A throwaway Redis (a Celery broker and result backend for tests) from the local binary.

::

    from multipool.testing import start_redis
    with start_redis() as redis:              # close() on exit
        redis.url()                           # redis://:PASSWORD@127.0.0.1:PORT/0

pytest gets the session fixture ``redis_server``; like the database servers it skips
when Redis cannot be started, and fails under ``CI=true``.

What runs: ``redis-server`` (``MULTIPOOL_TEST_REDIS_SERVER``, else found on ``PATH``
or in ``/usr/sbin``; Debian package ``redis-server``) in the foreground, from its own
temporary directory, on a free port of 127.0.0.1, with no persistence (``save ""``,
``appendonly no``) and a random password. The settings, the password included, are
in a configuration file of mode 0600, so that the password never shows in the
process list. Ready means it answers ``AUTH`` and ``PING`` on its port; stopped means
SIGTERM to its own pid (SIGKILL if it lingers), reaped, its directory removed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

from multipool.testing.servers import (
    STARTUP_LOG,
    ServerStartError,
    find_program,
    free_port,
    make_workdir,
    new_password,
    remove_tree,
    tail,
)

__all__ = ["ENV_REDIS_SERVER", "RedisServer", "find_redis_server", "start_redis"]

#: environment variable naming the redis-server binary (found automatically otherwise)
ENV_REDIS_SERVER = "MULTIPOOL_TEST_REDIS_SERVER"

_CANDIDATES = ("/usr/sbin/redis-server", "/usr/bin/redis-server", "/usr/local/bin/redis-server")


def find_redis_server() -> Path:
    """The redis-server binary: ``MULTIPOOL_TEST_REDIS_SERVER``, ``PATH``, the usual places."""
    return find_program("redis-server", ENV_REDIS_SERVER, _CANDIDATES, "redis-server")


def _command(*words: str) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisServer:
    """A running ``redis-server`` of the tests. The repr never shows the password."""

    __test__ = False

    def __init__(self, binary: Path, base: Path, *, owned: bool, port: int) -> None:
        self.binary = binary
        self.base = base
        self.owned = owned
        self.host = "127.0.0.1"
        self.port = port
        self.password = new_password()
        self.config = base / "redis.conf"
        self.log = base / "redis.log"
        self.version = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<RedisServer {self.version} {self.host}:{self.port}>"

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The pid of the running server (``None`` once stopped)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def url(self, db: int = 0) -> str:
        """``redis://:PASSWORD@127.0.0.1:PORT/DB`` (for Celery's broker and result backend)."""
        return f"redis://:{quote(self.password, safe='')}@{self.host}:{self.port}/{int(db)}"

    def send(self, *commands: tuple[str, ...], password: str | None = None) -> list[bytes]:
        """Send ``commands`` (after ``AUTH`` with ``password``, this server's by default;
        ``""``: no ``AUTH``) on a new connection; return the first line of each reply
        (``+PONG``, ``-NOAUTH ...``; a bulk reply's first line is its length)."""
        password = self.password if password is None else password
        words: list[tuple[str, ...]] = [("AUTH", password)] if password else []
        words += commands
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(b"".join(_command(*w) for w in words))
            reader = sock.makefile("rb")
            replies = [reader.readline().rstrip(b"\r\n") for _ in words]
        return replies[1:] if password else replies

    def ping(self) -> bool:
        """Whether the server answers ``PING`` to a client with the password."""
        try:
            return self.send(("PING",)) == [b"+PONG"]
        except OSError:
            return False

    # -- process ------------------------------------------------------------------------

    def write_config(self) -> None:
        """``redis.conf`` (mode 0600: it holds the password)."""
        lines = [
            f"bind {self.host}",
            f"port {self.port}",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            f'dir "{self.base}"',
            f'logfile "{self.log}"',
            "daemonize no",
            f"requirepass {self.password}",
        ]
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def start(self, timeout: float = 15.0) -> None:
        """Run ``redis-server`` and wait (up to ``timeout``) until it answers."""
        with self._lock:
            with open(self.log, "ab") as log:  # what it prints before it opens its log
                self._proc = subprocess.Popen(
                    [str(self.binary), str(self.config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base,
                    start_new_session=True,  # a Ctrl-C of the test run is not Redis's SIGINT
                )
            deadline = time.monotonic() + timeout
            while not self.ping():
                code = self._proc.poll()
                if code is not None or time.monotonic() >= deadline:
                    self._stop_locked()
                    why = f"exited with code {code}" if code is not None else (
                        f"did not answer PING on {self.host}:{self.port} within {timeout:g}s"
                    )
                    raise ServerStartError(f"redis-server {why}:\n{tail(self.log, 20)}")
                time.sleep(0.02)
            self.version = _version(self.binary)

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def close(self) -> None:
        """Stop the server (SIGTERM to its pid, SIGKILL after 10 s), reap it, and remove
        its directory."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._stop_locked()
            finally:
                atexit.unregister(self.close)
                if self.owned:
                    remove_tree(self.base)


def _version(binary: Path) -> str:
    """``7.0.15`` from ``redis-server --version`` (``""`` if it cannot tell)."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return ""


def start_redis(workdir: str | os.PathLike[str] | None = None) -> RedisServer:
    """Start a throwaway Redis (see the module doc); call ``close()`` when done."""
    binary = find_redis_server()
    base, owned = make_workdir(workdir, "multipool-redis-")
    server = RedisServer(binary, base, owned=owned, port=free_port())
    started = time.monotonic()
    try:
        server.write_config()
        server.start()
    except BaseException:
        server.close()
        raise
    atexit.register(server.close)
    STARTUP_LOG.append(
        f"multipool: Redis {server.version} (local binary {binary}) started in "
        f"{time.monotonic() - started:.1f}s on {server.host}:{server.port}"
    )
    return server
