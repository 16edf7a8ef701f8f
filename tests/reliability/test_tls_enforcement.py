"""TLS is enforced through multipool-configured aliases, on both engines.

Every alias here is built the way users build it: environment variables
(``<ALIAS>_DATABASE_URL`` without any TLS option, ``..._SSLMODE``,
``..._SSLROOTCERT``) -> ``multipool.databases()`` -> a Django connection of a
``multipool.backends.*`` engine. The servers are the real TLS servers of the
project's pytest plugin; the server-certificate swaps (another host, expired,
signed by a foreign CA) rewrite the local servers' certificate files.

Every refused connection must surface as Django's ``OperationalError`` (the
driver's error chained as ``__cause__``), promptly, and leave nothing behind:
after ``close()`` the alias's pool has nothing checked out and nothing open,
and the server has no extra session.

What the drivers do (observed, and what these tests pin down):

=====================  ===============================  ===============================
mode (client CA)       PostgreSQL (libpq)               MySQL (mysqlclient + MariaDB
                                                        Connector/C 3.3)
=====================  ===============================  ===============================
require (no CA)        TLS, nothing verified            TLS, nothing verified
require (CA given)     chain verified, host not         chain verified, host not
                       (libpq: "if a root CA file       (OpenSSL verifies against the
                       exists, require behaves like     given CA)
                       verify-ca")
verify-ca              chain verified, host not         chain **and host name**
                                                        verified (Connector/C maps
                                                        VERIFY_CA to
                                                        MYSQL_OPT_SSL_VERIFY_SERVER_CERT,
                                                        which checks the host name)
verify-full            chain and host verified          chain and host verified
=====================  ===============================  ===============================
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db.utils import OperationalError

from multipool.certs import generate_dev_certs, issue_cert, make_ca
from multipool.errors import ConfigurationError
from multipool.pools import manager
from tests.conftest import patched_environ, registered_alias
from tests.test_servers import expired_cert, serving_cert, wrong_host_cert

pytestmark = pytest.mark.timeout(60)

#: a refused connection must be reported within this many seconds
PROMPT = 10.0
#: MySQL client error "TLS/SSL error ..." and server error "Access denied"
CR_SSL_CONNECTION_ERROR = 2026
ER_ACCESS_DENIED_ERROR = 1045

_ids = itertools.count(1)


# -- helpers ---------------------------------------------------------------------------


def bare_url(server: Any, user: str = "app") -> str:
    """The server's URL without TLS options: TLS comes from the separate env keys."""
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    secret = server.users[user].password
    auth = f"{user}:{quote(secret, safe='')}" if secret else user
    return (
        f"{scheme}://{auth}@{server.host}:{server.port}/{server.database}?connect_timeout=5"
    )


def entry_for(server: Any, mode: str, ca: Path | str | None, user: str = "app") -> tuple[str, dict]:
    """A fresh alias configured from real environment variables."""
    from multipool.config import databases

    alias = f"tls{server.engine[:2]}{next(_ids)}"
    prefix = f"{alias.upper()}_DATABASE_"
    env = {f"{prefix}URL": bare_url(server, user), f"{prefix}SSLMODE": mode}
    if ca is not None:
        env[f"{prefix}SSLROOTCERT"] = str(ca)
    with patched_environ(env):
        entry = databases(DATABASE_ALIASES=alias)[alias]
    return alias, entry


@contextmanager
def alias_connection(
    server: Any, mode: str, ca: Path | str | None = None, user: str = "app"
) -> Iterator[Any]:
    alias, entry = entry_for(server, mode, ca, user)
    with registered_alias(alias, entry) as conn:
        yield conn


