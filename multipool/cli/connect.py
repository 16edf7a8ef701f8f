"""One direct connection per alias, bypassing the pool: what ``check --connect``
and ``budget --connect`` use.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from multipool.cli.output import error_text, one_line
from multipool.cli.sources import ensure_settings, is_multipool, vendor_label, vendor_of
from multipool.errors import ConfigurationError, MultipoolError

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec


@contextlib.contextmanager
def direct_connection(
    alias: str, entry: Mapping[str, Any], *, timeout: float = 10.0
) -> Iterator[Any]:
    """A Django connection wrapper for ``alias`` that bypasses the pool (closed on exit).

    Same settings, translated to driver parameters by the alias's own backend,
    but ``pool_enabled=False`` and a connect timeout: one physical connection.
    """
    from django.db.utils import ConnectionHandler

    ensure_settings()
    settings_dict = copy.deepcopy(dict(entry))
    options = dict(settings_dict.get("OPTIONS") or {})
    if is_multipool(settings_dict):
        options["pool_enabled"] = False
    if vendor_of(settings_dict) in ("postgresql", "mysql") and "connect_timeout" not in options:
        options["connect_timeout"] = max(1, round(timeout))
    settings_dict["OPTIONS"] = options
    settings_dict["CONN_MAX_AGE"] = 0
    databases: dict[str, Any] = {alias: settings_dict}
    if alias != "default":
        databases["default"] = {}
    handler = ConnectionHandler(databases)
    conn = handler[alias]
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def fetch(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` on a Django connection wrapper."""
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]


def _server_version(conn: Any) -> str:
    """``PostgreSQL 16.2``, ``MariaDB 10.11.6``, ``MySQL 8.0.36``, ``SQLite 3.45.1``."""
    if conn.vendor == "postgresql":
        return f"PostgreSQL {fetch(conn, 'SHOW server_version')[0][0]}".split(" (")[0]
    if conn.vendor == "mysql":
        version = str(fetch(conn, "SELECT VERSION()")[0][0])
        if "mariadb" in version.lower():
            return f"MariaDB {version.split('-MariaDB')[0]}"
        return f"MySQL {version}"
    if conn.vendor == "sqlite":
        return f"SQLite {fetch(conn, 'SELECT sqlite_version()')[0][0]}"
    return conn.vendor


def _server_tls(conn: Any) -> tuple[str | None, str | None]:
    """(protocol, cipher) of this session, as the server reports them."""
    if conn.vendor == "postgresql":
        rows = fetch(conn, "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        if rows and rows[0][0]:
            return str(rows[0][0]), str(rows[0][1])
        return None, None
    if conn.vendor == "mysql":
        values = {}
        for name in ("Ssl_version", "Ssl_cipher"):
            rows = fetch(conn, f"SHOW SESSION STATUS LIKE '{name}'")
            values[name] = str(rows[0][1]) if rows and rows[0][1] else None
        return values["Ssl_version"], values["Ssl_cipher"]
    return None, None


def _certificate_fit(spec: DatabaseSpec, timeout: float) -> str:
    """Whether the server's certificate names the host this alias connects to."""
    from cryptography import x509

    from multipool.backends.certificate_diagnosis import certificate_names, names_host
    from multipool.backends.diagnosis import server_address
    from multipool.backends.server_certificate import FetchError, fetch_certificate

    host, port = server_address(spec)
    try:
        cert = x509.load_der_x509_certificate(fetch_certificate(spec.vendor, host, port, timeout))
    except (OSError, FetchError) as exc:
        return f"the server's certificate could not be fetched to compare ({exc})"
    if names_host(cert, host):
        return f"the server's certificate names {host!r}, as verify-full requires"
    names = ", ".join(repr(n) for n in certificate_names(cert)) or "no host name"
    return f"the server's certificate is for {names}, not {host!r}: verify-full would refuse it"


def host_name_check(
    alias: str, entry: Mapping[str, Any], *, encrypted: bool, timeout: float
) -> dict[str, Any]:
    """``host_name_verified`` (``None`` without TLS) of a connected alias and, when
    the driver did not verify the host name, a ``note`` saying whether it would pass."""
    from multipool.backends.verification import chain_verified, host_name_verified
    from multipool.config import spec_from_settings

    if not encrypted:
        return {"host_name_verified": None}
    try:
        spec = spec_from_settings(alias, entry)
    except ConfigurationError:
        return {"host_name_verified": None}
    if host_name_verified(spec):
        return {"host_name_verified": True}
    what = "the host name" if chain_verified(spec) else "the server's certificate"
    mode = spec.tls.mode or (
        "not set (REQUIRED)" if spec.tls.requires_encryption(spec.vendor) else "not set"
    )
    note = (
        f"{what} was not verified ({spec.setting('tls_mode')} is {mode}); "
        f"{_certificate_fit(spec, timeout)}"
    )
    return {"host_name_verified": False, "note": note}


def probe(alias: str, entry: Mapping[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Connect once (no pool) and report server version, TLS and round-trip time."""
    result: dict[str, Any] = {"alias": alias, "vendor": vendor_label(entry), "ok": False}
    if vendor_of(entry) == "sqlite":
        name = str(entry.get("NAME") or "")
        in_memory = name in ("", ":memory:") or "mode=memory" in name
        if not in_memory and not os.path.exists(name):
            result.update(ok=True, note="the file does not exist yet (created on first use)")
            return result
    try:
        with direct_connection(alias, entry, timeout=timeout) as conn:
            started = time.perf_counter()
            conn.ensure_connection()
            result["connect_seconds"] = time.perf_counter() - started
            result["server"] = _server_version(conn)
            protocol, cipher = _server_tls(conn)
            result["tls_protocol"] = protocol
            result["tls_cipher"] = cipher
            result.update(host_name_check(alias, entry, encrypted=bool(protocol), timeout=timeout))
            samples = []
            for _ in range(5):
                started = time.perf_counter()
                fetch(conn, "SELECT 1")
                samples.append(time.perf_counter() - started)
            result["rtt_seconds"] = statistics.median(samples)
            result["ok"] = True
    except MultipoolError as exc:
        # multipool's messages name the setting and end with the fix: keep them whole
        result["error"] = one_line(f"{type(exc).__name__}: {exc}", limit=2000)
    except Exception as exc:
        result["error"] = error_text(exc)
    return result
