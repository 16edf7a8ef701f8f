"""Passwords and tokens rotated while requests run, against the real servers.

Each test has a database user of its own, whose password is changed on the
server (``ALTER ROLE`` / ``ALTER USER``) while four threads make requests:

* ``PASSWORD_FILE`` / ``URL_FILE`` rewritten before the server changes
  (connections are recycled all along, so new ones open in every phase): new
  connections use the new password once the server takes it, and the old one
  until then; 0 failed requests;
* the server first, then the file: connections already open keep working (the
  same server sessions serve), and new ones use the new password;
* a provider whose token changes and expires (PostgreSQL ``VALID UNTIL``;
  on MariaDB each new token replaces the last): new connections use fresh
  tokens, and the provider is called once per validity window, not per
  connection;
* the AWS RDS IAM recipe (``multipool.secrets.aws:rds_iam_token``) with a
  stand-in for boto3.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from multipool.config import databases
from multipool.pools import manager
from multipool.secrets import Credential, CredentialRequest
from multipool.secrets import aws as aws_recipe
from tests.conftest import patched_environ, registered_alias
from tests.reliability.rotation_helpers import (
    Load,
    bare_url,
    database_user,
    log_events,
    pool_stats,
    set_password,
    unique,
    wait_until,
    write_now,
)

pytestmark = pytest.mark.timeout(120)


@contextmanager
def login_alias(server: Any, user: str, **env: str) -> Iterator[str]:
    """An alias for ``user`` over TLS verify-full, with the given variables (no prefix)."""
    alias = unique("login")
    prefix = f"{alias.upper()}_DATABASE_"
    environ = {
        "DATABASE_ALIASES": alias,
        f"{prefix}SSLMODE": "verify-full",
        f"{prefix}SSLROOTCERT": str(server.certs.ca_cert),
        f"{prefix}POOL_SIZE": "3",
        f"{prefix}MAX_OVERFLOW": "0",
        **{f"{prefix}{k}": v for k, v in env.items()},
    }
    if "URL_FILE" not in env:
        environ[f"{prefix}URL"] = bare_url(server, user)
    with patched_environ(environ):
        entry = databases()[alias]
    assert entry["PASSWORD"] == ""  # the password is read when connecting, not kept
    with registered_alias(alias, entry):
        yield alias


def url_with(server: Any, user: str, password: str) -> bytes:
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    return (
        f"{scheme}://{user}:{quote(password, safe='')}@{server.host}:{server.port}/"
        f"{server.database}\n"
    ).encode()


def password_refused(server: Any, user: str, password: str) -> bool:
    """Whether the server refuses ``password`` for a new login now."""
    params = server.connect_params("plain")
    params.update(user=user, password=password)
    try:
        if server.engine == "postgresql":
            import psycopg

            psycopg.connect(**params, connect_timeout=5).close()
        else:
            import MySQLdb

            MySQLdb.connect(**params).close()
    except Exception:
        return True
    return False


@pytest.mark.parametrize("variable", ["PASSWORD_FILE", "URL_FILE"])
def test_file_rotated_before_the_server(server: Any, tmp_path: Path, variable: str) -> None:
    first, second = unique("Pw1-@:/"), unique("Pw2-@:/")
    secret = tmp_path / "secret"

    def content(user: str, password: str) -> bytes:
        return url_with(server, user, password) if variable == "URL_FILE" else password.encode()

    with database_user(server, password=first) as user:
        write_now(secret, content(user, first) + b"\n")
        with login_alias(
            server, user, **{variable: str(secret)}, POOL_RECYCLE="0.2", POOL_RESET="session"
        ) as alias, log_events() as events, Load(alias) as load:
            load.wait_for_requests(200)
            write_now(secret, content(user, second))  # the file first ...
            connects = pool_stats(alias).connects
            wait_until(lambda: pool_stats(alias).connects >= connects + 3)  # refused, then old
            load.wait_for_requests(200)
            set_password(server, user, second)  # ... then the server
            events.wait_for("new connections log in with the new credentials", alias=alias)
            assert password_refused(server, user, first)
            connects = pool_stats(alias).connects
            wait_until(lambda: pool_stats(alias).connects >= connects + 3)
            load.wait_for_requests(200)
            status = manager.get(alias)
        assert load.errors == [], load.errors[:3]
        assert status is not None


def test_server_changed_first_then_the_file(server: Any, tmp_path: Path) -> None:
    first, second = unique("Pw1-"), unique("Pw2-")
    secret = tmp_path / "password"
    with database_user(server, password=first) as user:
        write_now(secret, first.encode())
        with login_alias(server, user, PASSWORD_FILE=str(secret)) as alias, Load(alias) as load:
            load.wait_for_requests(200)
            wait_until(lambda: pool_stats(alias).open == 3)
            wait_until(lambda: len(server.connection_ids(user=user)) == 3)  # as the server sees
            before = server.connection_ids(user=user)
            set_password(server, user, second)  # the server first ...
            load.wait_for_requests(300)
            write_now(secret, second.encode())  # ... then the file
            load.wait_for_requests(300)
            # The sessions opened with the old password kept serving.
            assert server.connection_ids(user=user) == before
            assert pool_stats(alias).connects == 3
            manager.dispose(alias)  # a new pool: new logins, with the new password
            wait_until(lambda: not server.connection_ids(user=user) & before)
            wait_until(lambda: len(server.connection_ids(user=user)) >= 1)
            load.wait_for_requests(300)
        assert load.errors == [], load.errors[:3]
        assert password_refused(server, user, first)


# -- a provider ---------------------------------------------------------------------------


class TokenIssuer:
    """What a token service does: each call makes a new token, valid ``window``
    seconds, and sets it on the server (where it expires: PostgreSQL VALID UNTIL;
    MariaDB: the next token replaces it)."""

    def __init__(self) -> None:
        self.server: Any = None
        self.user = ""
        self.window = 1.5
        self.calls: list[float] = []
        self.requests: list[CredentialRequest] = []
        self.lock = threading.Lock()

    def issue(self) -> str:
        token = unique("tok-")
        set_password(self.server, self.user, token, valid_for=self.window)
        with self.lock:
            self.calls.append(time.monotonic())
        return token


ISSUER = TokenIssuer()


def issue_token(request: CredentialRequest) -> Credential:
    """The provider of ``test_provider_token_changes_and_expires``
    (``DATABASE_CREDENTIALS=tests.reliability.test_credential_rotation:issue_token``)."""
    ISSUER.requests.append(request)
    return Credential(password=ISSUER.issue(), expires_in=ISSUER.window)


def test_provider_token_changes_and_expires(server: Any) -> None:
    ISSUER.__init__()
    with database_user(server, password=unique("unused-")) as user:
        ISSUER.server, ISSUER.user = server, user
        provider = f"{__name__}:issue_token"
        with login_alias(
            server, user, CREDENTIALS=provider, POOL_RECYCLE="0.1"
        ) as alias, Load(alias) as load:
            started = time.monotonic()
            load.wait_for_requests(100)
            while time.monotonic() - started < 4 * ISSUER.window:
                load.wait_for_requests(50)
            elapsed = time.monotonic() - started
            stats = pool_stats(alias)
        assert load.errors == [], load.errors[:3]
    windows = elapsed / (ISSUER.window * 0.9)  # a token is replaced after 90 % of its life
    assert 2 <= len(ISSUER.calls) <= math.ceil(windows) + 1, (len(ISSUER.calls), elapsed)
    assert stats.connects >= 5 * len(ISSUER.calls)  # once per window, not per connection
    request = ISSUER.requests[0]
    assert (request.alias, request.host, request.port, request.user) == (
        alias, server.host, server.port, user,
    )
    print(
        f"\n{server.engine}: {stats.connects} connects in {elapsed:.1f}s, "
        f"{len(ISSUER.calls)} provider calls (window {ISSUER.window}s), 0 failed"
    )


class StandInRDS:
    """Stands in for ``boto3.client("rds")``: a token is the user's new password."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.calls: list[dict[str, Any]] = []

    def generate_db_auth_token(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        token = f"{kwargs['DBHostname']}:{kwargs['Port']}/?Action=connect&{unique('X-Amz-')}"
        set_password(self.server, kwargs["DBUsername"], token)
        return token


@pytest.fixture
def stand_in_boto3(server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInRDS]:
    rds = StandInRDS(server)
    module = types.ModuleType("boto3")
    module.client = lambda service, region_name=None: rds  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "boto3", module)
    aws_recipe._clients.clear()
    yield rds
    aws_recipe._clients.clear()


def test_rds_iam_recipe(server: Any, stand_in_boto3: StandInRDS) -> None:
    with database_user(server, password=unique("unused-")) as user, login_alias(
        server, user, CREDENTIALS="multipool.secrets.aws:rds_iam_token", POOL_RECYCLE="0.1"
    ) as alias, Load(alias) as load:
        load.wait_for_requests(300)
        wait_until(lambda: pool_stats(alias).connects >= 10)
        stats = pool_stats(alias)
    assert load.errors == [], load.errors[:3]
    assert stand_in_boto3.calls == [
        {"DBHostname": server.host, "Port": server.port, "DBUsername": user, "Region": None}
    ]
    assert stats.connects >= 10
