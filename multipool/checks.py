"""Django system checks: ``INSTALLED_APPS += ["multipool"]`` registers them.

Every check has a stable id (see ``docs/checks.md``)::

    multipool.E001  a DATABASES entry cannot be read (pool setting, MULTIPOOL key...)
    multipool.E002  invalid TLS setting (verify mode without a CA, cert without key...)
    multipool.E003  TLS file problem (missing, unreadable, not PEM, key permissions,
                    key passphrase missing or wrong)
    multipool.E004  certificates do not fit (key/certificate mismatch, wrong CA)
    multipool.E005  certificate expired or not yet valid
    multipool.E006  replica settings name an alias that is not in DATABASES
    multipool.E007  (DATABASE_STRICT) W006 as an error
    multipool.E008  (DATABASE_STRICT) W007 as an error
    multipool.E009  a password or URL file (*_FILE) is missing, unreadable or empty
    multipool.E010  the credential provider (DATABASE_CREDENTIALS) cannot be imported
    multipool.W001  certificate expires within 30 days
    multipool.W002  other TLS warning (unused passphrase, ignored files, unknown issuer)
    multipool.W003  CONN_MAX_AGE is not 0 on a pooled alias: pooling does nothing
    multipool.W004  alias not pooled (stock ENGINE) while other aliases are
    multipool.W005  PrimaryReplicaRouter configured but no alias has replicas
    multipool.W006  a variable with a multipool prefix that multipool does not read
    multipool.W007  a variable of an alias nobody declared
    multipool.W101  (deploy) weak TLS mode on a network database
    multipool.W102  (deploy) password written in settings instead of the environment
    multipool.W103  (deploy) MySQL: a CA is set, but the host name is not verified

The checks reuse :func:`multipool.config.spec_from_settings` and
:func:`multipool.tls.validate_tls`; the error classes of :mod:`multipool.errors`
decide the id. No message contains a password, a key passphrase or key
material: the messages come from those functions, which never include them.

:func:`check_databases` and :func:`check_deployment` take a ``DATABASES`` dict
(the ``multipool check`` command runs them on the environment's aliases).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from multipool.backends.verification import chain_verified, host_name_verified
from multipool.config import DatabaseSpec, spec_from_settings
from multipool.config.entries import problem_from_record
from multipool.errors import (
    CertificateDateError,
    CertificateError,
    ConfigurationError,
    CredentialProviderError,
    InvalidTLSSetting,
    SecretFileError,
    TLSFileError,
)
from multipool.notices import first_report
from multipool.tls import EXPIRY_WARNING_DAYS, ExpiryWarning, validate_tls

__all__ = [
    "CHECK_IDS",
    "ROUTER_PATH",
    "check_databases",
    "check_deployment",
    "multipool_checks",
    "multipool_deploy_checks",
    "spec_of",
]

#: the router the replica check looks for (matched by its dotted path)
ROUTER_PATH = "multipool.routers.PrimaryReplicaRouter"

MULTIPOOL_ENGINE_PREFIX = "multipool.backends."

#: id -> one-line description (``docs/checks.md`` has the full table)
CHECK_IDS: Mapping[str, str] = {
    "multipool.E001": "a DATABASES entry cannot be read",
    "multipool.E002": "invalid TLS setting",
    "multipool.E003": "TLS file problem",
    "multipool.E004": "certificates do not fit together",
    "multipool.E005": "certificate expired or not yet valid",
    "multipool.E006": "replica settings name an unknown alias",
    "multipool.E007": "unknown multipool variable (DATABASE_STRICT)",
    "multipool.E008": "variable of an undeclared alias (DATABASE_STRICT)",
    "multipool.E009": "password or URL file cannot be read",
    "multipool.E010": "credential provider cannot be imported",
    "multipool.W001": f"certificate expires within {EXPIRY_WARNING_DAYS} days",
    "multipool.W002": "TLS setting probably not as intended",
    "multipool.W003": "CONN_MAX_AGE is not 0 on a pooled alias",
    "multipool.W004": "alias not pooled while others are",
    "multipool.W005": "PrimaryReplicaRouter without replicas",
    "multipool.W006": "unknown multipool variable",
    "multipool.W007": "variable of an undeclared alias",
    "multipool.W101": "weak TLS mode (deploy)",
    "multipool.W102": "password written in settings (deploy)",
    "multipool.W103": "MySQL CA without host name verification (deploy)",
}

_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")


def _obj(alias: str) -> str:
    return f"database alias {alias!r}"


def _engine(entry: Any) -> str:
    engine = entry.get("ENGINE") if isinstance(entry, Mapping) else None
    return engine if isinstance(engine, str) else ""


def is_multipool_engine(engine: str) -> bool:
    return engine.startswith(MULTIPOOL_ENGINE_PREFIX)


#: kept for existing imports: :func:`spec_from_settings` reads a missing
#: ``CONN_MAX_AGE`` as Django's default, 0 (its cache tells it from ``None``)
spec_of = spec_from_settings


#: error class -> check id: the first class an error is an instance of decides
_ERROR_IDS: tuple[tuple[type[ConfigurationError], str], ...] = (
    (CertificateDateError, "multipool.E005"),
    (CertificateError, "multipool.E004"),
    (SecretFileError, "multipool.E009"),
    (CredentialProviderError, "multipool.E010"),
    (TLSFileError, "multipool.E003"),
    (InvalidTLSSetting, "multipool.E002"),
    (ConfigurationError, "multipool.E001"),
)


def _from_error(alias: str, exc: ConfigurationError) -> Error:
    """One :class:`ConfigurationError` as a check message (the id follows its class)."""
    check_id = next(check_id for cls, check_id in _ERROR_IDS if isinstance(exc, cls))
    return Error(f"{exc.setting}: {exc.problem}", hint=exc.fix, obj=_obj(alias), id=check_id)


def _tls_warning(alias: str, message: str) -> Warning:
    first_report(alias, message)  # shown here: the pool need not log it again
    text = message.removeprefix(f"database alias '{alias}': ")
    if isinstance(message, ExpiryWarning):
        return Warning(
            text,
            hint="renew the certificate before it expires; connections fail once it has",
            obj=_obj(alias),
            id="multipool.W001",
        )
    return Warning(text, obj=_obj(alias), id="multipool.W002")


def _specs(
    databases: Mapping[str, Any], *, only_multipool: bool
) -> tuple[dict[str, DatabaseSpec], list[CheckMessage]]:
    """Specs of the aliases that can be read, and E001-E004 for those that cannot."""
    specs: dict[str, DatabaseSpec] = {}
    messages: list[CheckMessage] = []
    for alias, entry in databases.items():
        engine = _engine(entry)
        ours = is_multipool_engine(engine)
        if only_multipool and not ours:
            continue
        try:
            specs[alias] = spec_from_settings(alias, entry)
        except ConfigurationError as exc:
            if ours:  # a stock engine's entry is Django's business
                messages.append(_from_error(alias, exc))
        except Exception as exc:  # never show the message: it might echo a value
            if ours:
                messages.append(
                    Error(
                        f"the entry cannot be read ({type(exc).__name__})",
                        hint="compare it with the output of multipool.databases()",
                        obj=_obj(alias),
                        id="multipool.E001",
                    )
                )
    return specs, messages


def _router_paths(routers: Iterable[Any]) -> list[str]:
    paths = []
    for router in routers:
        if isinstance(router, str):
            paths.append(router)
        else:
            cls = router if isinstance(router, type) else type(router)
            paths.append(f"{cls.__module__}.{cls.__qualname__}")
    return paths


def only_aliases(
    messages: list[CheckMessage], aliases: Iterable[str] | None
) -> list[CheckMessage]:
    """The messages about ``aliases`` (all when ``None``) and those about no alias."""
    if aliases is None:
        return messages
    others = {_obj(alias) for alias in aliases}
    return [m for m in messages if not str(m.obj).startswith("database alias") or m.obj in others]


def check_databases(
    databases: Mapping[str, Any],
    routers: Sequence[Any] = (),
    *,
    now: Any = None,
    aliases: Iterable[str] | None = None,
) -> list[CheckMessage]:
    """The checks of a ``DATABASES`` dict (and ``DATABASE_ROUTERS``): E001-E010, W001-W007.

    ``aliases``: report only on these (the others still count, e.g. as replicas).
    """
    return only_aliases(_check_databases(databases, routers, now), aliases)


def _check_databases(
    databases: Mapping[str, Any], routers: Sequence[Any], now: Any
) -> list[CheckMessage]:
    specs, messages = _specs(databases, only_multipool=True)
    for alias, spec in specs.items():
        messages += _tls_messages(alias, spec, now)
        messages += _secret_messages(alias, spec)
        messages += _conn_max_age_warnings(alias, spec)
        messages += _replica_errors(alias, spec, databases)
    messages += _unpooled_warnings(databases)
    messages += _router_warnings(databases, routers)
    messages += _stray_messages(databases)
    return messages


def _stray_messages(databases: Mapping[str, Any]) -> list[CheckMessage]:
    """W006/W007 (E007/E008 with ``DATABASE_STRICT``): variables that look like
    multipool's and are not read, as :func:`multipool.databases` recorded them."""
    messages: list[CheckMessage] = []
    for alias, entry in databases.items():
        meta = entry.get("MULTIPOOL") if isinstance(entry, Mapping) else None
        if not isinstance(meta, Mapping):
            continue
        if isinstance(meta.get("strict_problem"), Mapping):
            messages.append(_from_error(alias, problem_from_record(meta["strict_problem"])))
        for stray in meta.get("strays") or ():
            messages.append(_stray_message(alias, stray))
    return messages


