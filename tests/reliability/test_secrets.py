"""Secrets never leak: passwords, key passphrases and private-key PEM text.

With every logger at DEBUG (root, ``multipool``, ``django``, ``sqlalchemy``,
the drivers), warnings recorded, and stdout/stderr captured at the file
descriptor level (so that C libraries are caught too), one scenario per engine
runs everything an application and an operator do with a configuration:

* configuration from the real environment (``multipool.databases()``) with a
  password full of special characters, a client key given as PEM *content*,
  and (PostgreSQL) that key encrypted with a passphrase (``SSLPASSWORD``);
* ``repr``/``str`` of every spec object (``DatabaseSpec``, ``TLSSpec``,
  ``PoolSpec``), of the pool, its stats and the connection wrapper;
* a successful connect and queries through the pooled alias (SQL logged);
* a failed connect (wrong password), a pool timeout, pool statistics;
* configuration errors that involve the secrets (wrong passphrase, missing
  passphrase, passphrase on MySQL, key and certificate swapped, key pasted
  as the CA);
* the system checks (``check_databases``, ``check_deployment`` and Django's
  ``check --deploy`` command) and, when ``multipool.cli`` exists, every
  subcommand of the CLI.

None of the secrets -- nor any line of the private key's PEM body -- may appear
in a log record (formatted, with its traceback), an exception (``str`` and
``repr`` along the whole ``__cause__``/``__context__`` chain, and the formatted
traceback), a warning, a check message, or the captured output.

Nor may the private key stay on disk. An application in a subprocess reads its CA,
client certificate and key as PEM text from the environment and logs in by
certificate; after a normal exit, SIGTERM or SIGKILL no file it could have written
holds the key. On Linux the text lives in in-memory files and nothing is written at
all; the temporary files used elsewhere (forced here) are removed at exit and on
SIGTERM/SIGINT, and stay after SIGKILL. Every driver reads the in-memory files, and a
forked worker connects with the paths it inherited.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from multipool.checks import check_databases, check_deployment
from multipool.config import databases, env_prefix, read_environment
from multipool.errors import ConfigurationError, PoolTimeout
from multipool.pools import manager
from multipool.tls import pem
from tests.conftest import registered_alias

pytestmark = pytest.mark.timeout(60)

LOGGERS = ("", "multipool", "django", "django.db.backends", "sqlalchemy", "psycopg", "MySQLdb")
ALIAS = "vault"
BAD_ALIAS = "vaultbad"


# -- collecting every text the run produced --------------------------------------------------


class Evidence:
    """Every piece of text that could carry a secret to a user, a log or a terminal."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: object) -> None:
        self.texts.append((where, str(text)))

    def exception(self, where: str, exc: BaseException) -> None:
        seen: set[int] = set()
        current: BaseException | None = exc
        depth = 0
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self.add(f"{where} [chain {depth}] str", current)
            self.add(f"{where} [chain {depth}] repr", repr(current))
            self.add(f"{where} [chain {depth}] args", repr(getattr(current, "args", ())))
            current = current.__cause__ or current.__context__
            depth += 1
        self.add(f"{where} traceback", "".join(traceback.format_exception(exc)))

    @contextlib.contextmanager
    def catching(self, where: str, *expected: type[BaseException]) -> Iterator[None]:
        """Run a block that must raise one of ``expected``; keep the exception."""
        try:
            yield
        except expected as exc:
            self.exception(where, exc)
        else:
            pytest.fail(f"{where}: no {', '.join(e.__name__ for e in expected)} raised")

    def logs(self, records: Iterable[logging.LogRecord]) -> None:
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        for record in records:
            self.add(f"log {record.name}", formatter.format(record))
            if record.exc_info and record.exc_info[1] is not None:
                self.exception(f"log {record.name} exc_info", record.exc_info[1])

    def assert_clean(self, secret_values: dict[str, str]) -> None:
        assert len(self.texts) > 20, "the scenario produced suspiciously little text"
        leaks = [
            f"{name} in {where}: ...{text[max(0, text.find(value) - 60):text.find(value) + 20]!r}"
            for where, text in self.texts
            for name, value in secret_values.items()
            if value in text
        ]
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


def pem_body_lines(pem: str) -> list[str]:
    """Lines of a PEM body long enough not to occur by chance."""
    return [
        line.strip()
        for line in pem.splitlines()
        if line.strip() and not line.startswith("-----") and len(line.strip()) >= 16
        and ":" not in line  # "Proc-Type: 4,ENCRYPTED" style headers are not secret
    ]


# -- the scenario -----------------------------------------------------------------------------


def bare_url(server: Any, password: str) -> str:
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    return (
        f"{scheme}://app:{quote(password, safe='')}@{server.host}:{server.port}/"
        f"{server.database}?connect_timeout=5"
    )


