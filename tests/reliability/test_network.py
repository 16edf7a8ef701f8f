"""A host whose packets are dropped -- a black-holed network, a host that is gone --
fails requests within the timeouts instead of hanging them.

The client runs in a network namespace of its own (``ip netns``), reaching the
real test server through a veth pair and a relay in this process. Black-holing
is a permanent neighbour entry with a wrong hardware address on the client's
side: its packets leave and are dropped silently, as on a dead link. With
``CONNECT_TIMEOUT=2`` and ``NETWORK_TIMEOUT=3``:

* a query on an established connection fails after about ``NETWORK_TIMEOUT``
  (``TCP_USER_TIMEOUT``: data the server never acknowledged);
* a new connection fails after ``CONNECT_TIMEOUT``.

(Measured: 3.4 s and 2.0 s, both engines. With ``NETWORK_TIMEOUT=0`` -- the
operating system's defaults -- the query would wait about 15 minutes.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from multipool.testing.servers import in_ci

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
CONNECT_TIMEOUT = 2.0
NETWORK_TIMEOUT = 3.0
SLACK = 1.5

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import django
    from django.conf import settings
    import multipool

    settings.configure(DATABASES=multipool.databases(), INSTALLED_APPS=[], USE_TZ=True)
    django.setup()
    from django.core.signals import request_finished, request_started
    from django.db import connections
    from multipool.pools import manager

    def request():
        request_started.send(sender=None)
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")
                return cursor.fetchall()
        finally:
            request_finished.send(sender=None)

    def timed(body):
        started = time.monotonic()
        try:
            body()
        except Exception as exc:
            return {"error": type(exc).__name__, "seconds": time.monotonic() - started}
        return {"error": None, "seconds": time.monotonic() - started}

    request()  # a warm pool: one connection, kept by this thread
    print("ready", flush=True)
    sys.stdin.readline()  # the network is black-holed now
    result = {"query": timed(request)}
    connections["default"].close()
    result["connect"] = timed(request)
    connections["default"].close()
    print(json.dumps(result), flush=True)
    """
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[tuple[str, str, str]]:
    """``(namespace, host-side address, client-side address)``, removed afterwards."""
    if os.geteuid() != 0:
        reason = "network namespaces need root (ip netns)"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"mpnet{os.getpid() % 100000}"
    host_if, ns_if = f"{name}h", f"{name}n"
    host_ip, ns_ip = "10.213.0.1", "10.213.0.2"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, host_ip, ns_if
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


class Relay:
    """Forwards TCP connections from ``address`` to the server (in this process)."""

    def __init__(self, address: str, target: tuple[str, int]) -> None:
        self.listener = socket.create_server((address, 0))
        self.port = self.listener.getsockname()[1]
        self.target = target
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()

    def close(self) -> None:
        self.listener.close()


def test_a_black_holed_host_fails_within_the_timeouts(
    server: Any, namespace: tuple[str, str, str], tmp_path: Path
) -> None:
    name, host_ip, ns_if = namespace
    relay = Relay(host_ip, (server.host, server.port))
    url = server.url("plain", tls="require").replace(
        f"@{server.host}:{server.port}/", f"@{host_ip}:{relay.port}/"
    )
    env = {k: v for k, v in os.environ.items() if "DATABASE_" not in k}
    env.update(
        DATABASE_URL=url, DATABASE_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
        DATABASE_NETWORK_TIMEOUT=str(NETWORK_TIMEOUT), PYTHONPATH=str(ROOT),
    )
    script = tmp_path / "client.py"
    script.write_text(_CHILD)
    child = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, str(script)], env=env, cwd=tmp_path,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        ready = child.stdout.readline().strip()
        assert ready == "ready", child.stderr.read() if child.stderr else ""
        # the client's packets now leave for a hardware address nobody has
        _ip("netns", "exec", name, "ip", "neigh", "replace", host_ip, "lladdr",
            "02:00:00:00:00:99", "dev", ns_if, "nud", "permanent")
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        relay.close()
    result = json.loads(out.strip().splitlines()[-1])
    print(f"\n{server.engine}: {result}")
    query, connect = result["query"], result["connect"]
    assert query["error"] and query["seconds"] < NETWORK_TIMEOUT + SLACK, (query, err[-2000:])
    assert connect["error"], connect
    assert CONNECT_TIMEOUT - 0.1 <= connect["seconds"] < CONNECT_TIMEOUT + SLACK, connect