def _stray_message(alias: str, stray: Mapping[str, Any]) -> CheckMessage:
    variable, owner = stray.get("variable"), stray.get("alias")
    unknown, strict = stray.get("kind") == "unknown", bool(stray.get("strict"))
    level = Error if strict else Warning
    if strict:
        check_id = "multipool.E007" if unknown else "multipool.E008"
    else:
        check_id = "multipool.W006" if unknown else "multipool.W007"
    if unknown:
        suggestion = stray.get("suggestion")
        return level(
            f"{variable}: multipool reads no variable of this name; it is ignored",
            hint=(f"did you mean {suggestion}? Rename it" if suggestion else
                  "remove it, or use a name from docs/configuration.md"),
            obj=_obj(alias),
            id=check_id,
        )
    return level(
        f"{variable}: the alias {owner!r} is not declared, so this variable is ignored",
        hint=(f"add {owner} to DATABASE_ALIASES (a primary) or to a primary's "
              "*_DATABASE_REPLICAS (a replica), or remove the variable"),
        obj="environment",
        id=check_id,
    )


def _tls_messages(alias: str, spec: DatabaseSpec, now: Any) -> list[CheckMessage]:
    """E002-E005 for TLS settings and files that cannot be used, W001/W002 otherwise."""
    try:
        found = validate_tls(
            alias, spec.tls, settings=spec.setting_names, now=now, vendor=spec.vendor
        )
    except ConfigurationError as exc:
        return [_from_error(alias, exc)]
    return [_tls_warning(alias, m) for m in found]


