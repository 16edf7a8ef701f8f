"""The documentation site: ``mkdocs build --strict``, navigation, links, and the examples
of ``docs/troubleshooting.md`` (every error class, triggered for real and compared)."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import markdown
import pytest
import yaml

from multipool import errors
from multipool.certs import generate_dev_certs, issue_cert, make_ca, write_cert, write_key
from multipool.config import ENV_KEYS, read_environment, spec_from_settings
from multipool.testing.servers import in_ci

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
TROUBLESHOOTING = DOCS / "troubleshooting.md"

#: where the examples' files appear to be (temporary paths are shown as this)
EXAMPLE_DIR = "/etc/ssl/app"

#: pages written for this site (other pages belong to other parts of the project)
OWN_PAGES = ("index.md", "quickstart.md", "tls.md", "deployment.md", "migration.md",
             "troubleshooting.md")


# -- mkdocs ---------------------------------------------------------------------------------


def _nav_pages(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_pages(value)


def test_nav_lists_only_existing_pages() -> None:
    config = yaml.safe_load(MKDOCS_YML.read_text())
    assert config["docs_dir"] == "docs"
    pages = list(_nav_pages(config["nav"]))
    assert len(pages) == len(set(pages)), "a page is listed twice"
    missing = [p for p in pages if not p.startswith("http") and not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav lists pages that do not exist: {missing}"
    for page in (*OWN_PAGES, "configuration.md", "pools.md"):
        assert page in pages, page


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            message = (
                f"the documentation build needs {module!r}: pip install mkdocs mkdocs-material "
                "(the dev extra)"
            )
            if in_ci():
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in OWN_PAGES:
        name = "index.html" if page == "index.md" else f"{page[:-3]}/index.html"
        assert (tmp_path / "site" / name).is_file(), name
    # The link check's anchors are the site's: every heading id it finds is on the built page.
    for page in sorted(DOCS.glob("*.md")):
        name = "index.html" if page.name == "index.md" else f"{page.stem}/index.html"
        built = set(re.findall(r'\sid="([^"]+)"', (tmp_path / "site" / name).read_text()))
        assert _anchors(page) <= built, (page.name, sorted(_anchors(page) - built))


# -- links ------------------------------------------------------------------------------------

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)


def _markdown_extensions() -> tuple[list[str], dict[str, Any]]:
    """The markdown extensions mkdocs.yml names, with their settings."""
    names, settings = [], {}
    for entry in yaml.safe_load(MKDOCS_YML.read_text())["markdown_extensions"]:
        name, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        names.append(name)
        settings[name] = options or {}
    return names, settings


@functools.cache
def _anchors(page: Path) -> set[str]:
    """The ids of ``page`` as the site has them: headings slugged by the toc
    extension, ``{#id}`` attributes (the page rendered with mkdocs.yml's extensions)."""
    names, settings = _markdown_extensions()
    html = markdown.markdown(page.read_text(), extensions=names, extension_configs=settings)
    return set(re.findall(r'\sid="([^"]+)"', html))


def _links(page: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", page.read_text()))
    return _LINK.findall(text) + _REF.findall(text)


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = page if path == "" else (page.parent / path)
        if not resolved.exists():
            broken.append(f"{target} (no {resolved.relative_to(ROOT)})")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


@pytest.mark.parametrize("page", OWN_PAGES)
def test_variables_in_pages_are_real(page: Path | str) -> None:
    """Every ``*DATABASE_*`` word of these pages is a multipool variable (any alias)."""
    suffixes = {key.suffix for key in ENV_KEYS}
    text = (DOCS / str(page)).read_text()
    wrong = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_<])([A-Z][A-Z0-9_]*_)?DATABASE_([A-Z0-9_]+)", text):
        prefix, suffix = match.group(1), match.group(2)
        if match.group(0) == "DATABASE_ROUTERS":
            continue
        if suffix not in suffixes or (prefix and suffix == "ALIASES"):
            wrong.add(match.group(0))
    assert not wrong, f"{page}: not multipool variables: {sorted(wrong)}"


