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
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multipool.certs import CertPaths, generate_dev_certs
from multipool.testing.pgbouncer_process import (
    ENV_PGBOUNCER,
    PGBOUNCER_SETTINGS,
    LocalPgBouncer,
    find_pgbouncer,
)
from multipool.testing.postgres import PostgresServer, system_user
from multipool.testing.servers import (
    TLS_MODES,
    ServerStartError,
    free_port,
    make_workdir,
)

__all__ = [
    "ENV_PGBOUNCER",
    "PGBOUNCER_SETTINGS",
    "LocalPgBouncer",
    "PgBouncerServer",
    "find_pgbouncer",
    "start_pgbouncer",
]

#: users whose passwords go to the auth_file (besides the admin user)
PGBOUNCER_USERS = ("app", "plain")

_SHOW_RE = re.compile(r"[A-Za-z_]+")


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
    base, owned = make_workdir(workdir, "multipool-pgbouncer-")
    controller = LocalPgBouncer(find_pgbouncer(), base, owned=owned, run_as=system_user())
    bouncer: PgBouncerServer | None = None
    try:
        os.chmod(base, 0o700)
        client_certs = _client_certs(backend, base / "certs")
        users = {name: backend.users[name] for name in PGBOUNCER_USERS if name in backend.users}
        passwords = {name: user.password for name, user in users.items()}
        controller.write_auth_file({**passwords, backend.admin_user: backend.admin_password})
        _start_on_a_free_port(controller, backend, client_certs, settings, timeout)
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


def _start_on_a_free_port(
    controller: LocalPgBouncer,
    backend: PostgresServer,
    client_certs: CertPaths,
    settings: Mapping[str, str | int] | None,
    timeout: float,
) -> None:
    """Configure and start PgBouncer; a port taken in the meantime gets two more tries."""
    server_ca = client_certs.directory / "server-ca.crt"
    shutil.copyfile(backend.certs.ca_cert, server_ca)
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
            return
        except ServerStartError as exc:
            if attempt == 2 or "bind" not in str(exc).lower():
                raise
