"""Unit tests of multipool.config: URLs and environment keys -> DATABASES entries."""

from __future__ import annotations

import datetime as dt
import logging
import os
import runpy
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from decouple import AutoConfig, Config, RepositoryEnv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multipool import config
from multipool.config import (
    ENV_KEYS,
    POOL_OPTION_KEYS,
    DatabaseSpec,
    MultipoolWarning,
    PoolSpec,
    databases,
    read_environment,
    spec_from_settings,
)
from multipool.config.entries import make_spec
from multipool.errors import (
    ConfigurationError,
    InvalidPoolSetting,
    InvalidTLSSetting,
    InvalidURL,
    TLSFileError,
    UnknownScheme,
)
from multipool.setting_names import POOL_ATTRIBUTES, TLS_FIELDS, SettingNames
from multipool.tls import TLSSpec
from tests.test_tls import PKI, pki  # noqa: F401  (fixture)

PASSWORD = "s3cr3t-Pa55word"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

POOL_DEFAULTS = {
    "pool_enabled": True,
    "pool_size": 5,
    "max_overflow": 5,
    "pool_timeout": 10.0,
    "pool_recycle": None,
    "pool_pre_ping": False,
    "pool_ping_idle": 30.0,
    "pool_poll_idle": 0.001,
    "pool_overflow_idle": 30.0,
    "pool_lifo": True,
    "pool_reset": "transaction",
    "pool_metrics": True,
    "pooler": None,
    "connect_timeout": 10.0,
    "network_timeout": 30.0,
    "rotation_check": 5.0,
}


def env_db(environ: dict[str, Any], alias: str = "default", **kw: Any) -> dict[str, Any]:
    return databases(source=environ, **kw)[alias]