# -- troubleshooting: every error class, triggered -----------------------------------------

PG = "postgresql://app:secret@db.internal:5432/app"


def _env_error(env: dict[str, str]) -> errors.MultipoolError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            read_environment(source=env)
        except errors.MultipoolError as exc:
            return exc
    raise AssertionError(f"no error for {env}")


def _settings_error(entry: dict[str, Any]) -> errors.MultipoolError:
    try:
        spec_from_settings("default", entry)
    except errors.MultipoolError as exc:
        return exc
    raise AssertionError(f"no error for {entry}")


def _pool_timeout() -> errors.MultipoolError:
    """A real PoolTimeout: one connection, held by this thread, wanted by another."""
    from django.db import connections

    from multipool.config import databases
    from tests.conftest import _TMP, registered_alias

    entry = databases(
        source={
            "DATABASE_ALIASES": "reports",
            "REPORTS_DATABASE_URL": f"sqlite:///{_TMP / 'reports.sqlite3'}",
            "REPORTS_DATABASE_POOL_SIZE": "1",
            "REPORTS_DATABASE_MAX_OVERFLOW": "0",
            "REPORTS_DATABASE_POOL_TIMEOUT": "0.2",
        }
    )["reports"]
    caught: list[errors.MultipoolError] = []
    with registered_alias("reports", entry) as conn:
        conn.ensure_connection()

        def other() -> None:
            try:
                connections["reports"].ensure_connection()
            except errors.PoolTimeout as exc:
                caught.append(exc)
            finally:
                connections["reports"].close()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        conn.close()
    assert caught, "no PoolTimeout"
    return caught[0]


def _encryption_required(server: Any) -> errors.MultipoolError:
    """A real EncryptionRequired: ``require`` against a MariaDB server with TLS off."""
    from urllib.parse import quote

    from multipool.config import databases
    from tests.conftest import registered_alias

    password = quote(server.users["plain"].password, safe="")
    entry = databases(source={
        "DATABASE_ALIASES": "legacy",
        "LEGACY_DATABASE_URL": f"mysql://plain:{password}@{server.host}:{server.port}/multipool",
        "LEGACY_DATABASE_SSLMODE": "require",
    })["legacy"]
    with registered_alias("legacy", entry) as conn:
        try:
            conn.ensure_connection()
        except errors.EncryptionRequired as exc:
            return exc
    raise AssertionError("a plain-text connection was lent although TLS was required")


def _connect_error(alias: str, env: dict[str, str]) -> errors.MultipoolError:
    """The ConnectError of ``alias`` configured from ``env`` (without the prefix)."""
    from multipool.config import databases
    from tests.conftest import registered_alias

    prefix = f"{alias.upper()}_DATABASE_"
    source = {"DATABASE_ALIASES": alias, **{prefix + k: v for k, v in env.items()}}
    entry = databases(source=source)[alias]
    with registered_alias(alias, entry) as conn:
        try:
            conn.ensure_connection()
        except errors.ConnectError as exc:
            return exc
    raise AssertionError(f"{alias} connected with {env}")


def _url(server: Any, *, port: int | None = None, password: str | None = None) -> str:
    """The server's URL for user ``app``, without TLS options (they are set apart)."""
    from urllib.parse import quote

    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    secret = quote(password or server.users["app"].password, safe="")
    return f"{scheme}://app:{secret}@{server.host}:{port or server.port}/{server.database}"


#: the test servers' ports appear as the default ones
DEFAULT_PORTS = {"postgresql": "5432", "mysql": "3306"}


