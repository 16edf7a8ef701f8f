"""Django's own test runner through pooled backends: test databases are
created, used through the pool, and dropped (pools release them first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_manage(server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if not k.endswith("DATABASE_URL") and k != "CI_UNUSED"
    }
    env["DATABASE_URL"] = server.url("app", tls="verify-full")
    env["DATABASE_POOL_SIZE"] = "2"
    return subprocess.run(
        [sys.executable, str(ROOT / "tests/project/manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def database_exists(server, name: str) -> bool:
    if server.engine == "postgresql":
        return bool(server.query("SELECT 1 FROM pg_database WHERE datname = %s", (name,)))
    return bool(server.query("SHOW DATABASES LIKE %s", (name,)))


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_runner_creates_uses_and_drops_test_database(server, parallel):
    test_db = f"test_{server.database}"
    result = run_manage(
        server, "test", "tests.project.testapp", "--noinput", "-v", "2", "--parallel", parallel
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Ran 4 tests" in output
    assert "Destroying test database" in output
    assert "being accessed by other users" not in output
    assert not database_exists(server, test_db)
    if parallel == "2":
        assert not database_exists(server, f"{test_db}_1")
        assert not database_exists(server, f"{test_db}_2")
