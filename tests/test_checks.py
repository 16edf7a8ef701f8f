"""System checks: ids, messages and hints for crafted DATABASES, and their registration.

The checks are plain functions over a ``DATABASES`` dict (``check_databases``,
``check_deployment``); ``INSTALLED_APPS += ["multipool"]`` registers them with
Django (tag ``multipool``; the deploy ones also ``security``, deploy only).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from django.core import checks as django_checks

from multipool.certs import (
    generate_dev_certs,
    issue_cert,
    load_ca,
    make_ca,
    write_cert,
    write_key,
)
from multipool.checks import (
    CHECK_IDS,
    ROUTER_PATH,
    check_databases,
    check_deployment,
    multipool_checks,
    multipool_deploy_checks,
    spec_of,
)
from multipool.config import databases as env_databases
from multipool.config import spec_from_settings
from tests.conftest import registered_alias

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "S3cret-p@ss:word/+"
NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_dev_certs(tmp_path_factory.mktemp("pki"), clients=("app", "other"))


def entry(vendor: str = "postgresql", **options: Any) -> dict[str, Any]:
    engine = {"postgresql": "postgresql", "mysql": "mysql", "sqlite": "sqlite3"}[vendor]
    out: dict[str, Any] = {
        "ENGINE": f"multipool.backends.{engine}",
        "NAME": "app" if vendor != "sqlite" else "/tmp/x.sqlite3",
        "OPTIONS": options,
    }
    if vendor != "sqlite":
        out.update(HOST="db.internal", USER="app")
    return out


def verified(pki: Any, **extra: Any) -> dict[str, Any]:
    return entry(sslmode="verify-full", sslrootcert=str(pki.ca_cert), **extra)


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def only(messages: list[Any], check_id: str) -> Any:
    found = [m for m in messages if m.id == check_id]
    assert len(found) == 1, [str(m) for m in messages]
    return found[0]


def test_every_id_is_documented() -> None:
    doc = (ROOT / "docs/checks.md").read_text()
    for check_id in CHECK_IDS:
        assert check_id in doc


def test_spec_of_is_spec_from_settings() -> None:
    """A missing CONN_MAX_AGE is read as 0 and ``None`` as ``None``: the cache tells them
    apart, so spec_of needs no copy of the entry with CONN_MAX_AGE filled in."""
    plain = entry("sqlite")
    assert spec_from_settings("cma", plain).conn_max_age == 0
    assert spec_from_settings("cma", {**plain, "CONN_MAX_AGE": None}).conn_max_age is None
    assert spec_from_settings("cma", plain).conn_max_age == 0
    assert spec_of("cma", plain) is spec_from_settings("cma", plain)


def test_good_settings_give_no_message(pki: Any) -> None:
    cert, key = pki.client("app")
    dbs = {
        "default": verified(pki, sslcert=str(cert), sslkey=str(key)),
        "local": entry("sqlite"),
    }
    assert check_databases(dbs, now=NOW) == []


def test_missing_ca_file_is_e003(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.crt"
    msg = only(
        check_databases({"default": entry(sslmode="verify-full", sslrootcert=str(missing))}),
        "multipool.E003",
    )
    assert msg.level == django_checks.ERROR
    assert "does not exist" in msg.msg
    assert "sslrootcert" in msg.msg  # the setting at fault
    assert "sslrootcert" in msg.hint
    assert msg.obj == "database alias 'default'"


def test_not_pem_and_permissive_key_are_e003(pki: Any, tmp_path: Path) -> None:
    junk = tmp_path / "ca.crt"
    junk.write_text("not a certificate\n")
    msg = only(
        check_databases({"default": entry(sslmode="verify-full", sslrootcert=str(junk))}),
        "multipool.E003",
    )
    assert "not a PEM certificate" in msg.msg
    cert, key = pki.client("app")
    loose = tmp_path / "loose.key"
    loose.write_bytes(Path(key).read_bytes())
    loose.chmod(0o644)
    msg = only(
        check_databases({"default": verified(pki, sslcert=str(cert), sslkey=str(loose))}),
        "multipool.E003",
    )
    assert "readable by group or others" in msg.msg
    assert "chmod 600" in msg.hint


def test_verify_without_ca_is_e002() -> None:
    msg = only(check_databases({"default": entry(sslmode="verify-full")}), "multipool.E002")
    assert "no CA" in msg.msg
    assert "sslrootcert" in msg.hint


def test_key_certificate_mismatch_is_e004(pki: Any) -> None:
    cert, _ = pki.client("app")
    _, other_key = pki.client("other")
    msg = only(
        check_databases({"default": verified(pki, sslcert=str(cert), sslkey=str(other_key))}),
        "multipool.E004",
    )
    assert "does not match" in msg.msg
    assert msg.hint


def test_certificate_errors_get_their_id_from_their_class(pki: Any) -> None:
    """Not from their text: an alias named 'expired...' does not make a mismatch E005."""
    cert, _ = pki.client("app")
    _, other_key = pki.client("other")
    entry = verified(pki, sslcert=str(cert), sslkey=str(other_key))
    msg = only(check_databases({"expired_orders": entry}), "multipool.E004")
    assert "does not match" in msg.msg
    assert "expired_orders" in msg.msg  # in the setting's name


def _client_cert(pki: Any, tmp_path: Path, name: str, **validity: Any) -> tuple[str, str]:
    ca = load_ca(pki.ca_cert, pki.ca_key)
    cert, key = issue_cert(ca, "app", usage="client", **validity)
    cert_path = write_cert(tmp_path / f"{name}.crt", cert)
    key_path = write_key(tmp_path / f"{name}.key", key)
    return str(cert_path), str(key_path)


def test_expired_certificate_is_e005_and_expiring_is_w001(pki: Any, tmp_path: Path) -> None:
    cert, key = _client_cert(
        pki,
        tmp_path,
        "expired",
        not_before=NOW - dt.timedelta(days=60),
        not_after=NOW - dt.timedelta(days=1),
    )
    msg = only(
        check_databases({"default": verified(pki, sslcert=cert, sslkey=key)}), "multipool.E005"
    )
    assert "expired" in msg.msg
    assert "renew" in msg.hint

    cert, key = _client_cert(
        pki,
        tmp_path,
        "soon",
        not_before=NOW - dt.timedelta(days=60),
        not_after=NOW + dt.timedelta(days=10),
    )
    messages = check_databases({"default": verified(pki, sslcert=cert, sslkey=key)})
    msg = only(messages, "multipool.W001")
    assert msg.level == django_checks.WARNING
    assert "expires on" in msg.msg
    assert "renew" in msg.hint
    assert not [m for m in messages if m.is_serious()]

    # 40 days left: no warning yet (the threshold is 30 days).
    cert, key = _client_cert(
        pki,
        tmp_path,
        "later",
        not_before=NOW - dt.timedelta(days=60),
        not_after=NOW + dt.timedelta(days=40),
    )
    assert check_databases({"default": verified(pki, sslcert=cert, sslkey=key)}) == []


def test_other_tls_warning_is_w002(pki: Any) -> None:
    msg = only(
        check_databases(
            {"default": entry(sslmode="disable", sslrootcert=str(pki.ca_cert))}, now=NOW
        ),
        "multipool.W002",
    )
    assert "ignored" in msg.msg


def test_warning_ids_come_from_the_warning_kind(pki: Any, tmp_path: Path) -> None:
    """Not from the text: an issuer named 'expires on ...' is no expiry warning (W002)."""
    foreign = make_ca("expires on Friday CA")
    cert, key = issue_cert(foreign, "app", usage="client")
    cert_path = write_cert(tmp_path / "foreign.crt", cert)
    key_path = write_key(tmp_path / "foreign.key", key)
    dbs = {"default": verified(pki, sslcert=str(cert_path), sslkey=str(key_path))}
    msg = only(check_databases(dbs, now=NOW), "multipool.W002")
    assert "expires on Friday CA" in msg.msg


def test_key_passphrase_never_in_messages(pki: Any, tmp_path: Path) -> None:
    cert, key = pki.client("app")
    private = serialization.load_pem_private_key(Path(key).read_bytes(), None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right-passphrase"),
        )
    )
    encrypted.chmod(0o600)
    dbs = {
        "default": verified(
            pki, sslcert=str(cert), sslkey=str(encrypted), sslpassword="Wrong-Passphrase-42"
        )
    }
    dbs["default"]["PASSWORD"] = PASSWORD
    messages = check_databases(dbs) + check_deployment(dbs)
    msg = only(messages, "multipool.E003")
    assert "passphrase does not decrypt" in msg.msg
    text = "\n".join(str(m) for m in messages)
    assert "Wrong-Passphrase-42" not in text
    assert PASSWORD not in text
    assert "PRIVATE KEY" not in text


def test_invalid_pool_setting_is_e001() -> None:
    msg = only(check_databases({"default": entry(pool_size="lots")}), "multipool.E001")
    assert "pool_size" in msg.msg
    assert "whole number" in msg.hint


@pytest.mark.parametrize("age", [60, None])
def test_conn_max_age_with_pooling_is_w003(age: int | None) -> None:
    dbs = {"default": {**entry("sqlite"), "CONN_MAX_AGE": age}}
    msg = only(check_databases(dbs), "multipool.W003")
    assert "CONN_MAX_AGE" in msg.msg
    assert "reuses nothing" in msg.msg
    assert "to 0" in msg.hint
    # Pool off: CONN_MAX_AGE is the user's business.
    off = {"default": {**entry("sqlite", pool_enabled=False), "CONN_MAX_AGE": age}}
    assert check_databases(off) == []


def test_conn_max_age_message_names_the_environment_variable(tmp_path: Path) -> None:
    dbs = env_databases(
        source={
            "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
            "DATABASE_CONN_MAX_AGE": "300",
        },
        validate=False,
    )
    msg = only(check_databases(dbs), "multipool.W003")
    assert "DATABASE_CONN_MAX_AGE" in msg.msg
    assert "DATABASE_CONN_MAX_AGE to 0" in msg.hint


def test_stock_engine_next_to_pooled_aliases_is_w004() -> None:
    stock = {"ENGINE": "django.db.backends.postgresql", "NAME": "legacy", "HOST": "h"}
    messages = check_databases({"default": entry("sqlite"), "legacy": stock})
    msg = only(messages, "multipool.W004")
    assert msg.obj == "database alias 'legacy'"
    assert "not pooled" in msg.msg
    assert "multipool.backends" in msg.hint
    # Nothing pooled at all: not our business.
    assert check_databases({"default": stock}) == []


def test_replica_router_without_replicas_is_w005(tmp_path: Path) -> None:
    dbs = {"default": entry("sqlite")}
    msg = only(check_databases(dbs, [ROUTER_PATH]), "multipool.W005")
    assert msg.obj == "DATABASE_ROUTERS"
    assert "DATABASE_REPLICAS" in msg.hint
    assert check_databases(dbs, ["myapp.routers.Other"]) == []

    with_replicas = env_databases(
        source={
            "DATABASE_URL": f"sqlite:///{tmp_path}/a.sqlite3",
            "DATABASE_REPLICAS": "replica1",
            "REPLICA1_DATABASE_URL": f"sqlite:///{tmp_path}/b.sqlite3",
        },
        validate=False,
    )
    assert check_databases(with_replicas, [ROUTER_PATH]) == []

    class PrimaryReplicaRouter:  # matched by dotted path, also for router instances
        pass

    PrimaryReplicaRouter.__module__ = "multipool.routers"
    PrimaryReplicaRouter.__qualname__ = "PrimaryReplicaRouter"
    assert ids(check_databases(dbs, [PrimaryReplicaRouter()])) == ["multipool.W005"]


def test_replica_of_unknown_alias_is_e006() -> None:
    dbs = {"default": {**entry("sqlite"), "MULTIPOOL": {"replicas": ["ghost"]}}}
    msg = only(check_databases(dbs), "multipool.E006")
    assert "'ghost'" in msg.msg


@pytest.mark.parametrize(
    ("vendor", "options", "weak"),
    [
        ("postgresql", {}, True),
        ("postgresql", {"sslmode": "disable"}, True),
        ("postgresql", {"sslmode": "prefer"}, True),
        ("postgresql", {"sslmode": "require"}, True),
        ("postgresql", {"sslmode": "verify-ca", "sslrootcert": "system"}, False),
        ("postgresql", {"sslmode": "verify-full", "sslrootcert": "system"}, False),
        # libpq: require with a root CA verifies the chain, like verify-ca
        ("postgresql", {"sslmode": "require", "sslrootcert": "system"}, False),
        ("mysql", {"ssl_mode": "REQUIRED"}, True),
        ("mysql", {"ssl_mode": "VERIFY_IDENTITY", "ssl": {"ca": "/etc/ssl/ca.pem"}}, False),
        ("sqlite", {}, False),
    ],
)
def test_weak_tls_is_w101_on_deploy(vendor: str, options: dict[str, Any], weak: bool) -> None:
    messages = check_deployment({"default": entry(vendor, **options)})
    assert ids(messages) == (["multipool.W101"] if weak else [])
    if weak:
        assert "verify-full" in messages[0].hint


@pytest.mark.parametrize(
    ("options", "mode"),
    [
        # the issue's hand-written dict: multipool connects with ssl_mode=REQUIRED
        ({"ssl": {"ca": "/etc/ssl/ca.pem", "cert": "/etc/ssl/c.pem", "key": "/etc/ssl/c.key"}},
         "is not set (multipool connects with ssl_mode=REQUIRED)"),
        ({"ssl_mode": "REQUIRED", "ssl": {"ca": "/etc/ssl/ca.pem"}}, "is require"),
        ({"ssl_mode": "REQUIRED", "ssl": {"ca": "system"}}, "is require"),
    ],
)
def test_mysql_ca_without_host_name_check_is_w103(options: dict[str, Any], mode: str) -> None:
    """MariaDB Connector/C checks the chain against a given CA in any mode, but the
    host name only under VERIFY_CA / VERIFY_IDENTITY: not W101 (the certificate is
    verified), W103 (its host name is not)."""
    msg = only(check_deployment({"default": entry("mysql", **options)}), "multipool.W103")
    assert msg.msg == (
        f"DATABASES['default']['OPTIONS']['ssl']['ca'] is set but "
        f"DATABASES['default']['OPTIONS']['ssl_mode'] {mode}: the server's certificate is "
        "checked against that CA, but its host name is not, so any server with a "
        "certificate from that CA can pose as this one"
    )
    assert msg.hint == (
        "set DATABASES['default']['OPTIONS']['ssl_mode'] to verify-full (VERIFY_IDENTITY); "
        "the host in DATABASES['default']['HOST'] must then be one of the certificate's names"
    )
    assert msg.obj == "database alias 'default'"


def test_w103_names_the_environment_variables() -> None:
    dbs = env_databases(
        source={"DATABASE_URL": "mysql://app@db.internal/app", "DATABASE_SSLROOTCERT": "system"},
        validate=False,
    )
    msg = only(check_deployment(dbs), "multipool.W103")
    assert msg.msg.startswith(
        "DATABASE_SSLROOTCERT is set but DATABASE_SSLMODE is not set (multipool connects"
    )
    assert msg.hint.startswith("set DATABASE_SSLMODE to verify-full (VERIFY_IDENTITY); "
                               "the host in DATABASE_URL")


def test_what_is_verified_follows_the_mysql_client_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Connector/C (what Debian's packages build mysqlclient against) checks the host
    name under VERIFY_CA; MySQL's own libmysqlclient does not, and verifies nothing
    under REQUIRED."""
    from multipool.backends import verification

    verify_ca = entry("mysql", ssl_mode="VERIFY_CA", ssl={"ca": "/etc/ssl/ca.pem"})
    required = entry("mysql", ssl={"ca": "/etc/ssl/ca.pem"})
    monkeypatch.setattr(verification, "mysql_client_is_connector_c", lambda: True)
    assert check_deployment({"default": verify_ca}) == []
    assert ids(check_deployment({"default": required})) == ["multipool.W103"]
    monkeypatch.setattr(verification, "mysql_client_is_connector_c", lambda: False)
    assert ids(check_deployment({"default": verify_ca})) == ["multipool.W103"]
    msg = only(check_deployment({"default": required}), "multipool.W101")
    assert msg.msg.startswith(
        "TLS mode is require (ssl_mode=REQUIRED, as TLS settings are given) "
        "(DATABASES['default']['OPTIONS']['ssl_mode']): the server's certificate is not verified"
    )


