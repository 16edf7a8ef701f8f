"""A MariaDB GTID replica of a test server, from the local binaries.

::

    from multipool.testing import start_mysql, start_mysql_replica
    with start_mysql() as primary, start_mysql_replica(primary) as replica:
        primary_write(...)
        replica.wait_for_replay()             # bounded wait until it is visible
        replica.positions()                   # ('0-123-42', '0-123-42')

How: a second ``mariadbd`` in a temporary directory on its own free port of
127.0.0.1, with ``read_only`` on and the primary's TLS files (same CA: every URL
and client certificate of the primary works on the replica). It gets the
primary's databases and users from ``mariadb-dump --single-transaction --gtid
--master-data --system=users`` (a consistent snapshot plus the GTID position it
stands for), loaded without writing the replica's own binary log; then
``gtid_slave_pos`` is set to that position and it replicates from there
(``MASTER_USE_GTID=slave_pos``) over TLS, verifying the primary's certificate,
as a replication user made for it on the primary (random password, kept in
memory and in the replica's ``master.info`` inside its 0700 directory;
:meth:`close` drops it). A dump rather than replaying the primary's binary log
from its first event: the session's primary already has databases and users,
and a binary log that was purged, or began after them, would lose them.

The accounts copied from the primary lose ``READ_ONLY ADMIN`` on the replica (in
the replica only), so that, as on a PostgreSQL hot standby, nobody but the
replication threads writes there: ``app`` and the admin get error 1290.

The primary must be MariaDB with a binary log with GTIDs (the local servers of
:mod:`multipool.testing.mysql` write one); a local primary is dumped over its Unix
socket as root (no password on disk), any other over TCP with TLS verify-full as
its admin user, whose password then sits in a 0600 option file in the replica's
temporary directory for the duration of the dump.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from multipool.certs import CertPaths
from multipool.testing.mysql import (
    LocalMariaDB,
    MySQLServer,
    drop_default_accounts,
    start_on_free_port,
)
from multipool.testing.servers import (
    ServerControlError,
    ServerStartError,
    make_workdir,
    new_password,
    poll,
    remove_tree,
    replica_certs,
    tail,
)

__all__ = ["MySQLReplica", "gtid_seq_nos", "start_replica"]

logger = logging.getLogger("multipool.testing")

#: ``mariadbd`` options of a replica (besides those of every local server)
REPLICA_OPTIONS = (
    "--read-only=ON",
    "--log-slave-updates=ON",
    "--relay-log=relay-bin",
)

_SYSTEM_DATABASES = frozenset({"mysql", "information_schema", "performance_schema", "sys"})


def gtid_seq_nos(position: str) -> dict[int, int]:
    """``{domain_id: seq_no}`` of a GTID position such as ``"0-1-42,1-7-9"``.

    Within a replication domain sequence numbers only grow (``gtid_strict_mode``),
    whichever server wrote them: positions compare domain by domain on them.
    """
    found: dict[int, int] = {}
    for gtid in position.split(","):
        gtid = gtid.strip()
        if gtid:
            domain, _server, seq_no = (int(part) for part in gtid.split("-"))
            found[domain] = max(seq_no, found.get(domain, 0))
    return found


class MySQLReplica(MySQLServer):
    """A read-only MariaDB replica following :attr:`primary` by GTID (same users and TLS)."""

    primary: MySQLServer
    #: the replication account on the primary
    replication_user: str = ""

    def positions(self) -> tuple[str, str]:
        """``(primary's @@gtid_binlog_pos, replica's @@gtid_slave_pos)``."""
        primary = str(self.primary.query("SELECT @@gtid_binlog_pos")[0][0])
        return primary, str(self.query("SELECT @@gtid_slave_pos")[0][0])

    def transactions_behind(self) -> int:
        """How many of the primary's transactions the replica has not applied yet (the
        sum over the replication domains of the sequence-number gaps)."""
        primary, replica = (gtid_seq_nos(p) for p in self.positions())
        return sum(max(0, seq - replica.get(domain, 0)) for domain, seq in primary.items())

    def replication_status(self) -> dict[str, Any]:
        """``SHOW SLAVE STATUS`` as a dict (empty when replication is not set up)."""
        with self._lock:
            self.query("DO 0")  # (re)connects the admin connection when it broke
            with contextlib.closing(self._admin_connection().cursor()) as cur:
                cur.execute("SHOW SLAVE STATUS")
                row = cur.fetchone()
                names = [column[0] for column in cur.description or ()]
        return dict(zip(names, row, strict=True)) if row else {}

    def wait_for_replay(self, timeout: float = 10.0) -> float:
        """Wait until the replica has applied everything the primary has logged so far.

        ``MASTER_GTID_WAIT`` on the replica for the primary's ``@@gtid_binlog_pos``
        of now; returns the seconds waited, raises ``TimeoutError`` after ``timeout``.
        """
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        target = str(self.primary.query("SELECT @@gtid_binlog_pos")[0][0])
        started = time.monotonic()
        result = self.query("SELECT MASTER_GTID_WAIT(%s, %s)", (target, float(timeout)))
        if result[0][0] == 0:
            return time.monotonic() - started
        status = self.replication_status()
        errors = "; ".join(
            f"{key}: {status[key]}"
            for key in ("Last_IO_Error", "Last_SQL_Error")
            if status.get(key)
        )
        raise TimeoutError(
            f"the replica on port {self.port} did not apply the primary's GTIDs up to {target} "
            f"within {timeout:g}s (it is at {self.query('SELECT @@gtid_slave_pos')[0][0]}; "
            f"IO thread {status.get('Slave_IO_Running')}, SQL thread "
            f"{status.get('Slave_SQL_Running')}{'; ' + errors if errors else ''})"
        )

    def lag(self) -> float | None:
        """``Seconds_Behind_Master`` (0 when caught up; ``None`` when unknown, e.g.
        while replay is paused or the primary is unreachable)."""
        value = self.replication_status().get("Seconds_Behind_Master")
        return None if value is None else float(value)

    def pause_replay(self) -> None:
        """``STOP SLAVE SQL_THREAD``: events are still received, not applied (the replica
        falls behind)."""
        self.query("STOP SLAVE SQL_THREAD")

    def resume_replay(self) -> None:
        self.query("START SLAVE SQL_THREAD")

    def create_database(self, name: str) -> None:
        raise ServerControlError("a replica is read-only: create databases on its primary")

    def drop_database(self, name: str) -> None:
        raise ServerControlError("a replica is read-only: drop databases on its primary")


class ReplicaMariaDB(LocalMariaDB):
    """:class:`LocalMariaDB` for a replica: replica options, and the replication user
    dropped on the primary on :meth:`close`."""

    def __init__(self, base: Path, *, owned: bool, primary: MySQLServer) -> None:
        super().__init__(base, owned=owned)
        self.primary = primary
        self.replication_user: str | None = None
        self.extra_options = REPLICA_OPTIONS
        self.description = f"GTID replica of {primary.host}:{primary.port}, local binaries"

    def drop_replication_user(self) -> None:
        """Drop the replication user on the primary (best effort)."""
        name, self.replication_user = self.replication_user, None
        if not name or getattr(self.primary, "_closed", False):
            return
        try:
            self.primary.query("DROP USER IF EXISTS %s@'%%'", (name,))
        except Exception as exc:
            logger.warning(
                "multipool: could not drop replication user %s (%s)", name, type(exc).__name__
            )

    def close(self) -> None:
        try:
            self.stop()
        finally:
            try:
                self.drop_replication_user()
            finally:
                if self.owned:
                    remove_tree(self.base)


def _root(controller: LocalMariaDB) -> Any:
    """A root connection over the server's Unix socket that writes no binary log."""
    import MySQLdb

    conn = MySQLdb.connect(
        unix_socket=str(controller.socket), user="root", autocommit=True, connect_timeout=10
    )
    with contextlib.closing(conn.cursor()) as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
    return conn


