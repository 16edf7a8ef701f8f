"""A PostgreSQL streaming replica of a test server, from the local binaries.

::

    from multipool.testing import start_postgres, start_postgres_replica
    with start_postgres() as primary, start_postgres_replica(primary) as replica:
        primary_write(...)
        replica.wait_for_replay()             # bounded wait until it is visible
        replica.query("SELECT pg_is_in_recovery()")   # [(True,)]

How: ``pg_basebackup -R -X stream -C -S <slot>`` of the primary into a
temporary directory (run as the ``postgres`` system user when we are root,
exactly like the primary), then ``pg_ctl start`` on its own free port of
127.0.0.1 with ``hot_standby = on``, the same TLS files (same CA: every URL and
client certificate of the primary works on the replica) and the same
``pg_hba.conf``. The physical replication slot keeps the primary's WAL while the
replica is stopped, so :meth:`~multipool.testing.TestServer.stop` /
:meth:`~multipool.testing.TestServer.start` let it catch up; :meth:`close` drops
the slot.

A primary from the local binaries is copied over its Unix socket (``local
replication trust``: no password on disk); any other primary (container,
external) over TCP with TLS verify-full as its admin user, whose password then
ends up in the replica's ``postgresql.auto.conf`` (mode 0600, temporary
directory). The local PostgreSQL binaries must have the primary's major version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path

from multipool.certs import CertPaths
from multipool.testing.postgres import (
    CLIENT_CERT_USERS,
    LocalPostgres,
    PostgresServer,
    find_bindir,
    system_user,
)
from multipool.testing.servers import (
    ServerControlError,
    ServerStartError,
    free_port,
    make_workdir,
    replica_certs,
    tail,
)

__all__ = ["PostgresReplica", "start_replica"]

logger = logging.getLogger("multipool.testing")

#: settings a hot standby needs at least as high as its primary's
_STANDBY_MINIMUMS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)

_LAG_SQL = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 "
    "WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


class PostgresReplica(PostgresServer):
    """A hot standby streaming from :attr:`primary` (read-only; same users and TLS)."""

    primary: PostgresServer
    slot: str = ""

    def in_recovery(self) -> bool:
        """``pg_is_in_recovery()`` on the replica."""
        return bool(self.query("SELECT pg_is_in_recovery()")[0][0])

    def wait_for_replay(self, timeout: float = 10.0, interval: float = 0.01) -> float:
        """Wait until the replica has replayed everything the primary has committed so far.

        Polls with a bounded deadline; returns the seconds waited, raises
        ``TimeoutError`` after ``timeout`` seconds.
        """
        # A WAL record written now lands after every commit so far; its end is a
        # position the replica's replay LSN reaches exactly (unlike the insert
        # position, which may sit past a page header until more WAL is written).
        target = str(
            self.primary.query("SELECT pg_logical_emit_message(false, 'multipool-sync', '')")[0][0]
        )
        started = time.monotonic()
        deadline = started + timeout
        while True:
            done = self.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,))
            if done and done[0][0]:
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"the replica on port {self.port} did not replay the primary's WAL up to "
                    f"{target} within {timeout:g}s"
                )
            time.sleep(interval)

    def lag(self) -> float | None:
        """Seconds behind the primary (0 when caught up; ``None`` when unknown)."""
        value = self.query(_LAG_SQL)[0][0]
        return None if value is None else float(value)

    def pause_replay(self) -> None:
        """Stop applying WAL (received WAL piles up: the replica falls behind)."""
        self.query("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self.query("SELECT pg_wal_replay_resume()")

    def create_database(self, name: str) -> None:
        raise ServerControlError("a replica is read-only: create databases on its primary")

    def drop_database(self, name: str) -> None:
        raise ServerControlError("a replica is read-only: drop databases on its primary")


class ReplicaController(LocalPostgres):
    """:class:`LocalPostgres` for a standby: extra environment for ``pg_basebackup``,
    and the replication slot dropped on :meth:`close`."""

    def __init__(
        self,
        bindir: Path,
        base: Path,
        *,
        owned: bool,
        run_as: str | None,
        primary: PostgresServer,
    ) -> None:
        super().__init__(bindir, base, owned=owned, run_as=run_as)
        self.primary = primary
        self.slot: str | None = None
        self.description = f"streaming replica of {primary.host}:{primary.port}, local binaries"

    def drop_slot(self) -> None:
        """Drop the replication slot on the primary (best effort, waits for the walsender)."""
        slot, self.slot = self.slot, None
        if not slot or getattr(self.primary, "_closed", False):
            return
        deadline = time.monotonic() + 5
        while True:
            try:
                self.primary.query(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s",
                    (slot,),
                )
                return
            except Exception as exc:  # still active: the walsender has not exited yet
                if time.monotonic() >= deadline:
                    logger.warning(
                        "multipool: could not drop replication slot %s (%s)",
                        slot,
                        type(exc).__name__,
                    )
                    return
                time.sleep(0.05)

    def close(self) -> None:
        try:
            self.stop(mode="immediate")
        finally:
            try:
                self.drop_slot()
            finally:
                if self.owned:
                    shutil.rmtree(self.base, ignore_errors=True)


def _local_major(controller: LocalPostgres) -> int:
    result = controller.run("postgres", "-V", timeout=30)
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", result.stdout or "")
    if result.returncode != 0 or match is None:
        raise ServerStartError(
            f"cannot tell the version of {controller.bindir / 'postgres'}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return int(match.group(1))


def start_replica(
    primary: PostgresServer,
    workdir: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 60.0,
) -> PostgresReplica:
    """Start a streaming replica of ``primary`` (see the module doc). ``close()`` it."""
    started = time.monotonic()
    if not primary.server_version_num:
        primary.refresh_version()
    base, owned = make_workdir(workdir, "multipool-pg-replica-")
    controller = ReplicaController(
        find_bindir(), base, owned=owned, run_as=system_user(), primary=primary
    )
    replica: PostgresReplica | None = None
    try:
        os.chmod(base, 0o700)
        server_certs, client_certs = replica_certs(
            primary.certs, base / "certs", CLIENT_CERT_USERS
        )
        controller.socket_dir.mkdir(mode=0o700)
        controller.chown(server_certs)
        _check_major_version(controller, primary)
        _base_backup(controller, primary, server_certs, timeout)
        port = _start_standby(controller, primary, server_certs)
        replica = PostgresReplica(
            host="127.0.0.1",
            port=port,
            certs=client_certs,
            admin_user=primary.admin_user,
            admin_password=primary.admin_password,
            users=dict(primary.users),
            database=primary.database,
            admin_database=primary.admin_database,
            controller=controller,
        )
        replica.primary = primary
        replica.slot = controller.slot or ""
        replica.refresh_version()
        if not replica.in_recovery():
            raise ServerStartError("the replica is not in recovery (standby.signal missing?)")
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


def _check_major_version(controller: ReplicaController, primary: PostgresServer) -> None:
    """A streaming replica needs local binaries of the primary's major version."""
    major = primary.server_version_num // 10000
    local = _local_major(controller)
    if local != major:
        raise ServerStartError(
            f"the local PostgreSQL binaries ({controller.bindir}) are version {local}, the "
            f"primary is {major}: a streaming replica needs the same major version "
            "(set MULTIPOOL_TEST_PG_BINDIR)"
        )


