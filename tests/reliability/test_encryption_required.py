"""Encryption that was asked for, always: a server without TLS is refused.

Every spelling that asks for an encrypted connection -- on PostgreSQL (psycopg 3
here, psycopg2 in the run of ``tests/test_psycopg2.py``) ``require``,
``verify-ca`` and ``verify-full``; on MySQL also ``REQUIRED``, ``VERIFY_CA``,
``VERIFY_IDENTITY``, ``true``, ``?ssl=true``, ``ssl=True`` and a hand-written
``ssl`` dict -- is tried against a real server with TLS off (refused with
:class:`~multipool.errors.EncryptionRequired` naming the alias, the setting and
the server's answer; nothing left open) and against the TLS test server (it
connects, and the server reports a cipher).

mysqlclient built against MariaDB Connector/C ignores ``ssl_mode=REQUIRED``
and a bare ``ssl`` dict (it connects in plain text); multipool then reads the
session's ``Ssl_cipher`` once per physical connection and refuses it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connections
from django.db.utils import OperationalError

from multipool.config import databases
from multipool.errors import EncryptionRequired
from multipool.pools import manager
from tests.conftest import registered_alias

pytestmark = pytest.mark.timeout(120)

_ids = itertools.count(1)


@dataclass(frozen=True)
class Spelling:
    """One way of asking for TLS. ``configure(server, alias)`` returns the
    DATABASES entry and the setting the error must name."""

    label: str
    engine: str
    configure: Callable[[Any, str], tuple[dict[str, Any], str]]


def bare_url(server: Any, query: str = "") -> str:
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    password = quote(server.users["plain"].password, safe="")
    base = f"{scheme}://plain:{password}@{server.host}:{server.port}/{server.database}"
    return f"{base}?connect_timeout=5" + (f"&{query}" if query else "")


def from_env(mode: str | None, *, ca: bool = False, query: str = "") -> Callable[..., Any]:
    def configure(server: Any, alias: str) -> tuple[dict[str, Any], str]:
        prefix = f"{alias.upper()}_DATABASE_"
        env = {"DATABASE_ALIASES": alias, f"{prefix}URL": bare_url(server, query)}
        if mode is not None:
            env[f"{prefix}SSLMODE"] = mode
        if ca:
            env[f"{prefix}SSLROOTCERT"] = str(server.certs.ca_cert)
        setting = f"{prefix}SSLMODE" if mode is not None else f"{prefix}URL"
        return databases(source=env)[alias], setting

    return configure


def hand_written(options: Callable[[Any], dict[str, Any]], setting: str) -> Callable[..., Any]:
    def configure(server: Any, alias: str) -> tuple[dict[str, Any], str]:
        entry = {
            "ENGINE": f"multipool.backends.{server.engine}",
            "NAME": server.database,
            "USER": "plain",
            "PASSWORD": server.users["plain"].password,
            "HOST": server.host,
            "PORT": server.port,
            "OPTIONS": {"connect_timeout": 5, **options(server)},
        }
        return entry, f"DATABASES[{alias!r}]['OPTIONS']{setting}"

    return configure


def _ca(server: Any) -> str:
    return str(server.certs.ca_cert)


SPELLINGS = [
    Spelling("require", "postgresql", from_env("require")),
    Spelling("verify-ca", "postgresql", from_env("verify-ca", ca=True)),
    Spelling("verify-full", "postgresql", from_env("verify-full", ca=True)),
    Spelling("url ?sslmode=require", "postgresql", from_env(None, query="sslmode=require")),
    Spelling(
        "OPTIONS sslmode=verify-full", "postgresql",
        hand_written(lambda s: {"sslmode": "verify-full", "sslrootcert": _ca(s)}, "['sslmode']"),
    ),
    Spelling("require", "mysql", from_env("require")),
    Spelling("REQUIRED", "mysql", from_env("REQUIRED")),
    Spelling("true", "mysql", from_env("true")),
    Spelling("verify-ca", "mysql", from_env("verify-ca", ca=True)),
    Spelling("VERIFY_CA", "mysql", from_env("VERIFY_CA", ca=True)),
    Spelling("verify-full", "mysql", from_env("verify-full", ca=True)),
    Spelling("VERIFY_IDENTITY", "mysql", from_env("VERIFY_IDENTITY", ca=True)),
    Spelling("url ?ssl=true", "mysql", from_env(None, query="ssl=true")),
    Spelling("url ?ssl_mode=REQUIRED", "mysql", from_env(None, query="ssl_mode=REQUIRED")),
    Spelling("OPTIONS ssl=True", "mysql", hand_written(lambda s: {"ssl": True}, "['ssl']")),
    Spelling(
        "OPTIONS ssl_mode=REQUIRED", "mysql",
        hand_written(lambda s: {"ssl_mode": "REQUIRED"}, "['ssl_mode']"),
    ),
    Spelling(
        "OPTIONS ssl={'ca': ...} without ssl_mode", "mysql",
        hand_written(lambda s: {"ssl": {"ca": _ca(s)}}, "['ssl']['ca']"),
    ),
]


def _id(spelling: Spelling) -> str:
    return f"{spelling.engine}-{spelling.label}"


def _server(request: pytest.FixtureRequest, engine: str, *, tls: bool) -> Any:
    name = "postgres_server" if engine == "postgresql" else "mysql_server"
    return request.getfixturevalue(name if tls else f"{name}_without_tls")


def _alias(engine: str) -> str:
    return f"enc{engine[:2]}{next(_ids)}"


def cipher(conn: Any) -> str:
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            cursor.execute("SELECT cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return cursor.fetchone()[0] or ""
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return cursor.fetchone()[1]


@pytest.mark.parametrize("spelling", SPELLINGS, ids=_id)
def test_refused_by_a_server_without_tls(
    request: pytest.FixtureRequest, spelling: Spelling
) -> None:
    server = _server(request, spelling.engine, tls=False)
    alias = _alias(spelling.engine)
    entry, setting = spelling.configure(server, alias)
    sessions_before = server.connection_count(user="plain")
    with registered_alias(alias, entry) as conn:
        started = time.monotonic()
        with pytest.raises(EncryptionRequired) as info:
            conn.ensure_connection()
        assert time.monotonic() - started < 10
        exc = info.value
        assert isinstance(exc, OperationalError)  # what handlers of connect errors catch
        assert exc.alias == alias
        assert exc.setting.startswith(setting), (exc.setting, setting)
        text = str(exc)
        assert f"database alias '{alias}'" in text and setting in text
        assert "does not offer TLS" in text
        if spelling.engine == "mysql" and "verify" not in spelling.label.lower().replace("_", "-"):
            # Connector/C let it through; the server's status is the answer
            assert "Ssl_cipher is empty, have_ssl is DISABLED" in text
        else:
            assert "the driver:" in text and "support" in text  # the driver refused
            assert exc.__cause__ is not None
        assert conn.connection is None
        conn.close()
        stats = manager.get(alias).stats()
        assert (stats.open, stats.checked_out, stats.connects) == (0, 0, 0), stats
    after = server.wait_for_connection_count(lambda n: n <= sessions_before, user="plain")
    assert after <= sessions_before


@pytest.mark.parametrize("spelling", SPELLINGS, ids=_id)
def test_connects_encrypted_to_a_tls_server(
    request: pytest.FixtureRequest, spelling: Spelling
) -> None:
    server = _server(request, spelling.engine, tls=True)
    alias = _alias(spelling.engine)
    entry, _ = spelling.configure(server, alias)
    with registered_alias(alias, entry) as conn:
        conn.ensure_connection()
        assert cipher(conn) != ""
        conn.close()
        # the check runs once per physical connection, not per checkout
        for _ in range(3):
            connections[alias].ensure_connection()
            connections[alias].close()
        stats = manager.get(alias).stats()
        assert stats.connects == 1, stats


def test_prefer_still_connects_in_plain_text(request: pytest.FixtureRequest, server: Any) -> None:
    """Control: a mode that does not ask for encryption is not refused."""
    plain_server = _server(request, server.engine, tls=False)
    alias = _alias(server.engine)
    entry, _ = from_env("prefer")(plain_server, alias)
    with registered_alias(alias, entry) as conn:
        conn.ensure_connection()
        assert cipher(conn) == ""
        conn.close()


def test_check_connect_reports_the_refusal(
    request: pytest.FixtureRequest, server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """``multipool check --connect`` shows the same error, not a plain-text success."""
    from multipool.cli import probe

    plain_server = _server(request, server.engine, tls=False)
    alias = _alias(server.engine)
    entry, setting = from_env("require")(plain_server, alias)
    result = probe(alias, entry, timeout=5)
    assert not result["ok"], result
    assert "does not offer TLS" in result["error"] and setting in result["error"]
