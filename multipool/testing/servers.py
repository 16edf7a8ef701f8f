"""Base classes and helpers shared by every test server (PostgreSQL, MySQL, PgBouncer).

Every other module of :mod:`multipool.testing` imports this one; it imports none
of them. See :mod:`multipool.testing` for the environment variables and the backends.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import quote, urlencode

from multipool.certs import CertPaths, generate_dev_certs

__all__ = [
    "ENV_BACKEND",
    "ENV_CERTS",
    "ENV_MYSQL_CERTS",
    "ENV_MYSQL_IMAGE",
    "ENV_MYSQL_URL",
    "ENV_POSTGRES_CERTS",
    "ENV_POSTGRES_IMAGE",
    "ENV_POSTGRES_URL",
    "STARTUP_LOG",
    "ServerControlError",
    "ServerStartError",
    "TestServer",
    "TestUser",
    "free_port",
]

logger = logging.getLogger("multipool.testing")

ENV_BACKEND = "MULTIPOOL_TEST_BACKEND"
ENV_POSTGRES_URL = "MULTIPOOL_TEST_POSTGRES_URL"
ENV_MYSQL_URL = "MULTIPOOL_TEST_MYSQL_URL"
ENV_CERTS = "MULTIPOOL_TEST_CERTS"
ENV_POSTGRES_CERTS = "MULTIPOOL_TEST_POSTGRES_CERTS"
ENV_MYSQL_CERTS = "MULTIPOOL_TEST_MYSQL_CERTS"
ENV_POSTGRES_IMAGE = "MULTIPOOL_TEST_POSTGRES_IMAGE"
ENV_MYSQL_IMAGE = "MULTIPOOL_TEST_MYSQL_IMAGE"

TLS_MODES = ("disable", "require", "verify-ca", "verify-full")

#: One line per server started in this process ("multipool: PostgreSQL 15.14 ...").
STARTUP_LOG: list[str] = []

_LIVE: set[TestServer] = set()
_LIVE_LOCK = threading.Lock()


class ServerStartError(RuntimeError):
    """A test server could not be started (the message says why; never a password)."""


class ServerControlError(RuntimeError):
    """A server of this backend cannot be stopped/started (e.g. an external server)."""


@dataclass(frozen=True)
class TestUser:
    """A database user of a test server. The repr never shows the password."""

    __test__: ClassVar[bool] = False

    name: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"TestUser(name={self.name!r}, password={'***' if self.password else ''!r})"


def new_password(special: bool = False, *, derive_from: str | None = None, name: str = "") -> str:
    """A random password; ``special=True`` adds characters that URLs must percent-encode.

    With ``derive_from`` (a secret such as the admin password) the password is derived
    from it and ``name`` instead: every session attached to the same external server
    computes the same passwords, so concurrent sessions do not undo each other.
    """
    if derive_from is None:
        token = secrets.token_urlsafe(18)
    else:
        digest = hmac.new(
            derive_from.encode(), f"multipool-test-user:{name}".encode(), hashlib.sha256
        ).digest()
        token = base64.urlsafe_b64encode(digest[:18]).decode()
    return f"{token}@:%/+" if special else token


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (or a note that it is missing)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def in_ci() -> bool:
    """True when the environment says we run in CI (``CI=true``)."""
    return env_flag("CI")


def find_program(name: str, env_var: str, places: tuple[str, ...], package: str) -> Path:
    """The executable ``name``: the one ``env_var`` names, else ``PATH``, else the
    usual ``places``; a :class:`ServerStartError` naming the Debian ``package`` and
    ``env_var`` when there is none."""
    forced = os.environ.get(env_var, "").strip()
    if forced:
        path = Path(forced)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServerStartError(f"{env_var}={forced!r} is not an executable file")
    found = shutil.which(name)
    for candidate in [*([found] if found else []), *places]:
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServerStartError(
        f"the {name} binary was not found: install it (Debian: apt-get install "
        f"{package}) or set {env_var}"
    )


def make_workdir(workdir: str | os.PathLike[str] | None, prefix: str) -> tuple[Path, bool]:
    """``(directory, owned)``; ``owned`` means we created it and remove it on close."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=prefix)), True
    path = Path(workdir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise ServerStartError(f"workdir {path} is not empty")
    return path, False


class Controller(Protocol):
    """Starts and stops the server process/container of one :class:`TestServer`."""

    backend: str
    description: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def is_running(self) -> bool: ...

    def close(self) -> None: ...


class ExternalController:
    """An existing server we must not stop."""

    backend = "external"

    def __init__(self, description: str = "external server") -> None:
        self.description = description

    def start(self) -> None:
        raise ServerControlError("an external test server cannot be started by multipool")

    def stop(self) -> None:
        raise ServerControlError("an external test server cannot be stopped by multipool")

    def is_running(self) -> bool:
        return True

    def close(self) -> None:
        return None


class TestServer:
    """A running database server for tests, with TLS and the users of the contract.

    Subclasses: :class:`~multipool.testing.postgres.PostgresServer` and
    :class:`~multipool.testing.mysql.MySQLServer`.
    """

    __test__ = False

    engine: str = ""
    flavor: str = ""
    label: str = ""
    default_scheme: str = ""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        certs: CertPaths,
        admin_user: str,
        admin_password: str,
        users: dict[str, TestUser],
        database: str = "multipool",
        admin_database: str | None = None,
        controller: Controller | None = None,
        version: str = "",
        flavor: str | None = None,
        tls: bool = True,
    ) -> None:
        self.host = host
        #: whether the server offers TLS (the shared test servers always do)
        self.tls = tls
        self.port = port
        self.certs = certs
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.users = users
        self.database = database
        self.admin_database = admin_database
        self.version = version
        if flavor is not None:
            self.flavor = flavor
        self.controller: Controller = controller or ExternalController()
        self.started_in: float = 0.0
        self._lock = threading.RLock()
        self._admin_conn: Any = None
        self._closed = False

    # -- identity ---------------------------------------------------------------

    @property
    def backend(self) -> str:
        """``"local"``, ``"container"`` or ``"external"``."""
        return self.controller.backend

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.flavor} {self.version} {self.backend} "
            f"{self.host}:{self.port}>"
        )

    def __enter__(self) -> TestServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def summary(self) -> str:
        """The line logged at start-up."""
        pretty = {"postgresql": "PostgreSQL", "mariadb": "MariaDB", "mysql": "MySQL"}
        return (
            f"multipool: {pretty.get(self.flavor, self.flavor)} "
            f"{self.version.removesuffix('-MariaDB')} "
            f"({self.controller.description}, {'TLS' if self.tls else 'TLS off'}) "
            f"{'attached' if self.backend == 'external' else 'started'} in {self.started_in:.1f}s "
            f"on {self.host}:{self.port}"
        )

    def user(self, name: str) -> TestUser:
        """The :class:`TestUser` called ``name`` (the admin user included)."""
        if name == self.admin_user:
            return TestUser(self.admin_user, self.admin_password)
        try:
            return self.users[name]
        except KeyError:
            known = ", ".join([*sorted(self.users), self.admin_user])
            raise KeyError(f"unknown test user {name!r} (known: {known})") from None

    def _format_url(
        self,
        scheme: str | None,
        user: str,
        password: str | None,
        database: str,
        query: list[tuple[str, str]],
    ) -> str:
        """``scheme://user:password@host:port/database?query``, every part percent-encoded."""
        userinfo = quote(user, safe="")
        if password:
            userinfo += ":" + quote(password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"{scheme or self.default_scheme}://{userinfo}@{host}:{self.port}/"
            f"{quote(database, safe='')}?{urlencode(query, quote_via=quote, safe='/')}"
        )

    # -- to be provided by the engines -------------------------------------------

    def url(
        self,
        user: str = "app",
        *,
        tls: str = "verify-full",
        client_cert: bool = False,
        database: str | None = None,
        scheme: str | None = None,
    ) -> str:
        raise NotImplementedError

    def connect_admin(self) -> Any:
        """A new DB-API connection as the admin user, TLS verified, autocommit on."""
        raise NotImplementedError

    def _connection_error_types(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _is_broken(self, conn: Any) -> bool:
        raise NotImplementedError

    def _execute(self, conn: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def connection_ids(
        self, *, user: str | None = None, database: str | None = None
    ) -> set[int]:
        raise NotImplementedError

    def terminate(self, *, user: str | None = None, database: str | None = None) -> int:
        raise NotImplementedError

    def create_database(self, name: str) -> None:
        raise NotImplementedError

    def drop_database(self, name: str) -> None:
        raise NotImplementedError

    # -- shared behaviour -----------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``%s`` placeholders) as the admin user and return all rows.

        Uses one cached admin connection (reopened after a restart); that
        connection is what :meth:`connection_count` leaves out.
        """
        with self._lock:
            conn = self._admin_connection()
            try:
                return self._execute(conn, sql, params)
            except self._connection_error_types():
                if not self._is_broken(conn):
                    raise
                self._drop_admin_connection()
            conn = self._admin_connection()
            return self._execute(conn, sql, params)

    def _admin_connection(self) -> Any:
        if self._admin_conn is not None and self._is_broken(self._admin_conn):
            self._drop_admin_connection()
        if self._admin_conn is None:
            self._admin_conn = self.connect_admin()
        return self._admin_conn

    def _drop_admin_connection(self) -> None:
        conn, self._admin_conn = self._admin_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @property
    def log_path(self) -> Path | None:
        """The server's own log file (local servers only; ``None`` otherwise)."""
        path = getattr(self.controller, "log", None) or getattr(self.controller, "error_log", None)
        return path if isinstance(path, Path) else None

    @contextlib.contextmanager
    def new_log_lines(self) -> Iterator[list[str]]:
        """The lines the server logs while the block runs (filled in when it ends)."""
        path = self.log_path
        if path is None:
            raise ServerControlError(f"{self!r} keeps no log file here")
        start = path.stat().st_size
        lines: list[str] = []
        yield lines
        with path.open(errors="replace") as log:
            log.seek(start)
            lines.extend(log.read().splitlines())

    def connection_count(self, *, user: str | None = None, database: str | None = None) -> int:
        """Client connections open on the server, minus the admin connection asking."""
        return len(self.connection_ids(user=user, database=database))

    def wait_for_connection_count(
        self,
        expected: int | Callable[[int], bool],
        *,
        user: str | None = None,
        database: str | None = None,
        timeout: float = 5.0,
    ) -> int:
        """Poll :meth:`connection_count` until it equals ``expected`` (or the predicate
        holds) or ``timeout`` passes; return the last count. Servers drop closed
        connections asynchronously, so tests should wait rather than assert at once.
        """
        def check(n: int) -> bool:
            return expected(n) if callable(expected) else n == expected

        deadline = time.monotonic() + timeout
        while True:
            count = self.connection_count(user=user, database=database)
            if check(count) or time.monotonic() >= deadline:
                return count
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.controller.is_running()

    def stop(self) -> None:
        """Stop the server (restartable with :meth:`start`)."""
        with self._lock:
            self._drop_admin_connection()
            self.controller.stop()

    def start(self) -> None:
        """Start a stopped server again: same port, same users and data."""
        with self._lock:
            if self._closed:
                raise ServerControlError(f"{self!r} was closed")
            self.controller.start()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server for good and remove its temporary files/container."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._drop_admin_connection()
            try:
                self.controller.close()
            finally:
                with _LIVE_LOCK:
                    _LIVE.discard(self)

    def _register(self, started_at: float) -> None:
        """Record a successful start (start-up log line, atexit cleanup)."""
        self.started_in = time.monotonic() - started_at
        line = self.summary()
        STARTUP_LOG.append(line)
        logger.info("%s", line)
        with _LIVE_LOCK:
            _LIVE.add(self)


def _close_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        try:
            server.close()
        except Exception:  # pragma: no cover - best effort at exit
            logger.exception("multipool: could not stop %r", server)


atexit.register(_close_all)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def poll(
    attempt: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    failure: Callable[[], str | None] = lambda: None,
) -> None:
    """Call ``attempt`` until it returns True; raise :class:`ServerStartError` on
    timeout or as soon as ``failure`` returns a reason."""
    deadline = time.monotonic() + timeout
    while True:
        if attempt():
            return
        reason = failure()
        if reason:
            raise ServerStartError(reason)
        if time.monotonic() >= deadline:
            raise ServerStartError(f"not ready after {timeout:.0f}s")
        time.sleep(interval)


def replica_certs(
    source: CertPaths, directory: Path, clients: tuple[str, ...] = ("certuser", "app")
) -> tuple[CertPaths, CertPaths]:
    """``(server_side, client_side)``: the TLS files a replica serves, and what its
    clients use. A copy of the primary's files when its server key is at hand (the same
    CA: every URL and client certificate of the primary works on the replica); else (an
    external primary) a bundle of the replica's own, with certificates for ``clients``."""
    if source.server_cert.is_file() and source.server_key.is_file():
        directory.mkdir(mode=0o700)
        server = dataclasses.replace(
            source,
            directory=directory,
            ca_cert=directory / "ca.crt",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
        )
        shutil.copyfile(source.ca_cert, server.ca_cert)
        shutil.copyfile(source.server_cert, server.server_cert)
        shutil.copyfile(source.server_key, server.server_key)
        os.chmod(server.server_key, 0o600)
        return server, source
    own = generate_dev_certs(directory, clients=clients)
    return own, own
