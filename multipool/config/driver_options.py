"""The driver options an alias may pass on: checked when the settings are read.

An option the driver does not know fails the first connect, far from the
setting. PostgreSQL's options are checked against libpq's own list of
connection keywords, as the installed driver reports it (psycopg 3's
``Conninfo.get_defaults()``, or psycopg2's ``parse_dsn``), plus the options
Django's PostgreSQL backend and the drivers' ``connect()`` take themselves;
MySQL's against mysqlclient's ``connect()`` arguments and Django's own.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from multipool.errors import ConfigurationError, InvalidURL
from multipool.setting_names import SettingNames, short

__all__ = ["MYSQL_OPTIONS", "check_driver_options", "postgresql_keywords"]

#: mysqlclient's ``connect()`` arguments, and Django's own MySQL OPTIONS
MYSQL_OPTIONS = frozenset(
    {
        "host", "user", "password", "passwd", "database", "db", "port", "unix_socket",
        "conv", "connect_timeout", "compress", "named_pipe", "init_command",
        "read_default_file", "read_default_group", "cursorclass", "use_unicode", "charset",
        "collation", "auth_plugin", "sql_mode", "client_flag", "multi_statements",
        "server_public_key_path", "local_infile", "read_timeout", "write_timeout",
        "autocommit", "binary_prefix", "isolation_level",
    }
)  # fmt: skip

#: PostgreSQL OPTIONS that are not libpq's: Django's backend and the drivers' connect()
_POSTGRESQL_OWN = frozenset(
    {
        # Django's PostgreSQL backend
        "assume_role", "isolation_level", "server_side_binding", "pool",
        # psycopg 3's connect()
        "autocommit", "prepare_threshold", "context", "row_factory", "cursor_factory",
        # psycopg2's connect()
        "connection_factory", "async", "async_",
    }
)  # fmt: skip


@functools.cache
def postgresql_keywords() -> frozenset[str] | None:
    """libpq's connection keywords from the installed driver (``None``: no driver;
    with psycopg2 alone, see :func:`_libpq_accepts`)."""
    try:
        from psycopg import pq
    except ImportError:
        return None
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def _libpq_accepts(key: str) -> bool:
    """Whether libpq knows ``key``, by the driver's own parser (psycopg2 only)."""
    try:
        from psycopg2.extensions import parse_dsn
    except ImportError:
        return True  # no PostgreSQL driver: nothing to connect with, nothing to check
    try:
        parse_dsn(f"{key}=x")
    except Exception:
        return False
    return True


def _known_postgresql() -> tuple[Callable[[str], bool], Iterable[str]]:
    keywords = postgresql_keywords()
    if keywords is not None:
        every = keywords | _POSTGRESQL_OWN
        return every.__contains__, every
    return (lambda key: key in _POSTGRESQL_OWN or _libpq_accepts(key)), _POSTGRESQL_OWN


def check_driver_options(names: SettingNames, options: Mapping[str, Any]) -> None:
    """Refuse an option of ``options`` (the driver's share) the driver would refuse."""
    vendor = names.vendor
    if vendor == "postgresql":
        known, vocabulary = _known_postgresql()
        what = "PostgreSQL connection option"
        fix = (
            "use a libpq connection parameter (e.g. application_name, options, "
            "target_session_attrs), a TLS option (sslmode, sslrootcert, ...) or a pool option"
        )
    elif vendor == "mysql":
        known, vocabulary = MYSQL_OPTIONS.__contains__, MYSQL_OPTIONS
        what = "MySQL option"
        fix = (
            "use mysqlclient connect() options (e.g. connect_timeout, charset, "
            "init_command), TLS options (ssl_mode, ssl_ca, ...) or pool options"
        )
    else:
        return
    unknown = sorted(key for key in options if not known(key))
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, sorted(vocabulary), n=1, cutoff=0.75)
    suggestion = f" (did you mean {close[0]}?)" if close else ""
    if names.written_in:  # a URL's query
        raise InvalidURL(
            names.alias, names.written_in,
            f"unknown {what} {short(key)} in the URL query{suggestion}", fix,
        )
    raise ConfigurationError(
        names.alias, names.option(key), f"unknown {what} {short(key)}{suggestion}", fix
    )
