"""MySQL/MariaDB test server: the server object, its users and database, and local binaries.

Containers: :mod:`multipool.testing.containers`; existing servers:
:mod:`multipool.testing.external`; which one: :mod:`multipool.testing.start`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO, Any

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
    poll,
    remove_tree,
    tail,
)

__all__ = ["SSL_MODES", "LocalMariaDB", "MySQLServer", "start_local"]

CLIENT_CERT_USERS = ("certuser", "app")
ADMIN_USER = "admin"

#: multipool's TLS mode names -> MySQL ``ssl_mode`` values.
SSL_MODES = {
    "disable": "DISABLED",
    "require": "REQUIRED",
    "verify-ca": "VERIFY_CA",
    "verify-full": "VERIFY_IDENTITY",
}

#: Client error codes meaning the connection is gone.
DISCONNECT_CODES = frozenset({2006, 2013, 2055, 4031})

SERVER_OPTIONS = (
    "--skip-name-resolve",
    "--max-connections=300",
    "--max-connect-errors=1000000",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-buffer-pool-size=64M",
    "--sync-binlog=0",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_unicode_ci",
    "--performance-schema=OFF",
)

#: Local MariaDB servers write a binary log with GTIDs, so that a replica
#: (:mod:`multipool.testing.mysql_replica`) can follow them; each server adds its own
#: ``--server-id``. Files older than a day are purged when one fills up (64 MB). With a
#: binary log, users without SUPER may create functions and triggers only with
#: ``log_bin_trust_function_creators``.
BINLOG_OPTIONS = (
    "--log-bin=mariadb-bin",
    "--binlog-format=ROW",
    "--gtid-strict-mode=ON",
    "--binlog-expire-logs-seconds=86400",
    "--max-binlog-size=64M",
    "--log-bin-trust-function-creators=ON",
)


def _quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _ssl_mode(tls: str) -> str:
    if tls in SSL_MODES:
        return SSL_MODES[tls]
    if tls.upper() in SSL_MODES.values():
        return tls.upper()
    raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {tls!r}")


class MySQLServer(TestServer):
    """A MySQL or MariaDB server for tests (see :class:`~multipool.testing.servers.TestServer`)."""

    engine = "mysql"
    flavor = "mysql"
    default_scheme = "mysql"

    def connect_params(
        self,
        user: str = "app",
        *,
        tls: str = "verify-full",
        client_cert: bool = False,
        database: str | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments for ``MySQLdb.connect``."""
        ssl_mode = _ssl_mode(tls)
        who = self.user(user)
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": who.name,
            "password": who.password,
            "ssl_mode": ssl_mode,
            "charset": "utf8mb4",
            "connect_timeout": 10,
        }
        if database != "":
            params["database"] = database or self.database
        if ssl_mode != "DISABLED":
            ssl = {"ca": str(self.certs.ca_cert)}
            if client_cert:
                cert, key = self.certs.client(who.name)
                ssl.update(cert=str(cert), key=str(key))
            params["ssl"] = ssl
        elif client_cert:
            raise ValueError("client_cert=True needs TLS (tls must not be 'disable')")
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
        """``mysql://user:password@host:port/db?ssl_mode=...&ssl_ca=...``.

        The user name and password are percent-encoded.
        """
        params = self.connect_params(user, tls=tls, client_cert=client_cert, database=database)
        query = [("ssl_mode", params["ssl_mode"])]
        for key in ("ca", "cert", "key"):
            if key in params.get("ssl", {}):
                query.append((f"ssl_{key}", params["ssl"][key]))
        return self._format_url(
            scheme, params["user"], params["password"], params.get("database", ""), query
        )

    def connect_admin(self) -> Any:
        import MySQLdb

        params = self.connect_params(
            self.admin_user, database="", tls="verify-full" if self.tls else "disable"
        )
        return MySQLdb.connect(**params, autocommit=True)

    # -- admin queries ------------------------------------------------------------

    def _connection_error_types(self) -> tuple[type[BaseException], ...]:
        import MySQLdb

        return (MySQLdb.OperationalError, MySQLdb.InterfaceError)

    def _is_broken(self, conn: Any) -> bool:
        if not getattr(conn, "open", 0):
            return True
        # MySQLdb keeps ``open`` set after the server went away; remember failures.
        return bool(getattr(conn, "_multipool_broken", False))

    def _execute(self, conn: Any, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with contextlib.closing(conn.cursor()) as cur:
                cur.execute(sql, params or None)
                if cur.description is None:
                    return []
                return [tuple(row) for row in cur.fetchall()]
        except self._connection_error_types() as exc:
            if exc.args and exc.args[0] in DISCONNECT_CODES:
                conn._multipool_broken = True
            raise

    def connection_ids(
        self, *, user: str | None = None, database: str | None = None
    ) -> set[int]:
        """Processlist ids of the client connections (the asking admin connection and
        server threads excluded)."""
        sql = (
            "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
            "AND COMMAND NOT IN ('Daemon', 'Killed', 'Binlog Dump', 'Binlog Dump GTID') "
            "AND USER NOT IN ('system user', 'event_scheduler', 'unauthenticated user')"
        )
        params: list[Any] = []
        if user is not None:
            sql += " AND USER = %s"
            params.append(user)
        if database is not None:
            sql += " AND DB = %s"
            params.append(database)
        return {int(row[0]) for row in self.query(sql, tuple(params))}

    def terminate(self, *, user: str | None = None, database: str | None = None) -> int:
        """``KILL`` the matching client connections; waits until they are gone (up to
        5 s) and returns how many were killed."""
        import MySQLdb

        killed: set[int] = set()
        for thread_id in sorted(self.connection_ids(user=user, database=database)):
            try:
                self.query("KILL CONNECTION %s", (thread_id,))
            except MySQLdb.OperationalError as exc:
                if exc.args and exc.args[0] == 1094:  # unknown thread: already gone
                    continue
                raise
            killed.add(thread_id)
        deadline = time.monotonic() + 5
        while killed & self.connection_ids() and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(killed)

    def create_database(self, name: str) -> None:
        self.query(
            f"CREATE DATABASE {_quote_ident(name)} "
            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )

    def drop_database(self, name: str) -> None:
        self.query(f"DROP DATABASE IF EXISTS {_quote_ident(name)}")

    def refresh_version(self) -> None:
        raw = str(self.query("SELECT VERSION()")[0][0])
        self.flavor = "mariadb" if "mariadb" in raw.lower() else "mysql"
        match = re.match(r"\d+\.\d+\.\d+(-MariaDB)?", raw)
        self.version = match.group(0) if match else raw


def default_users(derive_from: str | None = None) -> dict[str, TestUser]:
    """``app`` (TLS required; password with URL-special characters), ``certuser``
    (REQUIRE X509, with a password) and ``plain`` (no TLS requirement).

    ``derive_from``: see :func:`~multipool.testing.servers.new_password`.
    """
    return {
        name: TestUser(name, new_password(name == "app", derive_from=derive_from, name=name))
        for name in ("app", "certuser", "plain")
    }


def bootstrap(
    conn: Any,
    *,
    users: dict[str, TestUser],
    database: str,
    admin_user: str,
    admin_password: str | None,
) -> None:
    """Create (or update) the users and the database of the contract over ``conn``
    (a MySQLdb connection with full privileges). ``admin_password=None`` leaves the
    admin account alone (external servers)."""
    requirements = {"app": "SSL", "certuser": "X509", "plain": "NONE"}
    db = _quote_ident(database)
    statements: list[tuple[str, tuple[Any, ...]]] = []
    if admin_password is not None:
        statements += [
            ("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (admin_user, admin_password)),
            ("ALTER USER %s@'%%' IDENTIFIED BY %s", (admin_user, admin_password)),
            ("GRANT ALL PRIVILEGES ON *.* TO %s@'%%' WITH GRANT OPTION", (admin_user,)),
        ]
    statements.append(
        (f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci", ())
    )
    for name, user in users.items():
        require = requirements.get(name, "SSL")
        statements += [
            (f"CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s REQUIRE {require}",
             (name, user.password)),
            (f"ALTER USER %s@'%%' IDENTIFIED BY %s REQUIRE {require}", (name, user.password)),
        ]
        if name == "app":
            # Django's test runner creates and drops test_* databases.
            statements.append(("GRANT ALL PRIVILEGES ON *.* TO %s@'%%'", (name,)))
        else:
            statements += [
                (f"GRANT ALL PRIVILEGES ON {db}.* TO %s@'%%'", (name,)),
                ("GRANT ALL PRIVILEGES ON `test\\_%%`.* TO %s@'%%'", (name,)),
            ]
    with contextlib.closing(conn.cursor()) as cur:
        for sql, params in statements:
            cur.execute(sql, params or None)


# -- local binaries -------------------------------------------------------------------


def _find(*names: str, extra_dirs: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
        for directory in extra_dirs:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    raise ServerStartError(
        f"MariaDB server binaries not found ({' / '.join(names)}): install them "
        "(Debian: apt-get install mariadb-server) or set MULTIPOOL_TEST_MYSQLD"
    )


class LocalMariaDB:
    """A ``mariadbd`` child process in a temp dir, stopped by its own pid."""

    backend = "local"
    description = "local binaries"

    def __init__(self, base: Path, *, owned: bool, tls: bool = True) -> None:
        self.base = base
        self.owned = owned
        self.tls = tls
        self.data = base / "data"
        self.socket = base / "mysqld.sock"
        self.error_log = base / "error.log"
        self.tmpdir = base / "tmp"
        self.mysqld = os.environ.get("MULTIPOOL_TEST_MYSQLD") or _find("mariadbd", "mysqld")
        self.port = 0
        #: unique among the servers of one replication setup (the primary is not its replica)
        self.server_id = secrets.randbelow(2**31 - 2) + 1
        #: more ``mariadbd`` options (a replica's)
        self.extra_options: tuple[str, ...] = ()
        self.certs: CertPaths | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (benchmarks pin it)."""
        process = self.process
        return process.pid if process is not None and process.poll() is None else None

    def install(self) -> None:
        installer = _find("mariadb-install-db", "mysql_install_db")
        self.tmpdir.mkdir(exist_ok=True)
        args = [
            # its own temporary directory: concurrent installs in /tmp collide
            installer, "--no-defaults", f"--datadir={self.data}", f"--tmpdir={self.tmpdir}",
            "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        result = subprocess.run(
            args, capture_output=True, text=True, cwd=self.base, timeout=120, check=False
        )
        if result.returncode != 0:
            raise ServerStartError(
                f"{Path(installer).name} failed (exit {result.returncode}):\n"
                f"{(result.stderr or result.stdout)[-3000:]}"
            )

    def args(self) -> list[str]:
        assert self.certs is not None
        args = [
            self.mysqld, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.socket}",
            f"--pid-file={self.base / 'mysqld.pid'}", f"--log-error={self.error_log}",
            f"--tmpdir={self.tmpdir}", *SERVER_OPTIONS, *BINLOG_OPTIONS,
            f"--server-id={self.server_id}", *self.extra_options,
        ]
        if self.tls:
            args += [
                f"--ssl-ca={self.certs.ca_cert}", f"--ssl-cert={self.certs.server_cert}",
                f"--ssl-key={self.certs.server_key}",
            ]
        else:
            args.append("--skip-ssl")
        if os.geteuid() == 0:
            args.append("--user=root")
        return args

    def _socket_answers(self) -> bool:
        import MySQLdb

        if not self.socket.exists():
            return False
        try:
            MySQLdb.connect(unix_socket=str(self.socket), user="root", connect_timeout=2).close()
        except MySQLdb.Error:
            return False
        return True

    def _exited(self) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            return (
                f"mariadbd exited with code {self.process.returncode}\n"
                f"--- {self.error_log.name} ---\n{tail(self.error_log)}\n"
                f"--- mysqld.out ---\n{tail(self.base / 'mysqld.out')}"
            )
        return None

    def start(self) -> None:
        if self.is_running():
            return
        self.tmpdir.mkdir(exist_ok=True)
        self._output = (self.base / "mysqld.out").open("ab")
        self.process = subprocess.Popen(
            self.args(), stdin=subprocess.DEVNULL, stdout=self._output,
            stderr=subprocess.STDOUT, cwd=self.base, start_new_session=True,
        )
        try:
            poll(self._socket_answers, timeout=60, failure=self._exited)
        except ServerStartError as exc:
            self.stop()
            message = str(exc)
            if "exited" not in message:
                message += f"\n--- {self.error_log.name} ---\n{tail(self.error_log)}"
            raise ServerStartError(f"MariaDB did not start: {message}") from None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        finally:
            if self._output is not None:
                self._output.close()
                self._output = None
        if process is not None and process.poll() is None:  # pragma: no cover
            raise ServerControlError(f"could not stop mariadbd (pid {process.pid})")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.owned:
                remove_tree(self.base)


def start_on_free_port(controller: LocalMariaDB) -> None:
    """Start ``controller`` on a free port of 127.0.0.1 (two more tries if the port is
    taken meanwhile)."""
    for attempt in range(3):
        controller.port = free_port()
        try:
            controller.start()
            return
        except ServerStartError as exc:
            if attempt == 2 or "Address already in use" not in str(exc):
                raise


def drop_default_accounts(conn: Any) -> None:
    """Remove the password-less TCP root accounts and anonymous users the installer made
    (root@localhost stays: it only works over our private unix socket)."""
    with contextlib.closing(conn.cursor()) as cur:
        cur.execute("SELECT User, Host FROM mysql.user WHERE User = '' OR "
                    "(User = 'root' AND Host <> 'localhost')")
        for user, host in cur.fetchall():
            cur.execute("DROP USER %s@%s", (user, host))


def start_local(
    workdir: str | os.PathLike[str] | None = None, *, tls: bool = True
) -> MySQLServer:
    """mariadb-install-db + mariadbd in a temporary directory, on a free 127.0.0.1 port.

    ``tls=False``: a server with TLS off (``--skip-ssl``); only ``plain`` can
    log in there (the other users require TLS).
    """
    import MySQLdb

    started = time.monotonic()
    base, owned = make_workdir(workdir, "multipool-mysql-")
    controller = LocalMariaDB(base, owned=owned, tls=tls)
    try:
        os.chmod(base, 0o700)
        controller.certs = certs = generate_dev_certs(base / "certs", clients=CLIENT_CERT_USERS)
        controller.install()
        start_on_free_port(controller)
        admin_password = new_password()
        users = default_users()
        with contextlib.closing(
            MySQLdb.connect(unix_socket=str(controller.socket), user="root", autocommit=True)
        ) as conn:
            drop_default_accounts(conn)
            bootstrap(conn, users=users, database="multipool",
                      admin_user=ADMIN_USER, admin_password=admin_password)
        server = MySQLServer(
            host="127.0.0.1", port=controller.port, certs=certs, admin_user=ADMIN_USER,
            admin_password=admin_password, users=users, database="multipool",
            controller=controller, tls=tls,
        )
        server.refresh_version()
    except BaseException:
        controller.close()
        raise
    server._register(started)
    return server
