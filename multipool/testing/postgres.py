"""PostgreSQL test server: the server object, its users and database, and local binaries.

Containers: :mod:`multipool.testing.containers`; existing servers:
:mod:`multipool.testing.external`; which one: :mod:`multipool.testing.start`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multipool.certs import CertPaths, generate_dev_certs
from multipool.testing.servers import (
    TLS_MODES,
    ServerControlError,
    ServerStartError,
    TestServer,
    TestUser,
    free_port,
    make_workdir,
    new_password,
    remove_tree,
    tail,
)

__all__ = [
    "LocalPostgres",
    "PostgresServer",
    "find_bindir",
    "pg_hba",
    "server_connect",
    "start_local",
    "system_user",
]

CLIENT_CERT_USERS = ("certuser", "app")
ADMIN_USER = "admin"
APP_NAME = "multipool-testing-admin"
PG_USER = "postgres"  # system account that runs the local server when we are root


def pg_hba(address: str = "127.0.0.1/32", *, tls: bool = True) -> str:
    """The pg_hba.conf of the test servers (``address``: ``127.0.0.1/32`` or ``all``).

    ``tls=False``: a server without TLS, where every user logs in with a password.
    """
    rules = [
        ("local", "all", "all", "", "trust"),
        ("local", "replication", "all", "", "trust"),
    ]
    if tls:
        rules += [
            ("hostssl", "all", "certuser", address, "cert"),
            ("hostssl", "all", "all", address, "scram-sha-256"),
            ("hostnossl", "all", "plain", address, "scram-sha-256"),
            ("hostnossl", "all", "all", address, "reject"),
            ("hostssl", "replication", "all", address, "scram-sha-256"),
        ]
    else:
        rules.append(("host", "all", "all", address, "scram-sha-256"))
    lines = ["# multipool test server (generated)"]
    lines += [" ".join(part for part in rule if part) for rule in rules]
    return "\n".join(lines) + "\n"


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


PERFORMANCE_SETTINGS: dict[str, str | int] = {
    "max_connections": 200,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "replica",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "shared_buffers": "64MB",
    "jit": "off",
    "password_encryption": "scram-sha-256",
    # A failing statement is never written to the log: it may hold a password.
    "log_min_error_statement": "panic",
}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PostgresServer(TestServer):
    """A PostgreSQL server for tests (see :class:`~multipool.testing.servers.TestServer`)."""

    engine = "postgresql"
    flavor = "postgresql"
    default_scheme = "postgresql"

    server_version_num: int = 0

    # -- connection parameters ---------------------------------------------------

    def connect_params(
        self,
        user: str = "app",
        *,
        tls: str = "verify-full",
        client_cert: bool = False,
        database: str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` / ``psycopg2.connect``."""
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {tls!r}")
        who = self.user(user)
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": who.name,
            "dbname": database or self.database,
            "sslmode": tls,
        }
        if who.password:
            params["password"] = who.password
        if tls != "disable":
            params["sslrootcert"] = str(self.certs.ca_cert)
        if client_cert:
            if tls == "disable":
                raise ValueError("client_cert=True needs TLS (tls must not be 'disable')")
            cert, key = self.certs.client(who.name)
            params["sslcert"] = str(cert)
            params["sslkey"] = str(key)
        return params

    def url(
        self,
        user: str = "app",
        *,
        tls: str = "verify-full",
        client_cert: bool = False,
        database: str | None = None,
        scheme: str | None = None,
    ) -> str:
        """``postgresql://user:password@host:port/db?sslmode=...&sslrootcert=...``.

        The user name and password are percent-encoded.
        """
        params = self.connect_params(user, tls=tls, client_cert=client_cert, database=database)
        query = [("sslmode", tls)]
        query += [(k, params[k]) for k in ("sslrootcert", "sslcert", "sslkey") if k in params]
        return self._format_url(
            scheme, params["user"], params.get("password"), params["dbname"], query
        )

    def connect_admin(self) -> Any:
        import psycopg

        params = self.connect_params(
            self.admin_user,
            database=self.admin_database or "postgres",
            tls="verify-full" if self.tls else "disable",
        )
        return psycopg.connect(
            **params, autocommit=True, connect_timeout=10, application_name=APP_NAME
        )

    # -- admin queries ------------------------------------------------------------

    def _connection_error_types(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (psycopg.OperationalError, psycopg.InterfaceError)

    def _is_broken(self, conn: Any) -> bool:
        return bool(conn.closed or conn.broken)

    def _execute(self, conn: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(sql, params or None)
            if cur.description is None:
                return []
            return [tuple(row) for row in cur.fetchall()]

    def connection_ids(
        self, *, user: str | None = None, database: str | None = None
    ) -> set[int]:
        """Backend pids of the client connections (the asking admin connection excluded)."""
        sql = (
            "SELECT pid FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        params: list[Any] = []
        if user is not None:
            sql += " AND usename = %s"
            params.append(user)
        if database is not None:
            sql += " AND datname = %s"
            params.append(database)
        return {int(row[0]) for row in self.query(sql, tuple(params))}

    def terminate(self, *, user: str | None = None, database: str | None = None) -> int:
        """``pg_terminate_backend`` the matching client connections; waits until they
        are gone (up to 5 s) and returns how many were signalled."""
        pids = self.connection_ids(user=user, database=database)
        if not pids:
            return 0
        call = "pg_terminate_backend(pid, 5000)" if self.server_version_num >= 140000 else (
            "pg_terminate_backend(pid)"
        )
        rows = self.query(
            f"SELECT count(*) FILTER (WHERE ok) FROM "
            f"(SELECT {call} AS ok FROM unnest(%s::int[]) AS pid) AS t",
            (sorted(pids),),
        )
        deadline = time.monotonic() + 5
        while pids & self.connection_ids() and time.monotonic() < deadline:
            time.sleep(0.02)
        return int(rows[0][0])

    def create_database(self, name: str) -> None:
        owner = " OWNER app" if "app" in self.users else ""
        self.query(f"CREATE DATABASE {_quote_ident(name)}{owner}")

    def drop_database(self, name: str) -> None:
        force = " WITH (FORCE)" if self.server_version_num >= 130000 else ""
        self.query(f"DROP DATABASE IF EXISTS {_quote_ident(name)}{force}")

    def refresh_version(self) -> None:
        rows = self.query("SELECT current_setting('server_version'), "
                          "current_setting('server_version_num')::int")
        self.version = str(rows[0][0]).split()[0]
        self.server_version_num = int(rows[0][1])


def default_users(derive_from: str | None = None) -> dict[str, TestUser]:
    """``app`` (password with URL-special characters), ``certuser`` (client
    certificate, no password) and ``plain`` (allowed without TLS).

    ``derive_from``: see :func:`~multipool.testing.servers.new_password`.
    """
    return {
        "app": TestUser("app", new_password(True, derive_from=derive_from, name="app")),
        "certuser": TestUser("certuser", ""),
        "plain": TestUser("plain", new_password(derive_from=derive_from, name="plain")),
    }


def bootstrap(
    connect: Callable[[str], Any],
    *,
    users: dict[str, TestUser],
    database: str,
    admin_user: str,
    admin_password: str | None,
) -> None:
    """Create (or update) the roles and the database of the contract.

    ``connect(dbname)`` returns an autocommit psycopg connection as a superuser.
    ``admin_password=None`` leaves the admin role alone (external servers).
    """
    from psycopg import sql

    attributes = {"app": "LOGIN CREATEDB", "certuser": "LOGIN", "plain": "LOGIN"}
    with contextlib.closing(connect("postgres")) as conn:
        if admin_password is not None:
            conn.execute(
                sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                    sql.Identifier(admin_user), sql.Literal(admin_password)
                )
            )
        for name, user in users.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            password = sql.Literal(user.password) if user.password else sql.SQL("NULL")
            conn.execute(
                sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                    sql.SQL("ALTER" if exists else "CREATE"),
                    sql.Identifier(name),
                    sql.SQL(attributes.get(name, "LOGIN")),
                    password,
                )
            )
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        db = sql.Identifier(database)
        if exists:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO app").format(db))
        else:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER app").format(db))
        others = sql.SQL(", ").join(sql.Identifier(n) for n in users if n != "app")
        conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, others))
    with contextlib.closing(connect(database)) as conn:
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(others))
        for kind in ("TABLES", "SEQUENCES"):
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public "
                    "GRANT ALL ON " + kind + " TO {}"
                ).format(others)
            )