def test_unix_socket_is_not_weak_tls() -> None:
    dbs = {"default": {**entry("postgresql"), "HOST": "/var/run/postgresql"}}
    assert check_deployment(dbs) == []


def test_password_written_in_settings_is_w102(monkeypatch: pytest.MonkeyPatch) -> None:
    safe = {"sslmode": "verify-full", "sslrootcert": "system"}
    dbs = {"default": {**entry(**safe), "PASSWORD": PASSWORD}}
    msg = only(check_deployment(dbs), "multipool.W102")
    assert "DATABASES['default']['PASSWORD']" in msg.msg
    assert "DATABASE_URL" in msg.hint
    assert PASSWORD not in str(msg)

    # Read from os.environ in a hand-written settings file: fine.
    monkeypatch.setenv("MY_DB_PASSWORD", PASSWORD)
    assert check_deployment(dbs) == []
    monkeypatch.delenv("MY_DB_PASSWORD")

    # From the environment through multipool.databases(): fine.
    from_env = env_databases(
        source={
            "DATABASE_URL": "postgresql://app:hunter22@db.internal/app",
            "DATABASE_SSLMODE": "verify-full",
            "DATABASE_SSLROOTCERT": "system",
        },
        validate=False,
    )
    assert check_deployment(from_env) == []


