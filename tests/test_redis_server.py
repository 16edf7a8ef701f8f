"""The throwaway Redis of multipool.testing (the Celery tests' broker): it answers only
clients with its password, keeps nothing on disk, and leaves nothing behind."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from multipool.testing import RedisServer, ServerStartError, start_redis
from multipool.testing.redis_process import ENV_REDIS_SERVER, find_redis_server


def test_answers_only_clients_with_the_password(redis_server: RedisServer) -> None:
    import redis

    assert redis_server.send(("PING",)) == [b"+PONG"]
    assert redis_server.send(("PING",), password="")[0].startswith(b"-NOAUTH")
    auth, ping = redis_server.send(("AUTH", "not-the-password"), ("PING",), password="")
    assert auth.startswith(b"-WRONGPASS") and ping.startswith(b"-NOAUTH")
    # what Celery's broker and result backend connect with
    client = redis.Redis.from_url(redis_server.url())
    try:
        assert client.ping() is True
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
    finally:
        client.close()


def test_the_password_shows_nowhere(redis_server: RedisServer) -> None:
    assert redis_server.password not in repr(redis_server)
    assert redis_server.pid is not None
    assert redis_server.password not in Path(f"/proc/{redis_server.pid}/cmdline").read_text()
    assert redis_server.password not in redis_server.log.read_text()
    assert oct(redis_server.config.stat().st_mode & 0o777) == "0o600"


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def test_close_stops_reaps_and_removes_everything() -> None:
    server = start_redis()
    pid, base, port = server.pid, server.base, server.port
    assert pid is not None and server.ping()
    server.close()
    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: not even a zombie is left
    assert not base.exists()
    assert _refused(port)
    server.close()  # a second close changes nothing


def test_a_wrong_binary_setting_names_the_variable(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv(ENV_REDIS_SERVER, str(tmp_path / "missing"))
    with pytest.raises(ServerStartError, match=ENV_REDIS_SERVER):
        find_redis_server()