def connect_examples(pg: Any, my: Any, tmp: Path) -> list[tuple[str, str]]:
    """``(what was set, error)`` of the connect-time examples, against the test servers
    (their certificates swapped for a while). Ports appear as 5432 and 3306."""
    from multipool.certs import load_ca
    from multipool.testing.servers import free_port
    from tests.test_servers import serving_cert

    corp = make_ca("Example Corp CA")
    write_cert(tmp / "corp-ca.crt", corp.cert)
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    pg_ca, my_ca = (load_ca(s.certs.ca_cert, s.certs.ca_key) for s in (pg, my))
    names = ["localhost", pg.host]
    verify = {"SSLMODE": "verify-full", "SSLROOTCERT": str(pg.certs.ca_cert)}
    found: list[tuple[str, Any, Any]] = []
    with serving_cert(pg, *issue_cert(make_ca("Example Database CA"), "localhost", hosts=names)):
        found.append(("ORDERS_DATABASE_SSLROOTCERT = a CA that did not issue the server's "
                      "certificate", pg, _connect_error("orders", {
                          "URL": _url(pg), **verify, "SSLROOTCERT": str(tmp / "corp-ca.crt")})))
    old = issue_cert(pg_ca, "localhost", hosts=names, not_before=start,
                     not_after=start + dt.timedelta(days=30))
    with serving_cert(pg, *old):
        found.append(("ORDERS_DATABASE_SSLMODE=verify-full, the server's certificate expired", pg,
                      _connect_error("orders", {"URL": _url(pg), **verify})))
    with serving_cert(my, *issue_cert(my_ca, "db.internal", hosts=["db.internal"])):
        found.append((f"LEGACY_DATABASE_URL=mysql://...@{my.host}:3306/..., the server's "
                      "certificate is for db.internal", my, _connect_error("legacy", {
                          "URL": _url(my), "SSLMODE": "verify-full",
                          "SSLROOTCERT": str(my.certs.ca_cert)})))
    closed = free_port(pg.host)
    found.append((f"ORDERS_DATABASE_URL=postgresql://...@{pg.host}:5432/..., no server on that "
                  "port", closed, _connect_error("orders", {"URL": _url(pg, port=closed)})))
    with socket.create_server((pg.host, 0)) as silent:
        port = silent.getsockname()[1]
        found.append(("ORDERS_DATABASE_CONNECT_TIMEOUT=1, a host that never answers", port,
                      _connect_error("orders", {"URL": _url(pg, port=port),
                                                "CONNECT_TIMEOUT": "1"})))
    found.append(("ORDERS_DATABASE_URL with a wrong password", pg, _connect_error(
        "orders", {"URL": _url(pg, password="wrong-password"), **verify})))
    out = []
    for label, where, exc in found:
        port = str(where if isinstance(where, int) else where.port)
        engine = "mysql" if where is my else "postgresql"
        text = f"{type(exc).__name__}: {exc}".replace(f":{port} ", f":{DEFAULT_PORTS[engine]} ")
        out.append((label, text.replace(str(tmp), EXAMPLE_DIR)))
    return out