def _check_primary(primary: MySQLServer) -> None:
    if not primary.version:
        primary.refresh_version()
    if primary.flavor != "mariadb":
        raise ServerStartError(
            f"a MariaDB GTID replica needs a MariaDB primary, not {primary.flavor} "
            f"{primary.version} (use local binaries: MULTIPOOL_TEST_BACKEND=local)"
        )
    log_bin, binlog_format = primary.query("SELECT @@log_bin, @@binlog_format")[0]
    if not int(log_bin):
        raise ServerStartError(
            f"the primary {primary.host}:{primary.port} writes no binary log: a replica "
            "needs one (mariadbd --log-bin --server-id=N)"
        )
    if str(binlog_format).upper() != "ROW":
        logger.info("multipool: the primary logs in %s format (ROW is safest)", binlog_format)


def _dump_args(primary: MySQLServer, base: Path, primary_ca: Path) -> list[str]:
    """The connection arguments of ``mariadb-dump`` for ``primary``."""
    controller = primary.controller
    if isinstance(controller, LocalMariaDB):
        return ["--no-defaults", f"--socket={controller.socket}", "--user=root"]
    option_file = base / "dump.cnf"
    fd = os.open(option_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    password = primary.admin_password.replace("\\", "\\\\").replace('"', '\\"')
    with os.fdopen(fd, "w") as fh:
        fh.write(
            f'[client]\nhost={primary.host}\nport={primary.port}\nuser={primary.admin_user}\n'
            f'password="{password}"\nssl-ca={primary_ca}\nssl-verify-server-cert\n'
        )
    return [f"--defaults-file={option_file}"]


def _run(args: list[str], what: str, timeout: float, **kwargs: Any) -> None:
    """Run a client program; a clear :class:`ServerStartError` when it fails."""
    try:
        result = subprocess.run(
            args, stderr=subprocess.PIPE, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired:
        raise ServerStartError(f"{what} did not finish within {timeout:g}s") from None
    if result.returncode != 0:
        raise ServerStartError(
            f"{what} failed (exit {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()[-2000:]}"
        )


def _client(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ServerStartError(f"{names[0]} is not installed (Debian: apt-get install mariadb-client)")


def _dump(primary: MySQLServer, base: Path, primary_ca: Path, timeout: float) -> tuple[Path, str]:
    """Dump the primary's databases and users into a 0600 file; returns the file and
    the GTID position the dump stands for."""
    databases = sorted(
        str(row[0]) for row in primary.query("SHOW DATABASES")
        if str(row[0]) not in _SYSTEM_DATABASES
    )
    dump = base / "primary.sql"
    try:
        args = [
            _client("mariadb-dump", "mysqldump"), *_dump_args(primary, base, primary_ca),
            "--single-transaction", "--gtid", "--master-data=2", "--system=users",
            "--insert-ignore", "--routines", "--events", "--triggers", "--databases", *databases,
        ]
        with os.fdopen(os.open(dump, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            _run(args, "mariadb-dump of the primary", timeout, stdout=out)
        match = re.search(rb"gtid_slave_pos='([0-9,\-]*)'", dump.read_bytes())
        if match is None:
            raise ServerStartError("mariadb-dump wrote no GTID position (--gtid --master-data)")
    except BaseException:
        dump.unlink(missing_ok=True)  # it holds the primary's password hashes
        raise
    finally:
        (base / "dump.cnf").unlink(missing_ok=True)
    return dump, match.group(1).decode()


def _load(controller: ReplicaMariaDB, dump: Path, timeout: float) -> None:
    """Load the dump into the replica as root, without writing its binary log."""
    args = [
        _client("mariadb", "mysql"), "--no-defaults", f"--socket={controller.socket}",
        "--user=root", "--init-command=SET SESSION sql_log_bin = 0", "--batch",
    ]
    try:
        with dump.open("rb") as source:
            _run(args, "loading the primary's dump into the replica", timeout, stdin=source,
                 stdout=subprocess.DEVNULL)
    finally:
        dump.unlink(missing_ok=True)  # it holds the primary's password hashes


def _local_accounts(conn: Any) -> None:
    """The replica's own accounts after the load: root@localhost without a password over
    the Unix socket, no installer accounts, and ``READ_ONLY ADMIN`` taken from every
    other account (in the replica only)."""
    drop_default_accounts(conn)
    with contextlib.closing(conn.cursor()) as cur:
        cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY ''")
        cur.execute(
            "SELECT User, Host FROM mysql.user WHERE is_role = 'N' "
            "AND NOT (User = 'root' AND Host = 'localhost') AND User <> 'mariadb.sys'"
        )
        for user, host in cur.fetchall():
            cur.execute("REVOKE READ_ONLY ADMIN ON *.* FROM %s@%s", (user, host))


def _follow(
    conn: Any, primary: MySQLServer, position: str, user: str, password: str, primary_ca: Path
) -> None:
    """Point the replica at the primary from ``position`` on, over TLS, and start it."""
    statements: list[tuple[str, tuple[Any, ...]]] = [
        ("RESET MASTER", ()),
        ("SET GLOBAL gtid_slave_pos = %s", (position,)),
        (
            "CHANGE MASTER TO MASTER_HOST = %s, MASTER_PORT = %s, MASTER_USER = %s, "
            "MASTER_PASSWORD = %s, MASTER_SSL = 1, MASTER_SSL_CA = %s, "
            "MASTER_SSL_VERIFY_SERVER_CERT = 1, MASTER_USE_GTID = slave_pos, "
            "MASTER_CONNECT_RETRY = 1",
            (primary.host, int(primary.port), user, password, str(primary_ca)),
        ),
        ("START SLAVE", ()),
    ]
    with contextlib.closing(conn.cursor()) as cur:
        for sql, params in statements:
            cur.execute(sql, params or None)


def _wait_until_connected(
    replica: MySQLReplica, controller: ReplicaMariaDB, timeout: float
) -> None:
    """Both replication threads running (or a clear error with the log's tail)."""
    def running() -> bool:
        status = replica.replication_status()
        return status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"

    def failed() -> str | None:
        status = replica.replication_status()
        for key in ("Last_IO_Error", "Last_SQL_Error"):
            if status.get(key) and status.get(f"{key[:-6]}_Errno") not in (None, 0):
                return f"replication failed: {status[key]}"
        return None

    try:
        poll(running, timeout=timeout, failure=failed)
    except ServerStartError as exc:
        raise ServerStartError(
            f"the MariaDB replica did not connect to its primary: {exc}\n"
            f"--- {controller.error_log.name} ---\n{tail(controller.error_log)}"
        ) from None


def _make_replica(
    controller: ReplicaMariaDB, primary: MySQLServer, certs: CertPaths
) -> MySQLReplica:
    replica = MySQLReplica(
        host="127.0.0.1", port=controller.port, certs=certs, admin_user=primary.admin_user,
        admin_password=primary.admin_password, users=dict(primary.users),
        database=primary.database, controller=controller,
    )
    replica.primary = primary
    replica.replication_user = controller.replication_user or ""
    return replica


def start_replica(
    primary: MySQLServer,
    workdir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 60.0,
) -> MySQLReplica:
    """Start a GTID replica of ``primary`` (see the module doc). ``close()`` it."""
    started = time.monotonic()
    _check_primary(primary)
    base, owned = make_workdir(workdir, "multipool-mysql-replica-")
    controller = ReplicaMariaDB(base, owned=owned, primary=primary)
    replica: MySQLReplica | None = None
    try:
        os.chmod(base, 0o700)
        controller.certs, client_certs = replica_certs(primary.certs, base / "certs")
        primary_ca = controller.certs.directory / "primary-ca.crt"
        shutil.copyfile(primary.certs.ca_cert, primary_ca)
        controller.install()
        start_on_free_port(controller)
        user, password = f"multipool_repl_{secrets.token_hex(4)}", new_password()
        primary.query("CREATE USER %s@'%%' IDENTIFIED BY %s REQUIRE SSL", (user, password))
        controller.replication_user = user
        primary.query("GRANT REPLICATION SLAVE ON *.* TO %s@'%%'", (user,))
        dump, position = _dump(primary, base, primary_ca, timeout)
        # opened before the load: the dump may carry another password for root@localhost
        with contextlib.closing(_root(controller)) as conn:
            _load(controller, dump, timeout)
            _local_accounts(conn)
            _follow(conn, primary, position, user, password, primary_ca)
        replica = _make_replica(controller, primary, client_certs)
        replica.refresh_version()
        _wait_until_connected(replica, controller, timeout)
        replica.wait_for_replay(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            if replica is not None:
                replica.close()
            else:
                controller.close()
        raise
    replica._register(started)
    return replica