def server_connect(server: PostgresServer, dbname: str) -> Any:
    """A TLS (verify-full) autocommit admin connection to ``dbname``."""
    import psycopg

    params = server.connect_params(server.admin_user, database=dbname)
    return psycopg.connect(**params, autocommit=True, connect_timeout=10, application_name=APP_NAME)


# -- local binaries ---------------------------------------------------------------


def find_bindir() -> Path:
    """The directory holding ``initdb``/``pg_ctl``/``postgres``.

    ``MULTIPOOL_TEST_PG_BINDIR``, then ``pg_config --bindir``, then the newest
    ``/usr/lib/postgresql/*/bin``, then ``PATH``.
    """
    candidates: list[Path] = []
    if os.environ.get("MULTIPOOL_TEST_PG_BINDIR"):
        candidates.append(Path(os.environ["MULTIPOOL_TEST_PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version_key(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key)[::-1]
    ]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise ServerStartError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install them "
        "(Debian: apt-get install postgresql) or set MULTIPOOL_TEST_PG_BINDIR"
    )


class LocalPostgres:
    """A postgres server from the local binaries, run by ``pg_ctl`` in a temp dir."""

    backend = "local"
    description = "local binaries"

    def __init__(self, bindir: Path, base: Path, *, owned: bool, run_as: str | None) -> None:
        self.bindir = bindir
        self.base = base
        self.owned = owned
        self.run_as = run_as
        self.data = base / "data"
        self.socket_dir = base / "run"
        self.log = base / "postgresql.log"
        #: variables added to the tools' environment (may set ``PG*``)
        self.extra_env: dict[str, str] = {}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the server's system user."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        env.update(self.extra_env)
        kwargs: dict[str, Any] = {}
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.base)
            env["USER"] = env["LOGNAME"] = self.run_as
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.base,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def chown(self, certs: CertPaths | None = None) -> None:
        """Give the server's files to its system user (client keys stay ours)."""
        if self.run_as is None:
            return
        entry = pwd.getpwnam(self.run_as)
        paths = [self.base, self.socket_dir]
        if certs is not None:
            paths += [certs.directory, certs.ca_cert, certs.server_cert, certs.server_key]
        if self.log.exists():
            paths.append(self.log)
        for root, dirs, files in os.walk(self.data):
            paths += [Path(root), *(Path(root) / n for n in dirs + files)]
        for path in paths:
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def initdb(self) -> None:
        result = self.run(
            "initdb", "-D", str(self.data), "-U", ADMIN_USER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "-N",
        )
        if result.returncode != 0:
            hint = ""
            if self.run_as is not None:
                hint = (
                    f"\n(initdb runs as the '{self.run_as}' system user: it must be able to "
                    f"reach {self.base}, so every parent directory needs o+x)"
                )
            raise ServerStartError(
                f"initdb failed (exit {result.returncode}):\n"
                f"{(result.stderr or result.stdout).strip()}{hint}"
            )

    def configure(self, port: int, certs: CertPaths, *, tls: bool = True) -> None:
        settings: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "port": port,
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            "ssl": "on" if tls else "off",
            **PERFORMANCE_SETTINGS,
        }
        if tls:
            settings.update(
                ssl_cert_file=str(certs.server_cert),
                ssl_key_file=str(certs.server_key),
                ssl_ca_file=str(certs.ca_cert),
            )
        text = "".join(f"{k} = {_conf_value(v)}\n" for k, v in settings.items())
        (self.data / "multipool.conf").write_text("# multipool test server\n" + text)
        conf = self.data / "postgresql.conf"
        if "include 'multipool.conf'" not in conf.read_text():
            with conf.open("a") as fh:
                fh.write("\ninclude 'multipool.conf'\n")
        (self.data / "pg_hba.conf").write_text(pg_hba("127.0.0.1/32", tls=tls))
        self.chown(certs)

    def start(self) -> None:
        if self.is_running():
            return
        result = self.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start"
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"pg_ctl start failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}\n--- {self.log.name} ---\n"
                f"{tail(self.log)}"
            )

    def _pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while the server runs (benchmarks pin it)."""
        return self._pid() if self.is_running() else None

    def is_running(self) -> bool:
        pid = self._pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, mode: str = "fast") -> None:
        if not self.is_running():
            return
        result = self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
        if result.returncode != 0 and self.is_running():
            pid = self._pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.is_running():
                raise ServerControlError(f"could not stop PostgreSQL: {result.stderr.strip()}")

    def close(self) -> None:
        try:
            self.stop(mode="immediate")
        finally:
            if self.owned:
                remove_tree(self.base)


def system_user() -> str | None:
    """Who runs the local server: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServerStartError(
            "PostgreSQL refuses to run as root and there is no 'postgres' system user "
            "(create one, or run the tests as an unprivileged user)"
        ) from None
    return PG_USER


