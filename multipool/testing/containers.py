"""Test servers in Docker containers (testcontainers), used when a Docker engine answers.

The server certificate, key and CA (and PostgreSQL's pg_hba.conf) are copied into
the container before it starts; a small entrypoint wrapper hands them to the
server's system user and then runs the image's own entrypoint. The host port is
chosen by us and bound explicitly, so a stopped container comes back on the same
port.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from multipool.certs import CertPaths, generate_dev_certs
from multipool.testing import mysql, postgres
from multipool.testing.servers import (
    ENV_MYSQL_IMAGE,
    ENV_POSTGRES_IMAGE,
    ServerStartError,
    TestServer,
    free_port,
    make_workdir,
    new_password,
    poll,
    remove_tree,
)

__all__ = [
    "ContainerController",
    "docker_available",
    "start_mysql_container",
    "start_postgres_container",
]

DEFAULT_POSTGRES_IMAGE = "postgres:16"
DEFAULT_MYSQL_IMAGE = "mysql:8"
READY_TIMEOUT = 120.0
_LOCAL_HOSTS = ("", "localhost", "127.0.0.1", "::1")

_docker_state: bool | None = None


def docker_available(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers a ping (cached for the process)."""
    global _docker_state
    if _docker_state is None:
        try:
            import docker

            client = docker.from_env(timeout=int(max(timeout, 1)))
            try:
                _docker_state = bool(client.ping())
            finally:
                client.close()
        except Exception:
            _docker_state = False
    return _docker_state


class ContainerController:
    """Start/stop/remove one testcontainers container."""

    backend = "container"

    def __init__(self, container: Any, image: str, base: Path, *, owned: bool) -> None:
        self.container = container
        self.description = f"container {image}"
        self.base = base
        self.owned = owned
        self.ready: Callable[[], None] = lambda: None

    def _wrapped(self) -> Any:
        return self.container.get_wrapped_container()

    def start(self) -> None:
        if not self.is_running():
            self._wrapped().start()
        self.ready()

    def stop(self) -> None:
        if self.is_running():
            self._wrapped().stop(timeout=30)

    def is_running(self) -> bool:
        try:
            wrapped = self._wrapped()
            if wrapped is None:
                return False
            wrapped.reload()
        except Exception:  # removed, or the engine went away
            return False
        return bool(wrapped.status == "running")

    def logs(self, lines: int = 30) -> str:
        with contextlib.suppress(Exception):
            out = self._wrapped().logs(tail=lines)
            return bytes(out).decode(errors="replace")
        return "(no container logs)"

    def exited(self) -> str | None:
        with contextlib.suppress(Exception):
            if not self.is_running():
                return f"the container stopped\n--- container log ---\n{self.logs()}"
        return None

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self.container.stop()
        finally:
            if self.owned:
                remove_tree(self.base)


def _docker_host() -> str:
    from testcontainers.core.docker_client import DockerClient

    host = DockerClient().host()
    return "127.0.0.1" if host in _LOCAL_HOSTS else host


def _container(
    image: str, host: str, port: int, container_port: int, files: dict[str, tuple[Path, int]],
    script: str,
) -> Any:
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image)
    if host == "127.0.0.1":
        cast(Any, container.ports)[f"{container_port}/tcp"] = ("127.0.0.1", port)
    else:
        container.with_bind_ports(container_port, port)
    for name, (path, mode) in files.items():
        container.with_copy_into_container(path, f"/multipool-in/{name}", mode)
    container.with_kwargs(entrypoint=["bash", "-c", script])
    return container


def _server_files(certs: CertPaths) -> dict[str, tuple[Path, int]]:
    return {
        "ca.crt": (certs.ca_cert, 0o644),
        "server.crt": (certs.server_cert, 0o644),
        "server.key": (certs.server_key, 0o600),
    }


def _wait_ready(server: TestServer, controller: ContainerController) -> None:
    def attempt() -> bool:
        server._drop_admin_connection()
        try:
            server.query("SELECT 1")
        except Exception:
            return False
        return True

    try:
        poll(attempt, timeout=READY_TIMEOUT, interval=0.5, failure=controller.exited)
    except ServerStartError as exc:
        raise ServerStartError(
            f"{controller.description} not ready: {exc}\n--- container log ---\n"
            f"{controller.logs()}"
        ) from None


