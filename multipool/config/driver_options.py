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

__all__ = [
    "MYSQL_OPTIONS",
    "TYPED_OPTIONS",
    "check_driver_options",
    "postgresql_keywords",
    "typed_driver_options",
]

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


_BOOLEANS = {"1": 1, "true": 1, "yes": 1, "on": 1, "0": 0, "false": 0, "no": 0, "off": 0}


def _whole(minimum: int, maximum: int | None = None) -> Callable[[Any], Any]:
    def check(value: Any) -> int:
        text = str(value).strip()
        if isinstance(value, bool) or not text.lstrip("-").isdigit():
            raise ValueError(f"{short(value)} is not a whole number")
        number = int(text)
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise ValueError(f"{number} is out of range (use {bound})")
        return number

    return check


def _flag(value: Any) -> int:
    """0 or 1, from a boolean in any usual spelling."""
    flag = _BOOLEANS.get(str(value).strip().lower()) if not isinstance(value, bool) else int(value)
    if flag is None:
        raise ValueError(f"{short(value)} is not a boolean (use 1 or 0, true or false)")
    return flag


def _one_of(*choices: str) -> Callable[[Any], Any]:
    def check(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{short(value)} is not one of {', '.join(choices)}")
        return text

    return check


#: the largest value a C int holds: libpq and mysqlclient refuse more
_INT_MAX = 2**31 - 1

def _client_flags(value: Any) -> int:
    """A mask of mysqlclient's ``MySQLdb.constants.CLIENT`` flags: the client library
    refuses a connect with any other bit set."""
    flags = _whole(0, _INT_MAX)(value)
    try:
        from MySQLdb.constants import CLIENT
    except ImportError:
        return flags  # no driver: nothing to connect with
    known = 0
    for name in dir(CLIENT):
        if name.isupper():
            known |= getattr(CLIENT, name)
    if flags & ~known:
        raise ValueError(f"{flags} sets bits that are no MySQLdb.constants.CLIENT flag")
    return flags


#: libpq's options with a type libpq checks at connect (its documentation's values)
_POSTGRESQL_TYPES: Mapping[str, Callable[[Any], Any]] = {
    "port": _whole(1, 65535),
    "keepalives": _flag,
    # the kernel's bounds (Linux: setsockopt refuses 0 and more than these)
    "keepalives_idle": _whole(1, 32767),
    "keepalives_interval": _whole(1, 32767),
    "keepalives_count": _whole(1, 127),
    "tcp_user_timeout": _whole(0, _INT_MAX),
    "sslcompression": _flag,
    "sslsni": _flag,
    "target_session_attrs": _one_of(
        "any", "read-write", "read-only", "primary", "standby", "prefer-standby"
    ),
    "load_balance_hosts": _one_of("disable", "random"),
    "gssencmode": _one_of("disable", "prefer", "require"),
    "channel_binding": _one_of("disable", "prefer", "require"),
    "sslnegotiation": _one_of("postgres", "direct"),
    "sslcertmode": _one_of("disable", "allow", "require"),
}
#: mysqlclient's connect() arguments that must be whole numbers
_MYSQL_TYPES: Mapping[str, Callable[[Any], Any]] = {
    "port": _whole(1, 65535),
    "read_timeout": _whole(0, _INT_MAX),
    "write_timeout": _whole(0, _INT_MAX),
    "client_flag": _client_flags,
    "compress": _flag,
    "use_unicode": _flag,
    "autocommit": _flag,
    "local_infile": _flag,
    "multi_statements": _flag,
    "binary_prefix": _flag,
}
_TYPES = {"postgresql": _POSTGRESQL_TYPES, "mysql": _MYSQL_TYPES}
#: vendor -> the driver options whose values are checked
TYPED_OPTIONS: Mapping[str, frozenset[str]] = {v: frozenset(t) for v, t in _TYPES.items()}


def typed_driver_options(names: SettingNames, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with the values of typed options checked and normalized (a boolean
    as 0/1, a number as an int); a value the driver would refuse is an error naming
    the setting."""
    types = _TYPES.get(names.vendor, {})
    out = dict(options)
    for key, value in options.items():
        check = types.get(key)
        if check is None or value is None:
            continue
        try:
            out[key] = check(value)
        except ValueError as exc:
            where = " in the URL query" if names.written_in else ""
            error = InvalidURL if names.written_in else ConfigurationError
            raise error(
                names.alias,
                names.written_in or names.option(key),
                f"option {key}{where}: {exc}",
                f"give {key} a value the driver accepts",
            ) from None
    return out


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
