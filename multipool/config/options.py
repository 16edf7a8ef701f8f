"""A ``DATABASES`` entry's ``OPTIONS`` (or a URL's query) -> driver, TLS and pool values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multipool.config.driver_options import check_driver_options, typed_driver_options
from multipool.config.specs import POOL_OPTION_KEYS
from multipool.config.values import parse_pool_value
from multipool.errors import ConfigurationError, InvalidPoolSetting
from multipool.setting_names import SettingNames, short
from multipool.tls import TLS_OPTION_NAMES, tls_fields_from_options

#: django-db-connection-pool's ``POOL_OPTIONS`` keys -> multipool's ``OPTIONS`` key
#: (``None``: no equivalent)
_DBCP_POOL_NAMES: Mapping[str, str | None] = {
    "POOL_SIZE": "pool_size",
    "MAX_OVERFLOW": "max_overflow",
    "RECYCLE": "pool_recycle",
    "TIMEOUT": "pool_timeout",
    "PRE_PING": "pool_pre_ping",
    "ECHO": None,
}
#: those names as they may land in ``OPTIONS``, as is or in lower case
_OLD_POOL_NAMES: Mapping[str, str | None] = {
    **_DBCP_POOL_NAMES,
    **{k.lower(): v for k, v in _DBCP_POOL_NAMES.items() if k.lower() != v},
}


@dataclass
class SplitOptions:
    """``OPTIONS`` split by who consumes them."""

    driver: dict[str, Any]  # passed on to the driver as they are
    tls: dict[str, Any]  # TLS field -> normalized value
    tls_names: dict[str, str]  # TLS field -> the setting it came from
    pool: dict[str, tuple[Any, str]]  # pool OPTIONS key -> (parsed value, setting)


def split_options(
    names: SettingNames, options: Mapping[str, Any], base_dir: str | None = None
) -> SplitOptions:
    """Parse the TLS and pool values of ``options``; keep the rest for the driver.

    ``names.written_in`` is the URL variable when ``options`` is a URL's query.
    """
    driver: dict[str, Any] = {}
    tls_options: dict[str, Any] = {}
    pool: dict[str, tuple[Any, str]] = {}
    for key, value in options.items():
        _refuse_key(names, key)
        if key in POOL_OPTION_KEYS:
            setting = names.of(key, names.option(key))
            pool[key] = (_pool_value(names, key, value, setting), setting)
        elif key in TLS_OPTION_NAMES:
            tls_options[key] = value
        else:
            driver[key] = value
    check_driver_options(names, driver)
    driver = typed_driver_options(names, driver)
    tls, tls_names = tls_fields_from_options(
        names.alias, names.vendor, tls_options, settings=names, base_dir=base_dir
    )
    return SplitOptions(driver, tls, tls_names, pool)


def _pool_value(names: SettingNames, key: str, value: Any, setting: str) -> Any:
    """A pool value; one from a URL's query says which option of the URL it is."""
    try:
        return parse_pool_value(names.alias, key, value, setting)
    except ConfigurationError as exc:
        if names.written_in is None or setting != names.written_in:
            raise
        raise type(exc)(
            exc.alias, exc.setting, f"option {key} in the URL query: {exc.problem}", exc.fix
        ) from None


def _refuse_key(names: SettingNames, key: Any) -> None:
    """Refuse an option name that is not text, or that belongs to another pool."""
    alias = names.alias
    if not isinstance(key, str):
        raise ConfigurationError(
            alias,
            f"DATABASES[{alias!r}]['OPTIONS']",
            f"option name {short(key)} is not a string",
            "use string keys",
        )
    if key == "pool":
        raise InvalidPoolSetting(
            alias,
            names.option(key),
            "'pool' is Django's own PostgreSQL connection pool option; multipool "
            "pools connections itself",
            "remove 'pool' and use pool_size / max_overflow / pool_timeout "
            "(or the DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW environment keys)",
        )
    if key in _OLD_POOL_NAMES and not (key == "timeout" and names.vendor == "sqlite"):
        _refuse_old_pool_name(alias, key, names.option(key))


def _refuse_old_pool_name(alias: str, key: str, setting: str) -> None:
    """A django-db-connection-pool name in OPTIONS: the driver would refuse it at connect."""
    new = _OLD_POOL_NAMES[key]
    fix = (
        f"rename it to {new}"
        if new is not None
        else "remove it (multipool has no echo: SQL is logged by Django's "
        "django.db.backends logger)"
    )
    raise InvalidPoolSetting(
        alias,
        setting,
        f"{key!r} is django-db-connection-pool's name for a pool setting; "
        "the database driver would refuse it",
        fix,
    )
