"""The pgbouncer process of the test PgBouncer: the binary, its files, start and stop.

:mod:`multipool.testing.pgbouncer` builds on this (what the configuration is
and why: see its module doc).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multipool.certs import CertPaths
from multipool.testing.servers import ServerStartError, find_program, remove_tree, tail

__all__ = ["ENV_PGBOUNCER", "PGBOUNCER_SETTINGS", "LocalPgBouncer", "find_pgbouncer"]

#: environment variable naming the pgbouncer binary (found automatically otherwise)
ENV_PGBOUNCER = "MULTIPOOL_TEST_PGBOUNCER"

#: pooling settings of the test PgBouncer (the TLS, auth and listen settings are added)
PGBOUNCER_SETTINGS: dict[str, str | int] = {
    "pool_mode": "transaction",
    "max_client_conn": 200,
    "default_pool_size": 10,
    "min_pool_size": 0,
    "reserve_pool_size": 0,
    "ignore_startup_parameters": "extra_float_digits,options",
    "server_reset_query": "DISCARD ALL",
    "server_check_delay": 30,
    "log_connections": 0,
    "log_disconnections": 0,
    "log_pooler_errors": 1,
}

_CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/sbin/pgbouncer",
               "/usr/local/bin/pgbouncer")


def find_pgbouncer() -> Path:
    """The pgbouncer binary: ``MULTIPOOL_TEST_PGBOUNCER``, ``PATH``, then the usual places."""
    return find_program("pgbouncer", ENV_PGBOUNCER, _CANDIDATES, "pgbouncer")


def _ini_value(value: str | int) -> str:
    text = str(value)
    if "\n" in text:
        raise ValueError("a PgBouncer setting cannot contain a newline")
    return text


def _auth_line(user: str, password: str) -> str:
    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    if "\n" in user or "\n" in password:
        raise ValueError("user names and passwords for PgBouncer cannot contain newlines")
    return f"{quoted(user)} {quoted(password)}\n"


class LocalPgBouncer:
    """Runs the pgbouncer binary in the foreground, from its own temporary directory."""

    backend = "local"

    def __init__(self, binary: Path, base: Path, *, owned: bool, run_as: str | None) -> None:
        self.binary = binary
        self.base = base
        self.owned = owned
        self.run_as = run_as
        self.config = base / "pgbouncer.ini"
        self.auth_file = base / "userlist.txt"
        self.log = base / "pgbouncer.log"
        self.port = 0
        self.description = f"local binary {binary}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- files ------------------------------------------------------------------------

    def chown(self) -> None:
        """Give every file of the work directory to the system user running PgBouncer."""
        if self.run_as is None:
            return
        entry = pwd.getpwnam(self.run_as)
        for root, dirs, files in os.walk(self.base):
            os.chown(root, entry.pw_uid, entry.pw_gid)
            for name in dirs + files:
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)

    def write_auth_file(self, users: Mapping[str, str]) -> None:
        """``"user" "password"`` lines, mode 0600 (plain text: PgBouncer computes SCRAM)."""
        fd = os.open(self.auth_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write("".join(_auth_line(u, p) for u, p in users.items()))

    def configure(
        self,
        *,
        port: int,
        server_host: str,
        server_port: int,
        client_certs: CertPaths,
        server_ca: Path,
        admin_user: str,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        """Write ``pgbouncer.ini`` (see the module doc)."""
        self.port = port
        options: dict[str, str | int] = {
            "listen_addr": "127.0.0.1",
            "listen_port": port,
            "unix_socket_dir": "",
            "pidfile": str(self.base / "pgbouncer.pid"),
            "auth_type": "scram-sha-256",
            "auth_file": str(self.auth_file),
            "admin_users": admin_user,
            "stats_users": admin_user,
            **PGBOUNCER_SETTINGS,
            "client_tls_sslmode": "require",
            "client_tls_cert_file": str(client_certs.server_cert),
            "client_tls_key_file": str(client_certs.server_key),
            "client_tls_ca_file": str(client_certs.ca_cert),
            "server_tls_sslmode": "verify-full",
            "server_tls_ca_file": str(server_ca),
            **(settings or {}),
        }
        lines = [
            "; multipool test PgBouncer (generated)",
            "[databases]",
            f"* = host={server_host} port={int(server_port)}",
            "",
            "[pgbouncer]",
            *(f"{key} = {_ini_value(value)}" for key, value in options.items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")

    # -- process ------------------------------------------------------------------------

    def _popen(self) -> subprocess.Popen[bytes]:
        kwargs: dict[str, Any] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.base)
            env["USER"] = env["LOGNAME"] = self.run_as
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                [str(self.binary), str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                env=env,
                start_new_session=True,  # a Ctrl-C of the test run is not PgBouncer's SIGINT
                **kwargs,
            )

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 15.0) -> None:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            offset = self.log.stat().st_size if self.log.exists() else 0
            proc = self._popen()
            self._proc = proc
            deadline = time.monotonic() + timeout
            while True:
                code = proc.poll()
                if code is not None:
                    self._proc = None
                    output = self.log.read_bytes()[offset:].decode(errors="replace")
                    raise ServerStartError(
                        f"pgbouncer exited with code {code} at start:\n"
                        + "\n".join(output.strip().splitlines()[-20:])
                    )
                if self._listening():
                    return
                if time.monotonic() >= deadline:
                    self._kill(proc)
                    self._proc = None
                    raise ServerStartError(
                        f"pgbouncer did not listen on 127.0.0.1:{self.port} within "
                        f"{timeout:g}s:\n{tail(self.log, 20)}"
                    )
                time.sleep(0.01)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown); SIGKILL if it lingers."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None or proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill(proc)
            # The port is free again when nothing answers on it.
            deadline = time.monotonic() + 5
            while self._listening() and time.monotonic() < deadline:
                time.sleep(0.02)

    def is_running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.owned:
                remove_tree(self.base)