def test_checks_are_registered_by_the_app(tmp_path: Path) -> None:
    registered = django_checks.registry.registry.get_checks(include_deployment_checks=True)
    assert multipool_checks in registered
    assert multipool_deploy_checks in registered
    assert multipool_deploy_checks not in django_checks.registry.registry.get_checks()

    assert django_checks.run_checks(tags=["multipool"]) == []
    bad = entry(sslmode="require", sslrootcert=str(tmp_path / "missing.crt"))
    bad["PASSWORD"] = PASSWORD
    with registered_alias("badtls", bad):
        found = django_checks.run_checks(tags=["multipool"])
        assert ids(found) == ["multipool.E003"]
        deploy = django_checks.run_checks(tags=["multipool"], include_deployment_checks=True)
        assert sorted(ids(deploy)) == ["multipool.E003", "multipool.W102"]
        assert all(PASSWORD not in str(m) for m in deploy)


def test_manage_py_check_deploy_shows_multipool_warnings() -> None:
    env = {k: v for k, v in os.environ.items() if "DATABASE_" not in k}
    env["DATABASE_URL"] = f"postgresql://app:{PASSWORD.replace('@', '%40')}@127.0.0.1:1/app"
    env["DATABASE_SSLMODE"] = "require"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests/project/manage.py"), "check", "--deploy"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert "multipool.W101" in output
    assert "multipool.W102" not in output  # the password came from the environment
    assert PASSWORD not in output
    assert PASSWORD.replace("@", "%40") not in output


