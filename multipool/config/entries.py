"""A ``DATABASES`` entry -> its :class:`DatabaseSpec` (cached), and entries that record a problem.

Accepts multipool's and Django's own ENGINE names, TLS options in any spelling
(see :mod:`multipool.tls`), pool settings as flat OPTIONS keys
(:data:`~multipool.config.POOL_OPTION_KEYS`) and the ``MULTIPOOL`` key of
:meth:`DatabaseSpec.to_django`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from multipool import errors
from multipool.config.options import split_options
from multipool.config.secret_settings import check_secrets, secrets_from_meta
from multipool.config.specs import (
    ENGINES,
    DatabaseSpec,
    PoolSpec,
    SecretSpec,
    freeze,
    sort_key,
)
from multipool.config.values import as_text, parse_conn_max_age, parse_host, parse_port
from multipool.errors import ConfigurationError, InvalidPoolSetting, InvalidTLSSetting
from multipool.setting_names import SettingNames, short
from multipool.tls import TLSSpec, check_tls_support

_ENGINE_VENDORS: Mapping[str, str] = {
    **{engine: vendor for vendor, engine in ENGINES.items()},
    "django.db.backends.postgresql": "postgresql",
    "django.db.backends.postgresql_psycopg2": "postgresql",
    "django.db.backends.mysql": "mysql",
    "django.db.backends.sqlite3": "sqlite",
}

_POOLER_VENDOR = {"pgbouncer": "postgresql", "proxysql": "mysql"}


def engine_vendor(engine: object) -> str | None:
    """The vendor (``postgresql``, ``mysql``, ``sqlite``) of a ``DATABASES`` ENGINE that
    multipool reads -- its own backends and Django's -- or ``None``."""
    return _ENGINE_VENDORS.get(engine) if isinstance(engine, str) else None


# -- a spec from its parts ---------------------------------------------------------------


def make_spec(
    *,
    alias: str,
    vendor: str,
    name: str,
    user: str | None,
    password: str | None,
    host: str | None,
    port: int | None,
    options: Mapping[str, Any],
    tls: TLSSpec,
    pool: PoolSpec,
    conn_max_age: int | None,
    replica_of: str | None,
    replicas: Iterable[str],
    settings: Mapping[str, str],
    secrets: SecretSpec | None = None,
) -> DatabaseSpec:
    """A :class:`DatabaseSpec` of parsed values, once they fit together.

    ``options`` are the driver options; ``settings`` the setting each field came
    from (see :class:`~multipool.setting_names.SettingNames`).
    """
    names = SettingNames(alias, vendor, settings)
    secrets = secrets or SecretSpec()
    _check_combination(names, options, pool)
    _check_direct_tls(names, options, tls)
    check_secrets(names, password, secrets)
    return DatabaseSpec(
        alias=alias,
        vendor=vendor,
        name=name,
        user=user or None,
        password=password or None,
        host=host or None,
        port=port,
        options=tuple(sorted(((k, freeze(v)) for k, v in options.items()), key=sort_key)),
        tls=tls,
        pool=pool,
        conn_max_age=conn_max_age,
        secrets=secrets,
        replica_of=replica_of,
        replicas=tuple(replicas),
        settings=tuple(sorted(settings.items())),
    )


def _check_combination(names: SettingNames, options: Mapping[str, Any], pool: PoolSpec) -> None:
    """The pooler fits the server, and nothing relies on a session it would not keep."""
    alias, vendor = names.alias, names.vendor
    if pool.pooler is not None and vendor != _POOLER_VENDOR[pool.pooler]:
        raise InvalidPoolSetting(
            alias,
            names.of("pooler"),
            f"{pool.pooler} pools {_POOLER_VENDOR[pool.pooler]} connections, but this "
            f"alias is {vendor}",
            "use pgbouncer for PostgreSQL, proxysql for MySQL, or none",
        )
    if pool.pooler != "pgbouncer":
        return
    # Transaction pooling: consecutive transactions of one client may run on
    # different server sessions, so nothing may rely on session state.
    if options.get("assume_role"):
        raise InvalidPoolSetting(
            alias,
            names.driver_option("assume_role"),
            "SET ROLE does not survive the end of a transaction behind PgBouncer",
            "connect as the role directly (a PgBouncer user), or drop the pooler setting",
        )
    if options.get("prepare_threshold") is not None:
        raise InvalidPoolSetting(
            alias,
            names.driver_option("prepare_threshold"),
            "named prepared statements break behind PgBouncer in transaction mode",
            "remove prepare_threshold (multipool keeps psycopg's prepared statements off)",
        )
    if pool.reset == "session":
        raise InvalidPoolSetting(
            alias,
            names.of("pool_reset"),
            "a session reset behind PgBouncer would reset another client's server session",
            "use POOL_RESET=transaction; PgBouncer resets server sessions itself "
            "(server_reset_query)",
        )


