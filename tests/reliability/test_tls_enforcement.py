"""TLS is enforced through multipool-configured aliases, on both engines.

Every alias here is built the way users build it: environment variables
(``<ALIAS>_DATABASE_URL`` without any TLS option, ``..._SSLMODE``,
``..._SSLROOTCERT``) -> ``multipool.databases()`` -> a Django connection of a
``multipool.backends.*`` engine. The servers are the real TLS servers of the
project's pytest plugin; the server-certificate swaps (another host, expired,
signed by a foreign CA) rewrite the local servers' certificate files.

Every refused connection must surface as one of multipool's ``ConnectError``
subclasses -- still Django's ``OperationalError``, the driver's error chained
as ``__cause__`` -- naming the alias, the setting at fault and what a second
look at the server's certificate found (its issuer against the CA, its names
against the host, its dates against now); promptly, and leaving nothing
behind: after ``close()`` the alias's pool has nothing checked out and nothing
open, and the server has no extra session.

Every spelling that asks for verify-full is tried against a certificate for
another host name, on both engines: the environment (``verify-full``,
``VERIFY_IDENTITY``), the URL (``?sslmode=verify-full``,
``?ssl_mode=VERIFY_IDENTITY``) and hand-written ``OPTIONS``.

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
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db.utils import OperationalError

from multipool.certs import CertificateAuthority, generate_dev_certs, issue_cert, make_ca
from multipool.errors import (
    AuthenticationFailed,
    ConfigurationError,
    ConnectError,
    ServerCertificateError,
)
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


def bare_url(server: Any, user: str = "app", query: str = "") -> str:
    """The server's URL without TLS options: TLS comes from the separate env keys
    (or from ``query``)."""
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    secret = server.users[user].password
    auth = f"{user}:{quote(secret, safe='')}" if secret else user
    return (
        f"{scheme}://{auth}@{server.host}:{server.port}/{server.database}"
        f"?connect_timeout=5{query}"
    )


def new_alias(server: Any) -> str:
    return f"tls{server.engine[:2]}{next(_ids)}"


def setting(alias: str, key: str) -> str:
    """The name of one of the alias's environment variables (``SSLMODE`` ...)."""
    return f"{alias.upper()}_DATABASE_{key}"


def entry_from_env(alias: str, env: dict[str, str]) -> dict:
    """The alias's entry from real environment variables (``env`` without prefix)."""
    from multipool.config import databases

    with patched_environ({setting(alias, k): v for k, v in env.items()}):
        return databases(DATABASE_ALIASES=alias)[alias]


def entry_for(server: Any, mode: str, ca: Path | str | None, user: str = "app") -> tuple[str, dict]:
    """A fresh alias configured from real environment variables."""
    alias = new_alias(server)
    env = {"URL": bare_url(server, user), "SSLMODE": mode}
    if ca is not None:
        env["SSLROOTCERT"] = str(ca)
    return alias, entry_from_env(alias, env)


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
    server: Any,
    mode: str,
    ca: Path | str | None = None,
    *,
    user: str = "app",
    kind: type[ConnectError] = ServerCertificateError,
) -> ConnectError:
    """The alias cannot connect: ``kind``, a Django OperationalError naming the alias,
    promptly, nothing left open."""
    alias, entry = entry_for(server, mode, ca, user)
    return assert_entry_refused(server, alias, entry, user=user, kind=kind)


def assert_entry_refused(
    server: Any, alias: str, entry: dict, *, user: str = "app",
    kind: type[ConnectError] = ServerCertificateError,
) -> ConnectError:
    sessions_before = server.connection_count(user=user)
    with registered_alias(alias, entry) as conn:
        started = time.monotonic()
        with pytest.raises(OperationalError) as info:
            conn.ensure_connection()
        elapsed = time.monotonic() - started
        exc = info.value
        assert type(exc) is kind, type(exc)  # Django's OperationalError, not the driver's
        assert isinstance(exc, ConnectError)
        assert exc.alias == alias
        assert str(exc).startswith(f"database alias '{alias}', setting {exc.setting}: ")
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
    assert exc.__cause__ is not None
    return int(exc.__cause__.args[0])


