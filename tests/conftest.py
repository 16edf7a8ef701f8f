"""Django for the in-process tests, and aliases pointing at the real test servers.

The test servers come from multipool's own pytest plugin (``postgres_server``,
``mysql_server``). ``use_alias`` registers a DATABASES entry built the way a
user builds it -- ``multipool.databases()`` over environment variables -- and
removes it afterwards, closing its pool.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

_TMP = Path(tempfile.mkdtemp(prefix="multipool-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("MULTIPOOL_FORCE_PSYCOPG2") == "1":
        _import_django_postgresql_with_psycopg2()
    if not settings.configured:
        settings.configure(
            SECRET_KEY="multipool-tests",
            USE_TZ=True,
            TIME_ZONE="UTC",
            DATABASES={
                "default": {
                    "ENGINE": "multipool.backends.sqlite3",
                    "NAME": str(_TMP / "default.sqlite3"),
                }
            },
            INSTALLED_APPS=[
                "django.contrib.contenttypes",
                "django.contrib.auth",
                "multipool",
                "tests.project.testapp",
            ],
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        )
        django.setup()


def _import_django_postgresql_with_psycopg2() -> None:
    """Let Django's PostgreSQL backend see only psycopg2, as on a machine
    without psycopg 3. Django binds its driver when these modules are
    imported; the test harness keeps using psycopg 3 for its admin work."""
    import importlib
    import sys

    saved = sys.modules.get("psycopg")
    sys.modules["psycopg"] = None  # type: ignore[assignment]
    try:
        importlib.import_module("django.db.backends.postgresql.base")
        importlib.import_module("multipool.backends.postgresql.base")
    finally:
        if saved is None:
            del sys.modules["psycopg"]
        else:
            sys.modules["psycopg"] = saved


@contextmanager
def registered_alias(alias: str, entry: dict[str, Any]) -> Iterator[Any]:
    """Make ``alias`` usable through ``django.db.connections`` for a while."""
    from django.db import connections

    from multipool.pools import manager

    configured = connections.configure_settings({"default": {}, alias: dict(entry)})[alias]
    # connections.settings is settings.DATABASES itself once configured.
    connections.settings[alias] = configured
    try:
        yield connections[alias]
    finally:
        connections[alias].close()
        del connections[alias]
        connections.settings.pop(alias, None)
        settings.DATABASES.pop(alias, None)
        manager.dispose(alias)


def alias_entry(server: Any, alias: str, env: dict[str, str], **url_kw: Any) -> dict[str, Any]:
    """A DATABASES entry for ``alias`` built from environment variables, as users do."""
    from multipool.config import databases

    prefix = "DATABASE_" if alias == "default" else f"{alias.upper()}_DATABASE_"
    environ = {f"{prefix}URL": server.url(**url_kw)}
    environ.update({f"{prefix}{k}": v for k, v in env.items()})
    with patched_environ(environ):
        dbs = databases(DATABASE_ALIASES=alias) if alias != "default" else databases()
    return dbs[alias]


@contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_counter = iter(range(1, 1_000_000))
_counter_lock = threading.Lock()


def _next_alias(vendor: str) -> str:
    with _counter_lock:
        return f"{vendor}{next(_counter)}"


@pytest.fixture(params=["postgresql", "mysql"])
def server(request: pytest.FixtureRequest) -> Any:
    """The real TLS server of each engine (parametrizes the test)."""
    name = "postgres_server" if request.param == "postgresql" else "mysql_server"
    return request.getfixturevalue(name)


@pytest.fixture
def make_alias(server: Any) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_alias(POOL_SIZE="2", ...)`` -> a Django connection wrapper.

    Each call registers a fresh alias against ``server`` over TLS verify-full
    with the given environment keys (without prefix), with the ``Item`` table
    created on it.
    """
    from django.db import connections

    from tests.project.testapp.models import Item

    stack: list[Any] = []

    def make(*, user: str = "app", tls: str = "verify-full", **env: str) -> Any:
        alias = _next_alias(server.engine)
        entry = alias_entry(server, alias, env, user=user, tls=tls)
        cm = registered_alias(alias, entry)
        conn = cm.__enter__()
        stack.append(cm)
        with conn.schema_editor() as editor:
            table = Item._meta.db_table
            if table not in conn.introspection.table_names():
                editor.create_model(Item)
        conn.close()
        return connections[alias]

    yield make
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


@pytest.fixture
def item_model() -> Any:
    from tests.project.testapp.models import Item

    return Item


def require_modules(needed: Mapping[str, str], who: str) -> None:
    """Fail (with ``CI=true``) or skip unless every module of ``needed`` (module ->
    the requirement that installs it, all in the ``test`` extra) can be imported."""
    import importlib.util

    from multipool.testing.servers import in_ci

    missing = [req for mod, req in needed.items() if importlib.util.find_spec(mod) is None]
    if missing:
        reason = f"{who} needs {', '.join(missing)} (pip install -e '.[test]')"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