def _check_direct_tls(names: SettingNames, options: Mapping[str, Any], tls: TLSSpec) -> None:
    """libpq 17's ``sslnegotiation=direct`` starts TLS at once, with no plain-text
    fallback, and refuses at connect a TLS mode that would allow one."""
    if options.get("sslnegotiation") != "direct" or tls.requires_encryption(names.vendor):
        return
    raise InvalidTLSSetting(
        names.alias,
        names.driver_option("sslnegotiation"),
        f"sslnegotiation=direct needs a TLS mode that requires encryption, but the mode "
        f"({names.of('tls_mode')}) is {tls.mode or 'not set (prefer)'}",
        f"set {names.of('tls_mode')} to verify-full (or require), or remove sslnegotiation",
    )


# -- DATABASES entries ---------------------------------------------------------------------

_CACHE_KEYS = (
    "ENGINE",
    "NAME",
    "USER",
    "PASSWORD",
    "HOST",
    "PORT",
    "OPTIONS",
    "CONN_MAX_AGE",
    "MULTIPOOL",
    "POOL_OPTIONS",
)
_MISSING = ("missing",)
_cache: dict[Any, DatabaseSpec] = {}
_cache_lock = threading.Lock()
_CACHE_MAX = 1024


def _key_freeze(value: Any) -> Any:
    """Like :func:`freeze`, but 1, 1.0 and True stay distinct."""
    if isinstance(value, Mapping):
        return (
            "d",
            tuple(sorted(((k, _key_freeze(v)) for k, v in value.items()), key=sort_key)),
        )
    if isinstance(value, (list, tuple)):
        return ("l", tuple(_key_freeze(v) for v in value))
    if isinstance(value, (bool, int, float)):
        return (type(value).__name__, value)
    if isinstance(value, os.PathLike):
        return ("p", os.fspath(value))
    return value


def spec_from_settings(alias: str, settings_dict: Mapping[str, Any]) -> DatabaseSpec:
    """The :class:`DatabaseSpec` of one ``DATABASES`` entry (cached on its content).

    A missing ``CONN_MAX_AGE`` is Django's default, 0; ``None`` is kept (the
    cache tells the two apart). See the module doc for what is accepted.
    """
    try:
        key = (alias, *(_key_freeze(settings_dict.get(k, _MISSING)) for k in _CACHE_KEYS))
        hash(key)
    except TypeError:
        return _spec_from_settings(alias, settings_dict)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    spec = _spec_from_settings(alias, settings_dict)
    with _cache_lock:
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = spec
    return spec


def _spec_from_settings(alias: str, entry: Mapping[str, Any]) -> DatabaseSpec:
    vendor = _vendor(alias, entry)
    meta = _meta(alias, entry)
    recorded = _recorded_names(alias, meta)
    names = SettingNames(alias, vendor, recorded)
    replica_of = as_text(
        alias, f"DATABASES[{alias!r}]['MULTIPOOL']['replica_of']", meta.get("replica_of")
    )
    replicas = _replicas(alias, meta)
    split = split_options(names, _options(alias, entry))
    # the spelling a TLS value came in, where it is not the default one
    default = SettingNames(alias, vendor)
    spelled = {
        f"tls_{f}": n for f, n in split.tls_names.items() if n != default.of(f"tls_{f}")
    }
    names = SettingNames(alias, vendor, {**spelled, **recorded})
    tls = check_tls_support(alias, vendor, TLSSpec(**split.tls), settings=names)
    conn_max_age = (
        parse_conn_max_age(alias, names.of("conn_max_age"), entry["CONN_MAX_AGE"])
        if "CONN_MAX_AGE" in entry
        else 0
    )
    return make_spec(
        alias=alias,
        vendor=vendor,
        name=as_text(alias, names.of("name"), entry.get("NAME")) or "",
        user=as_text(alias, names.of("user"), entry.get("USER")),
        password=as_text(alias, names.of("password"), entry.get("PASSWORD")),
        host=parse_host(alias, names.of("host"), entry.get("HOST"), vendor),
        port=parse_port(alias, names.of("port"), entry.get("PORT")),
        options=split.driver,
        tls=tls,
        pool=PoolSpec.from_options({k: v for k, (v, _) in split.pool.items()}),
        conn_max_age=conn_max_age,
        replica_of=replica_of,
        replicas=replicas,
        settings=dict(names.recorded),
        secrets=secrets_from_meta(alias, meta),
    )