def _secret_messages(alias: str, spec: DatabaseSpec) -> list[CheckMessage]:
    """E009: a password or URL file that cannot be read; E010: a credential provider
    that cannot be imported (the checks import it; the settings never do)."""
    from multipool.config.secret_settings import validate_secrets
    from multipool.secrets.credentials import load_provider

    secrets = spec.secrets
    try:
        validate_secrets(alias, spec.setting_names, secrets)
        if secrets.credentials is not None:
            load_provider(alias, spec.setting("credentials"), secrets.credentials)
    except ConfigurationError as exc:
        return [_from_error(alias, exc)]
    return []


def _conn_max_age_warnings(alias: str, spec: DatabaseSpec) -> list[CheckMessage]:
    """W003: a pooled alias whose connections stay checked out between requests."""
    in_memory = spec.vendor == "sqlite" and (
        spec.name in ("", ":memory:") or "mode=memory" in spec.name
    )
    if not spec.pool.enabled or spec.conn_max_age == 0 or in_memory:
        return []
    age = "None (forever)" if spec.conn_max_age is None else f"{spec.conn_max_age}"
    limit = spec.pool.size + spec.pool.max_overflow
    return [
        Warning(
            f"{spec.setting('conn_max_age')} is {age}: every thread keeps its "
            "connection checked out of the pool between requests, so the pool "
            f"(pool_size {spec.pool.size} + max_overflow {spec.pool.max_overflow}) "
            f"reuses nothing, and more than {limit} threads wait for a connection",
            hint=f"set {spec.setting('conn_max_age')} to 0: Django then gives the "
            "connection back to the pool at the end of each request",
            obj=_obj(alias),
            id="multipool.W003",
        )
    ]


def _replica_errors(
    alias: str, spec: DatabaseSpec, databases: Mapping[str, Any]
) -> list[CheckMessage]:
    """E006: replica settings that name an alias that is not in DATABASES."""
    messages: list[CheckMessage] = [
        Error(
            f"replica {replica!r} ({spec.setting('replicas')}) is not in DATABASES",
            hint=f"add a DATABASES entry for {replica!r} or remove it from the replicas",
            obj=_obj(alias),
            id="multipool.E006",
        )
        for replica in spec.replicas
        if replica not in databases
    ]
    if spec.replica_of is not None and spec.replica_of not in databases:
        messages.append(
            Error(
                f"replica of {spec.replica_of!r} ({spec.setting('replica_of')}), "
                "which is not in DATABASES",
                hint=f"add a DATABASES entry for {spec.replica_of!r} or correct the name",
                obj=_obj(alias),
                id="multipool.E006",
            )
        )
    return messages


