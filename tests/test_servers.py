"""The real test servers of multipool.testing: TLS, client certificates, users, control.

No mocks: psycopg (3), psycopg2 and mysqlclient talk to the servers of the
``postgres_server`` / ``mysql_server`` fixtures.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from multipool.certs import generate_dev_certs, issue_cert, load_ca
from multipool.testing import MySQLServer, PostgresServer, TestServer, TestUser

# -- helpers ---------------------------------------------------------------------


def pg_connect(server: PostgresServer, user: str = "app", **overrides: Any) -> Any:
    import psycopg

    params = server.connect_params(user)
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    return psycopg.connect(**params, connect_timeout=10)


def my_connect(server: MySQLServer, user: str = "app", **overrides: Any) -> Any:
    """``MySQLdb.connect`` with ``server.connect_params(user)`` updated by ``overrides``
    (a ``None`` value removes the key)."""
    import MySQLdb

    params = server.connect_params(user)
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    return MySQLdb.connect(**params)


def my_raw(params: dict[str, Any]) -> Any:
    import MySQLdb

    return MySQLdb.connect(**params)


def pg_ssl(conn: Any) -> tuple[bool, str | None]:
    row = conn.execute(
        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    ).fetchone()
    return bool(row[0]), row[1]


def my_scalar(conn: Any, sql: str) -> Any:
    with closing(conn.cursor()) as cur:
        cur.execute(sql)
        row = cur.fetchone()
    return row[-1] if row else None


def served_pg_cert(server: PostgresServer) -> bytes:
    """The DER certificate the PostgreSQL server presents right now."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert sock.recv(1) == b"S"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@contextmanager
def serving_cert(server: TestServer, cert: x509.Certificate, key: Any) -> Iterator[None]:
    """Make the (local) server present ``cert`` for a while, then restore its own."""
    if server.backend != "local":
        pytest.skip("rewrites the server's certificate files: local servers only")
    paths = server.certs
    saved = paths.server_cert.read_bytes(), paths.server_key.read_bytes()

    def install(cert_pem: bytes, key_pem: bytes) -> None:
        # Rewritten in place: owner (postgres) and mode 0600 stay.
        paths.server_key.write_bytes(key_pem)
        paths.server_cert.write_bytes(cert_pem)
        if isinstance(server, MySQLServer):
            server.query("FLUSH SSL")
            return
        assert isinstance(server, PostgresServer)
        server.query("SELECT pg_reload_conf()")
        want = x509.load_pem_x509_certificate(cert_pem).public_bytes(
            serialization.Encoding.DER
        )
        deadline = time.monotonic() + 10
        while served_pg_cert(server) != want:
            assert time.monotonic() < deadline, "PostgreSQL did not reload its certificate"
            time.sleep(0.05)

    install(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    try:
        yield
    finally:
        install(*saved)


def expired_cert(server: TestServer) -> tuple[x509.Certificate, Any]:
    ca = load_ca(server.certs.ca_cert, server.certs.ca_key)
    now = dt.datetime.now(dt.timezone.utc)
    return issue_cert(
        ca, "localhost", hosts=["localhost", server.host],
        not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1),
    )


def wrong_host_cert(server: TestServer) -> tuple[x509.Certificate, Any]:
    ca = load_ca(server.certs.ca_cert, server.certs.ca_key)
    return issue_cert(ca, "wrong.example", hosts=["wrong.example"])


# -- the contract --------------------------------------------------------------------


def test_postgres_server_attributes(postgres_server: PostgresServer) -> None:
    s = postgres_server
    assert (s.engine, s.flavor, s.database) == ("postgresql", "postgresql", "multipool")
    assert s.host == "127.0.0.1" or s.backend != "local"
    assert s.backend in ("local", "container", "external")
    assert s.version[0].isdigit()
    assert {"app", "certuser", "plain"} <= set(s.users)
    assert all(isinstance(u, TestUser) for u in s.users.values())
    assert s.running
    assert s.certs.ca_cert.is_file()
    s.certs.client("certuser")


def test_mysql_server_attributes(mysql_server: MySQLServer) -> None:
    s = mysql_server
    assert (s.engine, s.database) == ("mysql", "multipool")
    assert s.flavor in ("mariadb", "mysql")
    assert ("MariaDB" in s.version) == (s.flavor == "mariadb")
    assert {"app", "certuser", "plain"} <= set(s.users)
    assert s.running


