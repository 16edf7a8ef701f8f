"""Driver options with a type (``?keepalives=yes``, ``?read_timeout=5``): their values
are checked and normalized when the settings are read, so that a value the driver
would refuse fails in ``settings.py`` and ``manage.py check`` with the variable's
name, instead of at the first connect of the first request.

The property test holds the whole path to that promise: whatever URL query the
settings accept, the driver accepts too -- a connect to a closed port then fails
with ``ServerUnreachable`` (nobody listens), never with the driver's complaint
about a value.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.db import connections
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from multipool.config import databases, read_environment
from multipool.config.driver_options import TYPED_OPTIONS
from multipool.errors import ConfigurationError, InvalidURL, ServerUnreachable
from tests.conftest import patched_environ, registered_alias

SCHEMES = {"postgresql": "postgresql", "mysql": "mysql"}

#: (vendor, option, value as written, value the driver gets)
GOOD = [
    ("postgresql", "keepalives", "yes", 1),
    ("postgresql", "keepalives", "0", 0),
    ("postgresql", "keepalives_idle", "30", 30),
    ("postgresql", "tcp_user_timeout", "5000", 5000),
    ("postgresql", "target_session_attrs", "Read-Write", "read-write"),
    ("postgresql", "channel_binding", "PREFER", "prefer"),
    ("mysql", "compress", "false", 0),
    ("mysql", "read_timeout", "5", 5),
    ("mysql", "local_infile", "off", 0),
    ("mysql", "use_unicode", "TRUE", 1),
]
#: (vendor, option, value, what the message says)
BAD = [
    ("postgresql", "keepalives", "maybe", "'maybe' is not a boolean"),
    ("postgresql", "keepalives_idle", "0", "0 is out of range (use from 1 to 32767)"),
    ("postgresql", "keepalives_count", "128", "128 is out of range (use from 1 to 127)"),
    ("mysql", "read_timeout", "4294967296", "4294967296 is out of range"),
    ("postgresql", "tcp_user_timeout", "1.5", "'1.5' is not a whole number"),
    ("postgresql", "target_session_attrs", "primaryish", "'primaryish' is not one of"),
    ("mysql", "read_timeout", "soon", "'soon' is not a whole number"),
    ("mysql", "compress", "2", "'2' is not a boolean"),
    ("mysql", "client_flag", "-4", "-4 is out of range"),
]


def url(vendor: str, query: dict[str, str], port: int = 5432) -> str:
    return f"{SCHEMES[vendor]}://app:pw@127.0.0.1:{port}/app?{urlencode(query)}"


@pytest.mark.parametrize("vendor, option, written, expected", GOOD)
def test_good_values_are_normalized(vendor: str, option: str, written: str,
                                    expected: Any) -> None:
    spec = read_environment(source={"DATABASE_URL": url(vendor, {option: written})})["default"]
    assert dict(spec.options)[option] == expected


@pytest.mark.parametrize("vendor, option, value, says", BAD)
def test_bad_values_fail_when_settings_are_read(vendor: str, option: str, value: str,
                                                says: str) -> None:
    with pytest.raises(InvalidURL) as info:
        read_environment(source={"DATABASE_URL": url(vendor, {option: value})})
    assert info.value.setting == "DATABASE_URL"
    assert f"option {option} in the URL query: {says}" in info.value.problem
    assert "pw" not in str(info.value)  # the URL's password is never echoed


@pytest.mark.parametrize("vendor, option, value, says", BAD[:1] + BAD[4:5])
def test_bad_values_in_hand_written_options_name_the_option(vendor: str, option: str,
                                                            value: str, says: str) -> None:
    from multipool.config import spec_from_settings

    engine = {"postgresql": "postgresql", "mysql": "mysql"}[vendor]
    entry = {"ENGINE": f"multipool.backends.{engine}", "NAME": "app", "OPTIONS": {option: value}}
    with pytest.raises(ConfigurationError) as info:
        spec_from_settings("default", entry)
    assert info.value.setting == f"DATABASES['default']['OPTIONS'][{option!r}]"
    assert says in info.value.problem


@pytest.mark.parametrize("host", ["db internal", "-bad", "db..internal", "a" * 300, "db*x"])
@pytest.mark.parametrize("vendor", ["postgresql", "mysql"])
def test_a_host_that_is_no_host_fails_when_settings_are_read(vendor: str, host: str) -> None:
    from multipool.config import spec_from_settings

    written = f"{SCHEMES[vendor]}://app@{quote(host)}/app"
    with pytest.raises(InvalidURL) as in_url:
        read_environment(source={"DATABASE_URL": written})
    engine = {"postgresql": "postgresql", "mysql": "mysql"}[vendor]
    entry = {"ENGINE": f"multipool.backends.{engine}", "NAME": "app", "HOST": host}
    with pytest.raises(ConfigurationError) as by_hand:
        spec_from_settings("default", entry)
    assert (in_url.value.setting, by_hand.value.setting) == (
        "DATABASE_URL", "DATABASES['default']['HOST']"
    )
    for error in (in_url.value, by_hand.value):
        assert "is not a host name, an IP address or a socket directory" in error.problem


@pytest.mark.parametrize(
    "host",
    ["db.internal", "10.0.0.5", "[::1]", "/var/run/postgresql", "db-1.eu-west.example", "db_1"],
)
def test_hosts_of_every_kind_are_taken(host: str) -> None:
    from multipool.config import spec_from_settings

    entry = {"ENGINE": "multipool.backends.postgresql", "NAME": "app", "HOST": host}
    assert spec_from_settings("default", entry).host == host


def test_good_values_reach_the_driver_and_connect(server: Any) -> None:
    """The normalized values of every GOOD option of the engine, against the real
    server: the driver takes them all, and the connection works."""
    query = {option: written for vendor, option, written, _ in GOOD if vendor == server.engine}
    query.pop("target_session_attrs", None)  # a standby-only value would be refused
    alias = f"typed{server.engine}"
    prefix = f"{alias.upper()}_DATABASE_"
    base = server.url("app")
    environ = {f"{prefix}URL": f"{base}{'&' if '?' in base else '?'}{urlencode(query)}"}
    with patched_environ(environ):
        entry = databases(DATABASE_ALIASES=alias)[alias]
    with registered_alias(alias, entry) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


# -- the property: accepted settings never fail on a value --------------------------------


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A port nobody listens on (held bound, never listening, for the module)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


#: values worth trying for any option: every type's spellings, and the edges of ranges
CANDIDATES = (
    "0", "1", "5", "127", "128", "32767", "32768", "2147483647", "2147483648", "-1", "1.5",
    "yes", "no", "TRUE", "off", "maybe", "", "any", "read-write", "read-only", "Primary",
    "standby", "prefer-standby", "prefer", "require", "disable", "allow", "random",
    "direct", "postgres",
)  # fmt: skip


#: well-formed values that need more than a value: Kerberos credentials on this machine
NEEDS_SETUP = {("gssencmode", "require")}


@functools.cache
def accepted_values(vendor: str, option: str) -> tuple[str, ...]:
    """The candidates the settings accept for ``option`` alone."""
    found = []
    for value in CANDIDATES:
        if (option, value) in NEEDS_SETUP:
            continue
        try:
            read_environment(source={"DATABASE_URL": url(vendor, {option: value})})
        except ConfigurationError:
            continue
        found.append(value)
    return tuple(found)


def option_values(vendor: str, data: st.DataObject) -> dict[str, str]:
    """A query of typed options (and multipool's timeouts, which reach the driver
    too), each value one the settings accept alone, or now and then any text."""
    names = sorted(TYPED_OPTIONS[vendor] - {"port"} | {"connect_timeout", "network_timeout"})
    query = {}
    for name in data.draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        accepted = accepted_values(vendor, name)
        text = st.text(max_size=8).filter(
            lambda v, name=name: (name, v.strip().lower()) not in NEEDS_SETUP
        )
        values = st.sampled_from(accepted) if accepted else text
        query[name] = data.draw(st.one_of(values, values, values, text))
    return query


@pytest.mark.parametrize("vendor", ["postgresql", "mysql"])
@given(data=st.data())
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_settings_accepted_are_settings_the_driver_accepts(
    vendor: str, closed_port: int, data: st.DataObject
) -> None:
    query = option_values(vendor, data)
    environ = {"DATABASE_ALIASES": "probe", "PROBE_DATABASE_URL": url(vendor, query, closed_port),
               "PROBE_DATABASE_CONNECT_TIMEOUT": "2"}
    try:
        entry = databases(source=environ, validate=False)["probe"]
        read_environment(source=environ)
    except ConfigurationError as exc:
        assert exc.setting.startswith("PROBE_DATABASE_URL"), exc
        event("refused when read")
        return
    event("accepted: connected to the closed port")
    with registered_alias("probe", entry), pytest.raises(ServerUnreachable):
        connections["probe"].ensure_connection()


@pytest.mark.parametrize("vendor", ["postgresql", "mysql"])
@pytest.mark.parametrize(
    "written, says",
    [
        ("app@db.internal/app?connect_timeout=verify-full",
         "option connect_timeout in the URL query: 'verify-full' is not a number"),
        ("app@db.internal/app?pool_size=lots",
         "option pool_size in the URL query: 'lots' is not a whole number"),
        ("app@%23/app", "the host '#' is not a host name"),
    ],
)
def test_the_values_that_used_to_fail_only_at_connect(vendor: str, written: str,
                                                      says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        read_environment(source={"DATABASE_URL": f"{SCHEMES[vendor]}://{written}"})
    assert info.value.setting == "DATABASE_URL"
    assert says in info.value.problem


def test_direct_tls_negotiation_needs_a_mode_that_requires_encryption() -> None:
    """libpq 17 refuses ``sslnegotiation=direct`` with ``prefer`` only at connect."""
    direct = "postgresql://app@db.internal/app?sslnegotiation=direct"
    with pytest.raises(ConfigurationError) as info:
        read_environment(source={"DATABASE_URL": direct})
    assert info.value.setting == "DATABASE_URL (option sslnegotiation)"
    assert "set DATABASE_SSLMODE to verify-full (or require)" in info.value.fix
    spec = read_environment(source={"DATABASE_URL": direct, "DATABASE_SSLMODE": "require"})
    assert dict(spec["default"].options) == {"sslnegotiation": "direct"}


@pytest.mark.parametrize("key", ["CONNECT_TIMEOUT", "NETWORK_TIMEOUT"])
def test_timeouts_are_at_most_a_day(key: str) -> None:
    """Beyond a day the socket options they become overflow (found by the property)."""
    base = {"DATABASE_URL": "postgresql://app@db.internal/app"}
    spec = read_environment(source={**base, f"DATABASE_{key}": "86400"})["default"]
    assert getattr(spec.pool, key.lower()) == 86400
    with pytest.raises(ConfigurationError) as info:
        read_environment(source={**base, f"DATABASE_{key}": "86401"})
    assert info.value.setting == f"DATABASE_{key}"
    assert info.value.problem == "86401 seconds is more than a day"


def test_client_flags_are_mysqlclients_flags() -> None:
    from MySQLdb.constants import CLIENT

    good = url("mysql", {"client_flag": str(CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS)})
    spec = read_environment(source={"DATABASE_URL": good})["default"]
    assert dict(spec.options)["client_flag"] == CLIENT.FOUND_ROWS | CLIENT.MULTI_STATEMENTS
    with pytest.raises(InvalidURL, match=r"no MySQLdb\.constants\.CLIENT flag"):
        read_environment(source={"DATABASE_URL": url("mysql", {"client_flag": str(1 << 30)})})
