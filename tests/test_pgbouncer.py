"""multipool behind a real PgBouncer in transaction mode, TLS on both sides.

``DATABASE_POOLER=pgbouncer``: a small local pool in front of PgBouncer (it
still saves the TLS handshake to PgBouncer), no server-side cursors, no
session state assumed across transactions.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connections

from tests.conftest import patched_environ, registered_alias
from tests.test_pool_lifecycle import in_threads, request_cycle, stats

ROOT = Path(__file__).resolve().parents[1]


def pgbouncer_entry(pgbouncer, alias: str, **env: str) -> dict:
    from multipool.config import databases

    prefix = f"{alias.upper()}_DATABASE_"
    environ = {f"{prefix}URL": pgbouncer.url("app"), f"{prefix}POOLER": "pgbouncer"}
    environ.update({f"{prefix}{k}": v for k, v in env.items()})
    with patched_environ(environ):
        return databases(DATABASE_ALIASES=alias)[alias]


def client_tls(conn) -> bool:
    raw = conn.connection
    pgconn = getattr(raw, "pgconn", None)  # psycopg 3
    return bool(pgconn.ssl_in_use if pgconn is not None else raw.info.ssl_in_use)


@pytest.fixture
def bouncer_alias(pgbouncer_server):
    from tests.project.testapp.models import Item

    entry = pgbouncer_entry(pgbouncer_server, "bounced", POOL_SIZE="4", MAX_OVERFLOW="0")
    with registered_alias("bounced", entry) as conn:
        with conn.schema_editor() as editor:
            if Item._meta.db_table not in conn.introspection.table_names():
                editor.create_model(Item)
        conn.close()
        yield conn


def test_pooled_requests_through_pgbouncer_over_tls(pgbouncer_server, bouncer_alias):
    conn = bouncer_alias
    assert conn.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
    conn.ensure_connection()
    assert client_tls(conn), "client -> PgBouncer must be TLS"
    with conn.cursor() as cursor:
        cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cursor.fetchone()[0] is True, "PgBouncer -> server must be TLS"
    conn.close()

    def worker() -> None:
        c = connections["bounced"]
        for _ in range(100):
            assert request_cycle(c, "SHOW TIME ZONE") == [("UTC",)]

    assert in_threads(6, worker) == []
    st = stats(conn)
    assert st.connects <= 4
    assert st.checked_out == 0
    pools = pgbouncer_server.show("SHOW POOLS")
    assert pools, "PgBouncer shows no pool"


def test_queryset_iterator_works_without_server_side_cursors(bouncer_alias, item_model):
    conn = bouncer_alias
    alias = conn.alias
    marker = f"bounce-{os.getpid()}"
    item_model.objects.using(alias).bulk_create(
        [item_model(name=marker, value=i) for i in range(25)]
    )
    try:
        values = [
            item.value
            for item in item_model.objects.using(alias)
            .filter(name=marker)
            .order_by("value")
            .iterator(chunk_size=4)
        ]
        assert values == list(range(25))
    finally:
        item_model.objects.using(alias).filter(name=marker).delete()
        conn.close()


def test_django_test_runner_through_pgbouncer(pgbouncer_server):
    env = {k: v for k, v in os.environ.items() if "DATABASE_" not in k}
    env.update(
        DATABASE_URL=pgbouncer_server.url("app"),
        DATABASE_POOLER="pgbouncer",
        DATABASE_POOL_SIZE="2",
    )
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/project/manage.py"),
            "test",
            "tests.project.testapp",
            "--noinput",
            "-v",
            "2",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Destroying test database" in output
    backend = pgbouncer_server.backend_server
    assert not backend.query(
        "SELECT 1 FROM pg_database WHERE datname = %s", (f"test_{backend.database}",)
    )