def error_examples(tmp: Path) -> list[tuple[str, str]]:
    """``(what was set, error)`` of the examples in ``docs/troubleshooting.md``.

    File paths under ``tmp`` appear as ``/etc/ssl/app`` in :func:`shown`.
    """
    certs = generate_dev_certs(tmp, clients=["app"])
    cert, key = certs.client("app")
    not_pem = tmp / "ca.crt.der"
    not_pem.write_text("not a certificate")
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    old_ca = make_ca()
    old_cert, old_key = issue_cert(
        old_ca, "app", usage="client", not_before=start, not_after=start + dt.timedelta(days=30)
    )
    write_cert(tmp / "old-ca.crt", old_ca.cert)
    write_cert(tmp / "expired.crt", old_cert)
    write_key(tmp / "expired.key", old_key)
    loose = tmp / "loose.key"
    loose.write_bytes(key.read_bytes())
    os.chmod(loose, 0o644)
    verify = {"DATABASE_URL": PG, "DATABASE_SSLMODE": "verify-full",
              "DATABASE_SSLROOTCERT": str(certs.ca_cert)}
    bouncer = {"DATABASE_URL": PG, "DATABASE_POOLER": "pgbouncer"}
    cases: list[tuple[str, Any]] = [
        ("DATABASE_ALIASES=legacy, no LEGACY_DATABASE_URL",
         {"DATABASE_URL": PG, "DATABASE_ALIASES": "legacy"}),
        ("DATABASE_ALIASES=Legacy-DB", {"DATABASE_URL": PG, "DATABASE_ALIASES": "Legacy-DB"}),
        ("DATABASE_URL=postgresql://app:secret@db.internal:5432",
         {"DATABASE_URL": "postgresql://app:secret@db.internal:5432"}),
        ("DATABASE_URL=postgresql://app:p@ss:word@db:5432/app",
         {"DATABASE_URL": "postgresql://app:p@ss:word@db:5432/app"}),
        ("DATABASE_URL=postgresql://app:secret@db:65536/app",
         {"DATABASE_URL": "postgresql://app:secret@db:65536/app"}),
        ("DATABASE_URL=oracle://app:secret@db/app", {"DATABASE_URL": "oracle://app:secret@db/app"}),
        ("DATABASE_POOL_SIZE=lots", {"DATABASE_URL": PG, "DATABASE_POOL_SIZE": "lots"}),
        ("DATABASE_POOL_RECYCLE=0", {"DATABASE_URL": PG, "DATABASE_POOL_RECYCLE": "0"}),
        ("DATABASE_POOLER=proxysql on PostgreSQL",
         {"DATABASE_URL": PG, "DATABASE_POOLER": "proxysql"}),
        ("DATABASE_POOLER=pgbouncer with DATABASE_POOL_RESET=session",
         {**bouncer, "DATABASE_POOL_RESET": "session"}),
        ("DATABASE_POOLER=pgbouncer with ?prepare_threshold=5 in the URL",
         {**bouncer, "DATABASE_URL": PG + "?prepare_threshold=5"}),
        ("DATABASE_POOLER=pgbouncer with ?assume_role=reporting in the URL",
         {**bouncer, "DATABASE_URL": PG + "?assume_role=reporting"}),
        ("OPTIONS={'pool': True} (Django 5.1+'s own pool)",
         {"ENGINE": "multipool.backends.postgresql", "NAME": "app", "OPTIONS": {"pool": True}}),
        ("DATABASE_SSLMODE=verify", {"DATABASE_URL": PG, "DATABASE_SSLMODE": "verify"}),
        ("DATABASE_SSLMODE=verify-full without DATABASE_SSLROOTCERT",
         {"DATABASE_URL": PG, "DATABASE_SSLMODE": "verify-full"}),
        ("DATABASE_SSLCERT without DATABASE_SSLKEY", {**verify, "DATABASE_SSLCERT": str(cert)}),
        ("DATABASE_SSL_MIN_VERSION=TLSv1.0",
         {"DATABASE_URL": PG, "DATABASE_SSL_MIN_VERSION": "TLSv1.0"}),
        ("DATABASE_SSL_CIPHERS=HIGH on PostgreSQL",
         {"DATABASE_URL": PG, "DATABASE_SSL_CIPHERS": "HIGH"}),
        ("DATABASE_SSLMODE=require on SQLite",
         {"DATABASE_URL": "sqlite:///db.sqlite3", "DATABASE_SSLMODE": "require"}),
        ("DATABASE_SSLROOTCERT=/etc/ssl/app/missing-ca.pem",
         {**verify, "DATABASE_SSLROOTCERT": f"{tmp}/missing-ca.pem"}),
        ("DATABASE_SSLROOTCERT=a DER file", {**verify, "DATABASE_SSLROOTCERT": str(not_pem)}),
        ("DATABASE_SSLKEY=a key file with mode 0644",
         {**verify, "DATABASE_SSLCERT": str(cert), "DATABASE_SSLKEY": str(loose)}),
        ("DATABASE_SSLKEY=another certificate's key",
         {**verify, "DATABASE_SSLCERT": str(cert), "DATABASE_SSLKEY": str(certs.server_key)}),
        ("DATABASE_SSLCERT=an expired certificate",
         {**verify, "DATABASE_SSLROOTCERT": str(tmp / "old-ca.crt"),
          "DATABASE_SSLCERT": str(tmp / "expired.crt"),
          "DATABASE_SSLKEY": str(tmp / "expired.key")}),
    ]
    cases += [
        ("DATABASE_PASSWORD_FILE=/run/secrets/db-password, no such file",
         {"DATABASE_URL": "postgresql://app@db.internal:5432/app",
          "DATABASE_PASSWORD_FILE": "/run/secrets/db-password"}),
    ]
    out = []
    for label, source in cases:
        exc = _settings_error(source) if "ENGINE" in source else _env_error(source)
        out.append((label, f"{type(exc).__name__}: {exc}".replace(str(tmp), EXAMPLE_DIR)))
    out.append(("REPORTS_DATABASE_POOL_SIZE=1, MAX_OVERFLOW=0, POOL_TIMEOUT=0.2, two threads",
                f"PoolTimeout: {_pool_timeout()}"))
    return out + _provider_examples()


