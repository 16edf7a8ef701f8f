"""Database URLs: the accepted schemes, and a URL -> its parts.

Parsed with SQLAlchemy's URL parser. Messages never show the URL: it may hold
the password.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import unquote

from multipool.config.specs import POOL_OPTION_KEYS
from multipool.errors import InvalidURL, UnknownScheme
from multipool.setting_names import short
from multipool.tls import TLS_OPTION_NAMES

#: URL scheme (before ``+``) -> (vendor, accepted driver names after ``+``)
SCHEMES: Mapping[str, tuple[str, frozenset[str]]] = {
    "postgres": ("postgresql", frozenset({"", "psycopg", "psycopg2"})),
    "postgresql": ("postgresql", frozenset({"", "psycopg", "psycopg2"})),
    "pgsql": ("postgresql", frozenset({"", "psycopg", "psycopg2"})),
    "mysql": ("mysql", frozenset({"", "mysqldb"})),
    "mariadb": ("mysql", frozenset({"", "mysqldb"})),
    "sqlite": ("sqlite", frozenset({"", "pysqlite"})),
}


def scheme_names() -> list[str]:
    """Every accepted URL scheme: ``scheme`` or ``scheme+driver``."""
    return [f"{s}+{d}" if d else s for s, (_, ds) in SCHEMES.items() for d in sorted(ds)]



class URLParts(NamedTuple):
    """The parts of a database URL."""

    vendor: str
    name: str
    user: str | None
    password: str | None
    host: str | None
    port: int | None
    query: dict[str, Any]


_URL_FIX = (
    "use scheme://user:password@host:port/name?option=value "
    "(percent-encode special characters of the password, e.g. @ as %40)"
)


def _check_url_parts(
    alias: str, setting: str, vendor: str, url: str, parsed: Any, query: Mapping[str, Any]
) -> None:
    """Refuse what the URL parser accepts but no driver handles sanely.

    Messages never show the values: they may hold (part of) the password.
    """
    host = parsed.host or ""
    if "@" in host or url.count("@") > 1:
        raise InvalidURL(
            alias,
            setting,
            "the URL has an '@' that is not the one before the host (value not shown)",
            "percent-encode '@' as %40 in the user name, password, database and options "
            "(and ':' as %3A, '/' as %2F)",
        )
    parts = [parsed.username, parsed.password, host, parsed.database]
    for key, value in query.items():
        # (a repeated TLS or pool option gets its own error further on)
        driver_option = key not in POOL_OPTION_KEYS and key not in TLS_OPTION_NAMES
        if isinstance(value, tuple) and driver_option:
            raise InvalidURL(
                alias,
                setting,
                f"the option {short(key)} is given more than once",
                "give each query option once",
            )
        parts += [key, value]
    if any(isinstance(p, str) and "\x00" in p for p in parts):
        raise InvalidURL(
            alias,
            setting,
            "the URL contains a NUL character (%00) (value not shown)",
            "remove the %00: no database, user, password or option may contain it",
        )


def parse_url(alias: str, setting: str, url: Any) -> URLParts:
    from sqlalchemy.engine import make_url

    if not isinstance(url, str):
        raise InvalidURL(alias, setting, f"expected text, got a {type(url).__name__}", _URL_FIX)
    try:
        parsed = make_url(url.strip())
        port = parsed.port
        query = dict(parsed.query)
    except Exception:
        # Never show the URL or the parser's message: both may contain the password.
        raise InvalidURL(
            alias, setting, "the URL cannot be parsed (value not shown)", _URL_FIX
        ) from None
    scheme, _, driver = parsed.drivername.partition("+")
    entry = SCHEMES.get(scheme.lower())
    if entry is None or driver.lower() not in entry[1]:
        raise UnknownScheme(
            alias,
            setting,
            f"unsupported URL scheme {short(parsed.drivername)}",
            f"use one of {', '.join(scheme_names())}",
        )
    vendor = entry[0]
    _check_url_parts(alias, setting, vendor, url, parsed, query)
    if port is not None and not 1 <= port <= 65535:
        raise InvalidURL(
            alias, setting, f"port {port} is out of range", "use a port from 1 to 65535"
        )
    host = parsed.host or None
    if host and "%" in host:
        host = unquote(host)
    if vendor == "sqlite":
        if host or parsed.username or parsed.password or port:
            raise InvalidURL(
                alias,
                setting,
                "a SQLite URL takes no user, password, host or port",
                "use sqlite:///relative/path.db or sqlite:////absolute/path.db",
            )
        return URLParts(vendor, parsed.database or ":memory:", None, None, None, None, query)
    return URLParts(
        vendor,
        parsed.database or "",
        parsed.username or None,
        parsed.password or None,
        host,
        port,
        query,
    )