def encrypted_pem(key_path: Path, passphrase: str) -> str:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    ).decode()


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if "DATABASE_" in key:
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'default.sqlite3'}")
    return monkeypatch


def cli_available() -> bool:
    return importlib.util.find_spec("multipool.cli") is not None


#: every CLI run of the scenario; ``certs init`` (writes development keys) is left out
CLI_RUNS = [
    ["--help"],
    ["config"],
    ["config", "--json"],
    ["check"],
    ["check", "--deploy", "--connect", "--timeout", "5"],
    ["check", "--deploy", "--connect", "--json", "--timeout", "5"],
    ["status", "--connect"],
    ["status", "--json"],
    ["metrics", "--connect"],
    ["budget", "--workers", "2", "--hosts", "3", "--max-connections", "10"],
    ["budget", "--workers", "2", "--hosts", "3", "--connect", "--timeout", "5", "--json"],
    ["demo", "--requests", "4", "--threads", "1", "--no-progress", "--alias", ALIAS],
    ["nonsense-command"],
]


def cli_subcommands() -> set[str]:
    import argparse

    from multipool.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def run_cli(evidence: Evidence, runs: list[list[str]], label: str = "") -> None:
    """Run ``multipool.cli.main`` with each argv; keep its output, exit code, exceptions."""
    from multipool.cli import main

    for argv in runs:
        where = f"cli {label} {' '.join(argv)}".replace("  ", " ")
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
            evidence.add(f"{where} exit", code)
        except SystemExit as exc:
            evidence.add(f"{where} exit", repr(exc.code))
        except Exception as exc:  # main() should not raise; keep it as evidence anyway
            evidence.exception(where, exc)
        evidence.add(f"{where} stdout", out.getvalue())
        evidence.add(f"{where} stderr", err.getvalue())


@contextlib.contextmanager
def patched(monkeypatch: pytest.MonkeyPatch, change: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in change}
    for key, value in change.items():
        monkeypatch.setenv(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)