def test_no_password_in_reprs(postgres_server: PostgresServer, mysql_server: MySQLServer) -> None:
    for server in (postgres_server, mysql_server):
        secrets = [server.admin_password, *(u.password for u in server.users.values())]
        texts = [repr(server), str(server), server.summary(), repr(server.users)]
        texts += [repr(u) for u in server.users.values()]
        for secret in filter(None, secrets):
            assert not any(secret in text for text in texts)
        assert "***" in repr(server.users["app"])


@pytest.mark.parametrize("fixture", ["postgres_server", "mysql_server"])
def test_url_percent_encodes_the_password(request: pytest.FixtureRequest, fixture: str) -> None:
    server: TestServer = request.getfixturevalue(fixture)
    app = server.users["app"]
    assert any(c in app.password for c in "@:%/+")  # realism: must be encoded
    url = server.url("app")
    parts = urlsplit(url)
    assert parts.scheme == server.default_scheme
    assert unquote(parts.username or "") == "app"
    assert unquote(parts.password or "") == app.password
    assert (parts.hostname, parts.port, parts.path) == (server.host, server.port, "/multipool")
    query = parse_qs(parts.query)
    if server.engine == "postgresql":
        assert query["sslmode"] == ["verify-full"]
        assert query["sslrootcert"] == [str(server.certs.ca_cert)]
        assert "sslcert" not in query
        cert_url = parse_qs(urlsplit(server.url("certuser", client_cert=True)).query)
        assert cert_url["sslcert"] == [str(server.certs.client("certuser")[0])]
        assert cert_url["sslkey"] == [str(server.certs.client("certuser")[1])]
        assert parse_qs(urlsplit(server.url(tls="disable")).query) == {"sslmode": ["disable"]}
    else:
        assert query["ssl_mode"] == ["VERIFY_IDENTITY"]
        assert query["ssl_ca"] == [str(server.certs.ca_cert)]
        cert_url = parse_qs(urlsplit(server.url("certuser", client_cert=True)).query)
        assert cert_url["ssl_cert"] == [str(server.certs.client("certuser")[0])]
        assert cert_url["ssl_key"] == [str(server.certs.client("certuser")[1])]
        assert parse_qs(urlsplit(server.url(tls="disable")).query) == {"ssl_mode": ["DISABLED"]}
        assert parse_qs(urlsplit(server.url(tls="verify-ca")).query)["ssl_mode"] == ["VERIFY_CA"]
    assert server.url(database="other", scheme="x").startswith("x://")
    assert urlsplit(server.url(database="other")).path == "/other"
    with pytest.raises(ValueError):
        server.url(tls="bogus")
    with pytest.raises(KeyError):
        server.url("nobody")


# -- PostgreSQL TLS --------------------------------------------------------------------


