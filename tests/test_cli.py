"""The ``multipool`` command and ``manage.py multipool_status``.

Most subcommands run in-process (``main(argv)`` with a patched environment and
a temporary working directory); the demo and the secret-masking checks of
failed connects run ``python -m multipool`` in a subprocess, as an operator
would. Commands that connect use the real TLS test servers. Every output is
checked for the ``app`` password, key passphrases and private-key PEM text.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization
from django.core.management import call_command

from multipool.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, Masker, main
from multipool.testing.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
WRONG_PASSWORD = "Wr0ng-p@ss:w%rd/+!"
PASSPHRASE = "k3y-Passphrase:#42"

Result = tuple[int, str, str]


def secret_forms(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), quote(secret), json.dumps(secret)[1:-1]]


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in secrets:
        for form in secret_forms(secret):
            assert form not in text, "a secret was printed"
    assert "PRIVATE KEY-----" not in text


def _clear(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if "DATABASE_" in key or key == "DJANGO_SETTINGS_MODULE":
            monkeypatch.delenv(key)


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Result]:
    """``cli("config", "--json", DATABASE_URL=...)`` -> (exit code, stdout, stderr), in-process."""
    monkeypatch.chdir(tmp_path)

    def invoke(*argv: str, **env: str) -> Result:
        _clear(monkeypatch)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if "DATABASE_" not in k and k != "DJANGO_SETTINGS_MODULE"
    }
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m multipool ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "multipool", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def password_of(server: Any) -> str:
    return str(server.users["app"].password)


def wrong_password_url(server: Any) -> str:
    good = server.url("app")
    return good.replace(quote(password_of(server), safe=""), quote(WRONG_PASSWORD, safe=""), 1)


def unreachable_url(server: Any) -> str:
    return server.url("app").replace(f":{server.port}/", f":{free_port()}/", 1)


# -- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["config"],
        ["check"],
        ["certs"],
        ["certs", "init"],
        ["budget"],
        ["demo"],
        ["status"],
        ["metrics"],
    ],
)
def test_every_subcommand_has_help(cli: Callable[..., Result], argv: list[str]) -> None:
    code, out, _ = cli(*argv, "--help")
    assert code == EXIT_OK
    assert "usage: multipool" in out
    assert "exit codes" in out or not argv or argv == ["certs"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["certs"],
        ["budget"],  # --workers and --hosts are required
        ["budget", "--workers", "2", "--hosts", "1", "--max-connections", "9", "--connect"],
        ["budget", "--workers", "0", "--hosts", "1"],
        ["demo", "--requests", "0"],
        ["config", "--alias", "ghost"],
    ],
)
def test_usage_errors_exit_2(cli: Callable[..., Result], argv: list[str]) -> None:
    code, _, err = cli(*argv)
    assert code == EXIT_USAGE
    assert err


def test_python_dash_m_and_version(tmp_path: Path) -> None:
    result = run("--version", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("multipool ")


def test_masker_masks_secret_variants_and_private_keys() -> None:
    masker = Masker()
    masker.add_environment(
        {
            "DATABASE_URL": f"postgresql://app:{quote(WRONG_PASSWORD, safe='')}@h/db",
            "DATABASE_SSLPASSWORD": PASSPHRASE,
            "HOME": "/root",
        }
    )
    text = (
        f"a {WRONG_PASSWORD} b {quote(WRONG_PASSWORD, safe='')} c {PASSPHRASE} /root "
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----"
    )
    masked = masker(text)
    assert_no_secrets(masked, WRONG_PASSWORD, PASSPHRASE)
    assert "MIGHAgEAMBMG" not in masked
    assert "/root" in masked
    assert "***" in masked


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "vendor", "label"),
    [
        ("multipool.backends.postgresql", "postgresql", "postgresql"),
        ("django.db.backends.mysql", "mysql", "mysql"),
        ("django.db.backends.sqlite3", "sqlite", "sqlite"),
        ("django.contrib.gis.db.backends.postgis", None, "postgis"),
        ("", None, "?"),
    ],
)
def test_vendor_comes_from_the_configuration(engine: str, vendor: str | None, label: str) -> None:
    """Vendor logic uses multipool.config.engine_vendor(); other engines get a display label."""
    from multipool.cli.sources import vendor_label, vendor_of

    assert vendor_of({"ENGINE": engine}) == vendor
    assert vendor_label({"ENGINE": engine}) == label


def test_config_default_is_embedded_sqlite(cli: Callable[..., Result]) -> None:
    code, out, _ = cli("config")
    assert code == EXIT_OK
    assert "source: environment" in out
    line = next(x for x in out.splitlines() if x.startswith("default"))
    assert "sqlite" in line
    assert "db.sqlite3" in line
    code, out, _ = cli("config", "--json")
    data = json.loads(out)
    (alias,) = data["aliases"]
    assert alias["alias"] == "default"
    assert alias["vendor"] == "sqlite"
    assert alias["pooled"] is True
    assert alias["tls"] is None


def test_config_shows_every_alias_without_password(cli: Callable[..., Result], server: Any) -> None:
    env = {
        "DATABASE_URL": server.url("app"),
        "DATABASE_POOL_SIZE": "7",
        "DATABASE_MAX_OVERFLOW": "2",
        "DATABASE_REPLICAS": "replica1",
        "REPLICA1_DATABASE_URL": server.url("app"),
    }
    code, out, err = cli("config", **env)
    assert code == EXIT_OK, err
    assert_no_secrets(out + err, password_of(server))
    rows = {x.split()[0]: x for x in out.splitlines()[3:] if x and not x.startswith("POOL")}
    assert "primary" in rows["default"]
    assert "replica of default" in rows["replica1"]
    assert "***" in rows["default"]
    assert "7+2" in rows["default"]
    assert "7+2" in rows["replica1"]  # inherited from the primary
    assert "verify-full" in rows["default"]
    assert str(server.certs.ca_cert) in rows["default"]

    code, out, err = cli("config", "--json", **env)
    assert code == EXIT_OK
    assert_no_secrets(out + err, password_of(server))
    data = {a["alias"]: a for a in json.loads(out)["aliases"]}
    default = data["default"]
    assert default["password"] == "***"
    assert default["user"] == "app"
    assert default["host"] == server.host
    assert default["port"] == server.port
    assert default["engine"] == f"multipool.backends.{server.engine.replace('sqlite', 'sqlite3')}"
    assert default["pool"]["size"] == 7
    # every pool setting, under PoolSpec's names
    from multipool.config import PoolSpec

    assert set(default["pool"]) == set(PoolSpec.__dataclass_fields__)
    assert default["pool"]["reset"] == "transaction"
    assert default["pool"]["poll_idle"] == 0.001
    assert default["pool"]["overflow_idle"] == 30.0
    assert default["tls"]["mode"] == "verify-full"
    assert default["tls"]["client_cert"] is False
    assert default["replicas"] == ["replica1"]
    assert data["replica1"]["role"] == "replica of default"


def test_config_error_exits_2_with_the_variable(cli: Callable[..., Result]) -> None:
    code, out, err = cli(
        "config", DATABASE_URL="postgresql://app:hunter22@db/app", DATABASE_POOL_SIZE="lots"
    )
    assert code == EXIT_USAGE
    assert "DATABASE_POOL_SIZE" in err
    assert_no_secrets(out + err, "hunter22")


# -- check ------------------------------------------------------------------------------------


def test_check_without_problems(cli: Callable[..., Result]) -> None:
    code, out, _ = cli("check")
    assert code == EXIT_OK
    assert "no issues" in out


def test_check_reports_tls_file_errors_with_exit_1(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    env = {
        "DATABASE_URL": "postgresql://app:hunter22@db.internal/app",
        "DATABASE_SSLMODE": "verify-full",
        "DATABASE_SSLROOTCERT": str(tmp_path / "missing-ca.crt"),
    }
    code, out, err = cli("check", **env)
    assert code == EXIT_PROBLEMS
    assert "multipool.E003" in out
    assert "DATABASE_SSLROOTCERT" in out
    assert "HINT" in out
    assert_no_secrets(out + err, "hunter22")
    code, out, _ = cli("check", "--json", **env)
    assert code == EXIT_PROBLEMS
    data = json.loads(out)
    assert [m["id"] for m in data["messages"]] == ["multipool.E003"]
    assert data["ok"] is False


@pytest.mark.parametrize("alias", ["default", "replica1"])
def test_check_one_alias_of_a_primary_with_a_replica(
    cli: Callable[..., Result], tmp_path: Path, alias: str
) -> None:
    """``--alias`` reports on that alias only; its replica or primary still counts."""
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}",
        "DATABASE_REPLICAS": "replica1",
        "REPLICA1_DATABASE_URL": f"sqlite:///{tmp_path / 'r.sqlite3'}",
    }
    code, out, err = cli("check", "--alias", alias, **env)
    assert code == EXIT_OK, out + err
    assert "no issues" in out and "E006" not in out


def test_check_respects_silenced_system_checks(tmp_path: Path) -> None:
    """As ``manage.py check`` does (a subprocess: the project's own settings)."""
    (tmp_path / "silencing.py").write_text(
        "import multipool\nSECRET_KEY = 'x'\nINSTALLED_APPS = ['multipool']\n"
        "DATABASES = multipool.databases()\n"
        "SILENCED_SYSTEM_CHECKS = ['multipool.W101']\n"
    )
    env = clean_env(
        DATABASE_URL="postgresql://app:hunter22@db.internal/app?sslmode=require",
        PYTHONPATH=str(tmp_path),
    )
    args = ("check", "--deploy", "--fail-level", "WARNING")
    loud = run(*args, env=env, cwd=tmp_path)
    assert loud.returncode == EXIT_PROBLEMS and "multipool.W101" in loud.stdout, loud
    quiet = run(*args, env={**env, "DJANGO_SETTINGS_MODULE": "silencing"}, cwd=tmp_path)
    assert quiet.returncode == EXIT_OK, quiet.stdout + quiet.stderr
    assert "Django settings silencing" in quiet.stdout and "W101" not in quiet.stdout


def test_check_deploy_and_fail_level(cli: Callable[..., Result]) -> None:
    env = {"DATABASE_URL": "postgresql://app:hunter22@db.internal/app?sslmode=require"}
    code, out, _ = cli("check", **env)
    assert code == EXIT_OK
    assert "W101" not in out
    code, out, err = cli("check", "--deploy", **env)
    assert code == EXIT_OK  # warnings only
    assert "multipool.W101" in out
    code, out, err = cli("check", "--deploy", "--fail-level", "WARNING", **env)
    assert code == EXIT_PROBLEMS
    assert_no_secrets(out + err, "hunter22")


def test_check_connect_reports_server_version_tls_and_rtt(
    cli: Callable[..., Result], server: Any
) -> None:
    code, out, err = cli("check", "--connect", DATABASE_URL=server.url("app"))
    assert code == EXIT_OK, out + err
    assert_no_secrets(out + err, password_of(server))
    line = next(x for x in out.splitlines() if x.startswith("default "))
    assert " ok " in line
    assert "TLSv1." in line
    assert " verified " in line  # verify-full: the driver checked the host name
    assert " ms" in line
    assert "HOST NAME" in out

    code, out, err = cli("check", "--connect", "--json", DATABASE_URL=server.url("app"))
    assert code == EXIT_OK
    (probe,) = json.loads(out)["connections"]
    assert probe["ok"] is True
    assert probe["host_name_verified"] is True
    assert "note" not in probe
    assert probe["tls_protocol"] in ("TLSv1.2", "TLSv1.3")
    assert probe["tls_cipher"]
    assert probe["rtt_seconds"] > 0
    assert probe["connect_seconds"] > 0
    assert server.version.split("-")[0] in probe["server"]
    assert ("PostgreSQL" if server.engine == "postgresql" else "M") in probe["server"]


def test_check_connect_without_tls_says_so(
    cli: Callable[..., Result], postgres_server: Any
) -> None:
    url = postgres_server.url("plain", tls="disable")
    code, out, _ = cli("check", "--connect", "--json", DATABASE_URL=url)
    assert code == EXIT_OK
    (probe,) = json.loads(out)["connections"]
    assert probe["ok"] is True
    assert probe["tls_protocol"] is None
    assert probe["host_name_verified"] is None
    code, out, _ = cli("check", "--connect", DATABASE_URL=url)
    line = next(x for x in out.splitlines() if x.startswith("default "))
    assert " none " in line
    assert "verified" not in line


def test_check_connect_says_when_the_host_name_was_not_verified(
    cli: Callable[..., Result], server: Any
) -> None:
    """A CA without a mode that checks host names: TLS, the chain verified, the host
    name not. The note says whether the certificate would pass verify-full."""
    from tests.test_servers import serving_cert, wrong_host_cert

    bare = server.url("app").split("?")[0]
    env = {"DATABASE_URL": bare, "DATABASE_SSLROOTCERT": str(server.certs.ca_cert)}
    if server.engine == "postgresql":
        env["DATABASE_SSLMODE"] = "require"  # libpq: with a root CA, like verify-ca
    mode = "require" if server.engine == "postgresql" else "not set (REQUIRED)"
    expected = (
        f"default: the host name was not verified (DATABASE_SSLMODE is {mode}); "
        f"the server's certificate names {server.host!r}, as verify-full requires"
    )
    code, out, err = cli("check", "--connect", **env)
    assert code == EXIT_OK, out + err
    line = next(x for x in out.splitlines() if x.startswith("default "))
    assert " not verified " in line
    assert expected in out.splitlines()
    with serving_cert(server, *wrong_host_cert(server)):
        code, out, err = cli("check", "--connect", "--json", **env)
    assert code == EXIT_OK, out + err
    (probe,) = json.loads(out)["connections"]
    assert probe["host_name_verified"] is False
    assert probe["note"].endswith(
        f"the server's certificate is for 'wrong.example', not {server.host!r}: "
        "verify-full would refuse it"
    )
    assert_no_secrets(out + err, password_of(server))


@pytest.mark.parametrize("failure", ["wrong password", "unreachable port"])
def test_failed_connect_exit_1_and_nothing_secret(
    cli: Callable[..., Result], server: Any, tmp_path: Path, failure: str
) -> None:
    url = wrong_password_url(server) if failure == "wrong password" else unreachable_url(server)
    env = clean_env(DATABASE_URL=url)
    result = run("check", "--connect", "--timeout", "5", env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_PROBLEMS, output
    assert "FAILED" in result.stdout
    explained = (
        "AuthenticationFailed: database alias 'default', setting DATABASE_URL: the server "
        "refused the" if failure == "wrong password" else
        "ServerUnreachable: database alias 'default', setting DATABASE_URL: nothing accepts "
        f"connections at {server.host}:"
    )
    assert f"default: connect failed: {explained}" in result.stderr
    assert_no_secrets(output, WRONG_PASSWORD, password_of(server))

    code, out, err = cli("budget", "--workers", "2", "--hosts", "1", "--connect", DATABASE_URL=url)
    assert code == EXIT_PROBLEMS
    assert "connect failed" in err
    assert_no_secrets(out + err, WRONG_PASSWORD, password_of(server))

    result = run("demo", "--requests", "5", env=env, cwd=tmp_path)
    assert result.returncode == EXIT_PROBLEMS
    assert "cannot connect" in result.stderr
    assert_no_secrets(result.stdout + result.stderr, WRONG_PASSWORD, password_of(server))


def _encrypted_key(key_path: Path, target: Path) -> Path:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    target.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
    )
    target.chmod(0o600)
    return target


def test_key_passphrase_and_private_key_never_printed(
    cli: Callable[..., Result], postgres_server: Any, tmp_path: Path
) -> None:
    server = postgres_server
    cert, key = server.certs.client("certuser")
    encrypted = _encrypted_key(Path(key), tmp_path / "certuser-encrypted.key")
    env = {
        "DATABASE_URL": server.url("certuser"),
        "DATABASE_SSLCERT": str(cert),
        "DATABASE_SSLKEY": str(encrypted),
        "DATABASE_SSLPASSWORD": PASSPHRASE,
    }
    for argv in (["config"], ["config", "--json"], ["check", "--connect", "--deploy"]):
        code, out, err = cli(*argv, **env)
        assert code == EXIT_OK, out + err
        assert_no_secrets(out + err, PASSPHRASE)
    # certuser logs in with the client certificate only: the encrypted key worked.
    assert " ok " in next(x for x in out.splitlines() if x.startswith("default "))

    # A wrong passphrase: reported (E003, naming the variable), never shown.
    code, out, err = cli("check", **{**env, "DATABASE_SSLPASSWORD": "Not-The-Passphrase"})
    assert code == EXIT_PROBLEMS
    assert "DATABASE_SSLPASSWORD" in out
    assert_no_secrets(out + err, PASSPHRASE, "Not-The-Passphrase")

    # The key given as PEM text in the environment: never echoed.
    pem = Path(key).read_text()
    body = pem.strip().splitlines()[1]
    env = {"DATABASE_URL": server.url("certuser"), "DATABASE_SSLCERT": str(cert)}
    for argv in (["config", "--json"], ["check", "--connect"]):
        code, out, err = cli(*argv, **env, DATABASE_SSLKEY=pem)
        assert code == EXIT_OK, out + err
        assert body not in out + err
        assert_no_secrets(out + err)


def test_key_passphrase_from_a_file(
    cli: Callable[..., Result], postgres_server: Any, tmp_path: Path
) -> None:
    """``DATABASE_SSLPASSWORD_FILE``: the server accepts the encrypted key it opens;
    the passphrase is never printed, and a wrong one is reported naming the variable."""
    server = postgres_server
    cert, key = server.certs.client("certuser")
    encrypted = _encrypted_key(Path(key), tmp_path / "certuser-encrypted.key")
    passphrase = tmp_path / "key-passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    passphrase.chmod(0o400)
    env = {
        "DATABASE_URL": server.url("certuser"),
        "DATABASE_SSLCERT": str(cert),
        "DATABASE_SSLKEY": str(encrypted),
        "DATABASE_SSLPASSWORD_FILE": str(passphrase),
    }
    for argv in (["config", "--json"], ["check", "--connect"]):
        code, out, err = cli(*argv, **env)
        assert code == EXIT_OK, out + err
        assert_no_secrets(out + err, PASSPHRASE)
    # certuser logs in with the client certificate only: the encrypted key worked.
    assert " ok " in next(x for x in out.splitlines() if x.startswith("default "))

    passphrase.chmod(0o600)
    passphrase.write_text("Not-The-Passphrase")
    code, out, err = cli("check", **env)
    assert code == EXIT_PROBLEMS
    assert "DATABASE_SSLPASSWORD_FILE" in out
    assert_no_secrets(out + err, PASSPHRASE, "Not-The-Passphrase")


# -- certs ------------------------------------------------------------------------------------


def test_certs_init_creates_and_never_overwrites_silently(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    code, out, err = cli("certs", "init", "--host", "db.internal", "--client", "app")
    assert code == EXIT_OK, err
    directory = tmp_path / "certs"
    names = sorted(p.name for p in directory.iterdir())
    assert names == [
        "ca.crt",
        "ca.key",
        "client-app.crt",
        "client-app.key",
        "server.crt",
        "server.key",
    ]
    for name in names:
        assert name in out
        mode = (directory / name).stat().st_mode & 0o777
        assert mode == (0o600 if name.endswith(".key") else 0o644)
    assert "DATABASE_SSLROOTCERT" in out
    before = {n: (directory / n).read_bytes() for n in names}
    assert_no_secrets(out + err)
    for data in before.values():
        assert data.decode() not in out

    code, out, err = cli("certs", "init")
    assert code == EXIT_PROBLEMS
    assert "--force" in err and "multipool certs client certs USER" in err
    assert "overwrite=True" not in err  # the Python argument is not the CLI's way
    assert {n: (directory / n).read_bytes() for n in names} == before

    code, out, err = cli("certs", "init", "--force", "--client", "app", "--json")
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["overwritten"] is True
    assert {Path(f["path"]).name for f in data["files"]} == set(names)
    assert (directory / "ca.key").read_bytes() != before["ca.key"]
    assert_no_secrets(out + err)

    code, out, _ = cli("certs", "init", str(tmp_path / "other"), "--days", "30")
    assert code == EXIT_OK
    assert (tmp_path / "other" / "ca.crt").exists()


def test_certs_client_adds_a_client_certificate_to_an_existing_ca(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    from cryptography import x509

    code, _, err = cli("certs", "init", "--client", "app")
    assert code == EXIT_OK, err
    directory = tmp_path / "certs"
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    code, out, err = cli("certs", "client", "certs", "bob", "carol")
    assert code == EXIT_OK, err
    after = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert set(after) - set(before) == {
        "client-bob.crt", "client-bob.key", "client-carol.crt", "client-carol.key"
    }
    assert all(after[name] == data for name, data in before.items())  # nothing else changed
    ca = x509.load_pem_x509_certificate(before["ca.crt"])
    bob = x509.load_pem_x509_certificate(after["client-bob.crt"])
    bob.verify_directly_issued_by(ca)
    assert bob.subject.rfc4514_string() == "CN=bob"
    assert (directory / "client-bob.key").stat().st_mode & 0o777 == 0o600
    assert_no_secrets(out + err)

    code, _, err = cli("certs", "client", "certs", "bob")
    assert code == EXIT_PROBLEMS and "--force" in err
    assert (directory / "client-bob.crt").read_bytes() == after["client-bob.crt"]
    code, _, err = cli("certs", "client", "certs", "bob", "--force")
    assert code == EXIT_OK, err
    assert (directory / "client-bob.crt").read_bytes() != after["client-bob.crt"]

    code, _, err = cli("certs", "client", str(tmp_path / "empty"), "bob")
    assert code == EXIT_USAGE and "no CA to sign with" in err


# -- budget -----------------------------------------------------------------------------------


def test_budget_against_a_given_limit(cli: Callable[..., Result]) -> None:
    env = {
        "DATABASE_URL": "postgresql://app:hunter22@db.internal/app",
        "DATABASE_POOL_SIZE": "5",
        "DATABASE_MAX_OVERFLOW": "5",
        "DATABASE_ALIASES": "legacy",
        "LEGACY_DATABASE_URL": "mysql://app:hunter22@mysql.internal/app",
        "LEGACY_DATABASE_POOL_SIZE": "2",
        "LEGACY_DATABASE_MAX_OVERFLOW": "0",
    }
    # 4 workers x 2 hosts = 8 processes: PostgreSQL 8 x 10 = 80, MySQL 8 x 2 = 16,
    # plus one connection per alias for each host's pre-fork master: 82 and 18.
    code, out, err = cli(
        "budget", "--workers", "4", "--hosts", "2", "--max-connections", "100", **env
    )
    assert code == EXIT_OK, err
    assert "82" in out and "18" in out
    assert "+ 2 pre-fork masters" in out
    code, out, err = cli(
        "budget", "--workers", "4", "--hosts", "2", "--max-connections", "100",
        "--no-master", "--json", **env
    )
    assert {s["vendor"]: s["demand"] for s in json.loads(out)["servers"]} == {
        "postgresql": 80, "mysql": 16
    }
    code, out, err = cli(
        "budget", "--workers", "4", "--hosts", "2", "--max-connections", "50", "--json", **env
    )
    assert code == EXIT_PROBLEMS
    data = json.loads(out)
    assert data["over_budget"] is True and data["masters"] == 2
    servers = {s["vendor"]: s for s in data["servers"]}
    assert servers["postgresql"]["demand"] == 82
    assert servers["postgresql"]["status"] == "OVER"
    assert servers["mysql"]["demand"] == 18
    assert servers["mysql"]["status"] == "ok"
    code, out, err = cli(
        "budget", "--workers", "4", "--hosts", "2", "--max-connections", "50", **env
    )
    assert code == EXIT_PROBLEMS
    assert "over budget" in out
    assert "DATABASE_POOL_SIZE=3" in out  # (50 - 2 masters) // 8 = 6 per process: 3 + 3
    assert "PgBouncer" in out
    assert "ProxySQL" not in out  # MySQL is within budget
    code, out, err = cli(
        "budget", "--workers", "40", "--hosts", "2", "--max-connections", "50", **env
    )
    assert code == EXIT_PROBLEMS
    assert "ProxySQL" in out
    assert "even one connection per process is too many" in out
    assert_no_secrets(out + err, "hunter22")


def test_budget_counts_every_spelling_of_this_machine_as_one_server(
    cli: Callable[..., Result],
) -> None:
    env = {
        "DATABASE_URL": "postgresql://app@localhost:5432/app",
        "DATABASE_ALIASES": "other,third,remote",
        "OTHER_DATABASE_URL": "postgresql://app@127.0.0.1:5432/app",
        "THIRD_DATABASE_URL": "postgresql://app@[::1]:5432/app",
        "REMOTE_DATABASE_URL": "postgresql://app@DB.internal:5432/app",
    }
    code, out, err = cli("budget", "--workers", "1", "--hosts", "1", "--json", **env)
    assert code == EXIT_OK, err
    servers = {s["server"]: s["aliases"] for s in json.loads(out)["servers"]}
    assert servers == {
        "postgresql://localhost:5432": ["default", "other", "third"],
        "postgresql://db.internal:5432": ["remote"],
    }


def test_budget_skips_sqlite_and_counts_threads_when_unpooled(
    cli: Callable[..., Result],
) -> None:
    code, out, _ = cli("budget", "--workers", "2", "--hosts", "1")
    assert code == EXIT_OK
    assert "SQLite is embedded" in out
    env = {"DATABASE_URL": "postgresql://db/app", "DATABASE_POOL": "false"}
    code, out, _ = cli(
        "budget", "--workers", "2", "--hosts", "3", "--threads", "8", "--json", **env
    )
    (alias,) = json.loads(out)["aliases"]
    assert alias["pooled"] is False
    assert alias["fleet"] == 2 * 3 * 8 + 3  # and one for each host's pre-fork master


def test_budget_reads_the_live_server_limit(cli: Callable[..., Result], server: Any) -> None:
    if server.engine == "postgresql":
        maximum = int(server.query("SHOW max_connections")[0][0])
        reserved = int(server.query("SHOW superuser_reserved_connections")[0][0])
        available = maximum - reserved
    else:
        maximum = available = int(server.query("SELECT @@max_connections")[0][0])
    env = {
        "DATABASE_URL": server.url("app"),
        "DATABASE_POOL_SIZE": "3",
        "DATABASE_MAX_OVERFLOW": "2",
    }
    code, out, err = cli("budget", "--workers", "2", "--hosts", "1", "--connect", "--json", **env)
    assert code == EXIT_OK, out + err
    (info,) = json.loads(out)["servers"]
    assert info["max_connections"] == maximum
    assert info["available"] == available
    assert info["demand"] == 2 * 5 + 1  # and the pre-fork master's one
    assert info["status"] == "ok"
    workers = available // 5 + 1  # one process too many
    code, out, err = cli("budget", "--workers", str(workers), "--hosts", "1", "--connect", **env)
    assert code == EXIT_PROBLEMS
    assert "over budget" in out
    assert ("PgBouncer" if server.engine == "postgresql" else "ProxySQL") in out
    assert_no_secrets(out + err, password_of(server))


# -- demo -----------------------------------------------------------------------------------------


def test_demo_with_nothing_configured(tmp_path: Path) -> None:
    result = run("demo", env=clean_env(), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_OK, output
    assert result.stdout.startswith("source: Django configured by multipool")
    assert f"sqlite {tmp_path / 'db.sqlite3'}" in result.stdout
    for label in ("pooled", "new connection per request", "requests/s", "connects", "latency"):
        assert label in result.stdout
    assert "final pool stats" in result.stdout
    assert "[#" not in result.stderr  # no progress bar: stderr is not a terminal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite3"]

    result = run(
        "demo", "--requests", "60", "--threads", "3", "--json", env=clean_env(), cwd=tmp_path
    )
    assert result.returncode == EXIT_OK, result.stderr
    data = json.loads(result.stdout)
    (alias,) = data["aliases"]
    assert alias["alias"] == "default"
    assert alias["unpooled"]["requests"] == alias["pooled"]["requests"] == 60
    assert alias["unpooled"]["connects"] == 60
    assert 1 <= alias["pooled"]["connects"] <= 3
    assert alias["pooled"]["checkouts"] == 60
    assert alias["pooled"]["requests_per_second"] > 0
    assert alias["pool_stats"]["checked_out"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.sqlite3"]


def test_demo_against_a_server(server: Any, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=server.url("app"), DATABASE_POOL_SIZE="2")
    result = run("demo", "--requests", "40", "--threads", "4", "--json", env=env, cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert_no_secrets(result.stdout + result.stderr, password_of(server))
    (alias,) = json.loads(result.stdout)["aliases"]
    unpooled, pooled = alias["unpooled"], alias["pooled"]
    # Server-side session ids: one per request without the pool, a few with it.
    assert unpooled["server_sessions"] == unpooled["connects"] == 40
    assert 1 <= pooled["server_sessions"] <= 4
    assert pooled["connects"] == pooled["server_sessions"]
    assert alias["pool_stats"]["max_overflow"] == 5
    assert alias["speedup"] > 1

    result = run("demo", "--requests", "8", env=env, cwd=tmp_path)
    assert result.returncode == EXIT_OK
    assert "server sessions" in result.stdout
    assert_no_secrets(result.stdout + result.stderr, password_of(server))
    assert list(tmp_path.iterdir()) == []


def test_demo_uses_the_django_settings_module(tmp_path: Path) -> None:
    env = clean_env(
        DJANGO_SETTINGS_MODULE="tests.project.settings",
        PYTHONPATH=str(ROOT),
        DATABASE_URL=f"sqlite:///{tmp_path}/project.sqlite3",
    )
    result = run("demo", "--requests", "20", "--threads", "2", env=env, cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert "Django settings tests.project.settings" in result.stdout
    assert "project.sqlite3" in result.stdout


# -- status ---------------------------------------------------------------------------------------


@pytest.fixture
def used_alias(make_alias: Callable[..., Any]) -> Iterator[Any]:
    conn = make_alias(POOL_SIZE="2", MAX_OVERFLOW="1")
    for _ in range(3):
        conn.ensure_connection()
        conn.close()
    yield conn


def test_management_command_shows_live_pool_stats(used_alias: Any) -> None:
    out = io.StringIO()
    call_command("multipool_status", "--json", stdout=out)
    rows = {r["alias"]: r for r in json.loads(out.getvalue())["aliases"]}
    row = rows[used_alias.alias]
    assert row["state"] == "active"
    assert row["pool_size"] == 2
    assert row["max_overflow"] == 1
    assert row["connects"] == 1
    assert row["checkouts"] >= 3
    assert row["checked_out"] == 0
    assert rows["default"]["vendor"] == "sqlite"

    out = io.StringIO()
    call_command("multipool_status", stdout=out)
    line = next(x for x in out.getvalue().splitlines() if x.startswith(used_alias.alias))
    assert "active" in line


@pytest.mark.parametrize("value", ["no", "off", "false", "0", False, 0])
def test_pool_status_reads_pool_enabled_as_the_configuration_does(
    value: object, tmp_path: Path
) -> None:
    """``pool_enabled="no"`` turns the pool off, so the status says so (not "no pool yet")."""
    from multipool.status import pool_status

    def entry(engine: str, **options: object) -> dict[str, Any]:
        return {"ENGINE": engine, "NAME": str(tmp_path / "db.sqlite3"), "OPTIONS": options}

    databases = {
        "status_off": entry("multipool.backends.sqlite3", pool_enabled=value),
        "status_on": entry("multipool.backends.sqlite3", pool_enabled="yes"),
        "status_bad": entry("multipool.backends.sqlite3", pool_enabled="maybe"),
        "status_stock": entry("django.db.backends.sqlite3"),
    }
    states = {r["alias"]: r["state"] for r in pool_status(databases) if r["alias"] in databases}
    assert states == {
        "status_off": "pool disabled",
        "status_on": "no pool yet",
        "status_bad": "invalid settings",
        "status_stock": "not pooled",
    }


def test_status_subcommand_and_connect_option(cli: Callable[..., Result], used_alias: Any) -> None:
    code, out, _ = cli("status", "--json")
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["source"] == "environment"
    rows = {r["alias"]: r for r in data["aliases"]}
    assert rows[used_alias.alias]["state"] == "active"
    code, out, _ = cli("status")
    assert out.splitlines()[0] == "source: environment"

    out_buffer = io.StringIO()
    call_command("multipool_status", "--connect", stdout=out_buffer)
    assert "default" in out_buffer.getvalue()


def test_config_shows_pem_text_by_its_variable(
    cli: Callable[..., Result], postgres_server: Any
) -> None:
    """PEM text given in a variable is shown as ``(PEM text from VAR)``, never the text."""
    cert, key = postgres_server.certs.client("certuser")
    env = {
        "DATABASE_URL": postgres_server.url("certuser", client_cert=False),
        "DATABASE_SSLCERT": cert.read_text(),
        "DATABASE_SSLKEY": key.read_text(),
    }
    code, out, err = cli("config", "--json", **env)
    assert code == EXIT_OK, err
    tls = json.loads(out)["aliases"][0]["tls"]
    assert tls["cert"] == "(PEM text from DATABASE_SSLCERT)"
    assert tls["key"] == "(PEM text from DATABASE_SSLKEY)"
    assert "PRIVATE KEY" not in out + err


def test_console_script_finds_the_project_in_the_current_directory(tmp_path: Path) -> None:
    """``multipool check`` in a project directory finds ``DJANGO_SETTINGS_MODULE``
    there, as ``manage.py`` does, without ``PYTHONPATH=.``."""
    script = Path(sys.executable).with_name("multipool")
    if not script.exists():
        pytest.skip("the console script is installed by pip install -e .")
    package = tmp_path / "mysite"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(
        "import multipool\nSECRET_KEY = 'x'\nINSTALLED_APPS = ['multipool']\n"
        "DATABASES = multipool.databases()\n"
    )
    env = clean_env(DJANGO_SETTINGS_MODULE="mysite.settings")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(script), "check"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert result.stdout.startswith("source: Django settings mysite.settings")