def _base_backup(
    controller: ReplicaController, primary: PostgresServer, certs: CertPaths, timeout: float
) -> None:
    """``pg_basebackup`` of the primary into the data directory, with a new replication
    slot (recorded on the controller, which drops it on close)."""
    slot = f"multipool_replica_{secrets.token_hex(6)}"
    args = [
        "pg_basebackup", "-D", str(controller.data), "-R", "-X", "stream",
        "-c", "fast", "--no-sync", "-w", "-C", "-S", slot,
        "-U", primary.admin_user,
    ]
    if isinstance(primary.controller, LocalPostgres):
        # over the primary's Unix socket: "local replication trust", no password on disk
        args += ["-h", str(primary.controller.socket_dir), "-p", str(primary.port)]
    else:
        args += ["-h", primary.host, "-p", str(primary.port)]
        controller.extra_env = {
            "PGPASSWORD": primary.admin_password,
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(certs.ca_cert),
            "PGCONNECT_TIMEOUT": "10",
        }
    result = controller.run(*args, timeout=timeout)
    controller.extra_env = {}
    if result.returncode != 0:
        raise ServerStartError(
            f"pg_basebackup failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )
    controller.slot = slot


def _start_standby(
    controller: ReplicaController, primary: PostgresServer, certs: CertPaths
) -> int:
    """Configure the hot standby and start it on a free port (two more tries if the
    port is taken meanwhile); returns the port."""
    minimums = {
        name: primary.query(f"SELECT current_setting('{name}')::int")[0][0]
        for name in _STANDBY_MINIMUMS
    }
    for attempt in range(3):
        port = free_port()
        controller.configure(port, certs)
        with (controller.data / "multipool.conf").open("a") as fh:
            fh.write("# streaming replica\nhot_standby = on\n")
            fh.write("hot_standby_feedback = on\n")
            for name, value in minimums.items():
                fh.write(f"{name} = {int(value)}\n")
        try:
            controller.start()
            return port
        except ServerStartError:
            if attempt == 2 or "could not bind" not in tail(controller.log):
                raise
    raise AssertionError("unreachable")  # pragma: no cover
