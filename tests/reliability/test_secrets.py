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
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import secrets
import threading
import traceback
import warnings
from collections.abc import Iterable, Iterator
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