def entry(
    engine: str,
    name: str,
    *,
    user: str = "",
    password: str = "",
    host: str = "",
    port: int | str = "",
    options: dict[str, Any] | None = None,
    pool: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The expected DATABASES entry, minus MULTIPOOL."""
    return {
        "ENGINE": f"multipool.backends.{engine}",
        "NAME": name,
        "USER": user,
        "PASSWORD": password,
        "HOST": host,
        "PORT": port,
        "CONN_MAX_AGE": 0,
        "OPTIONS": {**(options or {}), **POOL_DEFAULTS, **(pool or {})},
    }


def without_meta(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "MULTIPOOL"}


# -- URL -> DATABASES table ----------------------------------------------------------------

URL_CASES = [
    pytest.param(
        "postgres://app:pw@db.example.com:5432/shop",
        entry("postgresql", "shop", user="app", password="pw", host="db.example.com", port=5432),
        id="postgres",
    ),
    pytest.param(
        "postgresql://app:p%40ss%3Aw%2Frd@db/shop",
        entry("postgresql", "shop", user="app", password="p@ss:w/rd", host="db"),
        id="percent-encoded-password",
    ),
    pytest.param(
        "postgresql+psycopg://app@db/shop",
        entry("postgresql", "shop", user="app", host="db"),
        id="psycopg",
    ),
    pytest.param(
        "postgresql+psycopg2://app@db/shop",
        entry("postgresql", "shop", user="app", host="db"),
        id="psycopg2",
    ),
    pytest.param("pgsql://db/shop", entry("postgresql", "shop", host="db"), id="pgsql"),
    pytest.param(
        "postgresql:///shop?host=/var/run/postgresql",
        entry("postgresql", "shop", host="/var/run/postgresql"),
        id="unix-socket-query",
    ),
    pytest.param(
        "postgres://%2Fvar%2Frun%2Fpostgresql/shop",
        entry("postgresql", "shop", host="/var/run/postgresql"),
        id="unix-socket-encoded-host",
    ),
    pytest.param(
        "postgres://[::1]:6432/shop", entry("postgresql", "shop", host="::1", port=6432), id="ipv6"
    ),
    pytest.param(
        "postgres://db/my%20shop", entry("postgresql", "my shop", host="db"), id="encoded-name"
    ),
    pytest.param(
        "postgres://db/shop?connect_timeout=10&application_name=web&sslmode=verify-full"
        "&sslrootcert=system",
        entry(
            "postgresql",
            "shop",
            host="db",
            options={
                "connect_timeout": 10,
                "application_name": "web",
                "sslmode": "verify-full",
                "sslrootcert": "system",
            },
        ),
        id="pg-query-options",
    ),
    pytest.param(
        "postgres://db/shop?pool_size=20&max_overflow=0&pool_pre_ping=yes&pool_recycle=300",
        entry(
            "postgresql",
            "shop",
            host="db",
            pool={
                "pool_size": 20,
                "max_overflow": 0,
                "pool_pre_ping": True,
                "pool_recycle": 300.0,
            },
        ),
        id="pool-in-query",
    ),
    pytest.param(
        "mysql://app:pw@db:3306/shop?charset=utf8mb4",
        entry(
            "mysql",
            "shop",
            user="app",
            password="pw",
            host="db",
            port=3306,
            options={"charset": "utf8mb4"},
        ),
        id="mysql",
    ),
    pytest.param(
        "mysql+mysqldb://app@db/shop", entry("mysql", "shop", user="app", host="db"), id="mysqldb"
    ),
    pytest.param(
        "mariadb://app@db/shop", entry("mysql", "shop", user="app", host="db"), id="mariadb"
    ),
    pytest.param(
        "mariadb+mysqldb://db/shop?ssl_mode=REQUIRED",
        entry("mysql", "shop", host="db", options={"ssl_mode": "REQUIRED"}),
        id="mariadb-ssl-mode",
    ),
    pytest.param(
        "mysql://db/shop?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
        entry(
            "mysql",
            "shop",
            host="db",
            options={"ssl": {"ca": "/etc/ca.pem"}, "ssl_mode": "VERIFY_CA"},
        ),
        id="mysql-libpq-spelling",
    ),
    pytest.param(
        "mysql://db/shop?ssl_ca=/etc/ca.pem&ssl_mode=verify_identity",
        entry(
            "mysql",
            "shop",
            host="db",
            options={"ssl": {"ca": "/etc/ca.pem"}, "ssl_mode": "VERIFY_IDENTITY"},
        ),
        id="mysql-flat-ssl",
    ),
    pytest.param(
        "sqlite:///relative.db", entry("sqlite3", "/srv/app/relative.db"), id="sqlite-relative"
    ),
    pytest.param("sqlite:////abs/path.db", entry("sqlite3", "/abs/path.db"), id="sqlite-absolute"),
    pytest.param("sqlite://", entry("sqlite3", ":memory:"), id="sqlite-memory"),
    pytest.param("sqlite:///:memory:", entry("sqlite3", ":memory:"), id="sqlite-memory-explicit"),
    pytest.param(
        "sqlite:///app.db?timeout=20",
        entry("sqlite3", "/srv/app/app.db", options={"timeout": 20}),
        id="sqlite-options",
    ),
]


@pytest.mark.parametrize(("url", "expected"), URL_CASES)
def test_url(url: str, expected: dict[str, Any]) -> None:
    got = env_db({"DATABASE_URL": url}, validate=False, base_dir="/srv/app")
    assert without_meta(got) == expected


def test_nothing_configured_is_embedded_sqlite() -> None:
    dbs = databases(source={}, base_dir="/srv/app")
    assert list(dbs) == ["default"]
    assert without_meta(dbs["default"]) == entry("sqlite3", "/srv/app/db.sqlite3")
    assert dbs["default"]["ENGINE"] == "multipool.backends.sqlite3"


def test_meta_entry() -> None:
    got = env_db(
        {
            "DATABASE_URL": f"postgres://app:{PASSWORD}@db/shop",
            "DATABASE_REPLICAS": "ro",
            "RO_DATABASE_URL": "postgres://db-ro/shop",
        }
    )
    assert got["MULTIPOOL"]["replica_of"] is None
    assert got["MULTIPOOL"]["replicas"] == ["ro"]
    assert got["MULTIPOOL"]["settings"]["pool_size"] == "DATABASE_POOL_SIZE"
    assert got["MULTIPOOL"]["settings"]["tls_mode"] == "DATABASE_SSLMODE"
    assert got["MULTIPOOL"]["settings"]["name"] == "DATABASE_URL"
    ro = env_db(
        {
            "DATABASE_URL": "postgres://db/shop",
            "DATABASE_REPLICAS": "ro",
            "RO_DATABASE_URL": "postgres://db-ro/shop",
        },
        alias="ro",
    )
    assert ro["MULTIPOOL"]["replica_of"] == "default"
    assert ro["MULTIPOOL"]["settings"]["replica_of"] == "DATABASE_REPLICAS"


# -- environment keys --------------------------------------------------------------------

PG = "postgres://app@db/shop"

ENV_CASES = [
    pytest.param({}, {}, TLSSpec(), id="defaults"),
    pytest.param(
        {
            "DATABASE_POOL": "false",
            "DATABASE_POOL_SIZE": "12",
            "DATABASE_MAX_OVERFLOW": "0",
            "DATABASE_POOL_TIMEOUT": "2.5",
            "DATABASE_POOL_RECYCLE": "1800",
            "DATABASE_POOL_PRE_PING": "on",
            "DATABASE_POOL_PING_IDLE": "0",
            "DATABASE_POOL_POLL_IDLE": "0",
            "DATABASE_POOL_OVERFLOW_IDLE": "0",
            "DATABASE_POOL_LIFO": "no",
            "DATABASE_POOLER": "PgBouncer",
        },
        {
            "pool_enabled": False,
            "pool_size": 12,
            "max_overflow": 0,
            "pool_timeout": 2.5,
            "pool_recycle": 1800.0,
            "pool_pre_ping": True,
            "pool_ping_idle": 0.0,
            "pool_poll_idle": 0.0,
            "pool_overflow_idle": 0.0,
            "pool_lifo": False,
            "pooler": "pgbouncer",
        },
        TLSSpec(),
        id="pool-keys",
    ),
    pytest.param(
        {"DATABASE_POOL_RECYCLE": "none", "DATABASE_POOLER": "none"},
        {"pool_recycle": None, "pooler": None},
        TLSSpec(),
        id="none-values",
    ),
    pytest.param(
        {"DATABASE_POOL_RECYCLE": "-1"}, {"pool_recycle": None}, TLSSpec(), id="recycle-minus-one"
    ),
    pytest.param({"DATABASE_POOL_SIZE": ""}, {}, TLSSpec(), id="empty-value-is-unset"),
    pytest.param(
        {"DATABASE_SSLMODE": "VERIFY_IDENTITY", "DATABASE_SSLROOTCERT": "/etc/ca.pem"},
        {},
        TLSSpec(mode="verify-full", ca="/etc/ca.pem"),
        id="tls-mysql-spelling",
    ),
    pytest.param(
        {"DATABASE_SSLROOTCERT": "system"},
        {},
        TLSSpec(mode="verify-full", ca="system"),
        id="tls-system",
    ),
    pytest.param(
        {
            "DATABASE_SSLMODE": "verify-full",
            "DATABASE_SSLROOTCERT": "/ca.pem",
            "DATABASE_SSLCERT": "/c.crt",
            "DATABASE_SSLKEY": "/c.key",
            "DATABASE_SSLPASSWORD": PASSWORD,
            "DATABASE_SSLCRL": "/crl.pem",
            "DATABASE_SSL_MIN_VERSION": "TLSv1.3",
        },
        {},
        TLSSpec(
            mode="verify-full",
            ca="/ca.pem",
            cert="/c.crt",
            key="/c.key",
            key_password=PASSWORD,
            crl="/crl.pem",
            min_version="TLSv1.3",
        ),
        id="tls-all",
    ),
]


@pytest.mark.parametrize(("environ", "pool", "tls"), ENV_CASES)
def test_env_keys(environ: dict[str, str], pool: dict[str, Any], tls: TLSSpec) -> None:
    spec = read_environment(source={"DATABASE_URL": PG, **environ}, validate=False)["default"]
    assert spec.pool.to_options() == {**POOL_DEFAULTS, **pool}
    assert spec.tls == tls
    assert spec_from_settings("default", spec.to_django()) == spec


def test_env_keys_override_url_query() -> None:
    spec = read_environment(
        source={
            "DATABASE_URL": PG + "?pool_size=3&sslmode=require&sslrootcert=/a.pem",
            "DATABASE_POOL_SIZE": "7",
            "DATABASE_SSLMODE": "verify-ca",
        },
        validate=False,
    )["default"]
    assert spec.pool.size == 7
    assert spec.tls == TLSSpec(mode="verify-ca", ca="/a.pem")
    assert spec.setting("pool_size") == "DATABASE_POOL_SIZE"
    assert spec.setting("tls_ca") == "DATABASE_URL"


def test_conn_max_age() -> None:
    assert env_db({"DATABASE_CONN_MAX_AGE": "60"}, validate=False)["CONN_MAX_AGE"] == 60
    with pytest.warns(MultipoolWarning, match="DATABASE_CONN_MAX_AGE"):
        spec = read_environment(source={"DATABASE_CONN_MAX_AGE": "none"})["default"]
    assert spec.conn_max_age is None


def test_keyword_defaults() -> None:
    dbs = databases(
        source={"DATABASE_POOL_SIZE": "3"},
        DATABASE_URL="postgres://db/shop",
        DATABASE_POOL_SIZE=10,
        DATABASE_MAX_OVERFLOW=2,
        DATABASE_POOL_PRE_PING=True,
        DATABASE_ALIASES=["other"],
        OTHER_DATABASE_URL="mysql://db/other",
    )
    assert dbs["default"]["ENGINE"] == "multipool.backends.postgresql"
    assert dbs["default"]["OPTIONS"]["pool_size"] == 3  # the environment wins
    assert dbs["default"]["OPTIONS"]["max_overflow"] == 2
    assert dbs["default"]["OPTIONS"]["pool_pre_ping"] is True
    assert dbs["other"]["ENGINE"] == "multipool.backends.mysql"


def test_keyword_defaults_are_the_lowest_priority() -> None:
    environ = {
        "DATABASE_URL": PG + "?pool_size=3",
        "DATABASE_MAX_OVERFLOW": "1",
        "DATABASE_REPLICAS": "ro",
        "RO_DATABASE_URL": PG,
    }
    dbs = databases(source=environ, DATABASE_POOL_SIZE=10, RO_DATABASE_MAX_OVERFLOW=7)
    assert dbs["default"]["OPTIONS"]["pool_size"] == 3  # URL query beats the keyword
    assert dbs["ro"]["OPTIONS"]["pool_size"] == 3  # inherited
    assert dbs["ro"]["OPTIONS"]["max_overflow"] == 7  # the replica's own key beats inheritance


def test_unknown_keyword_default() -> None:
    with pytest.raises(TypeError, match="DATABASE_POOL_SIZE"):
        databases(source={}, DATABASE_POOLSIZE=3)


# -- aliases and replicas -----------------------------------------------------------------


def test_aliases_and_replicas() -> None:
    environ = {
        "DATABASE_URL": "postgres://db/shop?sslmode=verify-full&sslrootcert=/ca.pem",
        "DATABASE_POOL_SIZE": "8",
        "DATABASE_SSLCERT": "/c.crt",
        "DATABASE_SSLKEY": "/c.key",
        "DATABASE_REPLICAS": "replica1, replica2",
        "REPLICA1_DATABASE_URL": "postgres://ro1/shop",
        "REPLICA2_DATABASE_URL": "postgres://ro2/shop?pool_size=2",
        "REPLICA2_DATABASE_SSLMODE": "require",
        "DATABASE_ALIASES": "legacy,analytics,default,legacy",
        "LEGACY_DATABASE_URL": "mysql://old/db",
        "ANALYTICS_DATABASE_URL": "postgres://dw/stats",
        "ANALYTICS_DATABASE_REPLICAS": "analytics_ro",
        "ANALYTICS_RO_DATABASE_URL": "postgres://dw-ro/stats",
    }
    specs = read_environment(source=environ, validate=False)
    assert list(specs) == [
        "default",
        "replica1",
        "replica2",
        "legacy",
        "analytics",
        "analytics_ro",
    ]
    default, r1, r2 = specs["default"], specs["replica1"], specs["replica2"]
    assert default.replicas == ("replica1", "replica2")
    assert r1.replica_of == "default" and r2.replica_of == "default"
    # replica1 inherits pool and TLS
    assert r1.pool == default.pool
    assert r1.tls == default.tls
    assert r1.setting("pool_size") == "DATABASE_POOL_SIZE"
    # replica2 overrides some
    assert r2.pool.size == 2
    assert r2.tls == TLSSpec(mode="require", ca="/ca.pem", cert="/c.crt", key="/c.key")
    assert r2.setting("tls_mode") == "REPLICA2_DATABASE_SSLMODE"
    assert specs["legacy"].pool.size == 5  # not inherited across primaries
    assert specs["analytics_ro"].replica_of == "analytics"
    assert specs["legacy"].vendor == "mysql"


# -- errors --------------------------------------------------------------------------------

PGP = f"postgres://app:{PASSWORD}@db/shop"

ERROR_CASES = [
    pytest.param(
        {"DATABASE_URL": "not a url"}, InvalidURL, "default", "DATABASE_URL", id="malformed-url"
    ),
    pytest.param(
        {"DATABASE_URL": f"postgres://app:{PASSWORD}@db:99x/shop"},
        InvalidURL,
        "default",
        "DATABASE_URL",
        id="bad-port",
    ),
    pytest.param(
        {"DATABASE_URL": f"postgres://app:{PASSWORD}@db:70000/shop"},
        InvalidURL,
        "default",
        "DATABASE_URL",
        id="port-out-of-range",
    ),
    pytest.param(
        {"DATABASE_URL": f"oracle://app:{PASSWORD}@db/shop"},
        UnknownScheme,
        "default",
        "DATABASE_URL",
        id="unknown-scheme",
    ),
    pytest.param(
        {"DATABASE_URL": f"postgresql+asyncpg://app:{PASSWORD}@db/shop"},
        UnknownScheme,
        "default",
        "DATABASE_URL",
        id="unknown-driver",
    ),
    pytest.param(
        {"DATABASE_URL": f"sqlite://app:{PASSWORD}@host/x.db"},
        InvalidURL,
        "default",
        "DATABASE_URL",
        id="sqlite-with-host",
    ),
    pytest.param(
        {"DATABASE_URL": f"postgres://app:{PASSWORD}@db"},
        ConfigurationError,
        "default",
        "DATABASE_URL",
        id="pg-without-name",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_SIZE": "ten"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_SIZE",
        id="pool-size-not-int",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_SIZE": "2.5"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_SIZE",
        id="pool-size-float",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_SIZE": "0"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_SIZE",
        id="pool-size-zero",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_SIZE": "-3"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_SIZE",
        id="pool-size-negative",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_MAX_OVERFLOW": "-1"},
        InvalidPoolSetting,
        "default",
        "DATABASE_MAX_OVERFLOW",
        id="overflow-negative",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_TIMEOUT": "-1"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_TIMEOUT",
        id="timeout-negative",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_TIMEOUT": "nan"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_TIMEOUT",
        id="timeout-nan",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_PING_IDLE": "-5"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_PING_IDLE",
        id="ping-idle-negative",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_RECYCLE": "0"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_RECYCLE",
        id="recycle-zero",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOL_PRE_PING": "sometimes"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOL_PRE_PING",
        id="bad-bool",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOLER": "odyssey"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOLER",
        id="unknown-pooler",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_POOLER": "proxysql"},
        InvalidPoolSetting,
        "default",
        "DATABASE_POOLER",
        id="pooler-wrong-vendor",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_CONN_MAX_AGE": "forever"},
        InvalidPoolSetting,
        "default",
        "DATABASE_CONN_MAX_AGE",
        id="conn-max-age",
    ),
    pytest.param(
        {"DATABASE_URL": PGP + "?pool=true"},
        InvalidPoolSetting,
        "default",
        "DATABASE_URL",
        id="django-pool-option",
    ),
    pytest.param(
        {"DATABASE_URL": PGP + "?pool_size=many"},
        InvalidPoolSetting,
        "default",
        "DATABASE_URL",
        id="pool-size-in-query",
    ),
    pytest.param(
        {"DATABASE_ALIASES": "Legacy"},
        ConfigurationError,
        "default",
        "DATABASE_ALIASES",
        id="alias-upper-case",
    ),
    pytest.param(
        {"DATABASE_ALIASES": "legacy-db"},
        ConfigurationError,
        "default",
        "DATABASE_ALIASES",
        id="alias-dash",
    ),
    pytest.param(
        {"DATABASE_ALIASES": "'legacy"},
        ConfigurationError,
        "default",
        "DATABASE_ALIASES",
        id="alias-unbalanced-quote",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_REPLICAS": "1replica"},
        ConfigurationError,
        "default",
        "DATABASE_REPLICAS",
        id="replica-bad-name",
    ),
    pytest.param(
        {"DATABASE_ALIASES": "legacy"},
        ConfigurationError,
        "legacy",
        "LEGACY_DATABASE_URL",
        id="alias-without-url",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_REPLICAS": "ro"},
        ConfigurationError,
        "ro",
        "RO_DATABASE_URL",
        id="replica-without-url",
    ),
    pytest.param(
        {
            "DATABASE_URL": PGP,
            "DATABASE_ALIASES": "ro",
            "RO_DATABASE_URL": PGP,
            "DATABASE_REPLICAS": "ro",
        },
        ConfigurationError,
        "default",
        "DATABASE_REPLICAS",
        id="replica-is-primary",
    ),
    pytest.param(
        {
            "DATABASE_URL": PGP,
            "DATABASE_ALIASES": "b",
            "B_DATABASE_URL": PGP,
            "DATABASE_REPLICAS": "ro",
            "B_DATABASE_REPLICAS": "ro",
            "RO_DATABASE_URL": PGP,
        },
        ConfigurationError,
        "b",
        "B_DATABASE_REPLICAS",
        id="replica-of-two-primaries",
    ),
    pytest.param(
        {
            "DATABASE_URL": PGP,
            "DATABASE_REPLICAS": "ro",
            "RO_DATABASE_URL": PGP,
            "RO_DATABASE_REPLICAS": "ro2",
        },
        ConfigurationError,
        "ro",
        "RO_DATABASE_REPLICAS",
        id="replica-with-replicas",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_SSLMODE": "paranoid"},
        InvalidTLSSetting,
        "default",
        "DATABASE_SSLMODE",
        id="unknown-sslmode",
    ),
    pytest.param(
        {"DATABASE_URL": PGP + "?sslmode=sometimes"},
        InvalidTLSSetting,
        "default",
        "DATABASE_URL",
        id="unknown-sslmode-in-url",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_SSLMODE": "verify-full"},
        InvalidTLSSetting,
        "default",
        "DATABASE_SSLROOTCERT",
        id="verify-without-ca",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_SSLMODE": "verify-ca", "DATABASE_SSLROOTCERT": "/nope.pem"},
        TLSFileError,
        "default",
        "DATABASE_SSLROOTCERT",
        id="ca-missing",
    ),
    pytest.param(
        {"DATABASE_URL": "sqlite:///x.db", "DATABASE_SSLMODE": "require"},
        InvalidTLSSetting,
        "default",
        "DATABASE_SSLMODE",
        id="sqlite-with-tls-env",
    ),
    pytest.param(
        {"DATABASE_URL": "sqlite:///x.db?sslrootcert=/ca.pem"},
        InvalidTLSSetting,
        "default",
        "DATABASE_URL",
        id="sqlite-with-tls-query",
    ),
    pytest.param(
        {"DATABASE_URL": f"mysql://app:{PASSWORD}@db/x", "DATABASE_SSL_MIN_VERSION": "TLSv1.2"},
        InvalidTLSSetting,
        "default",
        "DATABASE_SSL_MIN_VERSION",
        id="mysql-min-version",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_SSL_CIPHERS": "HIGH"},
        InvalidTLSSetting,
        "default",
        "DATABASE_SSL_CIPHERS",
        id="pg-ciphers",
    ),
    pytest.param(
        {"DATABASE_URL": PGP, "DATABASE_SSL_MIN_VERSION": "SSLv3"},
        InvalidTLSSetting,
        "default",
        "DATABASE_SSL_MIN_VERSION",
        id="obsolete-tls",
    ),
]


@pytest.mark.parametrize(("environ", "error", "alias", "variable"), ERROR_CASES)
def test_errors(
    environ: dict[str, str], error: type[ConfigurationError], alias: str, variable: str
) -> None:
    with pytest.raises(error) as info:
        read_environment(source=environ)
    message = str(info.value)
    assert f"'{alias}'" in message
    assert variable in message
    assert "Fix:" in message
    assert PASSWORD not in message
    assert info.value.alias == alias


def test_tls_file_errors_name_the_env_var(pki: PKI) -> None:  # noqa: F811
    cert, key = pki.client("loose", key_mode=0o644)
    environ = {
        "DATABASE_ALIASES": "reports",
        "REPORTS_DATABASE_URL": f"postgres://app:{PASSWORD}@db/reports",
        "REPORTS_DATABASE_SSLMODE": "verify-full",
        "REPORTS_DATABASE_SSLROOTCERT": pki.ca,
        "REPORTS_DATABASE_SSLCERT": cert,
        "REPORTS_DATABASE_SSLKEY": key,
        "REPORTS_DATABASE_SSLPASSWORD": PASSWORD,
    }
    with pytest.raises(TLSFileError) as info:
        read_environment(source=environ)
    assert "'reports'" in str(info.value)
    assert "REPORTS_DATABASE_SSLKEY" in str(info.value)
    assert "chmod 600" in str(info.value)
    assert PASSWORD not in str(info.value)
    # validate=False skips file checks
    assert read_environment(source=environ, validate=False)["reports"].tls.key == key


def test_tls_pem_in_env(pki: PKI) -> None:  # noqa: F811
    environ = {
        "DATABASE_URL": PG,
        "DATABASE_SSLMODE": "verify-full",
        "DATABASE_SSLROOTCERT": Path(pki.ca).read_text(),
        "DATABASE_SSLCERT": Path(pki.cert).read_text().strip().replace("\n", "\\n"),
        "DATABASE_SSLKEY": Path(pki.key).read_text(),
    }
    spec = read_environment(source=environ)["default"]
    assert spec.tls.ca is not None and Path(spec.tls.ca).read_text() == Path(pki.ca).read_text()
    assert "PRIVATE KEY" not in repr(spec)
    assert read_environment(source=environ)["default"] == spec


def test_expiry_warning_is_emitted_and_logged(
    pki: PKI,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = pki.client(
        "soon", not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=5)
    )
    environ = {
        "DATABASE_URL": PG,
        "DATABASE_SSLMODE": "verify-full",
        "DATABASE_SSLROOTCERT": pki.ca,
        "DATABASE_SSLCERT": cert,
        "DATABASE_SSLKEY": key,
    }
    with (
        caplog.at_level(logging.WARNING, logger="multipool.config"),
        pytest.warns(MultipoolWarning, match="DATABASE_SSLCERT"),
    ):
        read_environment(source=environ)
    assert any("expires" in r.getMessage() for r in caplog.records)


def test_expiry_warning_is_one_message_per_process(
    pki: PKI,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """settings.py (databases()) says nothing; the pool says it once, however often the
    alias's pool is made again; the system checks report it in their own output."""
    import warnings as warnings_module

    from multipool.pools import manager

    cert, key = pki.client(
        "later", not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=6)
    )
    environ = {
        "DATABASE_ALIASES": "expiring",
        "EXPIRING_DATABASE_URL": PG,
        "EXPIRING_DATABASE_SSLMODE": "verify-full",
        "EXPIRING_DATABASE_SSLROOTCERT": pki.ca,
        "EXPIRING_DATABASE_SSLCERT": cert,
        "EXPIRING_DATABASE_SSLKEY": key,
    }
    with caplog.at_level(logging.WARNING), warnings_module.catch_warnings():
        warnings_module.simplefilter("error")  # no MultipoolWarning either
        entry = databases(source=environ)["expiring"]
        assert not caplog.records
        spec = spec_from_settings("expiring", entry)
        for _ in range(3):
            manager.pool(spec)
            manager.dispose("expiring")
    logged = [r for r in caplog.records if "expires" in r.getMessage()]
    assert len(logged) == 1 and "EXPIRING_DATABASE_SSLCERT" in logged[0].getMessage()