def test_secrets_never_leak(
    server: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    clean_environ: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from django.db import connections

    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    evidence = Evidence()
    pg = server.engine == "postgresql"

    password = server.users["app"].password  # contains @:%/+
    wrong_password = f"Wr0ng-{secrets.token_urlsafe(12)}@:/%+"
    passphrase = f"Pass-{secrets.token_urlsafe(12)}"
    wrong_passphrase = f"Nope-{secrets.token_urlsafe(12)}"
    cert_path, key_path = server.certs.client("app")
    plain_key_pem = key_path.read_text()
    cert_pem = cert_path.read_text()
    encrypted_key_pem = encrypted_pem(key_path, passphrase)
    key_pem = encrypted_key_pem if pg else plain_key_pem  # mysqlclient has no passphrase

    secret_values = {
        "password": password,
        "password (encoded)": quote(password, safe=""),
        "wrong password": wrong_password,
        "wrong password (encoded)": quote(wrong_password, safe=""),
        "passphrase": passphrase,
        "wrong passphrase": wrong_passphrase,
    }
    for i, line in enumerate(pem_body_lines(plain_key_pem)):
        secret_values[f"private key line {i}"] = line
    for i, line in enumerate(pem_body_lines(encrypted_key_pem)):
        secret_values[f"encrypted private key line {i}"] = line
    assert len(secret_values) > 8

    def tls_env(alias: str, **extra: str) -> dict[str, str]:
        prefix = env_prefix(alias)
        env = {
            f"{prefix}SSLMODE": "verify-full",
            f"{prefix}SSLROOTCERT": str(server.certs.ca_cert),
            f"{prefix}SSLCERT": cert_pem,
            f"{prefix}SSLKEY": key_pem,
            f"{prefix}POOL_SIZE": "1",
            f"{prefix}MAX_OVERFLOW": "0",
            f"{prefix}POOL_TIMEOUT": "0.3",
        }
        if pg:
            env[f"{prefix}SSLPASSWORD"] = passphrase
        env.update({f"{prefix}{k}": v for k, v in extra.items()})
        return env

    environ = {
        "DATABASE_ALIASES": f"{ALIAS},{BAD_ALIAS}",
        f"{env_prefix(ALIAS)}URL": bare_url(server, password),
        f"{env_prefix(BAD_ALIAS)}URL": bare_url(server, wrong_password),
        **tls_env(ALIAS),
        **tls_env(BAD_ALIAS),
    }
    for key, value in environ.items():
        clean_environ.setenv(key, value)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        # -- configuration, and every spec object
        dbs = databases()
        specs = read_environment()
        for alias, spec in specs.items():
            for obj in (spec, spec.tls, spec.pool):
                evidence.add(f"repr {alias} {type(obj).__name__}", repr(obj))
                evidence.add(f"str {alias} {type(obj).__name__}", str(obj))
            evidence.add(f"settings names {alias}", spec.settings)
        assert dbs[ALIAS]["PASSWORD"] == password  # the secret is there, to be kept hidden
        if pg:
            assert dbs[ALIAS]["OPTIONS"]["sslpassword"] == passphrase

        # -- configuration errors that involve the secrets
        base = dict(environ)
        prefix = env_prefix(ALIAS)
        bad_configs: dict[str, dict[str, str]] = {
            "key and certificate swapped": {
                f"{prefix}SSLCERT": key_pem, f"{prefix}SSLKEY": cert_pem,
            },
            "key pasted as the CA": {f"{prefix}SSLROOTCERT": key_pem},
        }
        if pg:
            bad_configs["wrong passphrase"] = {f"{prefix}SSLPASSWORD": wrong_passphrase}
            bad_configs["no passphrase"] = {f"{prefix}SSLPASSWORD": ""}
        else:
            bad_configs["passphrase on mysql"] = {f"{prefix}SSLPASSWORD": passphrase}
        for label, change in bad_configs.items():
            with evidence.catching(f"config error: {label}", ConfigurationError):
                read_environment(source={**base, **change})
            # The same through the system checks (E00x messages), when the entry can be
            # built without validating the files.
            try:
                unchecked = databases(source={**base, **change}, validate=False)
            except ConfigurationError as exc:
                evidence.exception(f"config error (unvalidated): {label}", exc)
            else:
                for message in check_databases(unchecked) + check_deployment(unchecked):
                    evidence.add(f"check {label} {message.id}", message)
            if cli_available():
                with patched(clean_environ, change):
                    run_cli(evidence, [["config"], ["check", "--deploy"]], label)
        if pg:  # a passphrase for a key that is not encrypted: a warning, not an error
            read_environment(source={**base, f"{prefix}SSLKEY": plain_key_pem})

        # -- success, failure, timeout, stats, checks
        with registered_alias(ALIAS, dbs[ALIAS]) as conn, registered_alias(
            BAD_ALIAS, dbs[BAD_ALIAS]
        ) as bad:
            conn.force_debug_cursor = True  # Django logs every query at DEBUG
            with conn.cursor() as cursor:
                cursor.execute("SELECT %s", [41])
                assert cursor.fetchone()[0] == 41
                cursor.execute(
                    "SELECT current_user"
                    if pg
                    else "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)"
                )
                assert cursor.fetchone()[0] == "app"
            evidence.add("repr connection", repr(conn))
            evidence.add("repr pool", repr(manager.get(ALIAS)))

            # A pool timeout: the one connection is held by this thread.
            def other_thread() -> None:
                other = connections[ALIAS]
                try:
                    with evidence.catching("pool timeout", PoolTimeout):
                        other.ensure_connection()
                finally:
                    other.close()

            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join(30)
            assert not worker.is_alive()
            assert manager.get(ALIAS).stats().timeouts == 1

            from django.db.utils import OperationalError

            with evidence.catching("wrong password", OperationalError):
                bad.ensure_connection()
            bad.close()

            for alias, stats in manager.stats().items():
                evidence.add(f"stats {alias}", repr(stats))
                evidence.add(f"stats dict {alias}", stats.as_dict())

            for message in check_databases(dbs) + check_deployment(dbs):
                evidence.add(f"check {message.id}", message)
            out, err = io.StringIO(), io.StringIO()
            try:
                call_command("check", deploy=True, stdout=out, stderr=err)
            except SystemCheckError as exc:
                evidence.exception("manage.py check --deploy", exc)
            evidence.add("manage.py check stdout", out.getvalue())
            evidence.add("manage.py check stderr", err.getvalue())

            conn.close()
            assert manager.get(ALIAS).stats().checked_out == 0

            if cli_available():  # the operator's view of the same environment
                covered = {argv[0] for argv in CLI_RUNS} | {"certs"}
                assert cli_subcommands() <= covered, "a new CLI subcommand: add it to CLI_RUNS"
                run_cli(evidence, CLI_RUNS)

    for w in caught:
        evidence.add(f"warning {w.category.__name__}", w.message)
    if pg:
        assert any("passphrase is unused" in str(w.message) for w in caught)
    evidence.logs(caplog.records)
    captured = capfd.readouterr()
    evidence.add("stdout", captured.out)
    evidence.add("stderr", captured.err)

    # The run really went through the interesting paths.
    wheres = " | ".join(where for where, _ in evidence.texts)
    for expected in ("pool timeout", "wrong password", "config error", "multipool.E00"):
        assert expected in wheres, expected
    assert any(r.name.startswith("django.db.backends") for r in caplog.records)
    if cli_available():
        assert "cli  config stdout" in wheres or "cli config stdout" in wheres

    evidence.assert_clean(secret_values)


def test_key_material_without_pem_header_is_not_echoed(server: Any) -> None:
    """SSLKEY holding the key's base64 body without the ``-----BEGIN`` line
    (armor stripped by a secret manager, or lost when flattening to one line)."""
    cert_path, key_path = server.certs.client("app")
    body = "".join(pem_body_lines(key_path.read_text()))
    prefix = env_prefix(ALIAS)
    with pytest.raises(ConfigurationError) as info:
        read_environment(
            source={
                "DATABASE_ALIASES": ALIAS,
                f"{prefix}URL": bare_url(server, "irrelevant"),
                f"{prefix}SSLCERT": str(cert_path),
                f"{prefix}SSLKEY": body,
            }
        )
    assert f"{prefix}SSLKEY" in str(info.value)
    for line in pem_body_lines(key_path.read_text()):
        assert line[:16] not in str(info.value)


# -- secrets that rotate: *_FILE variables, a provider, rotated certificate files -------------

#: the provider of test_rotated_secrets_never_leak (the dedicated user's current password)
TOKEN: dict[str, str] = {}


def current_token(request: Any) -> Any:
    from multipool.secrets import Credential

    return Credential(password=TOKEN["value"], expires_in=600)


def test_rotated_secrets_never_leak(
    server: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    clean_environ: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The same scrutiny for the inputs of rotation: passwords from
    ``PASSWORD_FILE`` and ``URL_FILE``, a provider's token, a key from ``SSLKEY_FILE``;
    rotated (the password file before the server, the certificate and key replaced,
    a half-written rotation with a key that does not match, a wrong password in the
    file), shown (specs, ``--explain``, the checks, the pool status, every CLI run)."""
    from multipool.config.explain import explain
    from multipool.status import pool_status, render_pool_status
    from tests.reliability.rotation_helpers import (
        client_cert,
        database_user,
        server_ca,
        set_password,
        write_now,
    )

    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    evidence = Evidence()
    first, second = (f"{label}-{secrets.token_urlsafe(12)}@:/%+" for label in ("Fi", "Se"))
    wrong = f"Wr-{secrets.token_urlsafe(12)}@:/%+"
    old_cert, new_cert = (client_cert(server_ca(server), "certuser") for _ in range(2))
    half = client_cert(server_ca(server), "certuser")
    secret_values = {"first": first, "second": second, "wrong": wrong,
                     **{f"{k} (encoded)": quote(v, safe="") for k, v in
                        (("first", first), ("second", second), ("wrong", wrong))}}
    for label, cert in (("old", old_cert), ("new", new_cert), ("half", half)):
        for i, line in enumerate(pem_body_lines(cert.key.decode())):
            secret_values[f"{label} key line {i}"] = line
    password_file, url_file = tmp_path / "db-password", tmp_path / "database-url"
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_now(cert_file, old_cert.cert, 0o644)
    write_now(key_file, old_cert.key)
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    where = f"{server.host}:{server.port}/{server.database}"

    with database_user(server, password=first) as user:
        write_now(password_file, first.encode() + b"\n")
        write_now(url_file, f"{scheme}://{user}:{quote(first, safe='')}@{where}".encode())
        TOKEN["value"] = first
        tls = {"SSLMODE": "verify-full", "SSLROOTCERT": str(server.certs.ca_cert),
               "POOL_SIZE": "1", "MAX_OVERFLOW": "0", "ROTATION_CHECK": "0"}
        aliases = {
            "vfile": {"URL": f"{scheme}://{user}@{where}", "PASSWORD_FILE": str(password_file)},
            "vurl": {"URL_FILE": str(url_file)},
            "vtoken": {"URL": f"{scheme}://{user}@{where}",
                       "CREDENTIALS": f"{__name__}:current_token"},
            "vcert": {"URL": f"{scheme}://{user}@{where}", "PASSWORD_FILE": str(password_file),
                      "SSLCERT_FILE": str(cert_file), "SSLKEY_FILE": str(key_file)},
        }
        clean_environ.setenv("DATABASE_ALIASES", ",".join(aliases))
        for alias, env in aliases.items():
            for key, value in {**tls, **env}.items():
                clean_environ.setenv(f"{env_prefix(alias)}{key}", value)

        dbs = databases()
        for alias, spec in read_environment().items():
            evidence.add(f"repr {alias}", repr(spec))
            evidence.add(f"entry {alias}", repr(dbs[alias]))
        evidence.add("explain", repr(explain()))
        with contextlib.ExitStack() as stack:
            conns = {a: stack.enter_context(registered_alias(a, dbs[a])) for a in aliases}

            def use_all(label: str) -> None:
                for alias, conn in conns.items():
                    try:
                        with conn.cursor() as cursor:
                            cursor.execute("SELECT 1")
                    except Exception as exc:
                        evidence.exception(f"{label} {alias}", exc)
                    conn.close()
                    manager.dispose(alias)  # the next use opens a new connection

            use_all("first")
            write_now(password_file, second.encode())  # the file before the server
            write_now(url_file, f"{scheme}://{user}:{quote(second, safe='')}@{where}".encode())
            TOKEN["value"] = second
            use_all("file rotated")
            set_password(server, user, second)
            write_now(key_file, half.key)  # half-written: a key that does not match
            use_all("server rotated")
            write_now(cert_file, new_cert.cert, 0o644)
            write_now(key_file, new_cert.key)
            use_all("certificate rotated")
            write_now(password_file, wrong.encode())  # no password that works before it
            set_password(server, user, first)
            use_all("wrong password")
            rows = pool_status(dbs)
            evidence.add("pool status", json.dumps(rows, default=str))
            evidence.add("pool status table", render_pool_status(rows))
            for message in check_databases(dbs) + check_deployment(dbs):
                evidence.add(f"check {message.id}", message)
            if cli_available():
                run_cli(evidence, [["config"], ["config", "--explain"], ["check"],
                                   ["status", "--connect"], ["status", "--json", "--connect"]],
                        "rotation")

    evidence.logs(caplog.records)
    captured = capfd.readouterr()
    evidence.add("stdout", captured.out)
    evidence.add("stderr", captured.err)
    wheres = " | ".join(where for where, _ in evidence.texts)
    logged = " | ".join(r.getMessage() for r in caplog.records)
    assert "wrong password" in wheres  # the wrong password in the file was refused
    assert "are not used" in logged and "does not match" in logged  # the half-written key
    assert "new certificate files validated" in logged
    assert "the ones that worked before are used" in logged  # the file before the server
    evidence.assert_clean(secret_values)


# -- the private key is never left on disk -----------------------------------------------------
#
# PEM text from the environment lives in an in-memory file on Linux (memfd, nothing on
# disk, whatever ends the process), and in a private temporary directory elsewhere
# (removed at exit and on SIGTERM/SIGINT; SIGKILL leaves it). ``pem.use_memfd = False``
# forces the temporary files on Linux too.

#: An application in a subprocess: CA, client certificate and key as PEM text from the
#: environment, one real TLS connection as ``certuser``, then one JSON line on stdout
#: (user, TLS version, the paths, every file or directory Python was asked to create or
#: write, the signal handlers in place). An application's SIGTERM handler is installed
#: ``before`` or ``after`` the settings are read, or not at all (``-``). Then it waits on
#: stdin: a line (or its end) makes it exit normally, unless a signal ends it first.
APP = r"""
import json, os, signal, sys

storage, handler = sys.argv[1:3]
made = []


def audit(event, args):
    if event == "open" and not isinstance(args[0], int):
        mode, flags = args[1] or "", args[2] or 0
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) or set(mode) & set("wax+"):
            made.append(os.fsdecode(args[0]))
    elif event in ("os.mkdir", "tempfile.mkstemp", "tempfile.mkdtemp"):
        made.append(os.fsdecode(args[0]))


sys.addaudithook(audit)


def on_sigterm(signum, frame):
    os.write(1, b"the application's handler ran\n")  # print() is not safe here
    sys.exit(3)


if handler == "before":
    signal.signal(signal.SIGTERM, on_sigterm)

import multipool.tls.pem

multipool.tls.pem.use_memfd = storage == "memory"

import django
from django.conf import settings

import multipool
from multipool.config import read_environment

settings.configure(DATABASES=multipool.databases(), INSTALLED_APPS=["multipool"], USE_TZ=True)
django.setup()
if handler == "after":
    signal.signal(signal.SIGTERM, on_sigterm)
from django.db import connection

with connection.cursor() as cursor:
    if connection.vendor == "postgresql":
        cursor.execute("SELECT current_user, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        user, tls = cursor.fetchone()
    else:
        cursor.execute("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)")
        user = cursor.fetchone()[0]
        cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
        tls = cursor.fetchone()[1]
spec = read_environment()["default"].tls
paths = {"ca": spec.ca, "cert": spec.cert, "key": spec.key}
handlers = {
    name: getattr(signal.getsignal(number), "__name__", str(signal.getsignal(number)))
    for name, number in (("SIGTERM", signal.SIGTERM), ("SIGINT", signal.SIGINT))
}
report = {"user": user, "tls": tls, "paths": paths, "made": made, "handlers": handlers}
print(json.dumps(report), flush=True)
sys.stdin.readline()  # the connection stays open until then
"""

#: where Python's tempfile could put a file when TMPDIR is unusable, and shared memory
SYSTEM_TEMP_DIRS = ("/tmp", "/var/tmp", "/usr/tmp", "/dev/shm")


@dataclass
class AppRun:
    report: dict[str, Any]
    returncode: int
    stdout: str
    stderr: str
    seconds_to_end: float  # from the signal (or the request to exit) to the end
    home: Path
    temp: Path
    cwd: Path
    needles: list[str]  # the lines of the key's PEM body
    roots: list[str]  # everywhere the application could have written a file
    since_ns: int  # files changed since then (ctime) are searched for the key
    key_files_before: dict[str, tuple[int, int]]  # copies changed shortly before


def certuser_environment(server: Any) -> dict[str, str]:
    """``DATABASE_*`` for ``certuser``: CA, certificate and key as PEM text."""
    cert, key = server.certs.client("certuser")
    user = server.users["certuser"]
    auth = f"certuser:{quote(user.password, safe='')}" if user.password else "certuser"
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    return {
        "DATABASE_URL": f"{scheme}://{auth}@{server.host}:{server.port}/{server.database}"
        "?connect_timeout=5",
        "DATABASE_SSLMODE": "verify-full",
        "DATABASE_SSLROOTCERT": server.certs.ca_cert.read_text(),
        "DATABASE_SSLCERT": cert.read_text(),
        "DATABASE_SSLKEY": key.read_text(),
    }


def run_app(
    server: Any, tmp_path: Path, storage: str, end: str, handler: str = "-", *,
    while_running: Any = None,
) -> AppRun:
    """Run :data:`APP` with its own HOME, TMPDIR and working directory (all empty)."""
    home, temp, cwd = (tmp_path / name for name in ("home", "temp", "cwd"))
    for directory in (home, temp, cwd):
        directory.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": str(temp), "TEMP": str(temp), "TMP": str(temp),
        "PYTHONDONTWRITEBYTECODE": "1",
        **certuser_environment(server),
    }
    needles = pem_body_lines(server.certs.client("certuser")[1].read_text())
    roots = [str(home), str(temp), str(cwd), *filter(os.path.isdir, SYSTEM_TEMP_DIRS)]
    since_ns = time.time_ns() - CLOCK_MARGIN_NS
    before = files_holding(needles, roots, since_ns)
    proc = subprocess.Popen(
        [sys.executable, "-c", APP, storage, handler],
        cwd=cwd, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            proc.wait(10)
            pytest.fail(f"the application failed: {proc.stderr.read() if proc.stderr else ''}")
        report = json.loads(line)
        if while_running is not None:
            while_running(proc.pid, report, temp)
        signalled = time.monotonic()
        if end == "exit" and proc.stdin is not None:
            proc.stdin.write("exit\n")
            proc.stdin.flush()
        else:
            proc.send_signal(getattr(signal, end))
        proc.wait(10)
        seconds = time.monotonic() - signalled
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return AppRun(
        report, proc.returncode, out, err, seconds, home, temp, cwd, needles, roots, since_ns,
        before,
    )


#: how far before a run files count as changed during it (the file clock is coarse)
CLOCK_MARGIN_NS = 2_000_000_000


def files_holding(
    needles: list[str], roots: Iterable[str], since_ns: int
) -> dict[str, tuple[int, int]]:
    """Regular files under ``roots``, changed (ctime) since ``since_ns``, that contain
    a needle: path -> (inode, mtime). A file written during a run has a later ctime
    whatever its writer does; older files are not read (a shared /tmp may hold
    gigabytes)."""
    found = {}
    for root in roots:
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    st = os.lstat(path)
                    if not stat.S_ISREG(st.st_mode) or st.st_ctime_ns < since_ns:
                        continue  # older, or not a file (never open a socket or a FIFO)
                    with open(path, "rb") as handle:
                        data = handle.read(1 << 20)
                except OSError:
                    continue
                if any(needle.encode() in data for needle in needles):
                    found[path] = (st.st_ino, st.st_mtime_ns)
    return found


def key_on_disk(run: AppRun) -> dict[str, tuple[int, int]]:
    """Files holding the key that were not there, as they are, before the run."""
    now = files_holding(run.needles, run.roots, run.since_ns)
    return {path: seen for path, seen in now.items() if run.key_files_before.get(path) != seen}


def assert_connected(run: AppRun) -> None:
    assert run.report["user"] == "certuser", run.stderr  # logged in by the client certificate
    assert run.report["tls"].startswith("TLSv1."), run.report


def memfd_running(pid: int, report: dict[str, Any], temp: Path) -> None:
    """While the application runs: each path is an in-memory file of that process."""
    for kind, path in report["paths"].items():
        assert path.startswith("/proc/self/fd/"), path
        target = os.readlink(f"/proc/{pid}/fd/{path.rpartition('/')[2]}")
        assert target == f"/memfd:multipool-tls-{kind} (deleted)"


def files_running(pid: int, report: dict[str, Any], temp: Path) -> None:
    """While the application runs: the key is a 0600 file in a 0700 directory in TMPDIR."""
    key = Path(report["paths"]["key"])
    assert key.parent.parent == temp and key.parent.name.startswith("multipool-tls-")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700


needs_memfd = pytest.mark.skipif(not pem.use_memfd, reason="no memfd_create on this system")

#: how each ending ends the process: a normal exit, or death by the signal itself
ENDINGS = {"exit": 0, "SIGTERM": -signal.SIGTERM, "SIGKILL": -signal.SIGKILL}


@needs_memfd
@pytest.mark.parametrize("end", list(ENDINGS))
def test_key_in_memory_never_reaches_a_disk(server: Any, tmp_path: Path, end: str) -> None:
    run = run_app(server, tmp_path, "memory", end, while_running=memfd_running)
    assert_connected(run)
    assert run.report["handlers"] == PYTHON_HANDLERS  # no signal is touched
    assert run.returncode == ENDINGS[end], run.stderr
    assert run.seconds_to_end < 5
    assert run.report["made"] == []  # Python was asked to create or write no file at all
    for directory in (run.home, run.temp, run.cwd):
        assert list(directory.iterdir()) == []
    assert key_on_disk(run) == {}


#: Python's own handlers: SIGTERM's default action, SIGINT's KeyboardInterrupt
PYTHON_HANDLERS = {"SIGTERM": str(signal.SIG_DFL), "SIGINT": "default_int_handler"}


@pytest.mark.parametrize(
    "end, handler, sigterm_handler, returncode",
    [
        ("exit", "-", "_on_signal", 0),
        # no handler: multipool's removes the directory, then the default action
        ("SIGTERM", "-", "_on_signal", -signal.SIGTERM),
        # the application's handler, kept whatever the order, ran and exited
        ("SIGTERM", "before", "on_sigterm", 3),
        ("SIGTERM", "after", "on_sigterm", 3),
        # Python's handler raises KeyboardInterrupt; the process exits, then dies of SIGINT
        ("SIGINT", "-", "_on_signal", -signal.SIGINT),
    ],
    ids=["exit", "SIGTERM", "SIGTERM-handler-before", "SIGTERM-handler-after", "SIGINT"],
)
def test_key_in_temporary_files_is_removed(
    server: Any, tmp_path: Path, end: str, handler: str, sigterm_handler: str, returncode: int
) -> None:
    run = run_app(server, tmp_path, "files", end, handler, while_running=files_running)
    assert_connected(run)
    assert run.report["handlers"] == {**PYTHON_HANDLERS, "SIGTERM": sigterm_handler}
    assert run.returncode == returncode, run.stderr
    assert run.seconds_to_end < 5
    assert ("the application's handler ran" in run.stdout) == (handler != "-")
    made = [Path(path) for path in run.report["made"]]
    assert made and all(path.is_relative_to(run.temp) for path in made)
    assert list(run.temp.iterdir()) == []  # the private directory is gone
    assert key_on_disk(run) == {}


def test_key_in_temporary_files_outlives_sigkill(server: Any, tmp_path: Path) -> None:
    """Nothing runs on SIGKILL: the temporary files stay. On Linux the in-memory file
    is the answer (test_key_in_memory_never_reaches_a_disk)."""
    run = run_app(server, tmp_path, "files", "SIGKILL", while_running=files_running)
    try:
        assert_connected(run)
        assert run.returncode == -signal.SIGKILL
        key = Path(run.report["paths"]["key"])
        assert key.read_text() == server.certs.client("certuser")[1].read_text()
        assert list(key_on_disk(run)) == [str(key)]  # what the other tests look for
    finally:
        shutil.rmtree(run.temp)


def crl_pem(certs: Any, revoked: Iterable[Path] = ()) -> str:
    """A CRL signed by the test CA, revoking the certificates in ``revoked``."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + datetime.timedelta(days=1))
    )
    for path in revoked:
        serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def driver_user(connect: Any, params: dict[str, Any], pg: bool) -> str:
    """Connect with a DB-API driver; the user the server logged in."""
    conn = connect(**params)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT current_user" if pg else "SELECT CURRENT_USER()")
        return str(cursor.fetchone()[0]).split("@")[0]
    finally:
        conn.close()


@needs_memfd
def test_every_driver_reads_the_in_memory_files(server: Any) -> None:
    """libpq (psycopg 3 and psycopg2) and mysqlclient open ``/proc/self/fd/N`` for the
    CA, the client certificate, its key and (libpq) the CRL: ``certuser`` gets in by
    its certificate, and a CRL revoking the server's certificate is obeyed."""
    pg = server.engine == "postgresql"
    env = certuser_environment(server)
    if pg:
        env["DATABASE_SSLCRL"] = crl_pem(server.certs)
    tls = read_environment(source=env)["default"].tls
    files = [tls.ca, tls.cert, tls.key] + ([tls.crl] if pg else [])
    assert all(str(path).startswith("/proc/self/fd/") for path in files), files
    assert stat.S_IMODE(os.stat(str(tls.key)).st_mode) == 0o600  # what libpq demands
    params = server.connect_params("certuser")
    params.pop("ssl", None)
    if not pg:
        import MySQLdb

        params.update(tls.driver_kwargs("mysql"))
        assert driver_user(MySQLdb.connect, params, pg) == "certuser"
        return
    import psycopg
    import psycopg2

    revoking = {**env, "DATABASE_SSLCRL": crl_pem(server.certs, [server.certs.server_cert])}
    revoked = read_environment(source=revoking)["default"].tls
    good = {**params, **tls.driver_kwargs("postgresql")}
    bad = {**params, **revoked.driver_kwargs("postgresql")}
    for driver in (psycopg, psycopg2):
        assert driver_user(driver.connect, good, pg) == "certuser"
        with pytest.raises(driver.OperationalError, match="certificate verify failed"):
            driver_user(driver.connect, bad, pg)


def current_user(conn: Any) -> str:
    with conn.cursor() as cursor:
        pg = conn.vendor == "postgresql"
        cursor.execute("SELECT current_user" if pg else "SELECT CURRENT_USER()")
        return str(cursor.fetchone()[0]).split("@")[0]


def in_forked_worker(alias: str, files: list[str]) -> dict[str, Any]:
    """What a pre-fork worker does (runs in the child): connect with the inherited paths;
    then what one that closes every descriptor it inherited meets, and its remedy."""
    from django.db import connections

    result: dict[str, Any] = {"files": [os.readlink(path) for path in files]}
    conn = connections[alias]
    result["user"] = current_user(conn)
    conn.close()
    manager.dispose(alias)  # the next connection is a new one
    for path in files:  # a worker closing every descriptor it inherited
        os.close(int(path.rpartition("/")[2]))
    try:
        conn.ensure_connection()
        result["after closing"] = "connected"
    except Exception as exc:  # psycopg2 may not decode libpq's message: UnicodeDecodeError
        result["after closing"] = type(exc).__name__
    conn.close()
    # The remedy: read the settings in the worker, after it has closed them.
    with registered_alias(f"{alias}again", databases()[alias]) as again:
        result["user again"] = current_user(again)
        again.close()
    return result


def run_forked(target: Any, *args: Any) -> dict[str, Any]:
    """``target(*args)`` in a forked child; its JSON result."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(read_fd)
            os.write(write_fd, json.dumps(target(*args)).encode())
            code = 0
        except BaseException as exc:
            os.write(write_fd, json.dumps({"error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()  # until the child exits
    _, status = os.waitpid(pid, 0)
    result = json.loads(text)
    assert os.waitstatus_to_exitcode(status) == 0, result
    return dict(result)


@needs_memfd
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_worker_connects_with_the_inherited_paths(
    server: Any, clean_environ: pytest.MonkeyPatch
) -> None:
    """gunicorn ``--preload``: the parent reads the settings, connects, and forks."""
    alias = "forked"
    for key, value in certuser_environment(server).items():
        clean_environ.setenv(key.replace("DATABASE_", env_prefix(alias)), value)
    clean_environ.setenv("DATABASE_ALIASES", alias)
    entry = databases()[alias]
    tls = read_environment()[alias].tls
    files = [str(tls.ca), str(tls.cert), str(tls.key)]
    with registered_alias(alias, entry) as conn:
        assert current_user(conn) == "certuser"  # the parent's connection stays open
        started = time.monotonic()
        child = run_forked(in_forked_worker, alias, files)
        assert time.monotonic() - started < 20
        kinds = ("ca", "cert", "key")
        assert child["files"] == [f"/memfd:multipool-tls-{kind} (deleted)" for kind in kinds]
        assert child["user"] == "certuser"
        assert child["after closing"] in ("OperationalError", "UnicodeDecodeError"), child
        assert child["user again"] == "certuser", child
        conn.close()
        assert current_user(conn) == "certuser"  # the parent's files are untouched
        assert read_environment()[alias].tls.key == tls.key
