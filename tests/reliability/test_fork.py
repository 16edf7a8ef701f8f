"""Pre-fork servers (gunicorn, uwsgi): the parent warms its pool, then forks workers.

No child may talk on a socket it inherited, and nothing a child does -- use
the pool, exit, garbage-collect every object it inherited -- may disturb the
parent's sessions. Backend ids are read from the server.
"""

from __future__ import annotations

import gc
import os

import pytest

from multipool.pools import manager
from tests.test_pool_lifecycle import backend_id, request_cycle

pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)

CHILDREN = 4


def _child(alias: str, write_fd: int, inherited: list) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        from django.db import connections

        conn = connections[alias]
        ids = set()
        for _ in range(5):
            request_cycle(conn)
            conn.ensure_connection()
            ids.add(backend_id(conn))
            conn.close()
        # What interpreter shutdown may do in a worker: finalizers close every
        # connection object it inherited (libpq and libmysqlclient then say
        # goodbye to the server on the socket).
        for raw in inherited:
            raw.close()
        manager._abandoned.clear()
        connections.close_all()
        gc.collect()
        os.write(write_fd, ",".join(map(str, sorted(ids))).encode())
        code = 0
    finally:
        os._exit(code)


def fork_children(alias: str, *, inherited: list) -> set[int]:
    children = []
    for _ in range(CHILDREN):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(alias, write_fd, inherited)
        os.close(write_fd)
        children.append((pid, read_fd))
    ids: set[int] = set()
    for pid, read_fd in children:
        with os.fdopen(read_fd) as f:
            text = f.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "a child failed"
        ids |= {int(x) for x in text.split(",") if x}
    return ids


@pytest.mark.parametrize("finalize", [False, True], ids=["children-exit", "children-finalize"])
def test_prefork_children_never_touch_parent_sessions(server, make_alias, finalize):
    conn = make_alias(POOL_SIZE="3", MAX_OVERFLOW="0")
    alias = conn.alias
    # Warm the parent's pool: three connections, one still lent at fork time.
    from tests.test_pool_lifecycle import stats

    held = []
    for _ in range(3):
        from django.db import connections

        c = connections.create_connection(alias)
        c.ensure_connection()
        held.append(c)
    parent_ids = {backend_id(c) for c in held}
    raws = [c.connection for c in held]
    for c in held[1:]:
        c.close()
    assert parent_ids <= server.connection_ids(user="app", database=server.database)

    child_ids = fork_children(alias, inherited=raws if finalize else [])

    assert child_ids, "children ran no query"
    assert not child_ids & parent_ids, "a child used a parent's connection"
    # Every parent session is still open on the server ...
    alive = server.connection_ids(user="app", database=server.database)
    assert parent_ids <= alive
    # ... and usable: the lent one and the pooled ones, no reconnects.
    assert backend_id(held[0]) in parent_ids
    held[0].close()
    seen = set()
    for c in held:
        c.ensure_connection()
        seen.add(backend_id(c))
    assert seen == parent_ids
    for c in held:
        c.close()
    assert request_cycle(conn) == [(1,)]
    st = stats(conn)
    assert st.invalidations == 0
    assert st.connects == 3