def test_expiry_warning_shown_by_the_checks_is_not_logged_again(
    pki: PKI,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``manage.py runserver`` runs the checks, then opens the pool: one message."""
    from multipool.checks import check_databases
    from multipool.pools import manager

    cert, key = pki.client(
        "checked", not_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=7)
    )
    environ = {
        "DATABASE_ALIASES": "checked",
        "CHECKED_DATABASE_URL": PG,
        "CHECKED_DATABASE_SSLMODE": "verify-full",
        "CHECKED_DATABASE_SSLROOTCERT": pki.ca,
        "CHECKED_DATABASE_SSLCERT": cert,
        "CHECKED_DATABASE_SSLKEY": key,
    }
    entry = databases(source=environ)["checked"]
    for _ in range(2):  # every run of the checks reports it
        found = check_databases(databases={"checked": entry})
        assert [m.id for m in found if "CHECKED_DATABASE_SSLCERT" in m.msg] == ["multipool.W001"]
    with caplog.at_level(logging.WARNING):
        manager.pool(spec_from_settings("checked", entry))
        manager.dispose("checked")
    assert not [r for r in caplog.records if "expires" in r.getMessage()]


# -- DATABASES entries ------------------------------------------------------------------------


def test_hand_written_entries() -> None:
    spec = spec_from_settings(
        "default",
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": PASSWORD,
            "HOST": "db",
            "PORT": "5432",
            "OPTIONS": {"sslmode": "require", "pool_size": "4", "connect_timeout": 3},
        },
    )
    assert spec.vendor == "postgresql"
    assert spec.port == 5432
    assert spec.pool.size == 4
    assert spec.tls == TLSSpec(mode="require")
    assert spec.options == ()
    assert spec.pool.connect_timeout == 3  # the driver's option, read as multipool's setting
    assert spec.conn_max_age == 0
    assert spec.setting("pool_size") == "DATABASES['default']['OPTIONS']['pool_size']"
    assert spec.setting("sslmode") == "DATABASES['default']['OPTIONS']['sslmode']"
    assert spec.to_django()["ENGINE"] == "multipool.backends.postgresql"


def test_maintenance_connection_without_name() -> None:
    # Django's _nodb_cursor copies the entry with NAME=None
    spec = spec_from_settings(
        "__no_db__", {"ENGINE": "multipool.backends.postgresql", "NAME": None, "HOST": "db"}
    )
    assert spec.name == ""


def test_sqlite_path_name(tmp_path: Path) -> None:
    spec = spec_from_settings(
        "default", {"ENGINE": "django.db.backends.sqlite3", "NAME": tmp_path / "x.db"}
    )
    assert spec.name == str(tmp_path / "x.db")


SETTINGS_ERRORS = [
    pytest.param(
        {"ENGINE": "multipool.backends.postgresql", "NAME": "x", "OPTIONS": {"pool": True}},
        InvalidPoolSetting,
        "['OPTIONS']['pool']",
        id="django-pool",
    ),
    pytest.param(
        {"ENGINE": "django.db.backends.oracle", "NAME": "x"},
        ConfigurationError,
        "['ENGINE']",
        id="unknown-engine",
    ),
    pytest.param(
        {"ENGINE": "multipool.backends.postgresql", "NAME": "x", "PORT": "99999"},
        ConfigurationError,
        "['PORT']",
        id="port-out-of-range",
    ),
    pytest.param(
        {"ENGINE": "multipool.backends.postgresql", "NAME": "x", "PORT": "abc"},
        ConfigurationError,
        "['PORT']",
        id="port-not-number",
    ),
    pytest.param(
        {"ENGINE": "multipool.backends.mysql", "NAME": "x", "OPTIONS": {"pool_size": True}},
        InvalidPoolSetting,
        "['pool_size']",
        id="pool-size-bool",
    ),
    pytest.param(
        {"ENGINE": "multipool.backends.mysql", "NAME": "x", "OPTIONS": {"max_overflow": -2}},
        InvalidPoolSetting,
        "['max_overflow']",
        id="overflow-negative",
    ),
    pytest.param(
        {"ENGINE": "multipool.backends.sqlite3", "NAME": "x", "OPTIONS": {"sslmode": "require"}},
        InvalidTLSSetting,
        "['sslmode']",
        id="sqlite-tls",
    ),
    pytest.param(
        {"ENGINE": "multipool.backends.sqlite3", "NAME": "x", "OPTIONS": "nope"},
        ConfigurationError,
        "['OPTIONS']",
        id="options-not-dict",
    ),
    pytest.param(
        {"ENGINE": "multipool.backends.sqlite3", "NAME": "x", "MULTIPOOL": []},
        ConfigurationError,
        "['MULTIPOOL']",
        id="meta-not-dict",
    ),
    pytest.param(
        {
            "ENGINE": "multipool.backends.postgresql",
            "NAME": "x",
            "OPTIONS": {"pool_size": "x"},
            "MULTIPOOL": {"settings": {"pool_size": "APP_DATABASE_POOL_SIZE"}},
        },
        InvalidPoolSetting,
        "APP_DATABASE_POOL_SIZE",
        id="names-from-meta",
    ),
]


@pytest.mark.parametrize(("settings_dict", "error", "setting"), SETTINGS_ERRORS)
def test_settings_errors(
    settings_dict: dict[str, Any], error: type[ConfigurationError], setting: str
) -> None:
    with pytest.raises(error) as info:
        spec_from_settings("main", settings_dict)
    assert "'main'" in str(info.value)
    assert setting in str(info.value)


def test_spec_from_settings_is_cached() -> None:
    d = {"ENGINE": "multipool.backends.postgresql", "NAME": "x", "OPTIONS": {"pool_size": 3}}
    assert spec_from_settings("c", d) is spec_from_settings("c", dict(d))
    # unhashable option values still work (no caching)
    d2 = {**d, "OPTIONS": {"options": bytearray(b"x")}}
    assert spec_from_settings("c", d2).option("options") == bytearray(b"x")


# -- equality across input forms ------------------------------------------------------------


def test_equal_configs_give_equal_specs() -> None:
    url_form = read_environment(
        source={
            "DATABASE_URL": "mysql://app:pw@db:3306/shop?charset=utf8mb4&pool_size=9"
            "&ssl_mode=VERIFY_IDENTITY&ssl_ca=/ca.pem",
        },
        validate=False,
    )["default"]
    env_form = read_environment(
        source={
            "DATABASE_URL": "mariadb://app:pw@db:3306/shop?charset=utf8mb4",
            "DATABASE_POOL_SIZE": "9",
            "DATABASE_SSLMODE": "verify-full",
            "DATABASE_SSLROOTCERT": "/ca.pem",
        },
        validate=False,
    )["default"]
    options_form = spec_from_settings(
        "default",
        {
            "ENGINE": "django.db.backends.mysql",
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "pw",
            "HOST": "db",
            "PORT": 3306,
            "OPTIONS": {
                "charset": "utf8mb4",
                "pool_size": 9,
                "ssl": {"ca": "/ca.pem"},
                "ssl_mode": "verify_identity",
            },
        },
    )
    assert url_form == env_form == options_form
    assert len({url_form, env_form, options_form}) == 1


def test_lists_and_tuples_are_equal() -> None:
    base = {"ENGINE": "multipool.backends.postgresql", "NAME": "x"}
    a = spec_from_settings(
        "a", {**base, "OPTIONS": {"options": ["-c", "x"], "context": {"b": 1, "a": 2}}}
    )
    b = spec_from_settings(
        "a", {**base, "OPTIONS": {"context": {"a": 2, "b": 1}, "options": ("-c", "x")}}
    )
    assert a == b and hash(a) == hash(b)
    assert a.to_django()["OPTIONS"]["context"] == {"a": 2, "b": 1}


def test_repr_masks_secrets() -> None:
    spec = read_environment(
        source={
            "DATABASE_URL": f"postgres://app:{PASSWORD}@db/shop?sslpassword=keypass-{PASSWORD}",
        },
        validate=False,
    )["default"]
    spec2 = spec_from_settings(
        "x",
        {
            "ENGINE": "multipool.backends.mysql",
            "NAME": "x",
            "PASSWORD": PASSWORD,
            "OPTIONS": {"password": PASSWORD},
        },
    )
    for s in (spec, spec2):
        assert PASSWORD not in repr(s)
        assert PASSWORD not in str(s)
        assert "***" in repr(s)
    assert spec.password == PASSWORD


def test_setting_names() -> None:
    spec = read_environment(source={"DATABASE_ALIASES": "b", "B_DATABASE_URL": PG}, validate=False)[
        "b"
    ]
    assert spec.setting("pool_size") == "B_DATABASE_POOL_SIZE"
    assert spec.setting("size") == "B_DATABASE_POOL_SIZE"
    assert spec.setting("sslrootcert") == "B_DATABASE_SSLROOTCERT"
    assert spec.setting("ca") == "B_DATABASE_SSLROOTCERT"
    assert spec.setting("name") == "B_DATABASE_URL"
    assert spec.setting("timeout") == "B_DATABASE_POOL_TIMEOUT"
    bare = DatabaseSpec(alias="m", vendor="mysql", name="x")
    assert bare.setting("tls_ca") == "DATABASES['m']['OPTIONS']['ssl']['ca']"
    assert bare.setting("NAME") == "DATABASES['m']['NAME']"
    assert bare.setting("replicas") == "DATABASES['m']['MULTIPOOL']['replicas']"


def test_setting_names_in_order_of_preference() -> None:
    """Recorded (the environment), else as spelled, else the DATABASES spelling."""
    names = SettingNames("m", "mysql", {"tls_ca": "M_DATABASE_SSLROOTCERT", "url": "M_URL"})
    assert names.of("ca", "DATABASES['m']['OPTIONS']['ssl_ca']") == "M_DATABASE_SSLROOTCERT"
    assert names.of("cert", "DATABASES['m']['OPTIONS']['ssl_cert']") == (
        "DATABASES['m']['OPTIONS']['ssl_cert']"
    )
    assert names.of("cert") == "DATABASES['m']['OPTIONS']['ssl']['cert']"
    assert SettingNames("p", "postgresql").of("mode") == "DATABASES['p']['OPTIONS']['sslmode']"
    assert names.driver_option("init_command") == "M_URL (option init_command)"
    assert SettingNames("m", "mysql").driver_option("charset") == (
        "DATABASES['m']['OPTIONS']['charset']"
    )
    # while a URL's query is read, every option is named by the URL's variable
    query = SettingNames("m", "mysql", written_in="M_DATABASE_URL")
    assert query.option("ssl", "ca") == "M_DATABASE_URL"
    assert query.of("pool_size", query.option("pool_size")) == "M_DATABASE_URL"


def test_field_lists_match_the_specs() -> None:
    """setting_names lists the spec fields it names; they are the specs' own."""
    assert tuple(f.name for f in fields(TLSSpec)) == TLS_FIELDS
    assert set(POOL_ATTRIBUTES.values()) == {f.name for f in fields(PoolSpec)}


def test_pool_option_keys() -> None:
    assert {
        "pool_size",
        "max_overflow",
        "pool_timeout",
        "pool_recycle",
        "pool_pre_ping",
        "pool_ping_idle",
        "pool_poll_idle",
        "pool_overflow_idle",
        "pool_lifo",
        "pool_reset",
        "pool_metrics",
        "pool_enabled",
        "connect_timeout",
        "network_timeout",
        "rotation_check",
        "pooler",
    } == POOL_OPTION_KEYS
    assert "pool" not in POOL_OPTION_KEYS


# -- round trip -----------------------------------------------------------------------------

_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


def _option_names(vendor: str) -> st.SearchStrategy[str]:
    """Driver option names the vendor's driver knows (SQLite: any), without the TLS,
    pool and connection ones multipool reads itself."""
    if vendor == "sqlite":
        return _names.filter(lambda k: k not in POOL_OPTION_KEYS and k != "pool")
    from multipool.config.driver_options import MYSQL_OPTIONS, TYPED_OPTIONS, postgresql_keywords

    known = postgresql_keywords() if vendor == "postgresql" else MYSQL_OPTIONS
    assert known is not None
    own = {"host", "port", "user", "password", "passwd", "dbname", "db", "database", "service",
           "passfile", "tls_version", "unix_socket", *TYPED_OPTIONS[vendor]}
    return st.sampled_from(sorted(
        k for k in known if k not in POOL_OPTION_KEYS and not k.startswith("ssl") and k not in own
    ))
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
#: a key passphrase: any text but NUL, which the TLS parser refuses by design
#: (test_key_password_with_nul_is_refused)
_passphrases = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
    min_size=1,
    max_size=12,
)


