"""The test harness's MariaDB GTID replica (``mysql_replica``) against its real primary."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from multipool.testing import MySQLServer, ServerControlError, ServerStartError
from multipool.testing.mysql_replica import gtid_seq_nos, start_replica

T = TypeVar("T")

READ_ONLY = 1290  # ER_OPTION_PREVENTS_STATEMENT


def wait_until(predicate: Callable[[], T], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


def connect(server: Any, user: str = "app", **kwargs: Any) -> Any:
    import MySQLdb

    return contextlib.closing(MySQLdb.connect(**server.connect_params(user, **kwargs)))


def rows(server: Any, sql: str, user: str = "app", **kwargs: Any) -> list[tuple[Any, ...]]:
    with connect(server, user, **kwargs) as conn, contextlib.closing(conn.cursor()) as cur:
        cur.execute(sql)
        return [tuple(row) for row in cur.fetchall()]


@pytest.fixture
def table(mysql_server: Any, mysql_replica: Any) -> Iterator[str]:
    """A new table on the primary, already on the replica; dropped afterwards."""
    name = f"replicated_{os.getpid()}_{time.monotonic_ns()}"
    mysql_server.query(f"CREATE TABLE {mysql_server.database}.{name} (v VARCHAR(40))")
    mysql_replica.wait_for_replay()
    yield f"{mysql_server.database}.{name}"
    mysql_server.query(f"DROP TABLE IF EXISTS {mysql_server.database}.{name}")


def behind(replica: Any) -> bool:
    """The replica's gtid_slave_pos is behind the primary's gtid_binlog_pos."""
    primary, applied = (gtid_seq_nos(p) for p in replica.positions())
    return any(seq > applied.get(domain, 0) for domain, seq in primary.items())


def test_the_replica_serves_tls_and_is_read_only_for_app(mysql_server, mysql_replica, table):
    import MySQLdb

    assert mysql_replica.port != mysql_server.port
    assert mysql_replica.primary is mysql_server
    assert mysql_replica.certs.ca_cert == mysql_server.certs.ca_cert
    with connect(mysql_replica) as conn, contextlib.closing(conn.cursor()) as cur:
        cur.execute("SELECT @@read_only, CURRENT_USER()")
        assert cur.fetchall() == ((1, "app@%"),)
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cur.fetchall()[0][1]
        for sql in (f"INSERT INTO {table} VALUES ('no')", "CREATE DATABASE refused_here"):
            with pytest.raises(MySQLdb.OperationalError) as refused:
                cur.execute(sql)
            assert refused.value.args[0] == READ_ONLY
    with pytest.raises(ServerControlError, match="read-only"):
        mysql_replica.create_database("refused_here")
    with pytest.raises(ServerControlError, match="read-only"):
        mysql_replica.drop_database(mysql_server.database)


def test_certuser_logs_in_on_the_replica_with_its_client_certificate(mysql_replica):
    import MySQLdb

    assert rows(mysql_replica, "SELECT CURRENT_USER()", "certuser", client_cert=True) == [
        ("certuser@%",)
    ]
    with pytest.raises(MySQLdb.OperationalError):  # REQUIRE X509, copied from the primary
        rows(mysql_replica, "SELECT 1", "certuser")


def test_a_write_is_visible_on_the_replica_after_wait_for_replay(
    mysql_server, mysql_replica, table
):
    mysql_server.query(f"INSERT INTO {table} VALUES ('hello')")
    waited = mysql_replica.wait_for_replay(timeout=10)
    assert waited < 10
    assert rows(mysql_replica, f"SELECT v FROM {table}") == [("hello",)]
    primary, replica = mysql_replica.positions()
    assert gtid_seq_nos(replica) == gtid_seq_nos(primary)
    assert mysql_replica.transactions_behind() == 0
    lag = mysql_replica.lag()
    assert lag is not None and lag < 1.0


def test_paused_replay_holds_writes_back_until_resumed(mysql_server, mysql_replica, table):
    mysql_replica.pause_replay()
    try:
        mysql_server.query(f"INSERT INTO {table} VALUES ('held back')")
        target = mysql_server.query("SELECT @@gtid_binlog_pos")[0][0]
        # received (the IO thread keeps running) but not applied
        wait_until(lambda: mysql_replica.replication_status()["Gtid_IO_Pos"] == target)
        assert rows(mysql_replica, f"SELECT v FROM {table}") == []
        assert behind(mysql_replica)
        assert mysql_replica.transactions_behind() >= 1
        assert mysql_replica.lag() is None  # Seconds_Behind_Master is NULL without SQL thread
        with pytest.raises(TimeoutError, match="SQL thread No"):
            mysql_replica.wait_for_replay(timeout=0.2)
    finally:
        mysql_replica.resume_replay()
    mysql_replica.wait_for_replay()
    assert rows(mysql_replica, f"SELECT v FROM {table}") == [("held back",)]
    assert not behind(mysql_replica)


def test_a_stopped_replica_catches_up_after_start(mysql_server, mysql_replica, table):
    mysql_replica.stop()
    try:
        assert not mysql_replica.running
        mysql_server.query(f"INSERT INTO {table} VALUES ('while stopped')")
    finally:
        mysql_replica.start()
    assert mysql_replica.running
    mysql_replica.wait_for_replay()
    assert rows(mysql_replica, f"SELECT v FROM {table}") == [("while stopped",)]
    status = mysql_replica.replication_status()
    assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")


def test_the_replication_channel_is_tls_verified(mysql_server, mysql_replica):
    status = mysql_replica.replication_status()
    assert status["Master_SSL_Allowed"] == "Yes"
    assert status["Master_SSL_Verify_Server_Cert"] == "Yes"
    assert status["Using_Gtid"] == "Slave_Pos"
    assert status["Master_User"] == mysql_replica.replication_user
    assert (status["Master_Host"], status["Master_Port"]) == ("127.0.0.1", mysql_server.port)
    # the primary refuses that user without TLS, and its binlog dump thread is connected
    grants = mysql_server.query(f"SHOW GRANTS FOR '{mysql_replica.replication_user}'@'%'")
    assert "REQUIRE SSL" in grants[0][0]
    wait_until(
        lambda: mysql_server.query(
            "SELECT COMMAND FROM information_schema.PROCESSLIST WHERE USER = %s",
            (mysql_replica.replication_user,),
        )
        == [("Binlog Dump",)]
    )


def test_gtid_seq_nos_compares_domain_by_domain():
    assert gtid_seq_nos("") == {}
    assert gtid_seq_nos("0-1-42") == {0: 42}
    assert gtid_seq_nos("0-1-42,3-2-7, 7-1-1") == {0: 42, 3: 7, 7: 1}


def test_a_replica_needs_a_mariadb_primary(mysql_server):
    mysql8 = MySQLServer(
        host=mysql_server.host, port=mysql_server.port, certs=mysql_server.certs,
        admin_user="x", admin_password="x", users={}, version="8.0.40", flavor="mysql",
    )
    with pytest.raises(ServerStartError, match="needs a MariaDB primary"):
        start_replica(mysql8)


def test_a_replica_of_a_primary_known_only_by_url(mysql_server, tmp_path):
    """No Unix socket, no server key: the dump runs over TCP with TLS verify-full, and
    the replica serves certificates of its own. Closing it drops its replication user."""
    view = MySQLServer(
        host=mysql_server.host, port=mysql_server.port,
        certs=dataclasses.replace(mysql_server.certs, server_key=Path(tmp_path / "absent.key")),
        admin_user=mysql_server.admin_user, admin_password=mysql_server.admin_password,
        users=dict(mysql_server.users), database=mysql_server.database,
    )
    name = f"{mysql_server.database}.by_url_{os.getpid()}_{time.monotonic_ns()}"
    try:
        with start_replica(view) as replica:
            assert replica.backend == "local" and view.backend == "external"
            assert replica.certs.ca_cert != mysql_server.certs.ca_cert
            user = replica.replication_user
            mysql_server.query(f"CREATE TABLE {name} (v VARCHAR(10))")
            mysql_server.query(f"INSERT INTO {name} VALUES ('url')")
            replica.wait_for_replay()
            assert rows(replica, f"SELECT v FROM {name}", "certuser", client_cert=True) == [
                ("url",)
            ]
        assert mysql_server.query("SELECT 1 FROM mysql.user WHERE User = %s", (user,)) == []
    finally:
        mysql_server.query(f"DROP TABLE IF EXISTS {name}")
        view.close()