def test_psycopg3_url_verify_full_uses_tls(postgres_server: PostgresServer) -> None:
    import psycopg

    with psycopg.connect(postgres_server.url("app"), connect_timeout=10) as conn:
        in_use, version = pg_ssl(conn)
        assert in_use and version and version.startswith("TLSv1.")
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_psycopg2_verify_full_uses_tls(postgres_server: PostgresServer) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    conn = psycopg2.connect(postgres_server.url("app"), connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            in_use, version = cur.fetchone()
        assert in_use and version.startswith("TLSv1.")
        assert conn.get_dsn_parameters()["sslmode"] == "verify-full"
    finally:
        conn.close()
    conn = psycopg2.connect(**postgres_server.connect_params("app"), connect_timeout=10)
    conn.close()


def test_pg_client_certificate_login(postgres_server: PostgresServer) -> None:
    import psycopg

    assert postgres_server.users["certuser"].password == ""
    with psycopg.connect(postgres_server.url("certuser", client_cert=True)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("certuser",)
        assert pg_ssl(conn)[0]
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(postgres_server.url("certuser"), connect_timeout=10)
    # app's certificate does not make you certuser: the CN must equal the user.
    app_cert, app_key = postgres_server.certs.client("app")
    with pytest.raises(psycopg.OperationalError):
        pg_connect(postgres_server, "certuser", sslcert=str(app_cert), sslkey=str(app_key))


def test_pg_plain_text_refused_except_for_plain(postgres_server: PostgresServer) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError, match=r"no encryption|reject"):
        psycopg.connect(postgres_server.url("app", tls="disable"), connect_timeout=10)
    with psycopg.connect(postgres_server.url("plain", tls="disable")) as conn:
        assert pg_ssl(conn) == (False, None)
        assert conn.execute("SELECT current_database()").fetchone() == ("multipool",)


def test_pg_admin_over_tls(postgres_server: PostgresServer) -> None:
    with closing(postgres_server.connect_admin()) as conn:
        assert conn.autocommit
        assert pg_ssl(conn)[0]
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (True,)
    assert postgres_server.query("SELECT %s::int + 1", (41,)) == [(42,)]


def test_pg_wrong_ca_fails(postgres_server: PostgresServer, tmp_path: Path) -> None:
    import psycopg

    other = generate_dev_certs(tmp_path / "other-ca")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        pg_connect(postgres_server, sslrootcert=str(other.ca_cert))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        pg_connect(postgres_server, sslmode="verify-ca", sslrootcert=str(other.ca_cert))


def test_pg_hostname_mismatch_fails_under_verify_full(postgres_server: PostgresServer) -> None:
    import psycopg

    # Same server, same CA, but we claim to want "wrong.example" (not in the SANs).
    wrong = {"host": "wrong.example", "hostaddr": postgres_server.host}
    with pytest.raises(psycopg.OperationalError, match="does not match"):
        pg_connect(postgres_server, **wrong)
    with pg_connect(postgres_server, sslmode="verify-ca", **wrong) as conn:
        assert pg_ssl(conn)[0]


def test_pg_server_cert_for_another_host_or_expired(postgres_server: PostgresServer) -> None:
    import psycopg

    with (
        serving_cert(postgres_server, *wrong_host_cert(postgres_server)),
        pytest.raises(psycopg.OperationalError, match="does not match"),
    ):
        pg_connect(postgres_server)
    with (
        serving_cert(postgres_server, *expired_cert(postgres_server)),
        pytest.raises(psycopg.OperationalError, match=r"expired|verify failed"),
    ):
        pg_connect(postgres_server)
    with pg_connect(postgres_server) as conn:  # restored
        assert pg_ssl(conn)[0]


# -- MySQL / MariaDB TLS ---------------------------------------------------------------


def test_mysqlclient_verify_identity_uses_tls(mysql_server: MySQLServer) -> None:
    import MySQLdb

    conn = MySQLdb.connect(
        host=mysql_server.host,
        port=mysql_server.port,
        user="app",
        password=mysql_server.users["app"].password,
        database="multipool",
        ssl_mode="VERIFY_IDENTITY",
        ssl={"ca": str(mysql_server.certs.ca_cert)},
    )
    with closing(conn):
        assert my_scalar(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'").startswith("TLSv1.")
        assert my_scalar(conn, "SELECT CURRENT_USER()").startswith("app@")


def test_mysql_client_certificate_login(mysql_server: MySQLServer) -> None:
    import MySQLdb

    cert, key = mysql_server.certs.client("certuser")
    ssl_options = {"ca": str(mysql_server.certs.ca_cert), "cert": str(cert), "key": str(key)}
    with closing(my_connect(mysql_server, "certuser", ssl=ssl_options)) as conn:
        assert my_scalar(conn, "SELECT CURRENT_USER()").startswith("certuser@")
        assert my_scalar(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'")
    with closing(my_raw(mysql_server.connect_params("certuser", client_cert=True))) as conn:
        assert my_scalar(conn, "SELECT 1") == 1
    with pytest.raises(MySQLdb.OperationalError) as info:
        my_connect(mysql_server, "certuser")  # TLS, right password, but no certificate
    assert info.value.args[0] == 1045


def test_mysql_plain_text_refused_except_for_plain(mysql_server: MySQLServer) -> None:
    import MySQLdb

    with pytest.raises(MySQLdb.OperationalError) as info:
        my_raw(mysql_server.connect_params("app", tls="disable"))
    assert info.value.args[0] == 1045
    with closing(my_raw(mysql_server.connect_params("plain", tls="disable"))) as conn:
        assert my_scalar(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'") == ""
        assert my_scalar(conn, "SELECT DATABASE()") == "multipool"


def test_mysql_admin_over_tls(mysql_server: MySQLServer) -> None:
    with closing(mysql_server.connect_admin()) as conn:
        assert my_scalar(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'")
        assert my_scalar(conn, "SELECT @@autocommit") == 1
    assert mysql_server.query("SELECT %s + 1", (41,)) == [(42,)]


def test_mysql_wrong_ca_fails(mysql_server: MySQLServer, tmp_path: Path) -> None:
    import MySQLdb

    other = generate_dev_certs(tmp_path / "other-ca")
    for mode in ("VERIFY_IDENTITY", "VERIFY_CA"):
        with pytest.raises(MySQLdb.OperationalError) as info:
            my_connect(mysql_server, ssl_mode=mode, ssl={"ca": str(other.ca_cert)})
        assert info.value.args[0] == 2026  # TLS/SSL error


def test_mysql_server_cert_for_another_host_or_expired(mysql_server: MySQLServer) -> None:
    import MySQLdb

    with serving_cert(mysql_server, *wrong_host_cert(mysql_server)):
        with pytest.raises(MySQLdb.OperationalError) as info:
            my_connect(mysql_server)  # VERIFY_IDENTITY to 127.0.0.1
        assert info.value.args[0] == 2026
        # Without verification TLS still works: only the identity check failed.
        with closing(my_connect(mysql_server, ssl_mode="REQUIRED", ssl=None)) as conn:
            assert my_scalar(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'")
    with serving_cert(mysql_server, *expired_cert(mysql_server)):
        with pytest.raises(MySQLdb.OperationalError) as info:
            my_connect(mysql_server)
        assert info.value.args[0] == 2026
    with closing(my_connect(mysql_server)) as conn:  # restored
        assert my_scalar(conn, "SELECT 1") == 1


# -- connection accounting and control ----------------------------------------------


def _open(server: TestServer, n: int) -> list[Any]:
    if isinstance(server, PostgresServer):
        return [pg_connect(server) for _ in range(n)]
    assert isinstance(server, MySQLServer)
    return [my_connect(server) for _ in range(n)]


def _own_id(server: TestServer, conn: Any) -> int:
    if isinstance(server, PostgresServer):
        return int(conn.info.backend_pid)
    return int(conn.thread_id())


@pytest.mark.parametrize("fixture", ["postgres_server", "mysql_server"])
def test_connection_count_ids_and_terminate(request: pytest.FixtureRequest, fixture: str) -> None:
    server: TestServer = request.getfixturevalue(fixture)
    server.terminate(user="app")
    assert server.wait_for_connection_count(0, user="app") == 0
    conns = _open(server, 3)
    try:
        assert server.connection_count(user="app", database="multipool") == 3
        assert server.connection_count(user="app", database="nosuchdb") == 0
        assert server.connection_count(user="plain") == 0
        assert server.connection_count() >= 3
        ids = server.connection_ids(user="app")
        assert ids == {_own_id(server, c) for c in conns}
        admin_ids = server.query(
            "SELECT pg_backend_pid()" if server.engine == "postgresql" else "SELECT CONNECTION_ID()"
        )
        assert admin_ids[0][0] not in server.connection_ids()  # the asking connection
        conns[0].close()
        assert server.wait_for_connection_count(2, user="app") == 2
        assert server.terminate(user="app", database="multipool") == 2
        assert server.connection_count(user="app") == 0
        for conn in conns[1:]:
            with pytest.raises(Exception):  # noqa: B017 - the driver's own error type
                _roundtrip(server, conn)
    finally:
        for conn in conns:
            with suppress(Exception):
                conn.close()
    assert server.terminate(user="app") == 0


def _roundtrip(server: TestServer, conn: Any) -> None:
    if isinstance(server, PostgresServer):
        conn.execute("SELECT 1")
    else:
        my_scalar(conn, "SELECT 1")


@pytest.mark.parametrize("fixture", ["postgres_server", "mysql_server"])
def test_create_and_drop_database(request: pytest.FixtureRequest, fixture: str) -> None:
    server: TestServer = request.getfixturevalue(fixture)
    name = "multipool_scratch"
    server.drop_database(name)
    server.create_database(name)
    try:
        if isinstance(server, PostgresServer):
            with pg_connect(server, dbname=name) as conn:
                conn.execute("CREATE TABLE t (id int)")
                assert conn.execute("SELECT current_database()").fetchone() == (name,)
        else:
            assert isinstance(server, MySQLServer)
            with closing(my_connect(server, database=name)) as conn:
                my_scalar(conn, "CREATE TABLE t (id int)")
    finally:
        server.drop_database(name)
    if isinstance(server, PostgresServer):
        assert server.query("SELECT 1 FROM pg_database WHERE datname = %s", (name,)) == []
    else:
        assert server.query("SHOW DATABASES LIKE %s", (name,)) == []


@pytest.mark.parametrize("fixture", ["postgres_server", "mysql_server"])
def test_stop_start_keeps_port_and_users(request: pytest.FixtureRequest, fixture: str) -> None:
    server: TestServer = request.getfixturevalue(fixture)
    if server.backend == "external":
        pytest.skip("an external server cannot be stopped")
    port, users = server.port, dict(server.users)
    server.stop()
    try:
        assert not server.running
        with pytest.raises(Exception):  # noqa: B017 - the driver's own error type
            _open(server, 1)
    finally:
        server.start()
    assert server.running
    assert (server.port, server.users) == (port, users)
    conn = _open(server, 1)[0]
    conn.close()
    assert server.query("SELECT 1") == [(1,)]  # the admin connection is reopened
    server.restart()
    assert server.running and server.port == port
    assert server.query("SELECT 1") == [(1,)]


# -- the pytest plugin in CI and outside ---------------------------------------------


@pytest.mark.parametrize("ci", ["true", ""])
def test_unavailable_server_fails_in_ci_and_skips_otherwise(tmp_path: Path, ci: str) -> None:
    (tmp_path / "test_x.py").write_text(
        textwrap.dedent(
            """
            def test_needs_pg(postgres_server):
                pass
            """
        )
    )
    env = {**os.environ, "CI": ci, "MULTIPOOL_TEST_BACKEND": "nonsense"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )
    out = result.stdout + result.stderr
    assert "cannot start the PostgreSQL test server" in out
    assert "MULTIPOOL_TEST_BACKEND" in out
    if ci:
        assert result.returncode != 0
        assert "1 error" in out
    else:
        assert result.returncode == 0, out
        assert "1 skipped" in out


# -- the external backend (attached to a server started here) -------------------------


@pytest.mark.parametrize("engine", ["postgresql", "mysql"])
def test_external_backend_attaches_to_an_existing_server(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multipool.testing import mysql, postgres, start_mysql, start_postgres

    local = postgres.start_local() if engine == "postgresql" else mysql.start_local()
    try:
        admin_url = local.url(local.admin_user, tls="require", database="")
        prefix = "POSTGRES" if engine == "postgresql" else "MYSQL"
        monkeypatch.setenv(f"MULTIPOOL_TEST_{prefix}_URL", admin_url)
        monkeypatch.setenv(f"MULTIPOOL_TEST_{prefix}_CERTS", str(local.certs.directory))
        monkeypatch.delenv("MULTIPOOL_TEST_BACKEND", raising=False)
        external = start_postgres() if engine == "postgresql" else start_mysql()
        with external:
            assert external.backend == "external"
            assert (external.host, external.port) == (local.host, local.port)
            assert external.version == local.version
            # Passwords are derived from the admin URL: a second session agrees.
            again = start_postgres() if engine == "postgresql" else start_mysql()
            assert again.users == external.users
            again.close()
            if isinstance(external, PostgresServer):
                with pg_connect(external) as conn:
                    assert pg_ssl(conn)[0]
                import psycopg

                with psycopg.connect(external.url("certuser", client_cert=True)) as conn:
                    assert conn.execute("SELECT current_user").fetchone() == ("certuser",)
            else:
                assert isinstance(external, MySQLServer)
                with closing(my_connect(external)) as conn:
                    assert my_scalar(conn, "SELECT CURRENT_USER()").startswith("app@")
            with pytest.raises(Exception, match="external"):
                external.stop()
            assert external.running
        assert local.running  # closing the external server leaves the server alone
    finally:
        local.close()