@st.composite
def specs(draw: st.DrawFn) -> DatabaseSpec:
    vendor = draw(st.sampled_from(["postgresql", "mysql", "sqlite"]))
    if vendor == "sqlite":
        tls = TLSSpec()
    else:
        mode = draw(
            st.sampled_from([None, "disable", "prefer", "require", "verify-ca", "verify-full"])
        )
        ca = draw(
            st.sampled_from([None, "/etc/ca.pem"] + (["system"] if vendor == "mysql" else []))
        )
        pair = draw(st.booleans())
        tls = TLSSpec(
            mode=mode,
            ca=ca,
            cert="/c.crt" if pair else None,
            key="/c.key" if pair else None,
            key_password=draw(st.none() | _passphrases) if vendor == "postgresql" else None,
            min_version=draw(st.sampled_from([None, "TLSv1.2", "TLSv1.3"]))
            if vendor == "postgresql"
            else None,
            ciphers=draw(st.sampled_from([None, "HIGH"])) if vendor == "mysql" else None,
        )
    pooler = {"postgresql": "pgbouncer", "mysql": "proxysql"}.get(vendor)
    pool = PoolSpec(
        enabled=draw(st.booleans()),
        size=draw(st.integers(1, 100)),
        max_overflow=draw(st.integers(0, 100)),
        timeout=draw(st.floats(0, 1e6)),
        recycle=draw(st.none() | st.floats(0.001, 1e6)),
        pre_ping=draw(st.booleans()),
        ping_idle=draw(st.floats(0, 1e6)),
        poll_idle=draw(st.floats(0, 1e6)),
        overflow_idle=draw(st.floats(0, 1e6)),
        lifo=draw(st.booleans()),
        pooler=draw(st.sampled_from([None, pooler])),
    )
    options = draw(
        st.dictionaries(
            _option_names(vendor),
            st.integers() | _text | st.lists(st.integers(), max_size=3),
            max_size=3,
        )
    )
    return make_spec(
        alias=draw(_names),
        vendor=vendor,
        name=draw(_names),
        user=draw(st.none() | _names),
        password=draw(st.none() | _text.filter(bool)),
        host=draw(st.none() | _names),
        port=draw(st.none() | st.integers(1, 65535)),
        options=options,
        tls=tls,
        pool=pool,
        conn_max_age=draw(st.none() | st.integers(0, 1000)),
        replica_of=draw(st.none() | _names),
        replicas=draw(st.lists(_names, max_size=3)),
        settings=draw(st.dictionaries(st.sampled_from(["pool_size", "tls_mode"]), _names)),
    )