def ca_name(path: Path | str) -> str:
    """How a message names the CA certificate in ``path``."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes()).subject.rfc4514_string()


def foreign_ca() -> CertificateAuthority:
    return make_ca("multipool foreign CA")


def foreign_ca_cert(server: Any, ca: CertificateAuthority) -> tuple[Any, Any]:
    """A valid server certificate for the right host, signed by a CA the client never saw."""
    return issue_cert(ca, "localhost", hosts=["localhost", server.host])


@pytest.fixture
def untrusted_ca(tmp_path: Path) -> Path:
    """A CA bundle that did not sign the server's certificate."""
    return generate_dev_certs(tmp_path / "untrusted").ca_cert


def assert_host_name_refused(
    server: Any, exc: ConnectError, host_setting: str, mode_setting: str, mode: str
) -> None:
    """The diagnosis of a certificate for ``wrong.example``: the host setting at fault."""
    assert exc.setting == host_setting
    assert exc.problem.startswith(
        f"the certificate of {server.host}:{server.port} is for 'wrong.example', "
        f"not for {server.host!r}, the host connected to ({mode_setting} is {mode}, "
    )
    assert f"a name the certificate has ('wrong.example') in {host_setting}" in exc.fix


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
        alias = exc.alias
        assert_host_name_refused(
            server, exc, setting(alias, "URL"), setting(alias, "SSLMODE"), "verify-full"
        )
        if server.engine == "postgresql":
            assert "does not match host name" in str(exc)
            assert_connects_encrypted(server, "verify-ca", ca)
        else:
            assert mysql_code(exc) == CR_SSL_CONNECTION_ERROR
            exc = assert_refused(server, "verify-ca", ca)
            assert mysql_code(exc) == CR_SSL_CONNECTION_ERROR
            assert "Validation of SSL server certificate failed" in str(exc)
            assert_host_name_refused(
                server, exc, setting(exc.alias, "URL"), setting(exc.alias, "SSLMODE"), "verify-ca"
            )
            assert "MariaDB Connector/C checks the host name under VERIFY_CA too" in exc.problem
        assert_connects_encrypted(server, "require")


#: every way to ask for verify-full: an environment variable, the URL, hand-written OPTIONS
VERIFY_FULL = {
    "postgresql": ["SSLMODE=verify-full", "?sslmode=verify-full", "OPTIONS"],
    "mysql": [
        "SSLMODE=verify-full", "SSLMODE=VERIFY_IDENTITY", "?ssl_mode=VERIFY_IDENTITY", "OPTIONS"
    ],
}


