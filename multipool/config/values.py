"""Setting values -> Python values, with errors that name the alias and the setting.

Text from the environment and Python values from ``DATABASES`` are accepted
alike; python-decouple's casts do the text part.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from decouple import Choices, strtobool

from multipool.config.specs import POOL_RESETS, POOLERS
from multipool.errors import ConfigurationError, InvalidPoolSetting
from multipool.setting_names import short


def parse_flag(alias: str, setting: str, value: Any) -> bool:
    """A boolean setting (``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``)."""
    return _as_bool(alias, setting, value)


def _as_bool(alias: str, setting: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        try:
            return bool(strtobool(value.strip()))
        except (ValueError, AttributeError):
            pass
    raise InvalidPoolSetting(
        alias,
        setting,
        f"{short(value)} is not a boolean",
        "use true or false (also accepted: yes/no, on/off, 1/0)",
    )


def _as_int(alias: str, setting: str, value: Any, minimum: int, fix: str) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip())  # decouple's cast=int
        except ValueError:
            number = None
    if number is None:
        raise InvalidPoolSetting(alias, setting, f"{short(value)} is not a whole number", fix)
    if number < minimum:
        raise InvalidPoolSetting(alias, setting, f"{number} is below {minimum}", fix)
    return number


#: the longest wait threading accepts (about 292 years on 64-bit Linux)
_MAX_SECONDS = float(int(threading.TIMEOUT_MAX))


def _as_float(alias: str, setting: str, value: Any, fix: str) -> float:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())  # decouple's cast=float
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        raise InvalidPoolSetting(alias, setting, f"{short(value)} is not a number", fix)
    if number < 0:
        raise InvalidPoolSetting(alias, setting, f"{number:g} is negative", fix)
    if number > _MAX_SECONDS:
        raise InvalidPoolSetting(
            alias,
            setting,
            f"{number:g} seconds is beyond what a wait can last on this platform",
            f"use at most {_MAX_SECONDS:g} seconds",
        )
    return number


def _pool_switch(size_setting: str) -> str:
    """The name of the pool on/off setting next to the pool size setting ``size_setting``."""
    if size_setting.endswith("_POOL_SIZE"):
        return size_setting.removesuffix("_SIZE")  # DATABASE_POOL_SIZE -> DATABASE_POOL
    if size_setting.endswith("['pool_size']"):
        return size_setting.removesuffix("['pool_size']") + "['pool_enabled']"
    return "pool_enabled"


def _pool_size(alias: str, setting: str, value: Any) -> int:
    fix = (
        "use a whole number of at least 1 (to turn pooling off, set "
        f"{_pool_switch(setting)} to false instead)"
    )
    return _as_int(alias, setting, value, 1, fix)


def _count(alias: str, setting: str, value: Any) -> int:
    return _as_int(alias, setting, value, 0, "use a whole number of at least 0")


def _seconds(alias: str, setting: str, value: Any) -> float:
    return _as_float(alias, setting, value, "use a number of seconds, 0 or more")


def _recycle(alias: str, setting: str, value: Any) -> float | None:
    """Seconds above 0, or ``None`` (never): ``none``, ``never`` and ``-1`` say so."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("none", "never", "-1"):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == -1:
        return None
    fix = "use a number of seconds above 0, or none to never recycle"
    number = _as_float(alias, setting, value, fix)
    if number == 0:
        raise InvalidPoolSetting(alias, setting, "0 would recycle on every checkout", fix)
    return number


#: the longest CONNECT_TIMEOUT and NETWORK_TIMEOUT: a day. Beyond it a wait is no
#: bound, and the socket options they become overflow (Linux takes keepalive times
#: up to 32767 s, TCP_USER_TIMEOUT up to 2**31 - 1 ms)
LONGEST_TIMEOUT = 86400


def _connect_timeout(alias: str, setting: str, value: Any) -> float:
    """Seconds, at least 1 (the drivers count whole seconds; libpq treats 1 as 2)."""
    fix = f"use a number of seconds from 1 to {LONGEST_TIMEOUT} (10 is the default)"
    number = _as_float(alias, setting, value, fix)
    if number < 1:
        raise InvalidPoolSetting(alias, setting, f"{number:g} is below 1 second", fix)
    return _at_most_a_day(alias, setting, number, fix)


