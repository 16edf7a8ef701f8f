"""Bad input: malformed configurations fail early, clearly, and safely.

* A table of malformed configurations (URLs, ports, pool sizes and timeouts, TLS
  modes, TLS files and PEM text, alias names and lists, poolers, conflicting
  keys...) fed through the environment, both as a mapping
  (``read_environment(source=...)``) and through the real ``os.environ`` and
  ``multipool.databases()``. Each raises the project's ``ConfigurationError``
  (the right subclass) whose message names the alias and the exact
  environment variable -- never a driver traceback, a bare
  ``ValueError``/``KeyError``/``TypeError`` or a hang.
* A property test: arbitrary text in any environment key of an alias either
  configures the alias or raises such a ``ConfigurationError``.
* Passwords with special characters, percent-encoded, parse to the exact password.
* Configurations that are valid but cannot connect (wrong password, closed port,
  unknown database or user) raise Django's ``OperationalError`` promptly,
  naming no secret, and leave the alias's pool with nothing checked out.

Cases marked ``xfail(strict=True)`` are bugs found by this suite (see their
reasons); they turn into failures once fixed, so the mark can be dropped.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from django.db.utils import OperationalError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from multipool.certs import generate_dev_certs, issue_cert, load_ca, make_ca, write_cert
from multipool.config import ENV_KEYS, databases, env_prefix, read_environment
from multipool.errors import (
    AuthenticationFailed,
    CertificateDateError,
    CertificateError,
    ConfigurationError,
    InvalidPoolSetting,
    InvalidTLSSetting,
    InvalidURL,
    ServerUnreachable,
    TLSFileError,
    UnknownScheme,
)
from multipool.pools import AliasPool, manager
from multipool.testing.servers import free_port
from tests.conftest import registered_alias

pytestmark = pytest.mark.timeout(60)

SECRET = "s3cr3t-Pw"
PG = f"postgresql://app:{SECRET}@db.example:5432/app"
MY = f"mysql://app:{SECRET}@db.example:3306/app"
SQLITE = "sqlite:///bad-input.sqlite3"

BAD_PEM_CERT = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=!!\n-----END CERTIFICATE-----"
TRUNCATED_PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU"


# -- files the table refers to as <<name>> ---------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("bad-input")
    good = generate_dev_certs(root / "good", clients=("certuser", "other"))
    ca = load_ca(good.ca_cert, good.ca_key)
    cert, key = good.client("certuser")
    other_cert, other_key = good.client("other")
    now = dt.datetime.now(dt.timezone.utc)

    def key_pem(k: Any, password: bytes | None = None) -> bytes:
        encryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def write(name: str, data: bytes, mode: int = 0o600) -> str:
        path = root / name
        path.write_bytes(data)
        path.chmod(mode)
        return str(path)

    client_key = serialization.load_pem_private_key(key.read_bytes(), password=None)
    expired_cert, expired_key = issue_cert(
        ca, "certuser", usage="client",
        not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1),
    )
    future_cert, future_key = issue_cert(
        ca, "certuser", usage="client",
        not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30),
    )
    expired_ca = make_ca(
        not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )
    # Same name as the real CA, another key: the "regenerated CA" mistake.
    impostor = make_ca(common_name=ca.cert.subject.rfc4514_string().split("CN=")[-1].split(",")[0])
    impostor_cert, impostor_key = issue_cert(impostor, "certuser", usage="client")
    (root / "a-directory").mkdir()
    out = {
        "ca": str(good.ca_cert),
        "cert": str(cert),
        "key": str(key),
        "other_key": str(other_key),
        "other_cert": str(other_cert),
        "dir": str(root / "a-directory"),
        "missing": str(root / "no-such-file.pem"),
        "notpem": write("notpem.txt", b"hello, I am not a PEM file\n", 0o644),
        "der_ca": write("ca.der", ca.cert.public_bytes(serialization.Encoding.DER), 0o644),
        "loose_key": write("loose.key", key.read_bytes(), 0o644),
        "encrypted_key": write("encrypted.key", key_pem(client_key, b"right-passphrase")),
        "expired_cert": str(write_cert(root / "expired.crt", expired_cert)),
        "expired_key": write("expired.key", key_pem(expired_key)),
        "future_cert": str(write_cert(root / "future.crt", future_cert)),
        "future_key": write("future.key", key_pem(future_key)),
        "expired_ca": str(write_cert(root / "expired-ca.crt", expired_ca.cert)),
        "impostor_cert": str(write_cert(root / "impostor.crt", impostor_cert)),
        "impostor_key": write("impostor.key", key_pem(impostor_key)),
        "ca_pem_text": good.ca_cert.read_text(),
        "long_path": "/" + "x" * 5000,
    }
    out["ca_as_key"] = out["ca"]
    yield out
    shutil.rmtree(root, ignore_errors=True)


_TOKEN = re.compile(r"<<(\w+)>>")


def resolve(env: dict[str, str], files: dict[str, str]) -> dict[str, str]:
    return {k: _TOKEN.sub(lambda m: files[m.group(1)], v) for k, v in env.items()}


# -- the table ---------------------------------------------------------------------------------


def case(
    case_id: str,
    env: dict[str, str],
    error: type[ConfigurationError],
    var: str,
    alias: str = "default",
    *,
    bug: str | None = None,
) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=f"BUG: {bug}")] if bug else []
    return pytest.param(env, error, var, alias, id=case_id, marks=marks)


def url(value: str) -> dict[str, str]:
    return {"DATABASE_URL": value}


def pg(**env: str) -> dict[str, str]:
    return {"DATABASE_URL": PG, **{f"DATABASE_{k}": v for k, v in env.items()}}


def my(**env: str) -> dict[str, str]:
    return {"DATABASE_URL": MY, **{f"DATABASE_{k}": v for k, v in env.items()}}


U = "DATABASE_URL"
CASES = [
    # -- URLs
    case("url-not-a-url", url("not a url"), InvalidURL, U),
    case("url-whitespace-only", url("   "), InvalidURL, U),
    case("url-missing-scheme", url(f"://app:{SECRET}@db/app"), InvalidURL, U),
    case("url-unknown-scheme", url(f"oracle://app:{SECRET}@db/app"), UnknownScheme, U),
    case("url-http-scheme", url("https://db.example/app"), UnknownScheme, U),
    case("url-unknown-driver", url(f"postgresql+asyncpg://app:{SECRET}@db/app"), UnknownScheme, U),
    case("url-mysql-unknown-driver", url(f"mysql+pymysql://app:{SECRET}@db/app"), UnknownScheme, U),
    case("url-port-not-a-number", url(f"postgresql://app:{SECRET}@db:port/app"), InvalidURL, U),
    case("url-port-zero", url(f"postgresql://app:{SECRET}@db:0/app"), InvalidURL, U),
    case("url-port-too-big", url(f"postgresql://app:{SECRET}@db:65536/app"), InvalidURL, U),
    case("url-port-negative", url(f"mysql://app:{SECRET}@db:-1/app"), InvalidURL, U),
    case("url-ipv6-unclosed", url(f"postgresql://app:{SECRET}@[::1/app"), InvalidURL, U),
    case("url-postgresql-no-database", url(f"postgresql://app:{SECRET}@db:5432"),
         ConfigurationError, U),
    case("url-sqlite-with-host", url("sqlite://db.example/app.db"), InvalidURL, U),
    case("url-sqlite-with-password", url(f"sqlite://app:{SECRET}@/app.db"), InvalidURL, U),
    case("url-query-django-pool", url(PG + "?pool=true"), InvalidPoolSetting, U),
    case("url-query-pool-size-text", url(PG + "?pool_size=zero"), InvalidPoolSetting, U),
    case("url-query-pooler-unknown", url(PG + "?pooler=odyssey"), InvalidPoolSetting, U),
    case("url-query-sslmode-unknown", url(PG + "?sslmode=bogus"), InvalidTLSSetting, U),
    case("url-query-mysql-ssl-unknown", url(MY + "?ssl=maybe"), InvalidTLSSetting, U),
    case("url-query-sslmode-repeated", url(PG + "?sslmode=require&sslmode=disable"),
         InvalidTLSSetting, U),
    case("url-query-pool-size-repeated", url(PG + "?pool_size=1&pool_size=2"),
         InvalidPoolSetting, U),
    case("url-query-capath-on-postgresql", url(PG + "?ssl_capath=/etc/ssl/certs"),
         InvalidTLSSetting, U),
    case("url-query-capath-as-pem", url(MY + "?ssl_capath=-----BEGIN%20CERTIFICATE-----"),
         InvalidTLSSetting, U),
    case("other-alias-url-unparsable", {"DATABASE_ALIASES": "other", "OTHER_DATABASE_URL": "::"},
         InvalidURL, "OTHER_DATABASE_URL", "other"),
    # -- passwords with special characters, not percent-encoded
    case("password-unencoded-at", url("postgresql://app:p@ss@db.example/app"), InvalidURL, U),
    case("password-nul", url("postgresql://app:p%00ss@db.example/app"), InvalidURL, U),
    case("database-nul", url("mysql://app:pw@db.example/ap%00p"), InvalidURL, U),
    # -- driver options in the URL query
    case("url-query-option-repeated", url(PG + "?connect_timeout=1&connect_timeout=2"),
         ConfigurationError, U),
    case("url-query-mysql-unknown-option", url(MY + "?nosuchoption=1"), ConfigurationError, U),
    # -- pool sizes, timeouts, switches
    case("pool-size-zero", pg(POOL_SIZE="0"), InvalidPoolSetting, "DATABASE_POOL_SIZE"),
    case("pool-size-negative", pg(POOL_SIZE="-3"), InvalidPoolSetting, "DATABASE_POOL_SIZE"),
    case("pool-size-fraction", pg(POOL_SIZE="2.5"), InvalidPoolSetting, "DATABASE_POOL_SIZE"),
    case("pool-size-word", pg(POOL_SIZE="ten"), InvalidPoolSetting, "DATABASE_POOL_SIZE"),
    case("pool-size-5000-digits", pg(POOL_SIZE="9" * 5000), InvalidPoolSetting,
         "DATABASE_POOL_SIZE"),
    case("pool-size-unicode-digits", pg(POOL_SIZE="\u0661\u0662x"), InvalidPoolSetting,
         "DATABASE_POOL_SIZE"),
    case("max-overflow-negative", my(MAX_OVERFLOW="-1"), InvalidPoolSetting,
         "DATABASE_MAX_OVERFLOW"),
    case("max-overflow-word", my(MAX_OVERFLOW="lots"), InvalidPoolSetting,
         "DATABASE_MAX_OVERFLOW"),
    case("pool-timeout-nan", pg(POOL_TIMEOUT="nan"), InvalidPoolSetting, "DATABASE_POOL_TIMEOUT"),
    case("pool-timeout-inf", pg(POOL_TIMEOUT="inf"), InvalidPoolSetting, "DATABASE_POOL_TIMEOUT"),
    case("pool-timeout-negative", pg(POOL_TIMEOUT="-0.5"), InvalidPoolSetting,
         "DATABASE_POOL_TIMEOUT"),
    case("pool-timeout-with-unit", pg(POOL_TIMEOUT="10s"), InvalidPoolSetting,
         "DATABASE_POOL_TIMEOUT"),
    case("pool-timeout-beyond-platform-limit", pg(POOL_TIMEOUT="1e10"), InvalidPoolSetting,
         "DATABASE_POOL_TIMEOUT"),
    case("pool-recycle-zero", pg(POOL_RECYCLE="0"), InvalidPoolSetting, "DATABASE_POOL_RECYCLE"),
    case("pool-recycle-negative", pg(POOL_RECYCLE="-2"), InvalidPoolSetting,
         "DATABASE_POOL_RECYCLE"),
    case("pool-recycle-word", pg(POOL_RECYCLE="daily"), InvalidPoolSetting,
         "DATABASE_POOL_RECYCLE"),
    case("pool-ping-idle-overflow", pg(POOL_PING_IDLE="1e999"), InvalidPoolSetting,
         "DATABASE_POOL_PING_IDLE"),
    case("pool-switch-maybe", pg(POOL="maybe"), InvalidPoolSetting, "DATABASE_POOL"),
    case("pool-pre-ping-two", pg(POOL_PRE_PING="2"), InvalidPoolSetting,
         "DATABASE_POOL_PRE_PING"),
    case("pool-lifo-word", pg(POOL_LIFO="sometimes"), InvalidPoolSetting, "DATABASE_POOL_LIFO"),
    case("conn-max-age-negative", pg(CONN_MAX_AGE="-5"), InvalidPoolSetting,
         "DATABASE_CONN_MAX_AGE"),
    case("conn-max-age-fraction", pg(CONN_MAX_AGE="1.5"), InvalidPoolSetting,
         "DATABASE_CONN_MAX_AGE"),
    # -- poolers
    case("pooler-unknown", pg(POOLER="odyssey"), InvalidPoolSetting, "DATABASE_POOLER"),
    case("pooler-proxysql-on-postgresql", pg(POOLER="proxysql"), InvalidPoolSetting,
         "DATABASE_POOLER"),
    case("pooler-pgbouncer-on-mysql", my(POOLER="PgBouncer"), InvalidPoolSetting,
         "DATABASE_POOLER"),
    # -- TLS modes and versions
    case("sslmode-unknown", pg(SSLMODE="verify"), InvalidTLSSetting, "DATABASE_SSLMODE"),
    case("sslmode-mysql-spelling-typo", my(SSLMODE="VERIFY_IDENTITIY"), InvalidTLSSetting,
         "DATABASE_SSLMODE"),
    case("verify-full-without-ca", pg(SSLMODE="verify-full"), InvalidTLSSetting,
         "DATABASE_SSLMODE"),
    case("verify-ca-without-ca-mysql", my(SSLMODE="VERIFY_CA"), InvalidTLSSetting,
         "DATABASE_SSLMODE"),
    case("tls-on-sqlite", {"DATABASE_URL": SQLITE, "DATABASE_SSLMODE": "require"},
         InvalidTLSSetting, "DATABASE_SSLMODE"),
    case("ca-on-sqlite", {"DATABASE_URL": SQLITE, "DATABASE_SSLROOTCERT": "<<ca>>"},
         InvalidTLSSetting, "DATABASE_SSLROOTCERT"),
    case("min-version-obsolete", pg(SSL_MIN_VERSION="TLSv1.0"), InvalidTLSSetting,
         "DATABASE_SSL_MIN_VERSION"),
    case("min-version-list-with-obsolete", pg(SSL_MIN_VERSION="TLSv1.2,TLSv1.1"),
         InvalidTLSSetting, "DATABASE_SSL_MIN_VERSION"),
    case("min-version-unknown", pg(SSL_MIN_VERSION="TLSv9"), InvalidTLSSetting,
         "DATABASE_SSL_MIN_VERSION"),
    case("min-version-only-commas", pg(SSL_MIN_VERSION=",,"), InvalidTLSSetting,
         "DATABASE_SSL_MIN_VERSION"),
    case("ciphers-on-postgresql", pg(SSL_CIPHERS="HIGH:!aNULL"), InvalidTLSSetting,
         "DATABASE_SSL_CIPHERS"),
    case("key-passphrase-on-mysql", my(SSLPASSWORD=SECRET), InvalidTLSSetting,
         "DATABASE_SSLPASSWORD"),
    case("crl-on-mysql", my(SSLCRL="<<notpem>>"), InvalidTLSSetting, "DATABASE_SSLCRL"),
    case("min-version-on-mysql", my(SSL_MIN_VERSION="TLSv1.2"), InvalidTLSSetting,
         "DATABASE_SSL_MIN_VERSION"),
    case("system-ca-with-require-postgresql", pg(SSLMODE="require", SSLROOTCERT="system"),
         InvalidTLSSetting, "DATABASE_SSLMODE"),
    case("conflicting-tls-modes-in-url", url(PG + "?sslmode=require&ssl_mode=VERIFY_CA"),
         InvalidTLSSetting, U),
    case("conflicting-ca-in-url", url(PG + "?sslrootcert=/a.pem&ssl_ca=/b.pem"),
         InvalidTLSSetting, U),
    # -- TLS files and PEM text
    case("ca-missing-file", pg(SSLROOTCERT="<<missing>>"), TLSFileError, "DATABASE_SSLROOTCERT"),
    case("ca-is-a-directory", pg(SSLROOTCERT="<<dir>>"), TLSFileError, "DATABASE_SSLROOTCERT"),
    case("ca-not-pem", pg(SSLROOTCERT="<<notpem>>"), TLSFileError, "DATABASE_SSLROOTCERT"),
    case("ca-der-not-pem", pg(SSLROOTCERT="<<der_ca>>"), TLSFileError, "DATABASE_SSLROOTCERT"),
    case("ca-pem-text-garbage", pg(SSLROOTCERT=BAD_PEM_CERT), TLSFileError,
         "DATABASE_SSLROOTCERT"),
    case("ca-pem-text-truncated", pg(SSLROOTCERT=TRUNCATED_PEM_CERT), TLSFileError,
         "DATABASE_SSLROOTCERT"),
    case("ca-pem-text-lone-surrogate", pg(SSLROOTCERT="-----BEGIN CERTIFICATE-----\ud800"),
         TLSFileError, "DATABASE_SSLROOTCERT"),
    case("ca-expired", pg(SSLMODE="verify-full", SSLROOTCERT="<<expired_ca>>"),
         CertificateDateError, "DATABASE_SSLROOTCERT"),
    case("ca-path-with-nul", pg(SSLROOTCERT="/etc/ssl/ca\x00.pem"), TLSFileError,
         "DATABASE_SSLROOTCERT"),
    case("ca-path-too-long", pg(SSLROOTCERT="<<long_path>>"), TLSFileError,
         "DATABASE_SSLROOTCERT"),
    case("crl-not-pem", pg(SSLCRL="<<notpem>>"), TLSFileError, "DATABASE_SSLCRL"),
    case("cert-without-key", pg(SSLCERT="<<cert>>"), InvalidTLSSetting, "DATABASE_SSLKEY"),
    case("key-without-cert", pg(SSLKEY="<<key>>"), InvalidTLSSetting, "DATABASE_SSLCERT"),
    case("key-readable-by-others", pg(SSLCERT="<<cert>>", SSLKEY="<<loose_key>>"),
         TLSFileError, "DATABASE_SSLKEY"),
    case("key-is-a-certificate", pg(SSLCERT="<<cert>>", SSLKEY="<<ca_as_key>>"),
         TLSFileError, "DATABASE_SSLKEY"),
    case("key-encrypted-no-passphrase", pg(SSLCERT="<<cert>>", SSLKEY="<<encrypted_key>>"),
         TLSFileError, "DATABASE_SSLKEY"),
    case("key-encrypted-wrong-passphrase",
         pg(SSLCERT="<<cert>>", SSLKEY="<<encrypted_key>>", SSLPASSWORD=SECRET),
         TLSFileError, "DATABASE_SSLPASSWORD"),
    case("key-does-not-match-cert", pg(SSLCERT="<<cert>>", SSLKEY="<<other_key>>"),
         CertificateError, "DATABASE_SSLKEY"),
    case("client-cert-expired", my(SSLCERT="<<expired_cert>>", SSLKEY="<<expired_key>>"),
         CertificateDateError, "DATABASE_SSLCERT"),
    case("client-cert-not-yet-valid", my(SSLCERT="<<future_cert>>", SSLKEY="<<future_key>>"),
         CertificateDateError, "DATABASE_SSLCERT"),
    case("client-cert-from-regenerated-ca",
         pg(SSLROOTCERT="<<ca>>", SSLCERT="<<impostor_cert>>", SSLKEY="<<impostor_key>>"),
         CertificateError, "DATABASE_SSLCERT"),
    case("cert-pem-text-garbage", my(SSLCERT=BAD_PEM_CERT, SSLKEY="<<key>>"), TLSFileError,
         "DATABASE_SSLCERT"),
    case("capath-missing-mysql", url(MY + "?ssl_capath=/no/such/dir"), TLSFileError, U),
    # -- alias names and lists
    case("aliases-invalid-name", {"DATABASE_ALIASES": "Bad-Name"}, ConfigurationError,
         "DATABASE_ALIASES"),
    case("aliases-name-starts-with-digit", {"DATABASE_ALIASES": "1db"}, ConfigurationError,
         "DATABASE_ALIASES"),
    case("aliases-unbalanced-quote", {"DATABASE_ALIASES": '"analytics'}, ConfigurationError,
         "DATABASE_ALIASES"),
    case("alias-without-url", {"DATABASE_ALIASES": "analytics"}, ConfigurationError,
         "ANALYTICS_DATABASE_URL", "analytics"),
    case("replica-is-a-primary",
         {**url(PG), "DATABASE_ALIASES": "other", "OTHER_DATABASE_URL": PG,
          "DATABASE_REPLICAS": "other"},
         ConfigurationError, "DATABASE_REPLICAS"),
    case("replica-is-default", {**url(PG), "DATABASE_REPLICAS": "default"}, ConfigurationError,
         "DATABASE_REPLICAS"),
    case("replica-of-two-primaries",
         {**url(PG), "DATABASE_ALIASES": "other", "OTHER_DATABASE_URL": PG,
          "DATABASE_REPLICAS": "r1", "OTHER_DATABASE_REPLICAS": "r1", "R1_DATABASE_URL": PG},
         ConfigurationError, "OTHER_DATABASE_REPLICAS", "other"),
    case("replica-with-replicas",
         {**url(PG), "DATABASE_REPLICAS": "r1", "R1_DATABASE_URL": PG,
          "R1_DATABASE_REPLICAS": "r2"},
         ConfigurationError, "R1_DATABASE_REPLICAS", "r1"),
    case("replica-without-url", {**url(PG), "DATABASE_REPLICAS": "r1"}, ConfigurationError,
         "R1_DATABASE_URL", "r1"),
    case("replica-inherits-then-own-bad-value",
         {**pg(POOL_SIZE="3"), "DATABASE_REPLICAS": "r1", "R1_DATABASE_URL": PG,
          "R1_DATABASE_POOL_SIZE": "-1"},
         InvalidPoolSetting, "R1_DATABASE_POOL_SIZE", "r1"),
    case("other-alias-bad-tls-mode",
         {"DATABASE_ALIASES": "reports", "REPORTS_DATABASE_URL": MY,
          "REPORTS_DATABASE_SSLMODE": "strict"},
         InvalidTLSSetting, "REPORTS_DATABASE_SSLMODE", "reports"),
]


def assert_names(exc: ConfigurationError, error: type, var: str, alias: str) -> None:
    message = str(exc)
    assert isinstance(exc, error), f"{type(exc).__name__}: {message}"
    assert exc.alias == alias, message
    assert exc.setting == var, message
    assert f"database alias '{alias}'" in message, message
    assert var in message, message
    assert SECRET not in message and SECRET not in repr(exc)
    # Nothing chained that a traceback would print (driver errors, parser messages).
    assert exc.__cause__ is None
    assert exc.__suppress_context__ or exc.__context__ is None


def run_bad(source: Any) -> ConfigurationError:
    """``read_environment`` must raise a ConfigurationError; anything else fails the test."""
    try:
        read_environment(source=source)
    except ConfigurationError as exc:
        return exc
    except Exception as exc:  # a bare ValueError/TypeError/... is exactly what must not happen
        pytest.fail(f"raised {type(exc).__name__} instead of a ConfigurationError: {exc!r}")
    pytest.fail("the configuration was accepted")


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(("env", "error", "var", "alias"), CASES)
def test_bad_configuration_from_mapping(
    env: dict[str, str], error: type, var: str, alias: str, files: dict[str, str]
) -> None:
    exc = run_bad(resolve(env, files))
    assert_names(exc, error, var, alias)


def _environ_safe(env: dict[str, str]) -> bool:
    try:
        for key, value in env.items():
            os.fsencode(key), os.fsencode(value)
    except UnicodeError:
        return False
    return not any("\x00" in value for value in env.values())


ENVIRON_CASES = [c for c in CASES if _environ_safe(c.values[0])]


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """``os.environ`` without any multipool key of the surrounding environment."""
    for key in list(os.environ):
        if "DATABASE_" in key:
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.mark.parametrize(("env", "error", "var", "alias"), ENVIRON_CASES)
def test_bad_configuration_from_os_environ(
    env: dict[str, str],
    error: type,
    var: str,
    alias: str,
    files: dict[str, str],
    clean_environ: pytest.MonkeyPatch,
) -> None:
    """The same table through the real process environment and ``multipool.databases()``.

    ``settings.py`` is not stopped: the entry carries the problem, the system
    checks report it, and using the alias raises it.
    """
    from multipool.checks import check_databases
    from multipool.config import spec_from_settings

    for key, value in resolve(env, files).items():
        clean_environ.setenv(key, value)
    dbs = databases()
    raised = []
    for name, entry in dbs.items():
        try:
            spec_from_settings(name, entry)
        except ConfigurationError as exc:
            raised.append(exc)
    assert raised, "the configuration was accepted"
    assert_names(raised[0], error, var, alias)
    reported = [m for m in check_databases(dbs) if m.is_serious()]
    assert any(var in m.msg for m in reported), reported


def test_environ_route_covers_most_of_the_table() -> None:
    assert len(ENVIRON_CASES) >= len(CASES) - 5


# -- property: arbitrary text in any key -------------------------------------------------------

_BASE_URLS = {
    "postgresql": "postgresql://app:pw@db.example:5432/app",
    "mysql": "mysql://app:pw@db.example:3306/app",
    "sqlite": "sqlite:///prop.sqlite3",
}
_SEEDS = [
    "postgresql://", "mysql://app:pw@h/", "sqlite:///", "mariadb+mysqldb://", "pgsql://u@h:",
    "-----BEGIN CERTIFICATE-----\n", "-----BEGIN PRIVATE KEY-----\n", "verify-", "VERIFY_",
    "TLSv1.", "1", "-", "0.", "none", "/", "~", "system", "true", "pgbouncer", "extra,", "r1,",
]
_text = st.text(max_size=40)
_values = st.one_of(
    _text,
    st.builds(lambda seed, rest: seed + rest, st.sampled_from(_SEEDS), _text),
)
_LIST_KEYS = ("ALIASES", "REPLICAS")
ALIAS = "extra"


def _property_names(exc: ConfigurationError, key: Any, value: str) -> None:
    var = key.name(ALIAS)
    owner = "default" if key.scope == "global" else ALIAS
    message = str(exc)
    if var in message and f"database alias '{owner}'" in message:
        return
    # A list key may introduce an alias whose own URL is missing or wrong: the
    # error then names that alias and its variable.
    if key.suffix in _LIST_KEYS and exc.alias in value and exc.setting.startswith(
        env_prefix(exc.alias)
    ):
        assert f"database alias '{exc.alias}'" in message
        return
    pytest.fail(f"{var}={value!r}: the message does not name {owner!r} and {var}: {message}")


@pytest.mark.filterwarnings("ignore::multipool.tls.MultipoolWarning")
@pytest.mark.parametrize("key", ENV_KEYS, ids=lambda k: k.suffix)
@given(vendor=st.sampled_from(sorted(_BASE_URLS)), value=_values)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_any_text_in_any_key_parses_or_names_the_variable(
    key: Any, vendor: str, value: str
) -> None:
    source = {"DATABASE_ALIASES": ALIAS, f"{env_prefix(ALIAS)}URL": _BASE_URLS[vendor]}
    source[key.name(ALIAS)] = value
    try:
        read_environment(source=source)
    except ConfigurationError as exc:
        _property_names(exc, key, value)
    except Exception as exc:
        pytest.fail(f"{key.name(ALIAS)}={value!r}: {type(exc).__name__}: {exc!r}")


# -- passwords with special characters -----------------------------------------------------------

SPECIAL = "p@ss:w/o%r#d?&+ =é"


@pytest.mark.parametrize("scheme", ["postgresql", "mysql", "mariadb"])
def test_percent_encoded_special_password_parses_exactly(scheme: str) -> None:
    encoded = quote(SPECIAL, safe="")
    spec = read_environment(
        source={"DATABASE_URL": f"{scheme}://us%40er:{encoded}@db.example:1234/app"}
    )["default"]
    assert spec.password == SPECIAL
    assert (spec.user, spec.host, spec.port, spec.name) == ("us@er", "db.example", 1234, "app")
    assert SPECIAL not in repr(spec) and encoded not in repr(spec)


# (NUL is refused: see the password-nul case)
@given(
    password=st.text(
        alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
        min_size=1,
    )
)
@example(password="@:/%#?&+ ")
@example(password="%40")
@example(password=" leading and trailing ")
@settings(max_examples=200, deadline=None)
def test_any_percent_encoded_password_round_trips(password: str) -> None:
    url_text = f"postgresql://app:{quote(password, safe='')}@db.example:5432/app"
    spec = read_environment(source={"DATABASE_URL": url_text})["default"]
    assert spec.password == password
    assert (spec.user, spec.host, spec.port, spec.name) == ("app", "db.example", 5432, "app")


@given(password=st.text(alphabet="abc@:/#?&+ ", min_size=1, max_size=12))
@example(password="p@ss")
@settings(max_examples=100, deadline=None)
def test_unencoded_password_is_exact_or_refused(password: str) -> None:
    """Without percent-encoding a password either parses exactly or is refused."""
    try:
        spec = read_environment(
            source={"DATABASE_URL": f"postgresql://app:{password}@db.example/app"}
        )["default"]
    except InvalidURL:
        return
    assert (spec.password, spec.host) == (password, "db.example")


# -- bugs seen past the configuration ------------------------------------------------------------


def test_sub_second_recycle_does_not_reconnect_on_every_checkout(tmp_path: Path) -> None:
    db = str(tmp_path / "recycle.sqlite3")
    spec = read_environment(
        source={"DATABASE_URL": f"sqlite:///{db}", "DATABASE_POOL_RECYCLE": "0.5"}
    )["default"]
    pool = AliasPool(spec)
    try:
        for _ in range(3):
            lease = pool.checkout(lambda: sqlite3.connect(db, check_same_thread=False))
            pool.checkin(lease)
        assert pool.stats().connects == 1
    finally:
        pool.dispose()


# -- valid configurations that cannot connect ------------------------------------------------------


def _bad_connect_url(server: Any, problem: str, wrong_password: str) -> str:
    """A URL that configures fine but cannot connect."""
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    user, password, port, database = (
        "app", server.users["app"].password, server.port, server.database
    )
    if problem == "wrong-password":
        password = wrong_password
    elif problem == "closed-port":
        port = free_port(server.host)
    elif problem == "unknown-database":
        database = "no_such_database"
    elif problem == "unknown-user":
        user = "nobody"
    if server.engine == "postgresql":
        tls = f"sslmode=verify-full&sslrootcert={quote(str(server.certs.ca_cert))}"
    else:
        tls = f"ssl_mode=VERIFY_IDENTITY&ssl_ca={quote(str(server.certs.ca_cert))}"
    return (
        f"{scheme}://{user}:{quote(password, safe='')}@{server.host}:{port}/{database}"
        f"?connect_timeout=5&{tls}"
    )


#: the problems multipool explains (docs/troubleshooting.md), and the error each one is
_EXPLAINED = {
    "wrong-password": AuthenticationFailed,
    "closed-port": ServerUnreachable,
    "unknown-user": AuthenticationFailed,
}


@pytest.mark.parametrize(
    "problem", ["wrong-password", "closed-port", "unknown-database", "unknown-user"]
)
def test_valid_config_that_cannot_connect(server: Any, problem: str) -> None:
    wrong_password = f"wr0ng-{secrets.token_hex(8)}@:/%+"
    url_text = _bad_connect_url(server, problem, wrong_password)
    alias = f"badconn{server.engine[:2]}"
    entry = databases(
        source={"DATABASE_ALIASES": alias, f"{env_prefix(alias)}URL": url_text}
    )[alias]
    real_password = server.users["app"].password
    with registered_alias(alias, entry) as conn:
        for _attempt in range(2):  # a second attempt behaves the same (nothing cached)
            started = time.monotonic()
            with pytest.raises(OperationalError) as info:
                conn.ensure_connection()
            elapsed = time.monotonic() - started
            assert elapsed < 10, f"took {elapsed:.1f}s"
            exc = info.value
            # Django's, or multipool's subclass that names the setting; the driver's chained
            assert type(exc) is _EXPLAINED.get(problem, OperationalError), type(exc)
            assert exc.__cause__ is not None
            texts = [str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__)]
            for text in texts:
                for secret in (wrong_password, quote(wrong_password, safe=""),
                               real_password, quote(real_password, safe="")):
                    assert secret not in text, text
            conn.close()
            stats = manager.get(alias).stats()
            assert (stats.checked_out, stats.open, stats.connects) == (0, 0, 0), stats
