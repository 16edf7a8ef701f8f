"""Configurations read from the environment connect with TLS verify-full to real servers.

TLS settings arrive as separate environment keys -- file paths, or PEM text
injected the way container platforms inject secrets -- with and without client
certificates; the server reports TLS in use.
"""

from __future__ import annotations

import pytest

from multipool.errors import ConfigurationError
from tests.conftest import patched_environ, registered_alias


def tls_in_use(conn) -> str:
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            cursor.execute("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            row = cursor.fetchone()
            return row[0] or ""
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        return cursor.fetchone()[1]


def current_user(conn) -> str:
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT current_user" if conn.vendor == "postgresql" else "SELECT CURRENT_USER()"
        )
        return cursor.fetchone()[0].split("@")[0]


def entry_from_env(alias: str, environ: dict[str, str]) -> dict:
    from multipool.config import databases

    with patched_environ(environ):
        return databases(DATABASE_ALIASES=alias)[alias]


def bare_url(server, user: str, *, password: bool = True) -> str:
    """A URL with no TLS options at all: TLS comes from the separate keys."""
    from urllib.parse import quote

    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    secret = server.users[user].password
    auth = f"{user}:{quote(secret, safe='')}" if password and secret else user
    return f"{scheme}://{auth}@{server.host}:{server.port}/{server.database}"


@pytest.mark.parametrize("ca_form", ["path", "pem"])
def test_env_keys_verify_full_with_password(server, ca_form):
    ca_path = server.certs.ca_cert
    ca_value = str(ca_path) if ca_form == "path" else ca_path.read_text()
    entry = entry_from_env(
        "envtls",
        {
            "ENVTLS_DATABASE_URL": bare_url(server, "app"),
            "ENVTLS_DATABASE_SSLMODE": "verify-full",
            "ENVTLS_DATABASE_SSLROOTCERT": ca_value,
        },
    )
    with registered_alias("envtls", entry) as conn:
        assert tls_in_use(conn).startswith("TLS")
        assert current_user(conn) == "app"
        conn.close()


@pytest.mark.parametrize("form", ["path", "pem"])
def test_env_keys_client_certificate(server, form):
    cert, key = server.certs.client("certuser")
    values = (
        (str(server.certs.ca_cert), str(cert), str(key))
        if form == "path"
        else (server.certs.ca_cert.read_text(), cert.read_text(), key.read_text())
    )
    entry = entry_from_env(
        "envcert",
        {
            # PostgreSQL's certuser authenticates by certificate alone.
            "ENVCERT_DATABASE_URL": bare_url(server, "certuser", password=server.engine == "mysql"),
            "ENVCERT_DATABASE_SSLMODE": "verify-full",
            "ENVCERT_DATABASE_SSLROOTCERT": values[0],
            "ENVCERT_DATABASE_SSLCERT": values[1],
            "ENVCERT_DATABASE_SSLKEY": values[2],
        },
    )
    with registered_alias("envcert", entry) as conn:
        assert tls_in_use(conn).startswith("TLS")
        assert current_user(conn) == "certuser"
        conn.close()


def test_env_keys_override_url_query(server):
    """The URL asks for no TLS; the environment key wins and the TLS-only user gets in."""
    url = server.url("app", tls="disable")
    entry = entry_from_env(
        "envwins",
        {
            "ENVWINS_DATABASE_URL": url,
            "ENVWINS_DATABASE_SSLMODE": "verify-full",
            "ENVWINS_DATABASE_SSLROOTCERT": str(server.certs.ca_cert),
        },
    )
    with registered_alias("envwins", entry) as conn:
        assert tls_in_use(conn).startswith("TLS")
        conn.close()


def test_client_key_with_loose_permissions_is_refused_before_connecting(server, tmp_path):
    cert, key = server.certs.client("certuser")
    loose = tmp_path / "client.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    entry = entry_from_env(
        "loosekey",
        {
            "LOOSEKEY_DATABASE_URL": bare_url(server, "certuser"),
            "LOOSEKEY_DATABASE_SSLMODE": "verify-full",
            "LOOSEKEY_DATABASE_SSLROOTCERT": str(server.certs.ca_cert),
            "LOOSEKEY_DATABASE_SSLCERT": str(cert),
            "LOOSEKEY_DATABASE_SSLKEY": str(loose),
        },
    )
    sessions = server.connection_count(user="certuser")
    with registered_alias("loosekey", entry) as conn, pytest.raises(ConfigurationError) as info:
        conn.ensure_connection()
    assert server.connection_count(user="certuser") == sessions  # no connection was tried
    message = str(info.value)
    assert "loosekey" in message and "LOOSEKEY_DATABASE_SSLKEY" in message
    assert "BEGIN" not in message