def tls_version(conn: Any) -> str:
    with conn.cursor() as cursor:
        if conn.vendor == "postgresql":
            cursor.execute("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return cursor.fetchone()[0] or ""
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        return cursor.fetchone()[1]


def assert_connects_encrypted(server: Any, mode: str, ca: Path | str | None = None) -> None:
    with alias_connection(server, mode, ca) as conn:
        conn.ensure_connection()
        assert tls_version(conn).startswith("TLSv1."), (mode, ca)
        conn.close()
        stats = manager.get(conn.alias).stats()
        assert stats.checked_out == 0


def assert_refused(
    server: Any, mode: str, ca: Path | str | None = None, *, user: str = "app"
) -> OperationalError:
    """The alias cannot connect: Django's OperationalError, promptly, nothing left open."""
    sessions_before = server.connection_count(user=user)
    with alias_connection(server, mode, ca, user) as conn:
        started = time.monotonic()
        with pytest.raises(OperationalError) as info:
            conn.ensure_connection()
        elapsed = time.monotonic() - started
        exc = info.value
        assert type(exc) is OperationalError, type(exc)  # Django's, not the driver's
        assert not isinstance(exc, ConfigurationError)
        assert exc.__cause__ is not None
        assert type(exc.__cause__).__module__.split(".")[0] in ("psycopg", "psycopg2", "MySQLdb")
        assert elapsed < PROMPT, f"refusal took {elapsed:.1f}s"
        assert conn.connection is None  # no half-open connection on the wrapper
        conn.close()
        pool = manager.get(conn.alias)
        assert pool is not None, "the alias's pool was never asked for a connection"
        stats = pool.stats()
        assert (stats.checked_out, stats.open, stats.idle) == (0, 0, 0), stats
        assert stats.connects == 0
    # No extra session stays behind (other tests' sessions may only go away meanwhile).
    after = server.wait_for_connection_count(lambda n: n <= sessions_before, user=user)
    assert after <= sessions_before, (after, sessions_before)
    return exc


def mysql_code(exc: OperationalError) -> int:
    return int(exc.__cause__.args[0])


def foreign_ca_cert(server: Any) -> tuple[Any, Any]:
    """A valid server certificate for the right host, signed by a CA the client never saw."""
    return issue_cert(make_ca(), "localhost", hosts=["localhost", server.host])


@pytest.fixture
def untrusted_ca(tmp_path: Path) -> Path:
    """A CA bundle that did not sign the server's certificate."""
    return generate_dev_certs(tmp_path / "untrusted").ca_cert


# -- the tests ---------------------------------------------------------------------------


def test_every_mode_connects_with_the_right_ca(server: Any) -> None:
    """Control: the same aliases connect, encrypted, when nothing is wrong."""
    for mode in ("require", "verify-ca", "verify-full"):
        assert_connects_encrypted(server, mode, server.certs.ca_cert)
    assert_connects_encrypted(server, "require")


def test_server_cert_for_another_host(server: Any) -> None:
    """A certificate from the right CA but for ``wrong.example``.

    verify-full refuses it on both engines. verify-ca accepts it on PostgreSQL
    (libpq: verify-ca checks the chain only). On MySQL, mysqlclient with MariaDB
    Connector/C refuses it under VERIFY_CA too: Connector/C implements both
    VERIFY_CA and VERIFY_IDENTITY with MYSQL_OPT_SSL_VERIFY_SERVER_CERT, which
    also checks the host name ("Validation of SSL server certificate failed").
    require (no CA) encrypts without verifying anything, so it connects.
    """
    ca = server.certs.ca_cert
    with serving_cert(server, *wrong_host_cert(server)):
        exc = assert_refused(server, "verify-full", ca)
        if server.engine == "postgresql":
            assert "does not match host name" in str(exc)
            assert_connects_encrypted(server, "verify-ca", ca)
        else:
            assert mysql_code(exc) == CR_SSL_CONNECTION_ERROR
            exc = assert_refused(server, "verify-ca", ca)
            assert mysql_code(exc) == CR_SSL_CONNECTION_ERROR
            assert "Validation of SSL server certificate failed" in str(exc)
        assert_connects_encrypted(server, "require")


def test_expired_server_cert(server: Any) -> None:
    """An expired certificate from the right CA fails every mode that verifies.

    That includes require with a CA file: libpq documents that require behaves
    like verify-ca when a root CA file is given, and Connector/C verifies the
    chain whenever a CA is given. require without a CA does not look at the
    certificate at all: still encrypted, and it connects.
    """
    ca = server.certs.ca_cert
    with serving_cert(server, *expired_cert(server)):
        for mode in ("verify-full", "verify-ca", "require"):
            exc = assert_refused(server, mode, ca)
            if server.engine == "postgresql":
                assert "certificate verify failed" in str(exc)
            else:
                assert mysql_code(exc) == CR_SSL_CONNECTION_ERROR
                assert "expired" in str(exc)
        assert_connects_encrypted(server, "require")


def test_plain_text_refused_for_tls_only_user(server: Any) -> None:
    """``app`` may only log in over TLS: SSLMODE=disable is refused by the server."""
    exc = assert_refused(server, "disable")
    if server.engine == "postgresql":
        assert "pg_hba.conf rejects connection" in str(exc)
        assert "no encryption" in str(exc)
    else:
        assert mysql_code(exc) == ER_ACCESS_DENIED_ERROR
    # Control: the same configuration works for the user allowed without TLS.
    alias, entry = entry_for(server, "disable", None, user="plain")
    with registered_alias(alias, entry) as conn:
        conn.ensure_connection()
        assert tls_version(conn) == ""
        conn.close()


def test_require_does_not_verify_but_verify_modes_do(server: Any) -> None:
    """The server presents a certificate signed by a CA the client does not know.

    require (no CA): encrypted but unverified, so it connects. verify-ca and
    verify-full with the client's CA refuse it.
    """
    with serving_cert(server, *foreign_ca_cert(server)):
        assert_connects_encrypted(server, "require")
        for mode in ("verify-ca", "verify-full"):
            exc = assert_refused(server, mode, server.certs.ca_cert)
            if server.engine == "mysql":
                assert mysql_code(exc) == CR_SSL_CONNECTION_ERROR


def test_untrusted_ca_file_is_refused(server: Any, untrusted_ca: Path) -> None:
    """The client trusts only a CA that did not sign the server's certificate.

    verify-ca and verify-full refuse. require with that CA file refuses too:
    libpq documents that ``sslmode=require`` behaves like ``verify-ca`` when a
    root CA file exists (backwards compatibility), and Connector/C verifies the
    chain against any CA it is given. Without a CA file require connects.
    """
    for mode in ("verify-full", "verify-ca", "require"):
        exc = assert_refused(server, mode, untrusted_ca)
        if server.engine == "postgresql":
            assert "certificate verify failed" in str(exc)
        else:
            assert mysql_code(exc) == CR_SSL_CONNECTION_ERROR
    assert_connects_encrypted(server, "require")