def _network_timeout(alias: str, setting: str, value: Any) -> float:
    """Seconds, 0 (the operating system's defaults) up to a day."""
    fix = f"use a number of seconds from 0 (the system's defaults) to {LONGEST_TIMEOUT}"
    return _at_most_a_day(alias, setting, _as_float(alias, setting, value, fix), fix)


def _at_most_a_day(alias: str, setting: str, number: float, fix: str) -> float:
    if number > LONGEST_TIMEOUT:
        raise InvalidPoolSetting(alias, setting, f"{number:g} seconds is more than a day", fix)
    return number


def _choice(value: Any, choices: list[str]) -> str | None:
    """``value`` as one of ``choices`` (any case, spaces around), or ``None``."""
    if not isinstance(value, str):
        return None
    try:
        return str(Choices(choices, cast=lambda s: s.strip().lower())(value))
    except ValueError:
        return None


def _reset(alias: str, setting: str, value: Any) -> str:
    chosen = _choice(value, list(POOL_RESETS))
    if chosen is None:
        raise InvalidPoolSetting(
            alias, setting, f"unknown reset {short(value)}", "use transaction or session"
        )
    return chosen


def _pooler(alias: str, setting: str, value: Any) -> str | None:
    if value is None:
        return None
    chosen = _choice(value, ["none", *POOLERS])
    if chosen is None:
        raise InvalidPoolSetting(
            alias, setting, f"unknown pooler {short(value)}", "use none, pgbouncer or proxysql"
        )
    return None if chosen == "none" else chosen


#: pool OPTIONS key -> its parser
_POOL_PARSERS: Mapping[str, Callable[[str, str, Any], Any]] = {
    "pool_enabled": _as_bool,
    "pool_size": _pool_size,
    "max_overflow": _count,
    "pool_timeout": _seconds,
    "pool_recycle": _recycle,
    "pool_pre_ping": _as_bool,
    "pool_ping_idle": _seconds,
    "pool_poll_idle": _seconds,
    "pool_overflow_idle": _seconds,
    "pool_lifo": _as_bool,
    "pool_reset": _reset,
    "pool_metrics": _as_bool,
    "pooler": _pooler,
    "connect_timeout": _connect_timeout,
    "network_timeout": _network_timeout,
    "rotation_check": _seconds,
}


def parse_pool_value(alias: str, key: str, value: Any, setting: str) -> Any:
    """One pool setting (OPTIONS key ``key``) from text or a Python value."""
    return _POOL_PARSERS[key](alias, setting, value)


def parse_conn_max_age(alias: str, setting: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "none":
        return None
    return _as_int(
        alias,
        setting,
        value,
        0,
        "use a whole number of seconds (0: close at the end of each request, "
        "recommended with pooling) or none",
    )


def parse_port(alias: str, setting: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    port: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.strip().isdigit():
        port = int(value.strip())
    if port is None or not 1 <= port <= 65535:
        raise ConfigurationError(
            alias, setting, f"port {short(value)} is out of range", "use a port from 1 to 65535"
        )
    return port


def option_value(value: Any) -> Any:
    """A URL query value for the driver: whole numbers become ints (mysqlclient wants them)."""
    if isinstance(value, tuple):
        return tuple(option_value(v) for v in value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    return value


def as_text(alias: str, setting: str, value: Any) -> str | None:
    """A text setting (a path is accepted too); ``None`` when unset or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    if not isinstance(value, str):
        raise ConfigurationError(
            alias, setting, f"expected text, got a {type(value).__name__}", "give a string"
        )
    return value


_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?"
)


def parse_host(
    alias: str,
    setting: str,
    value: Any,
    vendor: str,
    error: type[ConfigurationError] = ConfigurationError,
) -> str | None:
    """A host name, an IP address, or a Unix socket directory (PostgreSQL: a
    comma-separated list of them); ``None`` when unset. What libpq and mysqlclient
    would only refuse at the first connect is refused here."""
    host = as_text(alias, setting, value)
    if host is None:
        return None
    hosts = host.split(",") if vendor == "postgresql" else [host]
    for one in hosts:
        if not _is_host(one.strip()):
            raise error(
                alias,
                setting,
                f"the host {short(one)} is not a host name, an IP address or a socket directory",
                "use a host name (db.internal), an address (10.0.0.5, [::1]) or the path of "
                "the server's socket directory",
            )
    return host


def _is_host(host: str) -> bool:
    if host.startswith("/"):
        return "\x00" not in host
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return bool(_HOST_NAME.fullmatch(host))
    return True
