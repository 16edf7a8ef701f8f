"""``manage.py dbshell`` logs in with the CA, certificate and key given as PEM text.

On Linux that text lives in in-memory files (``/proc/self/fd/N``) whose
descriptors are closed on ``exec``: the shell gets exactly those passed on, and
logs in as ``certuser``, which the server admits by its certificate only.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from django.core.management import call_command

from multipool.backends.client import pem_descriptors
from multipool.config import databases
from multipool.tls import pem
from tests.conftest import patched_environ, registered_alias
from tests.reliability.test_secrets import certuser_environment

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not pem.use_memfd, reason="no memfd_create on this system"),
]

ALIAS = "shell"


def shell_entry(server: Any) -> dict[str, Any]:
    environ = {
        name.replace("DATABASE_", "SHELL_DATABASE_", 1): value
        for name, value in certuser_environment(server).items()
    }
    with patched_environ(environ):
        return databases(DATABASE_ALIASES=ALIAS)[ALIAS]


def query(server: Any) -> list[str]:
    if server.engine == "postgresql":
        return ["-X", "-A", "-t", "-c", "SELECT current_user"]
    return ["--batch", "--skip-column-names", "-e", "SELECT CURRENT_USER()"]


def test_dbshell_reads_the_in_memory_files(server: Any, capfd: pytest.CaptureFixture[str]) -> None:
    with registered_alias(ALIAS, shell_entry(server)) as connection:
        assert len(pem_descriptors(connection.settings_dict)) == 3  # CA, certificate, key
        call_command("dbshell", "--database", ALIAS, "--", *query(server))
    assert capfd.readouterr().out.strip().split("@")[0] == "certuser"


def test_without_the_descriptors_the_shell_cannot_read_them(server: Any) -> None:
    """What the shell meets without them: Django's own client fails."""
    with registered_alias(ALIAS, shell_entry(server)) as connection:
        django_client = type(connection.client).__mro__[1](connection)
        with pytest.raises(subprocess.CalledProcessError):
            django_client.runshell(query(server))


def test_dbshell_reads_the_password_file(
    server: Any, tmp_path: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """``DATABASE_PASSWORD_FILE``: the shell gets the password the file holds now."""
    from urllib.parse import quote

    password = server.users["app"].password
    secret = tmp_path / "db-password"
    secret.write_text(password + "\n")
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    environ = {
        "SHELL_DATABASE_URL": f"{scheme}://app@{server.host}:{server.port}/{server.database}",
        "SHELL_DATABASE_PASSWORD_FILE": str(secret),
        "SHELL_DATABASE_SSLMODE": "verify-full",
        "SHELL_DATABASE_SSLROOTCERT": str(server.certs.ca_cert),
    }
    with patched_environ(environ):
        entry = databases(DATABASE_ALIASES=ALIAS)[ALIAS]
    assert entry["PASSWORD"] == "" and quote(password, safe="") not in repr(entry)
    with registered_alias(ALIAS, entry):
        call_command("dbshell", "--database", ALIAS, "--", *query(server))
    assert capfd.readouterr().out.strip().split("@")[0] == "app"