def _provider_examples() -> list[tuple[str, str]]:
    """A provider that cannot be imported (the checks import it), and one that fails
    when a connection is opened (a stand-in module ``myproject.db_auth``)."""
    from multipool.secrets.credentials import load_provider

    out = []
    try:
        load_provider("default", "DATABASE_CREDENTIALS", "myproject.auth:token")
    except errors.CredentialProviderError as exc:
        out.append(("DATABASE_CREDENTIALS=myproject.auth:token, no such module",
                    f"{type(exc).__name__}: {exc}"))

    class NoCredentialsError(Exception):
        pass

    def token(request: Any) -> Any:
        raise NoCredentialsError("Unable to locate credentials")

    module = type(sys)("myproject.db_auth")
    module.token = token  # type: ignore[attr-defined]
    saved = {name: sys.modules.get(name) for name in ("myproject", "myproject.db_auth")}
    sys.modules.update({"myproject": type(sys)("myproject"), "myproject.db_auth": module})
    try:
        exc = _connect_error("orders", {"URL": "postgresql://app@db.internal:5432/app",
                                        "CREDENTIALS": "myproject.db_auth:token"})
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    out.append(("ORDERS_DATABASE_CREDENTIALS=myproject.db_auth:token, the provider raises",
                f"{type(exc).__name__}: {exc}"))
    return out


def server_examples(pg: Any, my: Any, my_without_tls: Any, tmp: Path) -> list[tuple[str, str]]:
    """The examples that need the test servers."""
    return [
        ("LEGACY_DATABASE_SSLMODE=require, the MariaDB server has TLS disabled",
         f"EncryptionRequired: {_encryption_required(my_without_tls)}"),
        *connect_examples(pg, my, tmp),
        ("ORDERS_DATABASE_SSLCERT_FILE and SSLKEY_FILE rotated to a certificate of a CA the "
         "server does not trust", f"RotationRefused: {_rotation_refused(pg, tmp)}"),
    ]