def _vendor(alias: str, entry: Mapping[str, Any]) -> str:
    """The vendor of the entry's ENGINE; refuses django-db-connection-pool's settings."""
    base = f"DATABASES[{alias!r}]"
    engine = entry.get("ENGINE")
    vendor = engine_vendor(engine)
    if vendor is None:
        raise ConfigurationError(
            alias,
            f"{base}['ENGINE']",
            f"unsupported engine {short(engine)}",
            "use one of " + ", ".join(ENGINES.values()),
        )
    if entry.get("POOL_OPTIONS") is not None:
        raise InvalidPoolSetting(
            alias,
            f"{base}['POOL_OPTIONS']",
            "POOL_OPTIONS is django-db-connection-pool's setting; multipool would ignore it",
            "move the values into OPTIONS as pool_size, max_overflow, pool_recycle and "
            "pool_timeout (or use the DATABASE_POOL_SIZE... environment keys), and remove "
            "POOL_OPTIONS",
        )
    return vendor


def _meta(alias: str, entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``MULTIPOOL`` key; raises the problem an unusable entry records."""
    meta = entry.get("MULTIPOOL")
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise ConfigurationError(
            alias,
            f"DATABASES[{alias!r}]['MULTIPOOL']",
            "must be a dict",
            "use {'replica_of': ..., 'replicas': [...], 'settings': {...}} or remove it",
        )
    if isinstance(meta.get("problem"), Mapping):  # recorded by databases()
        raise problem_from_record(meta["problem"])
    return meta


def _recorded_names(alias: str, meta: Mapping[str, Any]) -> dict[str, str]:
    """``MULTIPOOL['settings']``: where each value came from (the environment)."""
    names = meta.get("settings") or {}
    if not isinstance(names, Mapping):
        raise ConfigurationError(
            alias,
            f"DATABASES[{alias!r}]['MULTIPOOL']['settings']",
            "must be a dict",
            "use {field: name}",
        )
    return {str(k): str(v) for k, v in names.items()}


def _replicas(alias: str, meta: Mapping[str, Any]) -> list[str]:
    replicas = meta.get("replicas") or ()
    if isinstance(replicas, str) or not all(isinstance(r, str) for r in replicas):
        raise ConfigurationError(
            alias,
            f"DATABASES[{alias!r}]['MULTIPOOL']['replicas']",
            "must be a list of alias names",
            "use a list of strings",
        )
    return list(replicas)


def _options(alias: str, entry: Mapping[str, Any]) -> Mapping[str, Any]:
    options = entry.get("OPTIONS")
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            alias, f"DATABASES[{alias!r}]['OPTIONS']", "must be a dict", "use a dict"
        )
    return options


# -- entries that record a problem ---------------------------------------------------------


def unusable_entry(problem: ConfigurationError, vendor: str) -> dict[str, Any]:
    """A ``DATABASES`` entry that records ``problem``: checks report it, using it raises it."""
    return {
        "ENGINE": ENGINES[vendor],
        "NAME": "",
        "MULTIPOOL": {"problem": problem_record(problem)},
    }


def problem_record(problem: ConfigurationError) -> dict[str, str]:
    return {
        "class": type(problem).__name__,
        "alias": problem.alias,
        "setting": problem.setting,
        "problem": problem.problem,
        "fix": problem.fix,
    }


def problem_from_record(record: Mapping[str, Any]) -> ConfigurationError:
    cls = getattr(errors, str(record.get("class")), ConfigurationError)
    if not (isinstance(cls, type) and issubclass(cls, ConfigurationError)):
        cls = ConfigurationError
    return cls(
        str(record.get("alias")),
        str(record.get("setting")),
        str(record.get("problem")),
        str(record.get("fix")),
    )