@given(specs())
@settings(max_examples=200)
def test_round_trip(spec: DatabaseSpec) -> None:
    back = spec_from_settings(spec.alias, spec.to_django())
    assert back == spec
    assert hash(back) == hash(spec)
    assert back.settings == spec.settings


def test_key_password_with_nul_is_refused() -> None:
    """Why the round trip's passphrases have no NUL: no driver could pass one on."""
    entry = {"ENGINE": "multipool.backends.postgresql", "NAME": "app",
             "OPTIONS": {"sslpassword": "a\x00b"}}
    with pytest.raises(TLSFileError, match="NUL character") as info:
        spec_from_settings("default", entry)
    assert "a\x00b" not in str(info.value)


# -- arbitrary text never escapes as anything but a ConfigurationError ---------------------------

_any_text = st.text(max_size=40)


def _parses_or_names(environ: dict[str, str], variable: str) -> None:
    try:
        read_environment(source=environ)
    except ConfigurationError as exc:
        assert variable in str(exc), str(exc)


@given(_any_text)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_pool_size_text(text: str) -> None:
    _parses_or_names({"DATABASE_URL": PG, "DATABASE_POOL_SIZE": text}, "DATABASE_POOL_SIZE")


@given(_any_text)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_sslmode_text(text: str) -> None:
    try:
        read_environment(source={"DATABASE_URL": PG, "DATABASE_SSLMODE": text})
    except ConfigurationError as exc:
        # verify modes name the missing CA setting next to the mode
        assert "DATABASE_SSLMODE" in str(exc), str(exc)


