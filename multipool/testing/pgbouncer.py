"""A real PgBouncer in front of a PostgreSQL test server, for tests of the pooler mode.

::

    from multipool.testing import start_postgres, start_pgbouncer
    with start_postgres() as pg, start_pgbouncer(pg) as bouncer:
        bouncer.url("app")                   # postgresql://app:...@127.0.0.1:PORT/multipool?...
        bouncer.show("POOLS")                # [{"database": "multipool", "user": "app", ...}]

pytest gets the session fixture ``pgbouncer_server`` (in front of
``postgres_server``); like the other servers it skips when PgBouncer cannot be
started, and fails under ``CI=true``.

What runs: the ``pgbouncer`` binary (``MULTIPOOL_TEST_PGBOUNCER``, else found on
``PATH`` or in ``/usr/sbin``) in the foreground, as the ``postgres`` system user
when we are root (PgBouncer refuses to run as root), with its own temporary
directory and a free port of 127.0.0.1. The configuration:

* ``pool_mode = transaction``, ``max_client_conn = 200``, ``default_pool_size = 10``,
  ``ignore_startup_parameters = extra_float_digits,options``;
* a wildcard ``[databases]`` entry (``* = host=<pg host> port=<pg port>``): every
  database of the server is reachable, ``postgres`` and Django's ``test_*`` included;
* ``auth_type = scram-sha-256`` with an ``auth_file`` (mode 0600) holding the
  passwords of ``app``, ``plain`` and the admin user (``admin_users``,
  ``stats_users``). ``certuser`` (client-certificate login) cannot go through
  PgBouncer, which authenticates clients by password;
* TLS on both sides: clients must use TLS (``client_tls_sslmode = require``) and
  are served the PostgreSQL server's own certificate and key (so ``verify-full``
  against the server's CA works with host ``127.0.0.1``); PgBouncer verifies the
  server (``server_tls_sslmode = verify-full`` with the server's CA). When the
  server's key is not at hand (an external server), PgBouncer gets a development
  CA and certificate of its own for the client side: use :attr:`PgBouncerServer.certs`.

:meth:`PgBouncerServer.query` and the other admin helpers inherited from
:class:`~multipool.testing.PostgresServer` talk to the PostgreSQL server behind,
directly; :meth:`~PgBouncerServer.show` and :meth:`~PgBouncerServer.admin` talk to
PgBouncer's admin console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multipool.certs import CertPaths, generate_dev_certs
from multipool.testing.postgres import PostgresServer, system_user
from multipool.testing.servers import (
    TLS_MODES,
    ServerStartError,
    TestUser,
    free_port,
    make_workdir,
    remove_tree,
    tail,
)

__all__ = [
    "ENV_PGBOUNCER",
    "PGBOUNCER_SETTINGS",
    "LocalPgBouncer",
    "PgBouncerServer",
    "find_pgbouncer",
    "start_pgbouncer",
]

logger = logging.getLogger("multipool.testing")

#: environment variable naming the pgbouncer binary (found automatically otherwise)
ENV_PGBOUNCER = "MULTIPOOL_TEST_PGBOUNCER"

#: users whose passwords go to the auth_file (besides the admin user)
PGBOUNCER_USERS = ("app", "plain")

#: pooling settings of the test PgBouncer (the TLS, auth and listen settings are added)
PGBOUNCER_SETTINGS: dict[str, str | int] = {
    "pool_mode": "transaction",
    "max_client_conn": 200,
    "default_pool_size": 10,
    "min_pool_size": 0,
    "reserve_pool_size": 0,
    "ignore_startup_parameters": "extra_float_digits,options",
    "server_reset_query": "DISCARD ALL",
    "server_check_delay": 30,
    "log_connections": 0,
    "log_disconnections": 0,
    "log_pooler_errors": 1,
}

_SHOW_RE = re.compile(r"[A-Za-z_]+")


def find_pgbouncer() -> Path:
    """The pgbouncer binary: ``MULTIPOOL_TEST_PGBOUNCER``, ``PATH``, then the usual places."""
    forced = os.environ.get(ENV_PGBOUNCER, "").strip()
    if forced:
        path = Path(forced)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServerStartError(f"{ENV_PGBOUNCER}={forced!r} is not an executable file")
    found = shutil.which("pgbouncer")
    candidates = [Path(found)] if found else []
    candidates += [Path(p) for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer",
                                     "/usr/local/sbin/pgbouncer", "/usr/local/bin/pgbouncer")]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServerStartError(
        "the pgbouncer binary was not found: install it (Debian: apt-get install pgbouncer) "
        f"or set {ENV_PGBOUNCER}"
    )


def _ini_value(value: str | int) -> str:
    text = str(value)
    if "\n" in text:
        raise ValueError("a PgBouncer setting cannot contain a newline")
    return text


def _auth_line(user: str, password: str) -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    if "\n" in user or "\n" in password:
        raise ValueError("user names and passwords for PgBouncer cannot contain newlines")
    return f"{quoted(user)} {quoted(password)}\n"


class LocalPgBouncer:
    """Runs the pgbouncer binary in the foreground, from its own temporary directory."""

    backend = "local"

    def __init__(self, binary: Path, base: Path, *, owned: bool, run_as: str | None) -> None:
        self.binary = binary
        self.base = base
        self.owned = owned
        self.run_as = run_as
        self.config = base / "pgbouncer.ini"
        self.auth_file = base / "userlist.txt"
        self.log = base / "pgbouncer.log"
        self.port = 0
        self.description = f"local binary {binary}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- files ------------------------------------------------------------------------

    def chown(self) -> None:
        """Give every file of the work directory to the system user running PgBouncer."""
        if self.run_as is None:
            return
        entry = pwd.getpwnam(self.run_as)
        for root, dirs, files in os.walk(self.base):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)

    def write_auth_file(self, users: Mapping[str, str]) -> None:
        """``"user" "password"`` lines, mode 0600 (plain text: PgBouncer computes SCRAM)."""
        fd = os.open(self.auth_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write("".join(_auth_line(u, p) for u, p in users.items()))

    def configure(
        self,
        *,
        port: int,
        server_host: str,
        server_port: int,
        client_certs: CertPaths,
        server_ca: Path,
        admin_user: str,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        """Write ``pgbouncer.ini`` (see the module doc)."""
        self.port = port
        options: dict[str, str | int] = {
            "listen_addr": "127.0.0.1",
            "listen_port": port,
            "unix_socket_dir": "",
            "pidfile": str(self.base / "pgbouncer.pid"),
            "auth_type": "scram-sha-256",
            "auth_file": str(self.auth_file),
            "admin_users": admin_user,
            "stats_users": admin_user,
            **PGBOUNCER_SETTINGS,
            "client_tls_sslmode": "require",
            "client_tls_cert_file": str(client_certs.server_cert),
            "client_tls_key_file": str(client_certs.server_key),
            "client_tls_ca_file": str(client_certs.ca_cert),
            "server_tls_sslmode": "verify-full",
            "server_tls_ca_file": str(server_ca),
            **(settings or {}),
        }
        lines = [
            "; multipool test PgBouncer (generated)",
            "[databases]",
            f"* = host={server_host} port={int(server_port)}",
            "",
            "[pgbouncer]",
            *(f"{key} = {_ini_value(value)}" for key, value in options.items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")

    # -- process ------------------------------------------------------------------------

    def _popen(self) -> subprocess.Popen[bytes]:
        kwargs: dict[str, Any] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.base)
            env["USER"] = env["LOGNAME"] = self.run_as
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                [str(self.binary), str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=env,
                start_new_session=True,  # a Ctrl-C of the test run is not PgBouncer's SIGINT
                **kwargs,
            )

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 15.0) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            offset = self.log.stat().st_size if self.log.exists() else 0
            proc = self._popen()
            self._proc = proc
            deadline = time.monotonic() + timeout
            while True:
                code = proc.poll()
                if code is not None:
                    self._proc = None
                    output = self.log.read_bytes()[offset:].decode(errors="replace")
                    raise ServerStartError(
                        f"pgbouncer exited with code {code} at start:\n"
                        + "\n".join(output.strip().splitlines()[-20:])
                    )
                if self._listening():
                    return
                if time.monotonic() >= deadline:
                    self._kill(proc)
                    self._proc = None
                    raise ServerStartError(
                        f"pgbouncer did not listen on 127.0.0.1:{self.port} within "
                        f"{timeout:g}s:\n{tail(self.log, 20)}"
                    )
                time.sleep(0.01)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown); SIGKILL if it lingers."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill(proc)
            # The port is free again when nothing answers on it.
            deadline = time.monotonic() + 5
            while self._listening() and time.monotonic() < deadline:
                time.sleep(0.02)

    def is_running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.owned:
                remove_tree(self.base)


class PgBouncerServer(PostgresServer):
    """A PgBouncer (transaction pooling, TLS both sides) in front of :attr:`backend_server`.

    ``host``/``port``/:meth:`url`/:meth:`connect_params` point at PgBouncer;
    :attr:`certs` holds the CA clients verify PgBouncer with. The admin helpers
    inherited from :class:`PostgresServer` (:meth:`query`, :meth:`connection_ids`,
    :meth:`terminate`, :meth:`create_database`, ...) run on the PostgreSQL server
    behind, directly, so they see the server connections PgBouncer holds.
    """

    label = "PgBouncer"
    pool_mode = "transaction"
    backend_server: PostgresServer
    pgbouncer_version: str = ""

    def __init__(self, *, backend_server: PostgresServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend_server = backend_server
        self.version = backend_server.version
        self.server_version_num = backend_server.server_version_num
        self._console: Any = None
        self._console_lock = threading.RLock()

    def __repr__(self) -> str:
        return (
            f"<PgBouncerServer {self.pgbouncer_version} {self.host}:{self.port} -> "
            f"{self.backend_server.host}:{self.backend_server.port}>"
        )

    def summary(self) -> str:
        return (
            f"multipool: PgBouncer {self.pgbouncer_version} ({self.controller.description}, "
            f"{self.pool_mode} pooling, TLS both sides) started in {self.started_in:.2f}s on "
            f"{self.host}:{self.port} in front of PostgreSQL "
            f"{self.backend_server.host}:{self.backend_server.port}"
        )

    # -- connecting through PgBouncer ---------------------------------------------------

    def connect_params(
        self,
        user: str = "app",
        *,
        tls: str = "verify-full",
        client_cert: bool = False,
        database: str | None = None,
    ) -> dict[str, Any]:
        """``psycopg.connect`` keyword arguments for a connection through PgBouncer.

        PgBouncer requires TLS from clients: ``tls="disable"`` gives parameters it refuses.
        """
        if client_cert:
            raise ValueError(
                "PgBouncer authenticates clients by password (auth_type scram-sha-256): "
                "client certificates are not supported through it"
            )
        return super().connect_params(user, tls=tls, database=database)

    def url(
        self,
        user: str = "app",
        *,
        tls: str = "verify-full",
        client_cert: bool = False,
        database: str | None = None,
        scheme: str | None = None,
    ) -> str:
        """``postgresql://user:password@127.0.0.1:<pgbouncer port>/db?sslmode=...&sslrootcert=...``

        ``tls``: ``verify-full`` (default), ``verify-ca`` or ``require`` (``disable``
        is refused by PgBouncer). ``sslrootcert`` is the CA of :attr:`certs`.
        """
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {tls!r}")
        return super().url(
            user, tls=tls, client_cert=client_cert, database=database, scheme=scheme
        )

    def connect(
        self,
        user: str = "app",
        *,
        tls: str = "verify-full",
        database: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """A psycopg connection through PgBouncer (autocommit unless told otherwise)."""
        import psycopg

        params = self.connect_params(user, tls=tls, database=database)
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(**params, **kwargs)

    # -- the PostgreSQL server behind --------------------------------------------------------

    def connect_admin(self) -> Any:
        """An admin connection to the PostgreSQL server behind (not through PgBouncer)."""
        return self.backend_server.connect_admin()

    def create_database(self, name: str) -> None:
        self.backend_server.create_database(name)

    def drop_database(self, name: str) -> None:
        """Close PgBouncer's server connections to ``name``, then drop it on the server."""
        with contextlib.suppress(Exception):
            self.admin(f'KILL "{_console_ident(name)}"')
            self.admin(f'RESUME "{_console_ident(name)}"')
        self.backend_server.drop_database(name)

    def refresh_version(self) -> None:
        self.backend_server.refresh_version()
        self.version = self.backend_server.version
        self.server_version_num = self.backend_server.server_version_num
        rows = self.admin("SHOW VERSION")
        if rows:
            text = str(next(iter(rows[0].values())))
            match = re.search(r"PgBouncer\s+(\S+)", text)
            self.pgbouncer_version = match.group(1) if match else text

    # -- admin console ------------------------------------------------------------------

    def connect_console(self) -> Any:
        """A new autocommit connection to PgBouncer's admin console (database ``pgbouncer``)."""
        import psycopg

        params = super().connect_params(self.admin_user, database="pgbouncer")
        return psycopg.connect(
            **params, autocommit=True, connect_timeout=10, cursor_factory=psycopg.ClientCursor
        )

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run one admin console command (``SHOW POOLS``, ``RECONNECT``, ``KILL db``,
        ``RESUME db``, ``RELOAD`` ...); return its rows as dicts (``[]`` for none).

        Uses one cached console connection, reopened after a restart of PgBouncer.
        """
        import psycopg

        with self._console_lock:
            for attempt in (1, 2):
                if self._console is None or self._console.closed or self._console.broken:
                    self._close_console()
                    self._console = self.connect_console()
                try:
                    with self._console.cursor() as cur:
                        cur.execute(command)
                        if cur.description is None:
                            return []
                        names = [d.name for d in cur.description]
                        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    broken = self._console is None or self._console.closed or (
                        self._console.broken
                    )
                    if attempt == 2 or not broken:
                        raise
                    self._close_console()
            raise AssertionError("unreachable")  # pragma: no cover

    def show(self, command: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console: ``show("POOLS")`` or ``show("SHOW POOLS")``.

        Rows are dicts keyed by column (``database``, ``user``, ``cl_active``,
        ``sv_idle``...). Other console commands: :meth:`admin`.
        """
        what = command.strip().rstrip(";").strip()
        if what.upper().startswith("SHOW "):
            what = what[5:].strip()
        if not _SHOW_RE.fullmatch(what):
            raise ValueError(f"not a SHOW command of the admin console: {command!r}")
        return self.admin(f"SHOW {what.upper()}")

    def pools(
        self, *, database: str | None = None, user: str | None = None
    ) -> list[dict[str, Any]]:
        """``SHOW POOLS`` rows, optionally only those of ``database`` / ``user``."""
        return [
            row
            for row in self.show("POOLS")
            if (database is None or row["database"] == database)
            and (user is None or row["user"] == user)
        ]

    def server_connections(
        self, *, database: str | None = None, user: str | None = None
    ) -> int:
        """Server connections PgBouncer holds (active, idle, used, tested, logging in)."""
        keys = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
        return sum(
            int(row.get(k) or 0)
            for row in self.pools(database=database, user=user)
            for k in keys
        )

    def _close_console(self) -> None:
        conn, self._console = self._console, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop PgBouncer (clients are cut off); :meth:`start` brings it back on the same port."""
        with self._console_lock:
            self._close_console()
        super().stop()

    def close(self) -> None:
        """Stop PgBouncer for good and remove its directory (the PostgreSQL server stays)."""
        with self._console_lock:
            self._close_console()
        super().close()


def _console_ident(name: str) -> str:
    if '"' in name or "\n" in name:
        raise ValueError(f"unsupported database name for the admin console: {name!r}")
    return name


def _client_certs(backend: PostgresServer, directory: Path) -> CertPaths:
    """The TLS files PgBouncer serves to clients: the server's own when we have its key."""
    source = backend.certs
    if source.server_cert.is_file() and source.server_key.is_file():
        directory.mkdir(mode=0o700)
        certs = CertPaths(
            directory=directory,
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",  # not copied: nothing is signed here
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
        )
        shutil.copyfile(source.ca_cert, certs.ca_cert)
        shutil.copyfile(source.server_cert, certs.server_cert)
        fd = os.open(certs.server_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(source.server_key.read_bytes())
        return certs
    hosts = [backend.host] if backend.host else []
    return generate_dev_certs(directory, hosts=hosts, clients=())


def start_pgbouncer(
    backend: PostgresServer,
    workdir: str | os.PathLike[str] | None = None,
    *,
    settings: Mapping[str, str | int] | None = None,
    timeout: float = 15.0,
) -> PgBouncerServer:
    """Start a PgBouncer in front of ``backend`` (see the module doc). ``close()`` it.

    ``settings``: extra or overriding ``[pgbouncer]`` settings (``{"default_pool_size": 4}``).
    """
    started = time.monotonic()
    binary = find_pgbouncer()
    run_as = system_user()
    base, owned = make_workdir(workdir, "multipool-pgbouncer-")
    controller = LocalPgBouncer(binary, base, owned=owned, run_as=run_as)
    bouncer: PgBouncerServer | None = None
    try:
        os.chmod(base, 0o700)
        client_certs = _client_certs(backend, base / "certs")
        server_ca = base / "certs" / "server-ca.crt"
        shutil.copyfile(backend.certs.ca_cert, server_ca)
        users: dict[str, TestUser] = {
            name: backend.users[name] for name in PGBOUNCER_USERS if name in backend.users
        }
        passwords = {name: user.password for name, user in users.items()}
        passwords[backend.admin_user] = backend.admin_password
        controller.write_auth_file(passwords)
        for attempt in range(3):
            controller.configure(
                port=free_port(),
                server_host=backend.host,
                server_port=backend.port,
                client_certs=client_certs,
                server_ca=server_ca,
                admin_user=backend.admin_user,
                settings=settings,
            )
            controller.chown()
            try:
                controller.start(timeout=timeout)
                break
            except ServerStartError as exc:
                if attempt == 2 or "bind" not in str(exc).lower():
                    raise
        bouncer = PgBouncerServer(
            backend_server=backend,
            host="127.0.0.1",
            port=controller.port,
            certs=client_certs,
            admin_user=backend.admin_user,
            admin_password=backend.admin_password,
            users=users,
            database=backend.database,
            admin_database=backend.admin_database,
            controller=controller,
        )
        bouncer.refresh_version()
    except BaseException:
        with contextlib.suppress(Exception):
            if bouncer is not None:
                bouncer.close()
            else:
                controller.close()
        raise
    bouncer._register(started)
    return bouncer