def start_local(
    workdir: str | os.PathLike[str] | None = None, *, tls: bool = True
) -> PostgresServer:
    """initdb + pg_ctl in a temporary directory, on a free port of 127.0.0.1.

    ``tls=False``: a server with TLS off (``ssl = off``), for tests of what a
    client that requires TLS does when the server has none.
    """
    import psycopg

    started = time.monotonic()
    bindir = find_bindir()
    run_as = system_user()
    base, owned = make_workdir(workdir, "multipool-pg-")
    controller = LocalPostgres(bindir, base, owned=owned, run_as=run_as)
    try:
        os.chmod(base, 0o700)
        certs = generate_dev_certs(base / "certs", clients=CLIENT_CERT_USERS)
        controller.socket_dir.mkdir(mode=0o700)
        controller.chown()
        controller.initdb()
        for attempt in range(3):
            port = free_port()
            controller.configure(port, certs, tls=tls)
            try:
                controller.start()
                break
            except ServerStartError:
                if attempt == 2 or "could not bind" not in tail(controller.log):
                    raise
        admin_password = new_password()
        users = default_users()

        def connect(dbname: str) -> Any:
            return psycopg.connect(
                host=str(controller.socket_dir), port=port, user=ADMIN_USER, dbname=dbname,
                autocommit=True, connect_timeout=10, application_name=APP_NAME,
            )

        bootstrap(
            connect, users=users, database="multipool",
            admin_user=ADMIN_USER, admin_password=admin_password,
        )
        server = PostgresServer(
            host="127.0.0.1", port=port, certs=certs, admin_user=ADMIN_USER,
            admin_password=admin_password, users=users, database="multipool",
            admin_database="postgres", controller=controller, tls=tls,
        )
        server.refresh_version()
    except BaseException:
        controller.close()
        raise
    server._register(started)
    return server
