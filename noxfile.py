"""The version matrix: ``nox -s tests`` (full suite), ``nox -s backends`` (the
backend and pool tests on every supported Django)."""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = True

BACKEND_TESTS = [
    "tests/test_pool_lifecycle.py",
    "tests/test_request_boundary.py",
    "tests/test_env_tls_connect.py",
    "tests/test_django_test_runner.py",
    "tests/test_psycopg2.py",
    "tests/reliability/test_encryption_required.py",
    "tests/test_pool_logic.py",
    "tests/test_django_internals.py",
    "tests/reliability/test_dbshell.py",
]


def interpreter(version: str) -> str:
    """``python3.X`` from pyenv's versions directory, else from PATH.

    (A pyenv shim on PATH answers only for the versions pyenv has activated.)
    """
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    if candidates:
        return candidates[-1]
    return shutil.which(f"python{version}") or f"python{version}"


@nox.session(python=interpreter("3.11"))
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
@nox.parametrize(
    "python,django",
    [
        (interpreter("3.11"), "Django>=4.2,<4.3"),
        (interpreter("3.11"), "Django>=5.2,<5.3"),
        (interpreter("3.12"), "Django>=6.0,<7"),
    ],
    ids=["django4.2", "django5.2", "django6"],
)
def backends(session: nox.Session, django: str) -> None:
    session.install("-e", ".[test]", django)
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *BACKEND_TESTS)
