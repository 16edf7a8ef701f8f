"""Client certificates rotated while requests run, against the real servers.

The alias reads its certificate and key from ``SSLCERT_FILE`` / ``SSLKEY_FILE``
and looks at them every 0.2 s (``ROTATION_CHECK``). Four threads make requests
the whole time; every test ends with 0 failed requests.

* A rotation (both files at once, as a Kubernetes Secret volume swaps them):
  new connections present the new certificate, checked on the server
  (PostgreSQL: ``pg_stat_ssl.client_serial`` of a user that logs in by
  certificate; MariaDB: the user is then altered to ``REQUIRE SUBJECT`` of the
  new certificate, which only new-certificate logins pass), and every
  connection opened before is retired, one at a time.
* A half-written rotation (the certificate replaced, the key not yet): the
  old files stay in use, one error is logged, the pool status and
  ``multipool check`` show it; once the key arrives the new set takes over.
* A rotation to a certificate from a CA the server does not trust: the error
  names the alias, the variable and the server's answer, and the connections
  opened with the old certificate stay in service.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.db import connections

from multipool.checks import check_databases
from multipool.config import databases
from multipool.pools import manager
from multipool.status import pool_status
from tests.conftest import patched_environ, registered_alias
from tests.reliability.rotation_helpers import (
    ClientCert,
    Load,
    SecretVolume,
    client_cert,
    database_user,
    foreign_ca,
    log_events,
    pool_stats,
    server_ca,
    unique,
    wait_until,
    write_now,
)

pytestmark = pytest.mark.timeout(120)

POOL_SIZE = 4


@contextmanager
def cert_alias(server: Any, cert_file: Path, key_file: Path) -> Iterator[tuple[str, Any]]:
    """An alias logging in by client certificate from the two files, and what
    identifies its sessions on the server (PostgreSQL: an application name;
    MariaDB: a user of its own)."""
    alias = unique("certrot")
    prefix = f"{alias.upper()}_DATABASE_"
    environ = {
        "DATABASE_ALIASES": alias,
        f"{prefix}SSLMODE": "verify-full",
        f"{prefix}SSLROOTCERT": str(server.certs.ca_cert),
        f"{prefix}SSLCERT_FILE": str(cert_file),
        f"{prefix}SSLKEY_FILE": str(key_file),
        f"{prefix}ROTATION_CHECK": "0.2",
        f"{prefix}POOL_SIZE": str(POOL_SIZE),
        f"{prefix}MAX_OVERFLOW": "0",
    }
    if server.engine == "postgresql":
        scheme, who = "postgresql", "certuser"  # pg_hba: certuser logs in by certificate
        password = ""
        environ[f"{prefix}URL"] = (
            f"{scheme}://{who}@{server.host}:{server.port}/{server.database}"
            f"?application_name={alias}"
        )
        with patched_environ(environ):
            entry = databases()[alias]
        with registered_alias(alias, entry):
            yield alias, alias
        return
    password = unique("Pw-")
    with database_user(server, password=password, x509=True) as who:
        environ[f"{prefix}URL"] = (
            f"mysql://{who}:{quote(password, safe='')}@{server.host}:{server.port}/"
            f"{server.database}"
        )
        with patched_environ(environ):
            entry = databases()[alias]
        with registered_alias(alias, entry):
            yield alias, who


def sessions(server: Any, marker: str) -> dict[int, int | None]:
    """The alias's server sessions: id -> client certificate serial (PostgreSQL;
    MariaDB does not show it: None)."""
    if server.engine == "postgresql":
        rows = server.query(
            "SELECT a.pid, s.client_serial::text FROM pg_stat_activity a "
            "JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = %s",
            (marker,),
        )
        return {int(pid): int(serial) if serial else None for pid, serial in rows}
    return dict.fromkeys(server.connection_ids(user=marker))


def first_certificate(server: Any, directory: Path, subject: str) -> tuple[ClientCert, Path, Path]:
    cert = client_cert(server_ca(server), subject)
    directory.mkdir()
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    write_now(cert_file, cert.cert, 0o644)
    write_now(key_file, cert.key)
    return cert, cert_file, key_file


def warm(load: Load, alias: str, server: Any, marker: str) -> None:
    load.wait_for_requests(200)
    wait_until(lambda: pool_stats(alias).open == POOL_SIZE, what="a full pool")
    # (the server lists a new session a moment after the client has it)
    wait_until(lambda: len(sessions(server, marker)) == POOL_SIZE, what="every session listed")


def names(server: Any) -> tuple[str, str]:
    """The common names of the old and the new certificate. PostgreSQL: the user's
    (its certificate is its login); MariaDB: any, the user requires X509."""
    if server.engine == "postgresql":
        return "certuser", "certuser"
    return "rotation-old", "rotation-new"


def test_client_certificate_rotated_under_load(server: Any, tmp_path: Path) -> None:
    pg = server.engine == "postgresql"
    volume = SecretVolume(tmp_path / "secret")
    ca = server_ca(server)
    old_name, new_name = names(server)
    old = client_cert(ca, old_name)
    volume.update({"tls.crt": old.cert, "tls.key": old.key})
    with log_events() as events, cert_alias(
        server, volume.path("tls.crt"), volume.path("tls.key")
    ) as (alias, marker), Load(alias) as load:
        warm(load, alias, server, marker)
        before = sessions(server, marker)
        if pg:
            assert set(before.values()) == {old.serial}
        new = client_cert(ca, new_name)
        volume.update({"tls.crt": new.cert, "tls.key": new.key})
        events.wait_for("new certificate files validated", alias=alias)
        events.wait_for("the server accepted the new certificate files", alias=alias)
        wait_until(
            lambda: not set(sessions(server, marker)) & set(before),
            what="every connection opened before the rotation retired",
        )
        stats = pool_stats(alias)
        if pg:
            wait_until(lambda: set(sessions(server, marker).values()) == {new.serial})
        else:
            # From now on only a login with the new certificate passes.
            server.query(f"ALTER USER %s@'%%' REQUIRE SUBJECT '{new.subject}'", (marker,))
            opened_before = set(sessions(server, marker))
            manager.dispose(alias)  # a new pool: every connection is a new login
            wait_until(lambda: not set(sessions(server, marker)) & opened_before)
            wait_until(lambda: len(sessions(server, marker)) >= 1)
        load.wait_for_requests(200)
        load.stop()
        status = next(r for r in pool_status(connections.settings) if r["alias"] == alias)
    assert load.errors == [], load.errors[:3]
    assert stats.retired >= POOL_SIZE
    assert stats.retired <= stats.connects  # each retirement made room for one connect
    assert events.messages(logging.ERROR, alias) == []
    rotation = status["rotation"]
    assert rotation["certificate"]["serial"] == f"{new.serial:x}"
    assert rotation["tls_rotated_at"] is not None and rotation["tls_problem"] is None
    print(
        f"\n{server.engine}: rotation under load: {load.requests} requests, "
        f"{stats.connects} connects, {stats.retired} retired, {len(load.errors)} failed"
    )


def test_half_written_rotation_keeps_the_old_files(server: Any, tmp_path: Path) -> None:
    pg = server.engine == "postgresql"
    old, cert_file, key_file = first_certificate(server, tmp_path / "tls", "certuser")
    with log_events() as events, cert_alias(server, cert_file, key_file) as (alias, marker):
        with Load(alias) as load:
            warm(load, alias, server, marker)
            before = sessions(server, marker)
            new = client_cert(server_ca(server), "certuser")
            write_now(cert_file, new.cert, 0o644)  # the certificate first ...
            events.wait_for("the certificate files changed but are not used", alias=alias)
            load.wait_for_requests(200)
            status = next(r for r in pool_status(connections.settings) if r["alias"] == alias)
            problem = status["rotation"]["tls_problem"]
            assert problem is not None and "does not match" in problem, status["rotation"]
            assert "SSLKEY_FILE" in problem
            assert status["rotation"]["certificate"]["serial"] == f"{old.serial:x}"
            checks = check_databases({alias: connections.settings[alias]}, aliases=[alias])
            assert [m.id for m in checks if m.level >= logging.ERROR] == ["multipool.E004"]
            assert pool_stats(alias).retired == 0
            assert set(sessions(server, marker)) == set(before)  # nothing replaced
            write_now(key_file, new.key)  # ... the key later
            events.wait_for("new certificate files validated", alias=alias)
            events.wait_for("the server accepted the new certificate files", alias=alias)
            wait_until(lambda: not set(sessions(server, marker)) & set(before))
            if pg:
                wait_until(lambda: set(sessions(server, marker).values()) == {new.serial})
            load.wait_for_requests(100)
        assert load.errors == [], load.errors[:3]
        errors = events.messages(logging.ERROR, alias)
        assert len(errors) == 1, errors
        assert "SSLKEY_FILE" in errors[0] and "does not match" in errors[0]
        status = next(r for r in pool_status(connections.settings) if r["alias"] == alias)
        assert status["rotation"]["tls_problem"] is None
        assert status["rotation"]["certificate"]["serial"] == f"{new.serial:x}"


def test_certificate_from_an_untrusted_ca_is_refused_and_the_old_stays(
    server: Any, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "secret")
    old = client_cert(server_ca(server), "certuser")
    volume.update({"tls.crt": old.cert, "tls.key": old.key})
    with log_events() as events, cert_alias(
        server, volume.path("tls.crt"), volume.path("tls.key")
    ) as (alias, marker), Load(alias) as load:
        warm(load, alias, server, marker)
        before = sessions(server, marker)
        untrusted = client_cert(foreign_ca(), "certuser")
        volume.update({"tls.crt": untrusted.cert, "tls.key": untrusted.key})
        events.wait_for("the server refused the connection with the new certificate files",
                        alias=alias)
        load.wait_for_requests(300)
        after = sessions(server, marker)
        stats = pool_stats(alias)
        status = next(r for r in pool_status(connections.settings) if r["alias"] == alias)
    assert load.errors == [], load.errors[:3]
    errors = events.messages(logging.ERROR, alias)
    assert len(errors) == 1, errors
    error = errors[0]
    assert f"database alias '{alias}'" in error
    assert f"{alias.upper()}_DATABASE_SSLCERT_FILE" in error
    # what the server did: OpenSSL's alert, or (MariaDB, at times) a dropped handshake
    said = ("unknown ca",) if server.engine == "postgresql" else ("unknown ca", "Lost connection")
    assert "the server refused" in error and any(s in error for s in said), error
    # One connection was retired to try the new files; the others kept the old ones.
    assert stats.retired == 1
    assert len(set(before) & set(after)) >= POOL_SIZE - 1
    if server.engine == "postgresql":
        assert set(after.values()) == {old.serial}
    rotation = status["rotation"]
    assert rotation["certificate"]["serial"] == f"{old.serial:x}"
    assert "refused" in rotation["tls_problem"]
