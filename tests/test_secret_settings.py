"""``*_FILE`` variables, ``DATABASE_CREDENTIALS`` and ``ROTATION_CHECK`` as settings.

The spec records where a secret is (the file, the provider), never what it holds;
bad input is an error naming the alias and the variable; ``multipool config
--explain`` shows the file, never its content; the checks report files that cannot
be read (E009) and providers that cannot be imported (E010).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from multipool.checks import check_databases
from multipool.config import databases, read_environment, spec_from_settings, validate_spec
from multipool.config.explain import explain
from multipool.errors import (
    ConfigurationError,
    SecretFileError,
    TLSFileError,
)
from tests.test_tls import PASSPHRASE, PKI, pki  # noqa: F401  (fixture)

PG = "postgresql://app@db.internal:5432/app"


def secret_file(tmp_path: Path, content: str, name: str = "db-password", mode: int = 0o400) -> str:
    path = tmp_path / name
    path.write_text(content)
    path.chmod(mode)
    return str(path)


def env_error(environ: dict[str, str]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        read_environment(source=environ)
    return caught.value


# -- DATABASE_PASSWORD_FILE -----------------------------------------------------------------


def test_password_file_is_recorded_not_read_into_the_spec(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "s3cret\n", mode=0o444)  # Docker's secret mode is fine
    spec = read_environment(source={"DATABASE_URL": PG, "DATABASE_PASSWORD_FILE": path})["default"]
    assert spec.password is None
    assert spec.secrets.password_file == path
    assert spec.setting("password") == "DATABASE_PASSWORD_FILE"
    entry = spec.to_django()
    assert entry["PASSWORD"] == "" and "s3cret" not in repr(entry)
    assert entry["MULTIPOOL"]["password_file"] == path
    assert spec_from_settings("default", entry) == spec


def test_relative_file_paths_are_relative_to_the_project(tmp_path: Path) -> None:
    secret_file(tmp_path, "pw")
    spec = read_environment(
        source={"DATABASE_URL": PG, "DATABASE_PASSWORD_FILE": "db-password"}, base_dir=tmp_path
    )["default"]
    assert spec.secrets.password_file == str(tmp_path / "db-password")


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("\n", "is empty"),
        ("directory", "is a directory"),
    ],
)
def test_password_file_problems_name_alias_and_variable(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = str(tmp_path / "db-password")
    if content == "directory":
        os.mkdir(path)
    elif content is not None:
        secret_file(tmp_path, content)
    exc = env_error({"DATABASE_ALIASES": "orders", "DATABASE_URL": "sqlite://",
                     "ORDERS_DATABASE_URL": PG, "ORDERS_DATABASE_PASSWORD_FILE": path})
    assert isinstance(exc, SecretFileError)
    assert (exc.alias, exc.setting) == ("orders", "ORDERS_DATABASE_PASSWORD_FILE")
    assert problem in exc.problem and path in exc.problem


def test_unreadable_password_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "pw", mode=0o000)
    environ = {"DATABASE_URL": PG, "DATABASE_PASSWORD_FILE": path}
    if os.geteuid() != 0:
        exc = env_error(environ)
        assert isinstance(exc, SecretFileError) and "cannot be read" in exc.problem
        return
    # Root reads anything: read in a forked child that drops to an unprivileged user.
    tmp_path.chmod(0o755)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                read_environment(source=environ)
            except SecretFileError as exc:
                os.write(write_fd, f"{exc.setting}: {exc.problem}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert message.startswith("DATABASE_PASSWORD_FILE: ") and "cannot be read" in message


def test_password_in_the_url_and_a_password_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "pw")
    exc = env_error({"DATABASE_URL": "postgresql://app:pw@db/app", "DATABASE_PASSWORD_FILE": path})
    assert exc.setting == "DATABASE_PASSWORD_FILE"
    assert "DATABASE_URL" in exc.problem and "password" in exc.problem


def test_password_file_on_sqlite(tmp_path: Path) -> None:
    exc = env_error({"DATABASE_URL": "sqlite://",
                     "DATABASE_PASSWORD_FILE": secret_file(tmp_path, "pw")})
    assert exc.setting == "DATABASE_PASSWORD_FILE" and "SQLite" in exc.problem


def test_unvalidated_settings_do_not_read_the_password_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "not-yet")
    entry = databases(source={"DATABASE_URL": PG, "DATABASE_PASSWORD_FILE": missing},
                      validate=False)["default"]
    assert entry["MULTIPOOL"]["password_file"] == missing
    messages = check_databases({"default": entry})
    assert [m.id for m in messages] == ["multipool.E009"]
    assert messages[0].msg.startswith("DATABASE_PASSWORD_FILE: the password file")


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DATABASE_PASSWORD_FILE", "Hunter2-the-password-itself"),
        ("DATABASE_URL_FILE", "postgresql://app:Hunter2-in-a-url@db/app"),
        ("DATABASE_SSLKEY_FILE", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"),
    ],
)
def test_a_secret_given_instead_of_its_file_is_not_shown(variable: str, value: str) -> None:
    exc = env_error({"DATABASE_URL": PG, variable: value} if variable != "DATABASE_URL_FILE"
                    else {variable: value})
    assert exc.setting == variable and "value not shown" in exc.problem
    assert "Hunter2" not in str(exc) and "MIIEvQ" not in str(exc)


# -- DATABASE_URL_FILE -----------------------------------------------------------------------


def test_url_file_gives_the_server_and_keeps_no_password(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "postgresql://app:s3cret@db.internal:5433/shop?sslmode=require\n",
                       name="database-url")
    spec = read_environment(source={"DATABASE_URL_FILE": path})["default"]
    assert (spec.host, spec.port, spec.name, spec.user) == ("db.internal", 5433, "shop", "app")
    assert spec.tls.mode == "require"
    assert spec.password is None and spec.secrets.url_file == path
    assert spec.setting("host") == "DATABASE_URL_FILE"
    assert "s3cret" not in repr(spec.to_django())


def test_url_and_url_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path, PG, name="database-url")
    exc = env_error({"DATABASE_URL": PG, "DATABASE_URL_FILE": path})
    assert exc.setting == "DATABASE_URL_FILE" and "DATABASE_URL" in exc.problem


def test_url_file_of_a_replica(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "postgresql://app:pw@db-ro/app", name="replica-url")
    specs = read_environment(source={
        "DATABASE_URL": "postgresql://app:pw@db/app",
        "DATABASE_REPLICAS": "replica1",
        "REPLICA1_DATABASE_URL_FILE": path,
    })
    assert specs["replica1"].host == "db-ro" and specs["replica1"].secrets.url_file == path
    assert specs["default"].secrets.url_file is None  # the primary keeps its own URL


def test_url_file_that_cannot_be_parsed_is_not_shown(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "postgresql://app:p@ss:w0rd@db/app", name="database-url")
    exc = env_error({"DATABASE_URL_FILE": path})
    assert exc.setting == "DATABASE_URL_FILE" and "p@ss" not in str(exc)


# -- DATABASE_CREDENTIALS --------------------------------------------------------------------


def test_credentials_provider_is_recorded_not_imported() -> None:
    spec = read_environment(source={"DATABASE_URL": PG,
                                    "DATABASE_CREDENTIALS": "nowhere.at_all:token"})["default"]
    assert spec.secrets.credentials == "nowhere.at_all:token"
    assert spec.setting("password") == "DATABASE_CREDENTIALS"
    entry = spec.to_django()
    messages = check_databases({"default": entry})
    assert [m.id for m in messages] == ["multipool.E010"]
    assert "cannot be imported" in messages[0].msg


@pytest.mark.parametrize("value", ["token", "pkg.mod.token", "pkg:", "pkg mod:token"])
def test_credentials_must_name_a_callable(value: str) -> None:
    exc = env_error({"DATABASE_URL": PG, "DATABASE_CREDENTIALS": value})
    assert exc.setting == "DATABASE_CREDENTIALS" and "package.module:callable" in exc.problem


def test_credentials_and_a_password_file(tmp_path: Path) -> None:
    exc = env_error({"DATABASE_URL": PG, "DATABASE_CREDENTIALS": "a.b:c",
                     "DATABASE_PASSWORD_FILE": secret_file(tmp_path, "pw")})
    assert exc.setting == "DATABASE_CREDENTIALS" and "DATABASE_PASSWORD_FILE" in exc.problem


def test_the_checks_import_the_provider() -> None:
    entry = databases(source={"DATABASE_URL": PG,
                              "DATABASE_CREDENTIALS": "multipool.secrets.aws:rds_iam_token"})
    assert check_databases(entry) == []
    entry = databases(source={"DATABASE_URL": PG,
                              "DATABASE_CREDENTIALS": "multipool.secrets.aws:TOKEN_LIFETIME"})
    assert [m.id for m in check_databases(entry)] == ["multipool.E010"]


# -- SSL*_FILE ---------------------------------------------------------------------------------


def test_tls_file_variables_are_paths(pki: PKI) -> None:  # noqa: F811
    spec = read_environment(source={
        "DATABASE_URL": PG,
        "DATABASE_SSLMODE": "verify-full",
        "DATABASE_SSLROOTCERT_FILE": str(pki.ca),
        "DATABASE_SSLCERT_FILE": str(pki.cert),
        "DATABASE_SSLKEY_FILE": str(pki.key),
        "DATABASE_REPLICAS": "replica1",
        "REPLICA1_DATABASE_URL": PG,
    })
    tls = spec["default"].tls
    assert (tls.ca, tls.cert, tls.key) == (str(pki.ca), str(pki.cert), str(pki.key))
    assert spec["default"].setting("tls_key") == "DATABASE_SSLKEY_FILE"
    assert spec["replica1"].tls == tls  # inherited like the other TLS settings


def test_tls_file_and_plain_variable(pki: PKI) -> None:  # noqa: F811
    exc = env_error({"DATABASE_URL": PG, "DATABASE_SSLCERT": str(pki.cert),
                     "DATABASE_SSLCERT_FILE": str(pki.cert)})
    assert exc.setting == "DATABASE_SSLCERT_FILE" and "DATABASE_SSLCERT" in exc.problem


def test_tls_file_variable_takes_no_pem_text(pki: PKI) -> None:  # noqa: F811
    exc = env_error({"DATABASE_URL": PG, "DATABASE_SSLCERT_FILE": Path(pki.cert).read_text()})
    assert isinstance(exc, TLSFileError) and exc.setting == "DATABASE_SSLCERT_FILE"
    assert "BEGIN" not in str(exc)


def test_world_readable_key_file(pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    loose = tmp_path / "tls.key"
    loose.write_bytes(Path(pki.key).read_bytes())
    loose.chmod(0o644)
    exc = env_error({"DATABASE_URL": PG, "DATABASE_SSLCERT_FILE": str(pki.cert),
                     "DATABASE_SSLKEY_FILE": str(loose)})
    assert isinstance(exc, TLSFileError) and exc.setting == "DATABASE_SSLKEY_FILE"
    assert "readable by group or others" in exc.problem


# -- SSLPASSWORD_FILE ---------------------------------------------------------------------------


def test_key_passphrase_file_gives_the_passphrase(pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    cert, key = pki.client("enc", password=PASSPHRASE)
    path = secret_file(tmp_path, PASSPHRASE + "\n", name="key-passphrase")
    spec = read_environment(source={
        "DATABASE_URL": PG, "DATABASE_SSLMODE": "verify-full",
        "DATABASE_SSLROOTCERT": str(pki.ca), "DATABASE_SSLCERT": cert, "DATABASE_SSLKEY": key,
        "DATABASE_SSLPASSWORD_FILE": path,
        "DATABASE_REPLICAS": "replica1", "REPLICA1_DATABASE_URL": PG,
    })
    default = spec["default"]
    assert default.tls.key_password == PASSPHRASE  # the line ending is not part of it
    assert default.setting("tls_key_password") == "DATABASE_SSLPASSWORD_FILE"
    assert spec["replica1"].tls == default.tls  # inherited like the other TLS settings
    assert validate_spec(default) == []  # the key opens with it
    assert PASSPHRASE not in repr(default)


def test_wrong_passphrase_in_the_file_names_the_file_variable(
    pki: PKI, tmp_path: Path  # noqa: F811
) -> None:
    cert, key = pki.client("enc", password=PASSPHRASE)
    path = secret_file(tmp_path, "Not-The-Passphrase", name="key-passphrase")
    exc = env_error({
        "DATABASE_URL": PG, "DATABASE_SSLMODE": "verify-full", "DATABASE_SSLROOTCERT": str(pki.ca),
        "DATABASE_SSLCERT": cert, "DATABASE_SSLKEY": key, "DATABASE_SSLPASSWORD_FILE": path,
    })
    assert isinstance(exc, TLSFileError) and exc.setting == "DATABASE_SSLPASSWORD_FILE"
    assert "does not decrypt the client key" in exc.problem
    assert "Not-The-Passphrase" not in str(exc)


def test_key_passphrase_file_and_plain_variable(tmp_path: Path) -> None:
    exc = env_error({"DATABASE_URL": PG, "DATABASE_SSLPASSWORD": PASSPHRASE,
                     "DATABASE_SSLPASSWORD_FILE": secret_file(tmp_path, PASSPHRASE)})
    assert exc.setting == "DATABASE_SSLPASSWORD_FILE"
    assert "DATABASE_SSLPASSWORD is set too" in exc.problem
    assert PASSPHRASE not in str(exc)


def test_missing_key_passphrase_file(tmp_path: Path) -> None:
    exc = env_error({"DATABASE_URL": PG, "DATABASE_SSLPASSWORD_FILE": str(tmp_path / "missing")})
    assert isinstance(exc, SecretFileError) and exc.setting == "DATABASE_SSLPASSWORD_FILE"
    assert "does not exist" in exc.problem


def test_key_passphrase_file_variable_given_the_passphrase_itself() -> None:
    exc = env_error({"DATABASE_URL": PG, "DATABASE_SSLPASSWORD_FILE": PASSPHRASE})
    assert isinstance(exc, SecretFileError) and exc.setting == "DATABASE_SSLPASSWORD_FILE"
    assert PASSPHRASE not in str(exc)


@pytest.mark.parametrize("url", ["mysql://app@db.internal/app", "sqlite:///app.sqlite3"])
def test_key_passphrase_file_is_postgresql_only(tmp_path: Path, url: str) -> None:
    mode = {} if url.startswith("sqlite") else {"DATABASE_SSLMODE": "require"}
    exc = env_error({"DATABASE_URL": url, **mode,
                     "DATABASE_SSLPASSWORD_FILE": secret_file(tmp_path, PASSPHRASE)})
    assert "DATABASE_SSLPASSWORD_FILE" in str(exc)
    assert PASSPHRASE not in str(exc)


def test_rotation_check_setting() -> None:
    spec = read_environment(source={"DATABASE_URL": PG, "DATABASE_ROTATION_CHECK": "0.5"})
    assert spec["default"].pool.rotation_check == 0.5
    exc = env_error({"DATABASE_URL": PG, "DATABASE_ROTATION_CHECK": "soon"})
    assert exc.setting == "DATABASE_ROTATION_CHECK"


# -- explain ------------------------------------------------------------------------------------


def test_explain_shows_the_files_never_their_content(tmp_path: Path) -> None:
    password = secret_file(tmp_path, "s3cret-pw")
    url = secret_file(tmp_path, "postgresql://app:0ther-s3cret@db/app", name="replica-url")
    found = explain(source={
        "DATABASE_URL": PG,
        "DATABASE_PASSWORD_FILE": password,
        "DATABASE_REPLICAS": "replica1",
        "REPLICA1_DATABASE_URL_FILE": url,
    })
    rows: dict[str, Any] = {
        alias: {e.field: e for e in values} for alias, values in found.items()  # type: ignore[union-attr]
    }
    assert rows["default"]["password_file"].value == password
    assert rows["default"]["password_file"].setting == "DATABASE_PASSWORD_FILE"
    assert rows["default"]["password"].value == "(read from DATABASE_PASSWORD_FILE at each connect)"
    assert rows["replica1"]["url_file"].value == url
    assert rows["replica1"]["host"].setting == "REPLICA1_DATABASE_URL_FILE"
    assert rows["replica1"]["password"].value.startswith("(read from REPLICA1_DATABASE_URL_FILE")
    text = repr(found)
    assert "s3cret-pw" not in text and "0ther-s3cret" not in text
