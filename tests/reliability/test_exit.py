"""Pooled connections end with the protocol's goodbye, never dropped by the OS.

A process that exits with connections idle in its pools -- normally, or as a
``multiprocessing`` worker (``manage.py test --parallel``), which ends with
``os._exit()`` -- closes them through the driver first. The servers' own logs
show it: no "Connection reset by peer" (PostgreSQL), no "Aborted connection"
(MariaDB).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.test_django_test_runner import run_manage

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]

#: what the servers log for a connection the client dropped without a goodbye
DROPPED = ("Connection reset by peer", "Aborted connection", "unexpected EOF on client")

_CHILD = textwrap.dedent(
    """
    import multiprocessing, sys, threading
    import django
    from django.conf import settings
    import multipool

    settings.configure(DATABASES=multipool.databases(), INSTALLED_APPS=[], USE_TZ=True)
    django.setup()

    def requests():
        from django.db import connections

        def one():
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")
            connections["default"].close()

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        one()  # and this thread keeps one between requests

    if __name__ == "__main__":
        if sys.argv[1] == "workers":
            multiprocessing.set_start_method("fork")
            workers = [multiprocessing.Process(target=requests) for _ in range(2)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            sys.exit(max(w.exitcode for w in workers))
        requests()
    """
)


@pytest.mark.parametrize("how", ["normal exit", "workers"])
def test_exit_says_goodbye_to_every_pooled_connection(
    server: Any, how: str, tmp_path: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if "DATABASE_" not in k}
    env.update(DATABASE_URL=server.url("plain"), PYTHONPATH=str(ROOT))
    with server.new_log_lines() as logged:
        result = subprocess.run(
            [sys.executable, str(script), "workers" if how == "workers" else "one"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        # the server has seen every session end (and logged what it had to)
        assert server.wait_for_connection_count(0, user="plain", timeout=10) == 0
    dropped = [line for line in logged if any(word in line for word in DROPPED)]
    assert not dropped, dropped


def test_parallel_test_runner_workers_say_goodbye(server: Any) -> None:
    with server.new_log_lines() as logged:
        result = run_manage(
            server, "test", "tests.project.testapp", "--noinput", "--parallel", "2"
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        server.wait_for_connection_count(0, user="app", database=f"test_{server.database}_1",
                                         timeout=10)
    dropped = [line for line in logged if any(word in line for word in DROPPED)]
    assert not dropped, dropped


def test_close_all_gives_every_connection_back_with_a_goodbye(
    server: Any, make_alias: Any
) -> None:
    """What a pre-fork master calls before its first fork (gunicorn's when_ready)."""
    import multipool
    from multipool.pools import manager
    from tests.test_pool_lifecycle import request_cycle

    conn = make_alias()
    assert request_cycle(conn) == [(1,)]
    assert server.connection_count(user="app") >= 1
    with server.new_log_lines() as logged:
        multipool.close_all()
        assert server.wait_for_connection_count(0, user="app") == 0
    assert manager.get(conn.alias) is None
    assert not [line for line in logged if any(word in line for word in DROPPED)]
    assert request_cycle(conn) == [(1,)]  # and the alias works again afterwards
