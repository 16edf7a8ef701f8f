"""``multipool config --explain``: the source of every value, in a layered setup.

The process environment over a ``.env`` file over ``databases()`` keyword
arguments over multipool's defaults; a replica inheriting from its primary; a
``settings.ini`` found first hiding a ``.env`` in a parent directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multipool.config.explain import explain, settings_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in list(os.environ):
        if "DATABASE_" in key:
            monkeypatch.delenv(key)
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql://app:secret@db.internal:5432/shop?pool_size=7\n"
        "DATABASE_POOL_TIMEOUT=20\n"
        "DATABASE_REPLICAS=replica1\n"
        "REPLICA1_DATABASE_URL=postgresql://app:secret@db-ro.internal:5432/shop\n"
    )
    monkeypatch.setenv("DATABASE_POOL_TIMEOUT", "4")
    return tmp_path


def _by_field(values: list) -> dict:
    return {e.field: e for e in values}


def test_every_value_names_its_source(project: Path) -> None:
    found = explain(search_path=project, DATABASE_POOL_LIFO=False)
    dotenv = f".env at {project / '.env'}"
    default = _by_field(found["default"])
    assert (default["pool_size"].value, default["pool_size"].setting) == (7, "DATABASE_URL")
    assert default["pool_size"].origin == dotenv  # the URL's query, from the .env
    assert (default["pool_timeout"].value, default["pool_timeout"].origin) == (4.0, "environment")
    assert default["pool_lifo"].value is False
    assert default["pool_lifo"].origin == "keyword argument of databases()"
    assert (default["max_overflow"].value, default["max_overflow"].origin) == (5, "default")
    assert (default["password"].value, default["password"].origin) == ("***", dotenv)
    replica = _by_field(found["replica1"])
    assert replica["pool_size"].value == 7
    assert replica["pool_size"].origin == f"{dotenv}, inherited from 'default'"
    assert replica["pool_timeout"].origin == "environment, inherited from 'default'"
    assert replica["host"].value == "db-ro.internal" and replica["host"].origin == dotenv
    assert replica["max_overflow"].setting == "REPLICA1_DATABASE_MAX_OVERFLOW"


def test_a_settings_file_found_first_hides_the_one_above(project: Path) -> None:
    site = project / "mysite"
    site.mkdir()
    (site / "settings.ini").write_text("[settings]\nDATABASE_MAX_OVERFLOW=3\n")
    assert settings_files(str(site)) == [
        (str(site / "settings.ini"), True), (str(project / ".env"), False)
    ]
    default = _by_field(explain(search_path=site)["default"])
    assert default["max_overflow"].value == 3
    assert default["max_overflow"].origin == f"settings.ini at {site / 'settings.ini'}"
    assert default["host"].value is None  # the .env's URL was not read


def test_the_command_shows_it_as_table_and_json(project: Path) -> None:
    env = {k: v for k, v in os.environ.items() if "DATABASE_" not in k}
    env["DATABASE_POOL_TIMEOUT"] = "4"
    run = [sys.executable, "-m", "multipool", "config", "--explain"]
    table = subprocess.run(run, cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert f"read: {project / '.env'}" in table.stdout
    line = next(x for x in table.stdout.splitlines() if x.strip().startswith("pool_timeout"))
    assert "DATABASE_POOL_TIMEOUT" in line and line.rstrip().endswith("environment")
    assert "secret" not in table.stdout
    data = json.loads(subprocess.run(
        [*run, "--json"], cwd=project, env=env, capture_output=True, text=True, timeout=60
    ).stdout)
    assert data["aliases"]["replica1"]["pool_timeout"]["from"] == (
        "environment, inherited from 'default'"
    )
    assert data["files"] == [{"path": str(project / ".env"), "read": True}]