@given(
    st.one_of(
        _any_text,
        st.builds(
            lambda scheme, rest: scheme + rest,
            st.sampled_from(
                ["postgres://", "mysql://", "sqlite://", "sqlite:///", "pgsql://", "x://", ""]
            ),
            _any_text,
        ),
    )
)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_url_text(text: str) -> None:
    _parses_or_names({"DATABASE_URL": text}, "DATABASE_URL")


# -- real sources: os.environ and .env -------------------------------------------------------


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if "DATABASE_" in key:
            monkeypatch.delenv(key)
    return monkeypatch


def test_real_os_environ(clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_environ.setenv("DATABASE_URL", "postgres://app@db/shop")
    clean_environ.setenv("DATABASE_POOL_SIZE", "11")
    # search_path: an empty directory, so no stray .env interferes
    dbs = databases(search_path=tmp_path)
    assert dbs["default"]["OPTIONS"]["pool_size"] == 11
    assert dbs["default"]["NAME"] == "shop"


def test_real_dotenv_file(clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# comment\n"
        "DATABASE_URL=mysql://app@db/fromdotenv\n"
        "DATABASE_POOL_SIZE='4'\n"
        "DATABASE_ALIASES=other\n"
        "OTHER_DATABASE_URL=sqlite:///other.db\n"
    )
    project = tmp_path / "project" / "settings"
    project.mkdir(parents=True)
    # searched from search_path upward
    dbs = databases(search_path=project)
    assert dbs["default"]["NAME"] == "fromdotenv"
    assert dbs["default"]["OPTIONS"]["pool_size"] == 4
    assert dbs["other"]["NAME"] == str(tmp_path / "other.db")  # next to the .env
    # os.environ wins over .env (decouple's order)
    clean_environ.setenv("DATABASE_POOL_SIZE", "6")
    assert databases(search_path=project)["default"]["OPTIONS"]["pool_size"] == 6
    # explicit decouple objects
    clean_environ.delenv("DATABASE_POOL_SIZE")
    repo = RepositoryEnv(str(tmp_path / ".env"))
    assert databases(source=repo)["default"]["OPTIONS"]["pool_size"] == 4
    assert databases(source=Config(repo))["default"]["NAME"] == "fromdotenv"
    assert databases(source=AutoConfig(search_path=str(project)))["default"]["NAME"] == "fromdotenv"


def test_dotenv_next_to_the_calling_settings_module(
    clean_environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgres://app@db/found_by_caller\n")
    settings_file = tmp_path / "mysite" / "settings.py"
    settings_file.parent.mkdir()
    settings_file.write_text("import multipool\nDATABASES = multipool.databases()\n")
    result = runpy.run_path(str(settings_file))
    assert result["DATABASES"]["default"]["NAME"] == "found_by_caller"


def test_relative_paths_do_not_depend_on_the_current_directory(
    clean_environ: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A SQLite file and certificate files named relatively resolve against the
    directory of the ``.env`` in use, else the settings module's directory (or
    ``base_dir``), so that ``manage.py`` run from elsewhere finds the same files."""
    project = tmp_path / "project"
    (project / "mysite").mkdir(parents=True)
    (project / ".env").write_text(
        "DATABASE_URL=postgres://app@db/shop\n"
        "DATABASE_SSLMODE=verify-full\n"
        "DATABASE_SSLROOTCERT=certs/ca.crt\n"
        "DATABASE_ALIASES=local\n"
        "LOCAL_DATABASE_URL=sqlite:///data/local.db\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean_environ.chdir(elsewhere)
    dbs = databases(search_path=project / "mysite", validate=False)
    assert dbs["default"]["OPTIONS"]["sslrootcert"] == str(project / "certs" / "ca.crt")
    assert dbs["local"]["NAME"] == str(project / "data" / "local.db")

    bare = tmp_path / "bare" / "mysite"
    bare.mkdir(parents=True)
    assert databases(search_path=bare)["default"]["NAME"] == str(bare / "db.sqlite3")
    pinned = databases(search_path=bare, base_dir=tmp_path / "bare")
    assert pinned["default"]["NAME"] == str(tmp_path / "bare" / "db.sqlite3")


def test_settings_ini(clean_environ: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "settings.ini").write_text(
        "[settings]\nDATABASE_URL=postgres://app@db/from_ini\nDATABASE_POOL_LIFO=false\n"
    )
    dbs = databases(search_path=tmp_path)
    assert dbs["default"]["NAME"] == "from_ini"
    assert dbs["default"]["OPTIONS"]["pool_lifo"] is False


def test_bad_source_type() -> None:
    with pytest.raises(TypeError):
        read_environment(source=42)


# -- docs ---------------------------------------------------------------------------------


def test_env_keys_table() -> None:
    names = [k.name() for k in ENV_KEYS]
    assert len(names) == len(set(names))
    for expected in [
        "DATABASE_URL",
        "DATABASE_ALIASES",
        "DATABASE_REPLICAS",
        "DATABASE_POOL",
        "DATABASE_POOL_SIZE",
        "DATABASE_MAX_OVERFLOW",
        "DATABASE_POOL_TIMEOUT",
        "DATABASE_POOL_RECYCLE",
        "DATABASE_POOL_PRE_PING",
        "DATABASE_POOL_PING_IDLE",
        "DATABASE_POOL_LIFO",
        "DATABASE_POOLER",
        "DATABASE_CONN_MAX_AGE",
        "DATABASE_SSLMODE",
        "DATABASE_SSLROOTCERT",
        "DATABASE_SSLCERT",
        "DATABASE_SSLKEY",
        "DATABASE_SSLPASSWORD",
        "DATABASE_SSLCRL",
        "DATABASE_SSL_MIN_VERSION",
        "DATABASE_SSL_CIPHERS",
    ]:
        assert expected in names
    assert ENV_KEYS[0].name("legacy") == "LEGACY_DATABASE_URL"


def test_docs_are_up_to_date() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert config.env_keys_markdown() in text, (
        "docs/configuration.md is out of date: paste config.env_keys_markdown() "
        "between the ENV KEYS markers"
    )


def test_no_warnings_for_a_clean_config() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_environment(source={"DATABASE_URL": PG})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("transaction", "transaction"), ("SESSION", "session"), (" session ", "session")],
)
def test_pool_reset_choices(value: str, expected: str) -> None:
    entry = env_db({"DATABASE_URL": PG, "DATABASE_POOL_RESET": value})
    assert entry["OPTIONS"]["pool_reset"] == expected


def test_pool_reset_unknown_names_the_variable() -> None:
    with pytest.raises(InvalidPoolSetting) as info:
        read_environment(source={"DATABASE_URL": PG, "DATABASE_POOL_RESET": "everything"})
    assert "DATABASE_POOL_RESET" in str(info.value) and "'default'" in str(info.value)


# -- behind an external pooler --------------------------------------------------------------


def test_pgbouncer_disables_server_side_cursors() -> None:
    entry = env_db({"DATABASE_URL": PG, "DATABASE_POOLER": "pgbouncer"})
    assert entry["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert entry["OPTIONS"]["pooler"] == "pgbouncer"
    assert "DISABLE_SERVER_SIDE_CURSORS" not in env_db({"DATABASE_URL": PG})


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"DATABASE_URL": PG + "?assume_role=owner"}, "assume_role"),
        ({"DATABASE_URL": PG + "?prepare_threshold=5"}, "prepare_threshold"),
        ({"DATABASE_URL": PG, "DATABASE_POOL_RESET": "session"}, "DATABASE_POOL_RESET"),
    ],
    ids=["assume-role", "prepared-statements", "session-reset"],
)
def test_pgbouncer_refuses_settings_that_need_session_state(
    environ: dict[str, str], variable: str
) -> None:
    with pytest.raises(InvalidPoolSetting) as info:
        read_environment(source={**environ, "DATABASE_POOLER": "pgbouncer"})
    message = str(info.value)
    assert "'default'" in message and variable in message and "PgBouncer" in message


def test_spec_cache_tells_missing_conn_max_age_from_none() -> None:
    base = {"ENGINE": "multipool.backends.postgresql", "NAME": "shop", "OPTIONS": {}}
    assert spec_from_settings("cachecheck", {**base, "CONN_MAX_AGE": None}).conn_max_age is None
    assert spec_from_settings("cachecheck", base).conn_max_age == 0


def test_replica_mirrors_its_primary_in_django_tests_and_topology_is_not_identity() -> None:
    environ = {
        "DATABASE_URL": PG,
        "DATABASE_REPLICAS": "ro",
        "RO_DATABASE_URL": "postgres://ro@db-ro/shop",
    }
    dbs = databases(source=environ)
    assert dbs["ro"]["TEST"] == {"MIRROR": "default"}
    assert "TEST" not in dbs["default"]
    with_replica = read_environment(source=environ)["default"]
    alone = read_environment(source={"DATABASE_URL": PG})["default"]
    assert with_replica.replicas == ("ro",)
    assert with_replica == alone and hash(with_replica) == hash(alone)


def test_leftover_django_db_connection_pool_options_are_refused() -> None:
    entry = {
        "ENGINE": "multipool.backends.postgresql",
        "NAME": "shop",
        "OPTIONS": {},
        "POOL_OPTIONS": {"POOL_SIZE": 10, "MAX_OVERFLOW": 10},
    }
    with pytest.raises(InvalidPoolSetting) as info:
        spec_from_settings("legacy_pool", entry)
    message = str(info.value)
    assert "'legacy_pool'" in message and "POOL_OPTIONS" in message and "pool_size" in message


@pytest.mark.parametrize(
    ("old", "new"),
    [("recycle", "pool_recycle"), ("timeout", "pool_timeout"), ("pre_ping", "pool_pre_ping"),
     ("RECYCLE", "pool_recycle"), ("POOL_SIZE", "pool_size"), ("echo", "logger")],
)
@pytest.mark.parametrize("vendor", ["postgresql", "mysql"])
def test_django_db_connection_pool_names_in_options_are_refused(
    vendor: str, old: str, new: str
) -> None:
    """Taken literally, "move POOL_OPTIONS into OPTIONS" gives names the driver refuses."""
    with pytest.raises(InvalidPoolSetting) as info:
        spec_from_settings(
            "default", {"ENGINE": f"multipool.backends.{vendor}", "NAME": "app",
                        "OPTIONS": {old: 5}}
        )
    assert info.value.setting == f"DATABASES['default']['OPTIONS'][{old!r}]"
    assert new in info.value.fix


def test_sqlite_timeout_option_is_sqlites_own() -> None:
    spec = spec_from_settings(
        "default", {"ENGINE": "multipool.backends.sqlite3", "NAME": "/tmp/x.db",
                    "OPTIONS": {"timeout": 20}}
    )
    assert spec.option("timeout") == 20


@pytest.mark.parametrize(
    ("environ", "entry", "setting", "suggestion"),
    [
        ({"DATABASE_URL": "postgresql://app@db/shop?bogus_option=1"}, None, "DATABASE_URL", None),
        ({"DATABASE_URL": "postgresql://app@db/shop?aplication_name=web"}, None,
         "DATABASE_URL", "application_name"),
        ({"DATABASE_URL": "mysql://app@db/shop?charst=utf8mb4"}, None, "DATABASE_URL", "charset"),
        (None, {"ENGINE": "multipool.backends.postgresql", "NAME": "shop",
                "OPTIONS": {"bogus_option": 1}},
         "DATABASES['default']['OPTIONS']['bogus_option']", None),
        (None, {"ENGINE": "multipool.backends.mysql", "NAME": "shop",
                "OPTIONS": {"init_comand": "SET x=1"}},
         "DATABASES['default']['OPTIONS']['init_comand']", "init_command"),
    ],
    ids=["pg-url", "pg-url-typo", "mysql-url-typo", "pg-options", "mysql-options-typo"],
)
def test_unknown_driver_options_are_refused_when_settings_are_read(
    environ: dict[str, str] | None, entry: dict[str, Any] | None, setting: str,
    suggestion: str | None,
) -> None:
    """An option the driver does not know fails here, not at the first connect."""
    with pytest.raises(ConfigurationError) as info:
        if environ is not None:
            read_environment(source=environ)
        else:
            spec_from_settings("default", entry or {})
    assert info.value.setting == setting
    assert "unknown" in info.value.problem
    if suggestion:
        assert f"did you mean {suggestion}?" in info.value.problem


def test_libpq_keywords_come_from_the_driver() -> None:
    from multipool.config.driver_options import _libpq_accepts, postgresql_keywords

    keywords = postgresql_keywords()
    assert keywords is not None and {"application_name", "tcp_user_timeout"} <= keywords
    # psycopg2's own parser answers the same (the path taken without psycopg 3)
    assert _libpq_accepts("application_name") and not _libpq_accepts("bogus_option")
    spec = spec_from_settings("default", {"ENGINE": "multipool.backends.postgresql",
                                          "NAME": "x", "OPTIONS": {"assume_role": "r",
                                                                   "target_session_attrs": "any"}})
    assert dict(spec.options) == {"assume_role": "r", "target_session_attrs": "any"}
