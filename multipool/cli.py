"""The ``multipool`` command (also ``python -m multipool``): an operator's view of the pools.

Subcommands (``multipool SUBCOMMAND --help`` for the options; ``docs/cli.md``)::

    config   every alias as resolved from the environment (passwords masked)
    check    the system checks; --connect also connects to each alias
    certs    certs init [DIR]: a development CA, server and client certificates
    budget   worst-case server connections of a fleet vs the server's max_connections
    demo     a short simulated request load through Django, pooled vs unpooled
    status   live pool statistics of this process

Where the aliases come from: the Django settings when ``DJANGO_SETTINGS_MODULE``
is set, else the environment (``multipool.databases()``, reading ``.env`` /
``settings.ini`` from the current directory upward).

Exit codes: 0 ok; 1 problems found (failed check, failed connect, over budget,
refused to overwrite); 2 usage or configuration error.

Nothing printed contains a password, a key passphrase or a private key: the
output never includes them, and every line written to stdout/stderr while the
command runs is filtered through a mask of the secrets found in the
environment and the settings, and of any PEM private key block.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, unquote, urlsplit

from multipool import __version__
from multipool.status import pool_status, render_pool_status, render_table, warm_pools

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "Masker",
    "build_parser",
    "main",
    "pool_status",
    "render_pool_status",
    "render_table",
]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

MASK = "***"


class UsageError(Exception):
    """Wrong arguments or an unusable configuration: exit code 2."""


# -- masking ------------------------------------------------------------------------------

_PEM_KEY_RE = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S
)
_SENSITIVE_NAME_RE = re.compile(r"PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN", re.I)
_SENSITIVE_OPTIONS = ("password", "passwd", "sslpassword", "ssl_key_password")
_MIN_SECRET = 3


class Masker:
    """Replaces known secrets (and any PEM private key block) in text with ``***``."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: Any) -> None:
        if not isinstance(value, str) or len(value) < _MIN_SECRET:
            return
        variants = {
            value,
            quote(value, safe=""),
            quote(value),
            quote_plus(value),
            json.dumps(value)[1:-1],
            repr(value)[1:-1],
        }
        with self._lock:
            self._secrets.update(v for v in variants if len(v) >= _MIN_SECRET)

    def add_url(self, url: str) -> None:
        if "://" not in url or "@" not in url:
            return
        try:
            password = urlsplit(url.strip()).password
        except ValueError:
            return
        if password:
            self.add(password)
            self.add(unquote(password))

    def add_environment(self, environ: Mapping[str, str]) -> None:
        for name, value in environ.items():
            if _SENSITIVE_NAME_RE.search(name):
                self.add(value)
            self.add_url(value)

    def add_databases(self, databases: Mapping[str, Any]) -> None:
        for entry in databases.values():
            if not isinstance(entry, Mapping):
                continue
            self.add(entry.get("PASSWORD"))
            options = entry.get("OPTIONS")
            if isinstance(options, Mapping):
                for key in _SENSITIVE_OPTIONS:
                    self.add(options.get(key))

    def __call__(self, text: str) -> str:
        if "PRIVATE KEY-----" in text:
            text = _PEM_KEY_RE.sub("[private key not shown]", text)
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class _MaskedStream(io.TextIOBase):
    """A text stream that masks everything written through it."""

    def __init__(self, stream: TextIO, masker: Masker) -> None:
        self._stream = stream
        self._masker = masker

    def write(self, text: str) -> int:
        self._stream.write(self._masker(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(self._stream.isatty())

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"


@contextlib.contextmanager
def _masked_output(masker: Masker) -> Iterator[None]:
    saved = sys.stdout, sys.stderr
    sys.stdout = _MaskedStream(sys.stdout, masker)
    sys.stderr = _MaskedStream(sys.stderr, masker)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = saved


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(exc: BaseException) -> str:
    """A one-line description of a driver error (masked later by the output stream)."""
    return _one_line(f"{type(exc).__name__}: {exc}")


# -- output helpers -----------------------------------------------------------------------


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


# -- where the aliases come from ----------------------------------------------------------


@dataclass
class Source:
    """The ``DATABASES`` (and routers) the command works on."""

    label: str
    databases: dict[str, dict[str, Any]]
    routers: list[Any] = field(default_factory=list)
    from_settings: bool = False


def load_source(masker: Masker | None = None) -> Source:
    """Django settings when ``DJANGO_SETTINGS_MODULE`` is set, else the environment."""
    from multipool.errors import ConfigurationError

    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if module:
        from django.conf import settings

        try:
            databases = dict(settings.DATABASES)
            routers = list(getattr(settings, "DATABASE_ROUTERS", []))
        except ConfigurationError:
            raise
        except Exception as exc:
            raise UsageError(
                f"cannot load the Django settings {module!r} (DJANGO_SETTINGS_MODULE): "
                f"{_error_text(exc)}"
            ) from None
        source = Source(f"Django settings {module}", databases, routers, from_settings=True)
    else:
        from multipool.config import databases as env_databases

        source = Source("environment", env_databases(search_path=os.getcwd(), validate=False))
    if masker is not None:
        masker.add_databases(source.databases)
    return source


def setup_django(source: Source | None = None) -> None:
    """Make Django usable: the user's settings, or a minimal configuration of our own."""
    import django
    from django.conf import settings

    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        try:
            django.setup()
        except Exception as exc:
            from multipool.errors import ConfigurationError

            if isinstance(exc, ConfigurationError):
                raise
            raise UsageError(f"cannot set up Django: {_error_text(exc)}") from None
        return
    if settings.configured:
        return
    databases = source.databases if source is not None else load_source().databases
    settings.configure(
        DATABASES=copy.deepcopy(databases),
        INSTALLED_APPS=["multipool"],
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def _ensure_settings() -> None:
    """Django set up enough for database wrappers (no app of ours needed)."""
    import django
    from django.apps import apps
    from django.conf import settings

    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        setup_django()
        return
    if not settings.configured:
        settings.configure(USE_TZ=True, TIME_ZONE="UTC", INSTALLED_APPS=[], DATABASES={})
    if not apps.ready:
        django.setup()


def _engine(entry: Mapping[str, Any]) -> str:
    engine = entry.get("ENGINE")
    return engine if isinstance(engine, str) else ""


def _is_multipool(entry: Mapping[str, Any]) -> bool:
    return _engine(entry).startswith("multipool.backends.")


def _vendor_of(entry: Mapping[str, Any]) -> str:
    engine = _engine(entry)
    for vendor, word in (("postgresql", "postgres"), ("mysql", "mysql"), ("sqlite", "sqlite")):
        if word in engine:
            return vendor
    return engine.rsplit(".", 1)[-1] or "?"


def _select(source: Source, aliases: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    if not aliases:
        return dict(source.databases)
    unknown = [a for a in aliases if a not in source.databases]
    if unknown:
        known = ", ".join(source.databases) or "none"
        raise UsageError(f"unknown alias {', '.join(unknown)} (configured: {known})")
    return {a: source.databases[a] for a in aliases}


# -- config ---------------------------------------------------------------------------------


def _shown_path(path: str | None, setting: str) -> str | None:
    if path is None:
        return None
    if "multipool-tls-" in path:  # PEM text given in the setting, written to a private file
        return f"(PEM text from {setting})"
    return path


def describe_alias(alias: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Everything about one alias, for display: never a password (``***`` when set)."""
    from multipool.checks import spec_of
    from multipool.errors import ConfigurationError

    engine = _engine(entry)
    out: dict[str, Any] = {"alias": alias, "engine": engine, "vendor": _vendor_of(entry)}
    try:
        spec = spec_of(alias, entry)
    except ConfigurationError as exc:
        out["error"] = str(exc)
        return out
    except Exception as exc:
        out["error"] = f"the entry cannot be read ({type(exc).__name__})"
        return out
    pooled = _is_multipool(entry) and spec.pool.enabled
    role = "primary" if spec.replica_of is None else f"replica of {spec.replica_of}"
    tls = spec.tls
    out.update(
        {
            "vendor": spec.vendor,
            "role": role,
            "replicas": list(spec.replicas),
            "host": spec.host,
            "port": spec.port,
            "database": spec.name,
            "user": spec.user,
            "password": MASK if spec.password else None,
            "pooled": pooled,
            "pool": dataclasses.asdict(spec.pool),
            "conn_max_age": spec.conn_max_age,
            "tls": None
            if spec.vendor == "sqlite"
            else {
                "mode": tls.mode or "driver default",
                "verifies": tls.verifies,
                "ca": _shown_path(tls.ca, spec.setting("tls_ca")),
                "client_cert": tls.cert is not None,
                "cert": _shown_path(tls.cert, spec.setting("tls_cert")),
                "key": _shown_path(tls.key, spec.setting("tls_key")),
                "key_encrypted": bool(tls.key_password),
                "min_version": tls.min_version,
                "crl": tls.crl is not None,
            },
            "settings": {k: v for k, v in spec.settings},
        }
    )
    return out


def cmd_config(args: argparse.Namespace, masker: Masker) -> int:
    source = load_source(masker)
    described = [describe_alias(a, e) for a, e in _select(source, args.alias).items()]
    if args.json:
        _print_json({"source": source.label, "aliases": described})
        return EXIT_OK if not any("error" in d for d in described) else EXIT_USAGE
    print(f"source: {source.label}")
    rows = []
    errors = []
    for d in described:
        if "error" in d:
            errors.append(f"{d['alias']}: {d['error']}")
            continue
        if not _is_multipool({"ENGINE": d["engine"]}):
            pool = "not pooled"
        elif not d["pool"]["enabled"]:
            pool = "off"
        else:
            pool = f"{d['pool']['size']}+{d['pool']['max_overflow']}"
            if d["pool"]["pooler"]:
                pool += f" via {d['pool']['pooler']}"
        tls = d["tls"]
        rows.append(
            [
                d["alias"],
                d["role"],
                d["vendor"],
                d["host"],
                d["port"],
                d["database"],
                d["user"],
                d["password"],
                pool,
                f"{d['pool']['timeout']:g}s",
                "None" if d["conn_max_age"] is None else d["conn_max_age"],
                "n/a" if tls is None else tls["mode"],
                None if tls is None else tls["ca"],
                "n/a" if tls is None else ("yes" if tls["client_cert"] else "no"),
            ]
        )
    if rows:
        print(
            render_table(
                [
                    "ALIAS",
                    "ROLE",
                    "ENGINE",
                    "HOST",
                    "PORT",
                    "DATABASE",
                    "USER",
                    "PASSWORD",
                    "POOL",
                    "TIMEOUT",
                    "CONN_MAX_AGE",
                    "TLS",
                    "CA",
                    "CLIENT CERT",
                ],
                rows,
            )
        )
        print("POOL = pool_size+max_overflow per process; --json shows every setting")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_USAGE if errors else EXIT_OK


# -- connecting -------------------------------------------------------------------------------


@contextlib.contextmanager
def direct_connection(
    alias: str, entry: Mapping[str, Any], *, timeout: float = 10.0
) -> Iterator[Any]:
    """A Django connection wrapper for ``alias`` that bypasses the pool (closed on exit).

    Same settings, translated to driver parameters by the alias's own backend,
    but ``pool_enabled=False`` and a connect timeout: one physical connection.
    """
    from django.db.utils import ConnectionHandler

    _ensure_settings()
    settings_dict = copy.deepcopy(dict(entry))
    options = dict(settings_dict.get("OPTIONS") or {})
    if _is_multipool(settings_dict):
        options["pool_enabled"] = False
    if _vendor_of(settings_dict) in ("postgresql", "mysql") and "connect_timeout" not in options:
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


def _fetch(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return [tuple(row) for row in cursor.fetchall()]


def _server_version(conn: Any) -> str:
    if conn.vendor == "postgresql":
        return f"PostgreSQL {_fetch(conn, 'SHOW server_version')[0][0]}".split(" (")[0]
    if conn.vendor == "mysql":
        version = str(_fetch(conn, "SELECT VERSION()")[0][0])
        if "mariadb" in version.lower():
            return f"MariaDB {version.split('-MariaDB')[0]}"
        return f"MySQL {version}"
    if conn.vendor == "sqlite":
        return f"SQLite {_fetch(conn, 'SELECT sqlite_version()')[0][0]}"
    return conn.vendor


def _server_tls(conn: Any) -> tuple[str | None, str | None]:
    """(protocol, cipher) of this session, as the server reports them."""
    if conn.vendor == "postgresql":
        rows = _fetch(conn, "SELECT version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        if rows and rows[0][0]:
            return str(rows[0][0]), str(rows[0][1])
        return None, None
    if conn.vendor == "mysql":
        values = {}
        for name in ("Ssl_version", "Ssl_cipher"):
            rows = _fetch(conn, f"SHOW SESSION STATUS LIKE '{name}'")
            values[name] = str(rows[0][1]) if rows and rows[0][1] else None
        return values["Ssl_version"], values["Ssl_cipher"]
    return None, None


def probe(alias: str, entry: Mapping[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Connect once (no pool) and report server version, TLS and round-trip time."""
    result: dict[str, Any] = {"alias": alias, "vendor": _vendor_of(entry), "ok": False}
    if result["vendor"] == "sqlite":
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
            samples = []
            for _ in range(5):
                started = time.perf_counter()
                _fetch(conn, "SELECT 1")
                samples.append(time.perf_counter() - started)
            result["rtt_seconds"] = statistics.median(samples)
            result["ok"] = True
    except Exception as exc:
        result["error"] = _error_text(exc)
    return result


# -- check ------------------------------------------------------------------------------------

_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def _message_dict(message: Any) -> dict[str, Any]:
    level = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}.get(
        message.level, str(message.level)
    )
    return {
        "id": message.id,
        "level": level,
        "object": None if message.obj is None else str(message.obj),
        "message": message.msg,
        "hint": message.hint,
    }


def _not_silenced(messages: list[Any]) -> list[Any]:
    """Without the ids in ``SILENCED_SYSTEM_CHECKS`` (Django settings), as ``manage.py check``."""
    from django.conf import settings

    silenced = set(getattr(settings, "SILENCED_SYSTEM_CHECKS", ()) or ())
    return [m for m in messages if m.id not in silenced]


def cmd_check(args: argparse.Namespace, masker: Masker) -> int:
    from multipool.checks import check_databases, check_deployment

    source = load_source(masker)
    databases = _select(source, args.alias)
    _ensure_settings()
    # every alias counts (a replica names its primary); only the selected are reported
    messages = check_databases(source.databases, source.routers, aliases=databases)
    if args.deploy:
        messages += check_deployment(source.databases, aliases=databases)
    messages = _not_silenced(messages)
    fail_level = _LEVELS[args.fail_level]
    failing = [m for m in messages if m.level >= fail_level]
    probes = []
    if args.connect:
        probes = [probe(a, e, timeout=args.timeout) for a, e in databases.items()]
    failed_connects = [p for p in probes if not p["ok"]]
    code = EXIT_PROBLEMS if failing or failed_connects else EXIT_OK

    if args.json:
        _print_json(
            {
                "source": source.label,
                "aliases": list(databases),
                "messages": [_message_dict(m) for m in messages],
                "connections": probes if args.connect else None,
                "ok": code == EXIT_OK,
            }
        )
        return code

    print(f"source: {source.label} ({len(databases)} alias{'es' if len(databases) != 1 else ''})")
    for m in messages:
        print(str(m))
    errors = sum(1 for m in messages if m.is_serious())
    warnings = len(messages) - errors
    if messages:
        print(
            f"System check identified {len(messages)} issue{'s' if len(messages) != 1 else ''} "
            f"({errors} error{'s' if errors != 1 else ''}, "
            f"{warnings} warning{'s' if warnings != 1 else ''})."
        )
    else:
        print("System check identified no issues.")
    if args.connect:
        rows = []
        for p in probes:
            status = "ok" if p["ok"] else "FAILED"
            rows.append(
                [
                    p["alias"],
                    status,
                    p.get("server"),
                    p.get("tls_protocol")
                    or ("n/a" if p["vendor"] == "sqlite" else "none" if p["ok"] else None),
                    p.get("tls_cipher"),
                    _ms(p.get("connect_seconds")),
                    _ms(p.get("rtt_seconds")),
                ]
            )
        print()
        print(render_table(["ALIAS", "STATUS", "SERVER", "TLS", "CIPHER", "CONNECT", "RTT"], rows))
        for p in probes:
            if p.get("note"):
                print(f"{p['alias']}: {p['note']}")
            if not p["ok"]:
                print(f"{p['alias']}: connect failed: {p['error']}", file=sys.stderr)
    return code


# -- certs ------------------------------------------------------------------------------------


def cmd_certs_init(args: argparse.Namespace, masker: Masker) -> int:
    from multipool.certs import CertificateExistsError, generate_dev_certs

    directory = args.directory
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    try:
        paths = generate_dev_certs(
            directory,
            hosts=args.host or (),
            clients=args.client or ("certuser",),
            days=args.days,
            overwrite=args.force,
            key_type=args.key_type,
        )
    except CertificateExistsError as exc:
        print(
            f"multipool: {exc.path} already exists; nothing was written. Use --force to "
            "replace every file of the bundle (a new CA), or `multipool certs client "
            f"{directory} USER` to add a client certificate signed by the existing CA",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    except (NotADirectoryError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        print(f"multipool: cannot write the certificates: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    files: list[tuple[str, str, str]] = [
        (str(paths.ca_cert), "CA certificate", "0644"),
        (str(paths.ca_key), "CA private key: keep it secret, it signs certificates", "0600"),
        (str(paths.server_cert), "server certificate", "0644"),
        (str(paths.server_key), "server private key", "0600"),
    ]
    for user, (cert, key) in paths.clients.items():
        files.append((str(cert), f"client certificate for user {user!r}", "0644"))
        files.append((str(key), f"client private key for user {user!r}", "0600"))
    if args.json:
        _print_json(
            {
                "directory": str(paths.directory),
                "overwritten": bool(args.force),
                "files": [{"path": p, "what": w, "mode": m} for p, w, m in files],
            }
        )
        return EXIT_OK
    verb = "wrote (--force: existing files replaced)" if args.force else "created"
    print(f"{verb} a development CA, valid {args.days} days, in {paths.directory}/:")
    print(render_table(["FILE", "MODE", "WHAT"], [[p, m, w] for p, w, m in files], indent="  "))
    first = next(iter(paths.clients.items()), None)
    print()
    print("Server (PostgreSQL postgresql.conf):")
    print(
        f"  ssl = on\n  ssl_cert_file = '{paths.server_cert}'\n"
        f"  ssl_key_file = '{paths.server_key}'\n  ssl_ca_file = '{paths.ca_cert}'"
    )
    print("Server (MySQL/MariaDB my.cnf [mysqld]):")
    print(
        f"  ssl_cert = {paths.server_cert}\n  ssl_key = {paths.server_key}\n"
        f"  ssl_ca = {paths.ca_cert}"
    )
    print("Application environment:")
    print(f"  DATABASE_SSLMODE=verify-full\n  DATABASE_SSLROOTCERT={paths.ca_cert}")
    if first is not None:
        cert, key = first[1]
        print(f"  # client certificate login ({first[0]})")
        print(f"  DATABASE_SSLCERT={cert}")
        print(f"  DATABASE_SSLKEY={key}")
    print("For development only: the keys are not encrypted.")
    return EXIT_OK


def cmd_certs_client(args: argparse.Namespace, masker: Masker) -> int:
    from multipool.certs import CertificateExistsError, add_client_certs

    if args.days < 1:
        raise UsageError("--days must be at least 1")
    try:
        paths = add_client_certs(
            args.directory, args.user, days=args.days, overwrite=args.force,
            key_type=args.key_type,
        )
    except CertificateExistsError as exc:
        print(
            f"multipool: {exc.path} already exists; nothing was written (--force replaces it)",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    files = []
    for user, (cert, key) in paths.clients.items():
        files.append((str(cert), f"client certificate for user {user!r}", "0644"))
        files.append((str(key), f"client private key for user {user!r}", "0600"))
    if args.json:
        _print_json({"directory": str(paths.directory),
                     "files": [{"path": p, "what": w, "mode": m} for p, w, m in files]})
        return EXIT_OK
    print(f"issued by {paths.ca_cert}, valid {args.days} days:")
    print(render_table(["FILE", "MODE", "WHAT"], [[p, m, w] for p, w, m in files], indent="  "))
    return EXIT_OK


# -- budget -----------------------------------------------------------------------------------

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_POOLER_FOR = {"postgresql": "PgBouncer", "mysql": "ProxySQL"}


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def server_host(host: str | None) -> str:
    """One name per server for the budget: every spelling of this machine (no host,
    a Unix socket, localhost, 127.0.0.1, ::1) is ``localhost``; addresses are
    normalized, names lower-cased. (Two names of one remote server still count
    twice: nothing short of asking the servers tells them apart.)"""
    import ipaddress

    if not host or host.startswith("/") or host.lower() in _LOOPBACK_NAMES:
        return "localhost"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower()
    return "localhost" if address.is_loopback else str(address)


def server_connection_limit(conn: Any) -> dict[str, int]:
    """The connections an application can open on this server, read from the server."""
    if conn.vendor == "postgresql":
        rows = _fetch(
            conn,
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "COALESCE(current_setting('reserved_connections', true), '0')::int",
        )
        maximum, superuser, reserved = (int(v) for v in rows[0])
        return {
            "max_connections": maximum,
            "reserved": superuser + reserved,
            "available": maximum - superuser - reserved,
        }
    if conn.vendor == "mysql":
        maximum = int(_fetch(conn, "SELECT @@max_connections")[0][0])
        return {"max_connections": maximum, "reserved": 0, "available": maximum}
    raise ValueError(f"no connection limit for {conn.vendor}")


def cmd_budget(args: argparse.Namespace, masker: Masker) -> int:
    from multipool.checks import spec_of
    from multipool.errors import ConfigurationError

    if args.workers < 1 or args.hosts < 1 or args.threads < 1:
        raise UsageError("--workers, --hosts and --threads must be at least 1")
    if args.max_connections is not None and args.max_connections < 1:
        raise UsageError("--max-connections must be at least 1")
    source = load_source(masker)
    databases = _select(source, args.alias)
    processes = args.workers * args.hosts

    groups: dict[str, list[dict[str, Any]]] = {}
    skipped: list[dict[str, Any]] = []
    for alias, entry in databases.items():
        try:
            spec = spec_of(alias, entry)
        except ConfigurationError as exc:
            raise UsageError(str(exc)) from None
        if spec.vendor == "sqlite":
            skipped.append({"alias": alias, "reason": "SQLite is embedded: no server connections"})
            continue
        pooled = _is_multipool(entry) and spec.pool.enabled
        per_process = spec.pool.size + spec.pool.max_overflow if pooled else args.threads
        port = spec.port or _DEFAULT_PORTS.get(spec.vendor)
        server = f"{spec.vendor}://{server_host(spec.host)}:{port}"
        groups.setdefault(server, []).append(
            {
                "alias": alias,
                "entry": entry,
                "vendor": spec.vendor,
                "pooled": pooled,
                "pooler": spec.pool.pooler,
                "pool_size": spec.pool.size if pooled else None,
                "max_overflow": spec.pool.max_overflow if pooled else None,
                "per_process": per_process,
                "fleet": per_process * processes,
                "size_setting": spec.setting("pool_size"),
                "overflow_setting": spec.setting("max_overflow"),
                "pooler_setting": spec.setting("pooler"),
            }
        )

    servers: list[dict[str, Any]] = []
    over = False
    failed = False
    for server, members in groups.items():
        demand = sum(m["fleet"] for m in members)
        info: dict[str, Any] = {
            "server": server,
            "vendor": members[0]["vendor"],
            "aliases": [m["alias"] for m in members],
            "demand": demand,
            "available": None,
            "max_connections": None,
            "status": "unknown",
            "advice": [],
        }
        behind_pooler = next((m["pooler"] for m in members if m["pooler"]), None)
        if behind_pooler:
            info["status"] = "n/a"
            info["note"] = (
                f"behind {behind_pooler}: compare with the pooler's client limit "
                "(max_client_conn), not the server's max_connections"
            )
        elif args.max_connections is not None:
            info["available"] = info["max_connections"] = args.max_connections
        elif args.connect:
            first = members[0]
            try:
                with direct_connection(first["alias"], first["entry"], timeout=args.timeout) as c:
                    limit = server_connection_limit(c)
                info.update(limit)
            except Exception as exc:
                info["status"] = "FAILED"
                info["error"] = _error_text(exc)
                failed = True
        if info["available"] is not None:
            available = int(info["available"])
            if demand > available:
                info["status"] = "OVER"
                over = True
                info["advice"] = _budget_advice(members, available, processes)
            else:
                info["status"] = "ok"
            info["headroom"] = available - demand
        servers.append(info)

    code = EXIT_PROBLEMS if over or failed else EXIT_OK
    aliases = [
        {k: v for k, v in m.items() if not k.endswith("_setting") and k != "entry"}
        for members in groups.values()
        for m in members
    ]
    if args.json:
        _print_json(
            {
                "source": source.label,
                "workers": args.workers,
                "hosts": args.hosts,
                "threads": args.threads,
                "processes": processes,
                "aliases": aliases,
                "servers": servers,
                "skipped": skipped,
                "over_budget": over,
            }
        )
        return code

    print(
        f"fleet: {args.hosts} host{'s' if args.hosts != 1 else ''} x {args.workers} "
        f"worker{'s' if args.workers != 1 else ''} = {processes} processes "
        f"(source: {source.label})"
    )
    rows = []
    for members in groups.values():
        for m in members:
            pool = (
                f"{m['pool_size']}+{m['max_overflow']}"
                if m["pooled"]
                else f"not pooled ({args.threads} thread{'s' if args.threads != 1 else ''})"
            )
            rows.append([m["alias"], pool, m["per_process"], m["fleet"]])
    if rows:
        print(render_table(["ALIAS", "POOL", "PER PROCESS", "FLEET WORST CASE"], rows))
        print()
        srows = []
        for s in servers:
            srows.append(
                [
                    s["server"],
                    ", ".join(s["aliases"]),
                    s["demand"],
                    s.get("max_connections"),
                    s.get("available"),
                    s["status"],
                ]
            )
        print(
            render_table(
                ["SERVER", "ALIASES", "WORST CASE", "MAX_CONNECTIONS", "AVAILABLE", "STATUS"],
                srows,
            )
        )
    for s in servers:
        if s.get("note"):
            print(f"{s['server']}: {s['note']}")
        if s.get("error"):
            print(f"{s['server']}: connect failed: {s['error']}", file=sys.stderr)
        if s["status"] == "OVER":
            print()
            print(
                f"{s['server']} is over budget: {s['demand']} worst-case connections > "
                f"{s['available']} available."
            )
            for line in s["advice"]:
                print(f"  - {line}")
    for sk in skipped:
        print(f"{sk['alias']}: skipped ({sk['reason']})")
    if all(s["available"] is None for s in servers) and servers and not args.connect:
        print("give --max-connections K or --connect to compare with the server's limit")
    return code


def _budget_advice(members: list[dict[str, Any]], available: int, processes: int) -> list[str]:
    vendor = members[0]["vendor"]
    share = available // (processes * len(members))
    advice = []
    if share >= 1:
        for m in members:
            if m["pooled"]:
                size = max(1, (share + 1) // 2) if share > 1 else 1
                overflow = share - size
                advice.append(
                    f"{m['alias']}: keep pool_size + max_overflow <= {share} per process, "
                    f"e.g. {m['size_setting']}={size} and {m['overflow_setting']}={overflow}"
                )
            else:
                advice.append(
                    f"{m['alias']}: not pooled; use a multipool backend to cap it at "
                    f"{share} per process"
                )
    else:
        advice.append(
            f"even one connection per process is too many ({processes} processes, "
            f"{available} available)"
        )
    advice.append(
        "or run fewer workers/hosts, or raise max_connections on the server (memory permitting)"
    )
    pooler = _POOLER_FOR.get(vendor)
    if pooler:
        setting = members[0]["pooler_setting"]
        advice.append(
            f"or put {pooler} in front of the server (transaction pooling) and set "
            f"{setting}={pooler.lower()}"
        )
    return advice


# -- status ---------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, masker: Masker) -> int:
    source = load_source(masker)
    setup_django(source)
    from django.conf import settings

    masker.add_databases(settings.DATABASES)
    failures = warm_pools(settings.DATABASES) if args.connect else {}
    rows = pool_status(settings.DATABASES)
    if args.json:
        _print_json(
            {"source": source.label, "pid": os.getpid(), "aliases": rows,
             "connect_errors": failures}
        )
    else:
        print(f"source: {source.label}")
        print(f"pool statistics of this process (pid {os.getpid()}):")
        print(render_pool_status(rows))
        for alias, error in failures.items():
            print(f"{alias}: connect failed: {error}", file=sys.stderr)
    return EXIT_PROBLEMS if failures else EXIT_OK


# -- demo ------------------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label = label
        self.total = max(1, total)
        self.enabled = enabled
        self._last = -1.0

    def update(self, done: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.05:
            return
        self._last = now
        width = 30
        filled = int(width * done / self.total)
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\r  {self.label:<28} [{bar}] {done}/{self.total}")
        sys.stderr.flush()

    def finish(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


class _DemoRequest:
    """The ``sender`` of the request signals sent by the demo."""


def _session_id_sql(vendor: str) -> str:
    if vendor == "postgresql":
        return "SELECT pg_backend_pid()"
    if vendor == "mysql":
        return "SELECT CONNECTION_ID()"
    return "SELECT 1"


def run_load(
    alias: str,
    *,
    requests: int,
    threads: int,
    pooled: bool,
    progress: _Progress,
) -> dict[str, Any]:
    """``requests`` simulated requests on ``threads`` threads through ``connections[alias]``.

    Each request is what Django's handler does: ``request_started``, a query,
    ``request_finished`` (which gives the connection back, CONN_MAX_AGE=0).
    ``pooled=False`` runs the same alias with ``pool_enabled=False`` and
    ``CONN_MAX_AGE=0``: a new connection per request.
    """
    from django.core.signals import request_finished, request_started
    from django.db import connections
    from django.db.backends.signals import connection_created

    from multipool.pools import manager

    original = connections.settings[alias]
    vendor = _vendor_of(original)
    if not pooled:
        changed = copy.deepcopy(original)
        options = dict(changed.get("OPTIONS") or {})
        if _is_multipool(changed):
            options["pool_enabled"] = False
        changed["OPTIONS"] = options
        changed["CONN_MAX_AGE"] = 0
        connections.settings[alias] = changed
    with contextlib.suppress(Exception):
        connections[alias].close()
    with contextlib.suppress(AttributeError):
        del connections[alias]  # this thread's wrapper: rebuilt from the settings above

    sql = _session_id_sql(vendor)
    lock = threading.Lock()
    next_index = [0]
    done = [0]
    created = [0]
    latencies: list[float] = []
    sessions: set[Any] = set()
    errors: list[str] = []
    stop = threading.Event()
    ends: list[float] = []

    def on_created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == alias:
            with lock:
                created[0] += 1

    def worker() -> None:
        local_latencies = []
        local_sessions = set()
        try:
            while not stop.is_set():
                with lock:
                    if next_index[0] >= requests:
                        break
                    next_index[0] += 1
                started = time.perf_counter()
                request_started.send(sender=_DemoRequest, environ={})
                try:
                    with connections[alias].cursor() as cursor:
                        cursor.execute(sql)
                        row = cursor.fetchone()
                finally:
                    request_finished.send(sender=_DemoRequest)
                local_latencies.append(time.perf_counter() - started)
                if vendor != "sqlite" and row:
                    local_sessions.add(row[0])
                with lock:
                    done[0] += 1
        except Exception as exc:
            with lock:
                errors.append(_error_text(exc))
            stop.set()
        finally:
            finished_at = time.perf_counter()
            connections.close_all()
            with lock:
                latencies.extend(local_latencies)
                sessions.update(local_sessions)
                ends.append(finished_at)

    before = manager.stats(alias).get(alias)
    connection_created.connect(on_created, weak=False)
    workers = [threading.Thread(target=worker, name=f"demo-{i}") for i in range(threads)]
    started = time.perf_counter()
    try:
        for t in workers:
            t.start()
        for t in workers:
            while t.is_alive():
                progress.update(done[0])
                t.join(0.05)
    finally:
        # The workers' own end times: the main thread's polling adds no time.
        elapsed = (max(ends) if ends else time.perf_counter()) - started
        connection_created.disconnect(on_created)
        connections.settings[alias] = original
    progress.finish(done[0])
    after = manager.stats(alias).get(alias)

    if pooled and after is not None:
        connects = after.connects - (before.connects if before is not None else 0)
        if before is not None and before.connects > after.connects:  # pool was replaced
            connects = after.connects
        checkouts = after.checkouts - (before.checkouts if before is not None else 0)
    else:
        connects = created[0]
        checkouts = None
    ordered = sorted(latencies)

    def pct(p: float) -> float | None:
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {
        "mode": "pooled" if pooled else "unpooled",
        "requests": done[0],
        "threads": threads,
        "seconds": elapsed,
        "requests_per_second": done[0] / elapsed if elapsed > 0 else None,
        "latency_p50_seconds": pct(0.50),
        "latency_p95_seconds": pct(0.95),
        "connects": connects,
        "checkouts": checkouts,
        "server_sessions": len(sessions) if vendor != "sqlite" else None,
        "error": errors[0] if errors else None,
    }


def _demo_target(alias: str, entry: Mapping[str, Any]) -> str:
    vendor = _vendor_of(entry)
    if vendor == "sqlite":
        return f"sqlite {entry.get('NAME')}"
    host = entry.get("HOST") or "localhost"
    port = entry.get("PORT") or _DEFAULT_PORTS.get(vendor, "")
    return f"{vendor} {host}:{port}/{entry.get('NAME')}"


def cmd_demo(args: argparse.Namespace, masker: Masker) -> int:
    if args.requests < 1 or args.threads < 1:
        raise UsageError("--requests and --threads must be at least 1")
    configured_by_us = not os.environ.get("DJANGO_SETTINGS_MODULE")
    from django.conf import settings

    already = settings.configured
    source = None if already or not configured_by_us else load_source(masker)
    setup_django(source)
    from django.db import connections

    from multipool.pools import manager

    masker.add_databases(settings.DATABASES)
    databases = dict(settings.DATABASES)
    if args.alias:
        unknown = [a for a in args.alias if a not in databases]
        if unknown:
            raise UsageError(f"unknown alias {', '.join(unknown)}")
        aliases = list(args.alias)
    else:
        aliases = [a for a, e in databases.items() if _is_multipool(e)]
    not_ours = [a for a in aliases if not _is_multipool(databases[a])]
    if not_ours:
        raise UsageError(f"not a multipool alias: {', '.join(not_ours)}")
    if not aliases:
        raise UsageError("no database alias uses a multipool backend")

    if configured_by_us and not already:
        origin = "Django configured by multipool from the environment (no DJANGO_SETTINGS_MODULE)"
    elif configured_by_us:
        origin = "Django settings already configured in this process"
    else:
        origin = f"Django settings {os.environ['DJANGO_SETTINGS_MODULE']}"
    show_progress = not args.no_progress and not args.json and sys.stderr.isatty()
    if not args.json:
        print(f"source: {origin}")
        print(
            f"multipool demo: {args.requests} requests on {args.threads} threads per run; each "
            "request is request_started -> one query -> request_finished"
        )

    results = []
    failed = False
    try:
        for alias in aliases:
            entry = databases[alias]
            from multipool.checks import spec_of

            spec = spec_of(alias, entry)
            header = (
                f"alias {alias!r}: {_demo_target(alias, entry)} "
                f"(pool_size {spec.pool.size}, max_overflow {spec.pool.max_overflow}"
                f"{', pooling DISABLED in the settings' if not spec.pool.enabled else ''})"
            )
            if not args.json:
                print()
                print(header)
            # Untimed warm-up (imports, first-use setup): the timed runs compare steady states.
            warm = run_load(
                alias,
                requests=args.threads,
                threads=args.threads,
                pooled=False,
                progress=_Progress("", 1, False),
            )
            if warm["error"]:
                failed = True
                results.append({"alias": alias, "vendor": spec.vendor, "error": warm["error"]})
                if not args.json:
                    print(f"  cannot connect: {warm['error']}", file=sys.stderr)
                continue
            runs = {}
            for pooled in (False, True):
                label = "pooled" if pooled else "new connection per request"
                runs[label] = run_load(
                    alias,
                    requests=args.requests,
                    threads=args.threads,
                    pooled=pooled,
                    progress=_Progress(label, args.requests, show_progress),
                )
                if runs[label]["error"]:
                    failed = True
                    break
            stats = manager.stats(alias).get(alias)
            result = {
                "alias": alias,
                "vendor": spec.vendor,
                "target": _demo_target(alias, entry),
                "pool_size": spec.pool.size,
                "max_overflow": spec.pool.max_overflow,
                "conn_max_age": spec.conn_max_age,
                "unpooled": runs.get("new connection per request"),
                "pooled": runs.get("pooled"),
                "pool_stats": stats.as_dict() if stats is not None else None,
            }
            p, u = result["pooled"], result["unpooled"]
            if p and u and p["requests_per_second"] and u["requests_per_second"]:
                result["speedup"] = p["requests_per_second"] / u["requests_per_second"]
            results.append(result)
            if not args.json:
                _print_demo_result(result)
            if failed:
                break
        final = pool_status({a: databases[a] for a in aliases})
        if not args.json:
            print()
            print("final pool stats (this process):")
            print(render_pool_status(final))
    finally:
        with contextlib.suppress(Exception):
            connections.close_all()
        for alias in aliases:
            manager.dispose(alias)
    if args.json:
        _print_json(
            {
                "requests": args.requests,
                "threads": args.threads,
                "source": origin,
                "aliases": results,
                "final_pool_stats": final,
                "ok": not failed,
            }
        )
    return EXIT_PROBLEMS if failed else EXIT_OK


def _print_demo_result(result: Mapping[str, Any]) -> None:
    runs = [(k, result[k]) for k in ("pooled", "unpooled") if result.get(k)]

    def fmt(run: Mapping[str, Any], key: str) -> str:
        value = run.get(key)
        if value is None:
            return "-"
        if key == "requests_per_second":
            return f"{value:,.0f}"
        if key == "seconds":
            return f"{value:.3f} s"
        if key.endswith("_seconds"):
            return _ms(value)
        return str(value)

    labels = {"pooled": "pooled", "unpooled": "new connection per request"}
    metrics = [
        ("requests", "requests"),
        ("requests/s", "requests_per_second"),
        ("total time", "seconds"),
        ("latency p50", "latency_p50_seconds"),
        ("latency p95", "latency_p95_seconds"),
        ("connects", "connects"),
        ("server sessions", "server_sessions"),
    ]
    rows = [[name, *(fmt(run, key) for _, run in runs)] for name, key in metrics]
    print(render_table(["", *(labels[k] for k, _ in runs)], rows, indent="  "))
    for _, run in runs:
        if run.get("error"):
            print(f"  {labels[_]} run failed: {run['error']}", file=sys.stderr)
    p, u = result.get("pooled"), result.get("unpooled")
    if result.get("speedup") and p and u:
        print(
            f"  pooled: {result['speedup']:.1f}x the requests/s, "
            f"{p['connects']} connects instead of {u['connects']}"
        )
    if result.get("conn_max_age") not in (0,):
        print(
            "  note: CONN_MAX_AGE is not 0, so each thread keeps its connection checked out "
            "(see multipool.W003)"
        )


# -- the parser ----------------------------------------------------------------------------------

_EPILOG = "exit codes: 0 ok, 1 problems found, 2 usage or configuration error"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multipool",
        description="Connection pools of your Django database aliases: configuration, "
        "checks, certificates, connection budget and a pooled-vs-unpooled demo. "
        "Aliases come from the Django settings when DJANGO_SETTINGS_MODULE is set, "
        "else from the environment (multipool.databases()).",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"multipool {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str, handler: Callable[..., int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG)
        p.set_defaults(handler=handler)
        return p

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def alias_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--alias", action="append", metavar="ALIAS", help="only this alias (repeatable)"
        )

    p = add("config", "Show every alias as resolved (passwords shown as ***).", cmd_config)
    alias_flag(p)
    json_flag(p)

    p = add(
        "check",
        "Run multipool's system checks on the configured aliases; --connect also connects.",
        cmd_check,
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="connect to each alias (no pool) and report server version, TLS protocol "
        "and cipher (as the server sees them) and round-trip time",
    )
    p.add_argument("--deploy", action="store_true", help="also run the deployment checks")
    p.add_argument(
        "--fail-level",
        choices=["ERROR", "WARNING", "INFO"],
        default="ERROR",
        help="message level that makes the exit code 1 (default ERROR)",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, help="connect timeout in seconds (default 10)"
    )
    alias_flag(p)
    json_flag(p)

    certs = sub.add_parser(
        "certs", help="Development certificates.", description="Development certificates."
    )
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    certs.set_defaults(handler=lambda a, m: _missing_action(certs))
    p = certs_sub.add_parser(
        "init",
        help="Create a dev CA, a server certificate and client certificates.",
        description="Create a development CA (ca.crt/ca.key), a server certificate "
        "(server.crt/server.key, for localhost, 127.0.0.1, ::1 and --host names) and "
        "client certificates (client-USER.crt/.key). Keys are written 0600, unencrypted. "
        "Existing files are never overwritten without --force.",
        epilog=_EPILOG,
    )
    p.set_defaults(handler=cmd_certs_init)
    p.add_argument("directory", nargs="?", default="certs", help="directory (default: certs)")
    p.add_argument("--host", action="append", help="extra server name or IP (repeatable)")
    p.add_argument(
        "--client",
        action="append",
        metavar="USER",
        help="client certificate for this database user (repeatable; default certuser)",
    )
    p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    p.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="default ec")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    json_flag(p)
    p = certs_sub.add_parser(
        "client",
        help="Add client certificates signed by an existing CA.",
        description="Issue client certificates (client-USER.crt/.key) signed by the CA "
        "in DIRECTORY (ca.crt/ca.key, from certs init); nothing else changes. Existing "
        "files are never overwritten without --force.",
        epilog=_EPILOG,
    )
    p.set_defaults(handler=cmd_certs_client)
    p.add_argument("directory", help="the bundle's directory (with ca.crt and ca.key)")
    p.add_argument("user", nargs="+", help="database user (one certificate each)")
    p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    p.add_argument("--key-type", choices=["ec", "rsa"], default="ec", help="default ec")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    json_flag(p)

    p = add(
        "budget",
        "Worst-case server connections of the fleet (workers x hosts x (pool_size + "
        "max_overflow)) against the server's max_connections.",
        cmd_budget,
    )
    p.add_argument("--workers", type=int, required=True, help="worker processes per host")
    p.add_argument("--hosts", type=int, required=True, help="application hosts")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per worker, for aliases that are not pooled (default 1)",
    )
    limit = p.add_mutually_exclusive_group()
    limit.add_argument(
        "--max-connections", type=int, metavar="K", help="the server's connection limit"
    )
    limit.add_argument(
        "--connect",
        action="store_true",
        help="read the limit from each server (PostgreSQL: max_connections minus reserved "
        "connections; MySQL: @@max_connections)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    alias_flag(p)
    json_flag(p)

    p = add(
        "demo",
        "Simulated request load through Django: pooled vs a new connection per request.",
        cmd_demo,
    )
    p.add_argument("--requests", type=int, default=500, help="requests per run (default 500)")
    p.add_argument("--threads", type=int, default=4, help="concurrent threads (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    alias_flag(p)
    json_flag(p)

    p = add(
        "status", "Pool statistics of this process (see manage.py multipool_status).", cmd_status
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="check out and return one connection per pooled alias first",
    )
    json_flag(p)
    return parser


def _missing_action(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: choose an action (init)", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``multipool`` console script; returns the exit code."""
    from django.core.exceptions import ImproperlyConfigured

    from multipool.errors import ConfigurationError

    masker = Masker()
    masker.add_environment(os.environ)
    with _masked_output(masker):
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        try:
            return int(handler(args, masker))
        except UsageError as exc:
            print(f"multipool: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (ConfigurationError, ImproperlyConfigured) as exc:
            print(f"multipool: configuration error: {_one_line(str(exc), 2000)}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("multipool: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return EXIT_OK
        except Exception:
            import traceback

            print("multipool: unexpected error:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return EXIT_PROBLEMS
