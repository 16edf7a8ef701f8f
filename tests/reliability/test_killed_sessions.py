"""Sessions the server ends under traffic, in pre-fork workers: no request that starts
after the server accepts connections again fails.

A pre-fork application (what ``gunicorn --preload -w 3`` does: a query at
import, then ``fork()``) serves paced requests in three worker processes while
the server ends every session: on PostgreSQL a ``kill -9`` of one backend (the
postmaster then ends every other session and recovers), on MariaDB ``KILL`` of
each session. Requests in flight may fail; every request that started after the
server was back must succeed -- each worker's connections were closed by the
server moments before, and the socket check on checkout finds that.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3

_APP = textwrap.dedent(
    """
    import json, os, sys, time
    import django
    from django.conf import settings
    import multipool

    settings.configure(DATABASES=multipool.databases(), INSTALLED_APPS=[], USE_TZ=True)
    django.setup()
    from django.core.signals import request_finished, request_started
    from django.db import connections

    def request():
        request_started.send(sender=None)
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchall()
        finally:
            request_finished.send(sender=None)

    request()  # a query at import, as an application may make under --preload
    out, stop = sys.argv[1], sys.argv[2]
    for n in range(int(sys.argv[3])):
        if os.fork() == 0:
            with open(f"{out}.{n}", "w") as log:
                while not os.path.exists(stop):
                    started = time.monotonic()
                    try:
                        request()
                        error = None
                    except Exception as exc:
                        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    log.write(json.dumps([started, time.monotonic(), error]) + "\\n")
                    log.flush()
                    time.sleep(0.02)
            os._exit(0)
    for _ in range(int(sys.argv[3])):
        os.wait()
    """
)


def _end_every_session(server: Any) -> float:
    """End every session of the application; returns when the server is back: accepting
    connections again (PostgreSQL), or done with the sessions it killed (MariaDB)."""
    sessions = server.connection_ids(user="plain")
    if server.engine == "mysql":
        for session in sessions:
            server.query(f"KILL {int(session)}")
        deadline = time.monotonic() + 10
        while sessions & server.connection_ids(user="plain"):  # until every one has ended
            assert time.monotonic() < deadline, "killed sessions did not end"
            time.sleep(0.01)
        return time.monotonic()
    os.kill(min(sessions), signal.SIGKILL)  # the postmaster then ends every session
    deadline = time.monotonic() + 30
    down = False
    while time.monotonic() < deadline:
        try:
            server.query("SELECT 1")
        except Exception:
            down = True
        else:
            if down:
                return time.monotonic()
        time.sleep(0.01)
    raise AssertionError("the server did not go down and come back")


def test_no_request_fails_once_the_server_is_back(server: Any, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(_APP)
    out, stop = tmp_path / "requests", tmp_path / "stop"
    env = {k: v for k, v in os.environ.items() if "DATABASE_" not in k}
    env.update(DATABASE_URL=server.url("plain"), PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, str(app), str(out), str(stop), str(WORKERS)], env=env, cwd=tmp_path,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        logs = [Path(f"{out}.{n}") for n in range(WORKERS)]
        deadline = time.monotonic() + 30
        while not all(p.exists() and p.stat().st_size > 200 for p in logs):  # warm workers
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
        killed_at = time.monotonic()
        back = _end_every_session(server)
        time.sleep(1.0)  # let every worker serve requests after the server is back
        stop.write_text("")
        process.wait(timeout=30)
    finally:
        process.kill()
    requests = [json.loads(line) for p in logs for line in p.read_text().splitlines()]
    late = [r for r in requests if r[0] > back and r[2] is not None]
    assert not late, late[:5]
    after = [r for r in requests if r[0] > back]
    assert len(after) >= WORKERS * 10  # every worker kept serving
    failed = [r for r in requests if r[2] is not None]
    print(f"\n{server.engine}: {len(requests)} requests, {len(failed)} failed, all started "
          f"before the server was back ({back - killed_at:.2f}s after the kill)")
