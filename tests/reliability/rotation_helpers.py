"""What the rotation tests share: a request load, secret volumes, new certificates,
log events, and dedicated database users.

A :class:`SecretVolume` writes files the way the kubelet updates a Secret volume:
the files are symlinks into ``..data``, itself a symlink to a timestamped
directory, and an update swaps ``..data`` with one ``rename``, so that every file
changes at once. :func:`write_now` rewrites one file (``rename`` over it), which
is how a half-written rotation happens: the certificate first, the key later.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from multipool.certs import CertificateAuthority, issue_cert, load_ca, make_ca
from multipool.pools import manager
from tests.test_pool_lifecycle import request_cycle

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_counter)}"


# -- load -------------------------------------------------------------------------------------


class Load:
    """``threads`` threads making requests through ``alias`` until :meth:`stop`."""

    def __init__(self, alias: str, threads: int = 4, sql: str = "SELECT 1") -> None:
        self.alias, self.sql = alias, sql
        self.errors: list[BaseException] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work) for _ in range(threads)]

    def _work(self) -> None:
        from django.db import connections

        conn = connections[self.alias]
        try:
            while not self._stop.is_set():
                try:
                    request_cycle(conn, self.sql)
                except Exception as exc:
                    with self._lock:
                        self.errors.append(exc)
                    self._stop.wait(0.01)
                else:
                    with self._lock:
                        self.requests += 1
        finally:
            connections.close_all()

    def count(self) -> int:
        with self._lock:
            return self.requests

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self._threads), "a load thread hangs"

    def wait_for_requests(self, more: int, timeout: float = 20.0) -> None:
        """Until ``more`` further requests went through (bounded)."""
        target = self.count() + more
        wait_until(lambda: self.count() >= target or bool(self.errors), timeout)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll a condition that no event announces (server-side state), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout}s: {what}"
        time.sleep(0.02)


def pool_stats(alias: str) -> Any:
    return manager.stats(alias)[alias]


# -- log events -------------------------------------------------------------------------------


class LogEvents(logging.Handler):
    """Records of ``multipool.secrets``; a test waits for one instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def messages(self, level: int = logging.DEBUG, alias: str | None = None) -> list[str]:
        with self._changed:
            found = [r.getMessage() for r in self.records if r.levelno >= level]
        return [m for m in found if alias is None or repr(alias) in m or f"'{alias}'" in m]

    def wait_for(self, text: str, *, alias: str, timeout: float = 20.0, count: int = 1) -> None:
        def seen() -> bool:
            return sum(text in m for m in self.messages(alias=alias)) >= count

        with self._changed:
            assert self._changed.wait_for(seen, timeout), (
                f"no log {text!r} for {alias!r} within {timeout}s: {self.messages(alias=alias)}"
            )


@contextmanager
def log_events() -> Iterator[LogEvents]:
    handler = LogEvents()
    logger = logging.getLogger("multipool.secrets")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


# -- files ------------------------------------------------------------------------------------


def write_now(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with one ``rename`` (readers see the old or the new file)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


class SecretVolume:
    """A directory updated like a Kubernetes Secret volume (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._versions = itertools.count(1)

    def path(self, name: str) -> Path:
        return self.root / name

    def update(self, files: dict[str, bytes]) -> None:
        version = self.root / f"..{next(self._versions)}_{secrets.token_hex(3)}"
        version.mkdir()
        for name, data in files.items():
            (version / name).write_bytes(data)
            (version / name).chmod(0o600)
        link = self.root / f"..data_tmp{secrets.token_hex(3)}"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")  # every file changes at once
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                visible.symlink_to(f"..data/{name}")


# -- certificates -----------------------------------------------------------------------------


@dataclass
class ClientCert:
    cert: bytes
    key: bytes = field(repr=False)
    serial: int
    subject: str


def server_ca(server: Any) -> CertificateAuthority:
    return load_ca(server.certs.ca_cert, server.certs.ca_key)


def client_cert(ca: CertificateAuthority, common_name: str) -> ClientCert:
    cert, key = issue_cert(ca, common_name, usage="client")
    return ClientCert(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.serial_number,
        f"/CN={common_name}",
    )


def foreign_ca() -> CertificateAuthority:
    """A CA no test server trusts."""
    return make_ca("multipool rotation test: untrusted CA")


# -- database users ---------------------------------------------------------------------------


@contextmanager
def database_user(server: Any, *, password: str | None, x509: bool = False) -> Iterator[str]:
    """A user of its own for one test (so that changing its password or certificate
    requirement touches no other test); dropped afterwards."""
    name = unique("rot")
    pg = server.engine == "postgresql"
    if pg:
        server.query(f'CREATE ROLE "{name}" LOGIN PASSWORD {_literal(password or "")}')
    else:
        require = "X509" if x509 else "SSL"
        server.query(f"CREATE USER %s@'%%' IDENTIFIED BY %s REQUIRE {require}", (name, password))
        server.query(f"GRANT SELECT ON `{server.database}`.* TO %s@'%%'", (name,))
    try:
        yield name
    finally:
        server.terminate(user=name)
        server.query(f'DROP ROLE IF EXISTS "{name}"' if pg else f"DROP USER IF EXISTS '{name}'@'%'")


def set_password(server: Any, user: str, password: str, *, valid_for: float | None = None) -> None:
    """``ALTER ROLE`` / ``ALTER USER``: the server's side of a password rotation. On
    PostgreSQL ``valid_for`` makes the password expire (``VALID UNTIL``)."""
    if server.engine == "postgresql":
        until = ""
        if valid_for is not None:
            expiry = datetime.datetime.now(datetime.timezone.utc).timestamp() + valid_for
            when = datetime.datetime.fromtimestamp(expiry, datetime.timezone.utc).isoformat()
            until = f" VALID UNTIL '{when}'"
        server.query(f'ALTER ROLE "{user}" PASSWORD {_literal(password)}{until}')
    else:
        server.query("ALTER USER %s@'%%' IDENTIFIED BY %s", (user, password))


def _literal(text: str) -> str:
    """A PostgreSQL string literal (utility statements take no parameters)."""
    return "'" + text.replace("'", "''") + "'"


def bare_url(server: Any, user: str, *, application_name: str | None = None) -> str:
    """A URL without password and without TLS options (those come from variables)."""
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    url = f"{scheme}://{user}@{server.host}:{server.port}/{server.database}"
    if application_name and server.engine == "postgresql":
        url += f"?application_name={application_name}"
    return url
