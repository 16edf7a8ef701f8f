"""Variables that look like multipool's and are not read: a misspelled name, or the
URL of an alias nobody declared. Without these checks both are ignored in silence,
and the application connects somewhere else than intended (the default SQLite
file, the driver's default TLS mode).

``multipool.databases()`` records them; the system checks report a misspelling as
``multipool.W006`` with the closest real name, an undeclared alias's variable as
``W007``; ``DATABASE_STRICT=true`` makes both errors (``E007``, ``E008``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from multipool.checks import check_databases
from multipool.config import ENV_KEYS, databases

PG = "postgresql://app:pw@db.internal:5432/app"
MY = "mysql://app:pw@db.internal:3306/app"
BASE = {"DATABASE_URL": PG, "DATABASE_ALIASES": "legacy", "LEGACY_DATABASE_URL": MY,
        "DATABASE_REPLICAS": "replica1", "REPLICA1_DATABASE_URL": PG}

#: key family -> (misspelled variable, the real one the check suggests)
MISSPELLINGS = {
    "url": ("DATABASE_ULR", "DATABASE_URL"),
    "pool size": ("DATABASE_POOLSIZE", "DATABASE_POOL_SIZE"),
    "overflow": ("DATABASE_MAX_OVERFLOWS", "DATABASE_MAX_OVERFLOW"),
    "pool timing": ("DATABASE_POOL_PINGIDLE", "DATABASE_POOL_PING_IDLE"),
    "tls mode": ("DATABASE_SSL_MODE", "DATABASE_SSLMODE"),
    "tls file": ("DATABASE_SSLROOTCRT", "DATABASE_SSLROOTCERT"),
    "timeouts": ("DATABASE_CONNECT_TIMOUT", "DATABASE_CONNECT_TIMEOUT"),
    "replicas": ("DATABASE_REPLICA", "DATABASE_REPLICAS"),
    "aliases": ("DATABASE_ALIAS", "DATABASE_ALIASES"),
    "an alias's key": ("LEGACY_DATABASE_SSL_MODE", "LEGACY_DATABASE_SSLMODE"),
    "a replica's key": ("REPLICA1_DATABASE_URLS", "REPLICA1_DATABASE_URL"),
}


def messages(environ: dict[str, str]) -> list[Any]:
    return check_databases(databases(source=environ, validate=False))


def strays(environ: dict[str, str]) -> list[Any]:
    found = messages(environ)
    return [m for m in found if m.id in {"multipool.W006", "multipool.W007",
                                         "multipool.E007", "multipool.E008"}]


def test_every_name_multipool_reads_is_no_stray() -> None:
    environ = dict(BASE)
    for alias in ("default", "legacy", "replica1"):
        for key in ENV_KEYS:
            if key.scope == "global" and alias != "default":
                continue
            environ.setdefault(key.name(alias), "")
    assert strays(environ) == []


@pytest.mark.parametrize("family", sorted(MISSPELLINGS))
def test_a_misspelled_variable_is_w006_with_the_real_name(family: str) -> None:
    wrong, right = MISSPELLINGS[family]
    (found,) = strays({**BASE, wrong: "1"})
    assert found.id == "multipool.W006"
    assert found.msg == f"{wrong}: multipool reads no variable of this name; it is ignored"
    assert found.hint == f"did you mean {right}? Rename it"
    owner = wrong.split("_DATABASE_")[0].lower() if "_DATABASE_" in wrong else "default"
    assert found.obj == f"database alias {owner!r}"


def test_a_name_like_no_other_gets_no_suggestion() -> None:
    (found,) = strays({**BASE, "DATABASE_FROBNICATE": "1"})
    assert found.id == "multipool.W006"
    assert found.hint == "remove it, or use a name from docs/configuration.md"


@pytest.mark.parametrize(
    "orphan, alias",
    [
        ("ANALYTICS_DATABASE_URL", "analytics"),  # a primary not in DATABASE_ALIASES
        ("REPLICA2_DATABASE_URL", "replica2"),  # a replica not in DATABASE_REPLICAS
        ("ANALYTICS_DATABASE_SSLMODE", "analytics"),  # any key of such an alias
    ],
)
def test_a_variable_of_an_undeclared_alias_is_w007(orphan: str, alias: str) -> None:
    (found,) = strays({**BASE, orphan: PG})
    assert found.id == "multipool.W007"
    assert found.obj == "environment"
    assert found.msg == (
        f"{orphan}: the alias {alias!r} is not declared, so this variable is ignored"
    )
    assert f"add {alias} to DATABASE_ALIASES" in found.hint
    assert "*_DATABASE_REPLICAS" in found.hint
    assert alias not in databases(source={**BASE, orphan: PG}, validate=False)


def test_declaring_the_alias_reads_the_variable() -> None:
    environ = {**BASE, "DATABASE_ALIASES": "legacy,analytics", "ANALYTICS_DATABASE_URL": PG}
    assert strays(environ) == []
    assert databases(source=environ, validate=False)["analytics"]["HOST"] == "db.internal"


def test_strict_makes_them_errors() -> None:
    environ = {**BASE, "DATABASE_STRICT": "true", "DATABASE_SSL_MODE": "verify-full",
               "ANALYTICS_DATABASE_URL": PG}
    assert sorted(m.id for m in strays(environ)) == ["multipool.E007", "multipool.E008"]
    assert all(m.level >= 40 for m in strays(environ))  # ERROR: manage.py check fails


def test_a_strict_flag_that_is_no_boolean_is_e001_and_strict() -> None:
    environ = {**BASE, "DATABASE_STRICT": "maybe", "DATABASE_SSL_MODE": "verify-full"}
    found = messages(environ)
    (e001,) = [m for m in found if m.id == "multipool.E001"]
    assert e001.msg.startswith("DATABASE_STRICT: ")
    assert [m.id for m in strays(environ)] == ["multipool.E007"]
    # the alias itself is still usable: a bad flag is no reason to lose the database
    assert databases(source=environ, validate=False)["default"]["HOST"] == "db.internal"


def test_variables_of_other_programs_are_left_alone() -> None:
    others = {"PGHOST": "x", "MYSQL_PWD": "x", "REDIS_URL": "x", "DATABASE": "x",
              "DJANGO_DATABASE": "x", "database_url": "x"}
    assert strays({**BASE, **others}) == []


def test_manage_py_check_shows_the_misspelling(tmp_path: Path) -> None:
    """End to end, as a user sees it: ``manage.py check`` in a project whose
    settings call ``multipool.databases()``; a warning, so the exit code stays 0."""
    (tmp_path / "straysite.py").write_text(
        "import multipool\n"
        "SECRET_KEY = 'x'\n"
        "INSTALLED_APPS = ['multipool']\n"
        "DATABASES = multipool.databases()\n"
    )
    env = {k: v for k, v in os.environ.items() if "DATABASE_" not in k}
    env.update(DATABASE_URL=PG, DATABASE_SSL_MODE="verify-full",
               DJANGO_SETTINGS_MODULE="straysite", PYTHONPATH=str(tmp_path))
    check = subprocess.run([sys.executable, "-m", "django", "check"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert ("database alias 'default': (multipool.W006) DATABASE_SSL_MODE: multipool reads "
            "no variable of this name; it is ignored") in check.stderr
    assert "HINT: did you mean DATABASE_SSLMODE? Rename it" in check.stderr