_BAD_SETTINGS = {
    "environment": ("DATABASES = multipool.databases()", {"DATABASE_POOL_SIZE": "lots"},
                    "DATABASE_POOL_SIZE"),
    "hand-written": (
        "DATABASES = {'default': {'ENGINE': 'multipool.backends.postgresql', 'NAME': 'app',"
        " 'OPTIONS': {'pool_size': 'lots'}}}", {}, "DATABASES['default']['OPTIONS']['pool_size']",
    ),
}


@pytest.mark.parametrize("way", sorted(_BAD_SETTINGS))
def test_a_bad_setting_is_a_check_error_not_a_traceback(way: str, tmp_path: Path) -> None:
    """A startproject-like project with a bad pool setting, from the environment or
    hand-written: ``manage.py check`` reports multipool.E001 with its hint (exit 1, no
    traceback); using the alias raises the same problem as ImproperlyConfigured."""
    databases_line, environ, setting = _BAD_SETTINGS[way]
    (tmp_path / "badsite.py").write_text(
        "import multipool\n"
        "SECRET_KEY = 'x'\n"
        "INSTALLED_APPS = ['django.contrib.contenttypes', 'django.contrib.auth', 'multipool']\n"
        f"{databases_line}\n"
    )
    env = {k: v for k, v in os.environ.items() if "DATABASE_" not in k}
    env.update(environ, DATABASE_URL="postgresql://app@127.0.0.1:1/app",
               DJANGO_SETTINGS_MODULE="badsite", PYTHONPATH=str(tmp_path))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)

    check = run("-m", "django", "check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "Traceback" not in check.stderr, check.stderr
    assert f"(multipool.E001) {setting}: 'lots' is not a whole number" in check.stderr
    assert "HINT: use a whole number of at least 1" in check.stderr
    use = run("-c", "import django; django.setup(); from django.db import connection\n"
                    "try:\n    connection.ensure_connection()\n"
                    "except Exception as exc:\n    print(type(exc).__mro__[1:4], exc)")
    assert use.returncode == 0, use.stderr
    assert "InvalidPoolSetting" not in use.stderr
    assert "ImproperlyConfigured" in use.stdout and setting in use.stdout


def test_the_error_examples_of_checks_md_are_what_the_checks_say(tmp_path: Path) -> None:
    """docs/checks.md shows one real message per error id (paths under /etc/db)."""
    certs = generate_dev_certs(tmp_path, clients=("app", "other"))
    cert, _ = certs.client("app")
    _, other_key = certs.client("other")
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    old_ca = make_ca()
    expired, expired_key = issue_cert(
        old_ca, "app", usage="client", not_before=start, not_after=start + dt.timedelta(days=30)
    )
    write_cert(tmp_path / "old-ca.crt", old_ca.cert)
    write_cert(tmp_path / "expired.crt", expired)
    write_key(tmp_path / "expired.key", expired_key)
    pg = "postgresql://app:pw@db.internal/app"
    verify = {"DATABASE_URL": pg, "DATABASE_SSLMODE": "verify-full",
              "DATABASE_SSLROOTCERT": str(certs.ca_cert)}
    cases = {
        "multipool.E001": {"DATABASE_URL": pg, "DATABASE_POOL_SIZE": "lots"},
        "multipool.E002": {"DATABASE_URL": pg, "DATABASE_SSLMODE": "verify-full"},
        "multipool.E003": {**verify, "DATABASE_SSLROOTCERT": "/etc/db/ca.crt"},
        "multipool.E004": {**verify, "DATABASE_SSLCERT": str(cert),
                           "DATABASE_SSLKEY": str(other_key)},
        "multipool.E005": {**verify, "DATABASE_SSLROOTCERT": str(tmp_path / "old-ca.crt"),
                           "DATABASE_SSLCERT": str(tmp_path / "expired.crt"),
                           "DATABASE_SSLKEY": str(tmp_path / "expired.key")},
    }
    page = (ROOT / "docs" / "checks.md").read_text()
    for check_id, env in cases.items():
        message = only(check_databases(env_databases(source=env, validate=False)), check_id)
        row = next(line for line in page.splitlines() if line.startswith(f"| `{check_id}`"))
        assert f"`{message.msg}`" in row, (check_id, message.msg)


def test_the_tls_deploy_examples_of_checks_md_are_what_the_checks_say() -> None:
    """W101 and W103 in docs/checks.md: the real message, and the real hint for W103."""
    weak = {"DATABASE_URL": "postgresql://app@db.internal/app", "DATABASE_SSLMODE": "require"}
    hand_written = {"default": {**entry("mysql", ssl={"ca": "/etc/db/ca.crt"}), "USER": "app"}}
    cases = {
        "multipool.W101": check_deployment(env_databases(source=weak, validate=False)),
        "multipool.W103": check_deployment(hand_written),
    }
    page = (ROOT / "docs" / "checks.md").read_text()
    for check_id, messages in cases.items():
        message = only(messages, check_id)
        row = next(line for line in page.splitlines() if line.startswith(f"| `{check_id}`"))
        assert f"`{message.msg}`" in row, (check_id, message.msg)
    assert f"`{cases['multipool.W103'][0].hint}`" in page