def spelled_verify_full(server: Any, alias: str, spelling: str) -> tuple[dict, str, str]:
    """The alias's entry asking for verify-full as ``spelling`` says, with the names of
    its host setting and of the setting that asks for verify-full."""
    ca = str(server.certs.ca_cert)
    postgresql = server.engine == "postgresql"
    url = setting(alias, "URL")
    if spelling.startswith("SSLMODE="):
        env = {"URL": bare_url(server), "SSLROOTCERT": ca, "SSLMODE": spelling[8:]}
        return entry_from_env(alias, env), url, setting(alias, "SSLMODE")
    if spelling.startswith("?"):
        query = f"&{spelling[1:]}&{'sslrootcert' if postgresql else 'ssl_ca'}={quote(ca)}"
        return entry_from_env(alias, {"URL": bare_url(server, query=query)}), url, url
    options: dict[str, Any] = (
        {"sslmode": "verify-full", "sslrootcert": ca} if postgresql
        else {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": ca}}
    )
    entry = {
        "ENGINE": f"multipool.backends.{'postgresql' if postgresql else 'mysql'}",
        "NAME": server.database, "USER": "app", "PASSWORD": server.users["app"].password,
        "HOST": server.host, "PORT": server.port, "OPTIONS": options,
    }
    key = "sslmode" if postgresql else "ssl_mode"
    return entry, f"DATABASES[{alias!r}]['HOST']", f"DATABASES[{alias!r}]['OPTIONS'][{key!r}]"


def test_every_verify_full_spelling_checks_the_host_name(server: Any) -> None:
    """Each spelling connects to the right certificate, and refuses one for another
    host, naming the host setting and the setting that asked for verify-full."""
    cases = []
    for spelling in VERIFY_FULL[server.engine]:
        alias = new_alias(server)
        cases.append((spelling, alias, *spelled_verify_full(server, alias, spelling)))
    for spelling, alias, entry, _, _ in cases:
        with registered_alias(alias, entry) as conn:
            conn.ensure_connection()
            assert tls_version(conn).startswith("TLSv1."), spelling
    with serving_cert(server, *wrong_host_cert(server)):
        for spelling, alias, entry, host_setting, mode_setting in cases:
            exc = assert_entry_refused(server, alias, entry)
            try:
                assert_host_name_refused(server, exc, host_setting, mode_setting, "verify-full")
            except AssertionError as failure:
                raise AssertionError(f"{spelling}: {exc}") from failure


def test_expired_server_cert(server: Any) -> None:
    """An expired certificate from the right CA fails every mode that verifies.

    That includes require with a CA file: libpq documents that require behaves
    like verify-ca when a root CA file is given, and Connector/C verifies the
    chain whenever a CA is given. require without a CA does not look at the
    certificate at all: still encrypted, and it connects. The setting named is
    the one that makes the certificate checked: the mode, or for require the CA.
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
            key = "SSLROOTCERT" if mode == "require" else "SSLMODE"
            assert exc.setting == setting(exc.alias, key), (mode, exc.setting)
            assert re.match(
                rf"the certificate of {re.escape(server.host)}:{server.port} expired on "
                r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \(", exc.problem
            ), exc.problem
            assert exc.fix.startswith("renew the server's certificate")
        assert_connects_encrypted(server, "require")


def test_plain_text_refused_for_tls_only_user(server: Any) -> None:
    """``app`` may only log in over TLS: SSLMODE=disable is refused by the server.

    PostgreSQL says why (pg_hba.conf, no encryption): the mode is at fault. MySQL
    only says "Access denied": the fix names both the password and the mode.
    """
    exc = assert_refused(server, "disable", kind=AuthenticationFailed)
    if server.engine == "postgresql":
        assert "pg_hba.conf rejects connection" in str(exc)
        assert "no encryption" in str(exc)
        assert exc.setting == setting(exc.alias, "SSLMODE")
        assert exc.problem.startswith("the server accepts user 'app' only over TLS")
    else:
        assert mysql_code(exc) == ER_ACCESS_DENIED_ERROR
        assert exc.setting == setting(exc.alias, "URL")
        assert (
            f"if the account requires TLS (REQUIRE SSL), set {setting(exc.alias, 'SSLMODE')} "
            "to verify-full" in exc.fix
        )
    # Control: the same configuration works for the user allowed without TLS.
    alias, entry = entry_for(server, "disable", None, user="plain")
    with registered_alias(alias, entry) as conn:
        conn.ensure_connection()
        assert tls_version(conn) == ""
        conn.close()


def test_require_does_not_verify_but_verify_modes_do(server: Any) -> None:
    """The server presents a certificate signed by a CA the client does not know.

    require (no CA): encrypted but unverified, so it connects. verify-ca and
    verify-full with the client's CA refuse it, and say which CA issued it.
    """
    other = foreign_ca()
    with serving_cert(server, *foreign_ca_cert(server, other)):
        assert_connects_encrypted(server, "require")
        for mode in ("verify-ca", "verify-full"):
            exc = assert_refused(server, mode, server.certs.ca_cert)
            if server.engine == "mysql":
                assert mysql_code(exc) == CR_SSL_CONNECTION_ERROR
            ca_setting = setting(exc.alias, "SSLROOTCERT")
            assert exc.setting == ca_setting
            assert exc.problem.startswith(
                f"the certificate of {server.host}:{server.port} was issued by "
                f"{other.name!r}, which is not a CA in {ca_setting} "
                f"(it holds {ca_name(server.certs.ca_cert)!r}) ("
            ), exc.problem
            assert exc.fix.startswith(
                f"set {ca_setting} to the CA that issued the server's certificate ({other.name!r})"
            )


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
        assert exc.setting == setting(exc.alias, "SSLROOTCERT")
        assert (
            f"was issued by {ca_name(server.certs.ca_cert)!r}, which is not a CA in "
            f"{exc.setting} (it holds {ca_name(untrusted_ca)!r})" in exc.problem
        )
    assert_connects_encrypted(server, "require")
