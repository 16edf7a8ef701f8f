"""Django uses psycopg 3 when it is installed and psycopg2 otherwise: the
PostgreSQL backend tests run again in a process where only psycopg2 imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_driver_is_the_one_this_process_was_asked_for():
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    assert is_psycopg3 is (os.environ.get("MULTIPOOL_FORCE_PSYCOPG2") != "1")


@pytest.mark.skipif(
    os.environ.get("MULTIPOOL_FORCE_PSYCOPG2") == "1", reason="already the psycopg2 run"
)
def test_postgresql_backend_suite_under_psycopg2():
    # CI=true: a server that cannot start fails the run instead of skipping.
    env = {**os.environ, "MULTIPOOL_FORCE_PSYCOPG2": "1", "CI": "true"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "postgresql or driver_is",
            "tests/test_pool_lifecycle.py",
            "tests/test_request_boundary.py",
            "tests/test_env_tls_connect.py",
            "tests/test_django_test_runner.py",
            "tests/reliability/test_encryption_required.py",
            "tests/reliability/test_secrets.py",
            "tests/reliability/test_dbshell.py",
            "tests/test_psycopg2.py::test_driver_is_the_one_this_process_was_asked_for",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert " passed" in output
    assert " failed" not in output and " skipped" not in output and " error" not in output