def _rotation_refused(server: Any, tmp: Path) -> str:
    """A real RotationRefused: ``certuser``'s files replaced by a certificate of a CA the
    server does not trust. Fingerprints and dates appear as below, ports as 5432."""
    from multipool.certs import load_ca
    from multipool.config import databases
    from multipool.pools import manager
    from multipool.secrets import material_for
    from tests.conftest import registered_alias

    cert_file, key_file = tmp / "tls.crt", tmp / "tls.key"
    cert, key = issue_cert(load_ca(server.certs.ca_cert, server.certs.ca_key), "certuser",
                           usage="client")
    write_cert(cert_file, cert)
    write_key(key_file, key)
    entry = databases(source={
        "DATABASE_ALIASES": "orders",
        "ORDERS_DATABASE_URL": f"postgresql://certuser@{server.host}:{server.port}/"
                               f"{server.database}",
        "ORDERS_DATABASE_SSLMODE": "verify-full",
        "ORDERS_DATABASE_SSLROOTCERT": str(server.certs.ca_cert),
        "ORDERS_DATABASE_SSLCERT_FILE": str(cert_file),
        "ORDERS_DATABASE_SSLKEY_FILE": str(key_file),
    })["orders"]
    with registered_alias("orders", entry) as conn:
        conn.ensure_connection()  # with the files of the server's CA
        conn.close()
        manager.dispose("orders")  # the next connection is a new one
        cert, key = issue_cert(make_ca("Example Corp CA"), "certuser", usage="client")
        write_cert(cert_file, cert, overwrite=True)
        write_key(key_file, key, overwrite=True)
        conn.ensure_connection()  # opened with the previous files
        conn.close()
        problem = material_for(conn.multipool_spec()).held_back  # type: ignore[union-attr]
    assert isinstance(problem, errors.RotationRefused), problem
    text = re.sub(r"SHA-256 [0-9a-f]{16}, expires [0-9-]{10}",
                  "SHA-256 5d1f0c9e2ab37c44, expires 2026-09-01", str(problem))
    return text.replace(f":{server.port} ", ":5432 ")


@pytest.fixture(scope="module")
def examples(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: Any,
    mysql_server: Any,
    mysql_server_without_tls: Any,
) -> list[tuple[str, str]]:
    found = error_examples(tmp_path_factory.mktemp("tls"))
    return found + server_examples(
        postgres_server, mysql_server, mysql_server_without_tls, tmp_path_factory.mktemp("conn")
    )


def test_troubleshooting_covers_every_error_class(examples: list[tuple[str, str]]) -> None:
    text = TROUBLESHOOTING.read_text()
    raised = {message.split(":", 1)[0] for _, message in examples}
    for name in errors.__all__:
        assert re.search(rf"^#+ .*`{name}`", text, re.M), f"no heading for {name}"
        if name not in ("MultipoolError", "ConnectError"):  # bases, never raised themselves
            assert name in raised, f"no example of {name}"


def test_troubleshooting_examples_are_current(examples: list[tuple[str, str]]) -> None:
    """Each example's message, produced now, is in the page word for word."""
    text = TROUBLESHOOTING.read_text()
    stale = [f"{label}:\n  {message}" for label, message in examples if message not in text]
    assert not stale, (
        "docs/troubleshooting.md is out of date; the messages are now:\n" + "\n".join(stale)
    )


def test_every_message_shown_is_produced(examples: list[tuple[str, str]]) -> None:
    """The converse: each error message the page shows is one the examples produce
    (also those marked for tests/test_docs_examples.py to skip: they need the servers)."""
    blocks = re.findall(r"^```text\n(.*?)\n```", TROUBLESHOOTING.read_text(), re.S | re.M)
    shown = [b.strip() for b in blocks if b.split(":")[0] in errors.__all__]
    produced = {message for _, message in examples}
    unknown = [message for message in shown if message not in produced]
    assert not unknown, f"messages no example produces: {unknown}"


if __name__ == "__main__":  # print the examples (to update docs/troubleshooting.md);
    # --servers: also those that need the test servers (started here, local binaries)
    import tempfile

    sys.path.insert(0, str(ROOT))

    import django
    from django.conf import settings

    from tests.conftest import _TMP

    settings.configure(
        DATABASES={"default": {"ENGINE": "multipool.backends.sqlite3",
                               "NAME": str(_TMP / "default.sqlite3")}},
        INSTALLED_APPS=["multipool"], USE_TZ=True,
    )
    django.setup()
    from multipool.testing import mysql, start

    with tempfile.TemporaryDirectory() as directory:
        found = error_examples(Path(directory))
        if "--servers" in sys.argv:  # start the test servers for the connect examples
            servers = [start.start_postgres(), start.start_mysql(), mysql.start_local(tls=False)]
            try:
                found += server_examples(*servers, Path(directory))
            finally:
                for server in servers:
                    server.close()
        for label, message in found:
            print(f"{label}\n    {message}\n")