def _unpooled_warnings(databases: Mapping[str, Any]) -> list[CheckMessage]:
    """W004: aliases with a stock ENGINE next to pooled ones."""
    engines = {alias: _engine(entry) for alias, entry in databases.items()}
    if not any(is_multipool_engine(e) for e in engines.values()):
        return []
    return [
        Warning(
            f"ENGINE {engine!r} is not a multipool backend: this alias is not "
            "pooled, unlike the others",
            hint="use multipool.databases() or a multipool.backends.* ENGINE "
            "(postgresql, mysql, sqlite3); silence multipool.W004 if this is "
            "intended",
            obj=_obj(alias),
            id="multipool.W004",
        )
        for alias, engine in engines.items()
        if not is_multipool_engine(engine) and engine != "django.db.backends.dummy"
    ]


def _router_warnings(databases: Mapping[str, Any], routers: Sequence[Any]) -> list[CheckMessage]:
    """W005: the replica router without any replica to route to."""
    if ROUTER_PATH not in _router_paths(routers):
        return []
    all_specs, _ = _specs(databases, only_multipool=False)
    if any(s.replicas or s.replica_of for s in all_specs.values()):
        return []
    return [
        Warning(
            f"DATABASE_ROUTERS contains {ROUTER_PATH} but no database alias has "
            "replicas: every query goes to the primary",
            hint="set DATABASE_REPLICAS=replica1,... (and REPLICA1_DATABASE_URL), "
            "or remove the router",
            obj="DATABASE_ROUTERS",
            id="multipool.W005",
        )
    ]


def _weak_tls_warnings(alias: str, spec: DatabaseSpec) -> list[CheckMessage]:
    """W101: the server's certificate is not verified. W103 (MySQL): it is verified
    against the CA, but its host name is not."""
    mode_setting = spec.setting("tls_mode")
    if not chain_verified(spec):
        mode = spec.tls.mode or (
            "require (ssl_mode=REQUIRED, as TLS settings are given)"
            if spec.tls.requires_encryption(spec.vendor)
            else "driver default (prefer)"
        )
        return [
            Warning(
                f"TLS mode is {mode} ({mode_setting}): the server's "
                "certificate is not verified, so a man in the middle can read the "
                "traffic and the password",
                hint=f"set {mode_setting} to verify-full and "
                f"{spec.setting('tls_ca')} to the server's CA bundle (or 'system')",
                obj=_obj(alias),
                id="multipool.W101",
            )
        ]
    if spec.vendor != "mysql" or host_name_verified(spec):
        return []
    ca_setting = spec.setting("tls_ca" if spec.tls.ca is not None else "tls_capath")
    mode = (
        "is not set (multipool connects with ssl_mode=REQUIRED)"
        if spec.tls.mode is None
        else f"is {spec.tls.mode}"
    )
    return [
        Warning(
            f"{ca_setting} is set but {mode_setting} {mode}: the server's certificate is "
            "checked against that CA, but its host name is not, so any server with a "
            "certificate from that CA can pose as this one",
            hint=f"set {mode_setting} to verify-full (VERIFY_IDENTITY); the host in "
            f"{spec.setting('host')} must then be one of the certificate's names",
            obj=_obj(alias),
            id="multipool.W103",
        )
    ]


def _password_from_environment(spec: DatabaseSpec) -> bool:
    name = spec.setting("password")
    if _ENV_NAME_RE.fullmatch(name):
        return True
    # Hand-written settings that read os.environ["..."] are fine too.
    return any(value == spec.password for value in os.environ.values())


def check_deployment(
    databases: Mapping[str, Any], *, aliases: Iterable[str] | None = None
) -> list[CheckMessage]:
    """The deploy checks of a ``DATABASES`` dict: W101 (weak TLS), W102 (password in
    settings), W103 (MySQL: host name not verified)."""
    messages: list[CheckMessage] = []
    specs, _ = _specs(databases, only_multipool=False)
    for alias, spec in specs.items():
        if spec.vendor == "sqlite":
            continue
        socket = spec.host is not None and spec.host.startswith("/")
        if not socket:
            messages += _weak_tls_warnings(alias, spec)
        if spec.password and not _password_from_environment(spec):
            prefix = "DATABASE_" if alias == "default" else f"{alias.upper()}_DATABASE_"
            messages.append(
                Warning(
                    f"the password is written in settings ({spec.setting('password')}) "
                    "instead of coming from the environment",
                    hint=f"remove it from the settings file and set {prefix}URL "
                    "(DATABASES = multipool.databases()), or read it from os.environ",
                    obj=_obj(alias),
                    id="multipool.W102",
                )
            )
    return only_aliases(messages, aliases)


@register("multipool")
def multipool_checks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Registered system check: :func:`check_databases` on ``settings.DATABASES``."""
    from django.conf import settings

    return check_databases(settings.DATABASES, getattr(settings, "DATABASE_ROUTERS", ()))


@register("multipool", Tags.security, deploy=True)
def multipool_deploy_checks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Registered deploy check (``manage.py check --deploy``): :func:`check_deployment`."""
    from django.conf import settings

    return check_deployment(settings.DATABASES)