def start_postgres_container(
    workdir: str | os.PathLike[str] | None = None,
) -> postgres.PostgresServer:
    """PostgreSQL in a container (``MULTIPOOL_TEST_POSTGRES_IMAGE``, default postgres:16)."""
    started = time.monotonic()
    image = os.environ.get(ENV_POSTGRES_IMAGE) or DEFAULT_POSTGRES_IMAGE
    base, owned = make_workdir(workdir, "multipool-pg-container-")
    host = _docker_host()
    certs = generate_dev_certs(base / "certs", hosts=(host,), clients=postgres.CLIENT_CERT_USERS)
    hba = base / "pg_hba.conf"
    hba.write_text(postgres.pg_hba("all"))
    settings = {
        "ssl": "on",
        "ssl_cert_file": "/multipool/server.crt",
        "ssl_key_file": "/multipool/server.key",
        "ssl_ca_file": "/multipool/ca.crt",
        "hba_file": "/multipool/pg_hba.conf",
        **{k: str(v) for k, v in postgres.PERFORMANCE_SETTINGS.items()},
    }
    options = " ".join(f"-c {k}={v}" for k, v in settings.items())
    script = (
        "set -e; mkdir -p /multipool; cp /multipool-in/* /multipool/; "
        "chown -R postgres:postgres /multipool; chmod 0600 /multipool/server.key; "
        f"exec docker-entrypoint.sh postgres {options}"
    )
    admin_password = new_password()
    port = free_port()
    container = _container(
        image, host, port, 5432, {**_server_files(certs), "pg_hba.conf": (hba, 0o644)}, script
    )
    container.with_env("POSTGRES_USER", postgres.ADMIN_USER)
    container.with_env("POSTGRES_PASSWORD", admin_password)
    container.with_env("POSTGRES_DB", "postgres")
    controller = ContainerController(container, image, base, owned=owned)
    try:
        container.start()
        users = postgres.default_users()
        server = postgres.PostgresServer(
            host=host, port=port, certs=certs, admin_user=postgres.ADMIN_USER,
            admin_password=admin_password, users=users, database="multipool",
            admin_database="postgres", controller=controller,
        )
        controller.ready = lambda: _wait_ready(server, controller)
        controller.ready()
        postgres.bootstrap(
            lambda db: postgres.server_connect(server, db), users=users, database="multipool",
            admin_user=postgres.ADMIN_USER, admin_password=None,
        )
        server.refresh_version()
    except BaseException:
        controller.close()
        raise
    server._register(started)
    return server


def start_mysql_container(workdir: str | os.PathLike[str] | None = None) -> mysql.MySQLServer:
    """MySQL in a container (``MULTIPOOL_TEST_MYSQL_IMAGE``, default mysql:8)."""
    started = time.monotonic()
    image = os.environ.get(ENV_MYSQL_IMAGE) or DEFAULT_MYSQL_IMAGE
    base, owned = make_workdir(workdir, "multipool-mysql-container-")
    host = _docker_host()
    certs = generate_dev_certs(base / "certs", hosts=(host,), clients=mysql.CLIENT_CERT_USERS)
    options = " ".join(
        [
            "--ssl-ca=/multipool/ca.crt",
            "--ssl-cert=/multipool/server.crt",
            "--ssl-key=/multipool/server.key",
            *(o for o in mysql.SERVER_OPTIONS if not o.startswith("--innodb-doublewrite")),
        ]
    )
    script = (
        "set -e; mkdir -p /multipool; cp /multipool-in/* /multipool/; "
        "chown -R mysql:mysql /multipool; chmod 0600 /multipool/server.key; "
        f"exec docker-entrypoint.sh mysqld {options}"
    )
    root_password = new_password()
    port = free_port()
    container = _container(image, host, port, 3306, _server_files(certs), script)
    container.with_env("MYSQL_ROOT_PASSWORD", root_password)
    controller = ContainerController(container, image, base, owned=owned)
    try:
        container.start()
        users = mysql.default_users()
        admin_password = new_password()
        # Bootstrap as root, then everything runs as the admin user created here.
        server = mysql.MySQLServer(
            host=host, port=port, certs=certs, admin_user="root",
            admin_password=root_password, users=users, database="multipool",
            controller=controller,
        )
        controller.ready = lambda: _wait_ready(server, controller)
        controller.ready()
        with contextlib.closing(server.connect_admin()) as conn:
            mysql.bootstrap(
                conn, users=users, database="multipool",
                admin_user=mysql.ADMIN_USER, admin_password=admin_password,
            )
        server._drop_admin_connection()
        server.admin_user, server.admin_password = mysql.ADMIN_USER, admin_password
        server.refresh_version()
    except BaseException:
        controller.close()
        raise
    server._register(started)
    return server
