"""Every alias configured in the environment -> specs and ``DATABASES`` entries.

An alias's value of a pool, TLS or ``CONN_MAX_AGE`` setting comes from, lowest
first: its primary (for a replica), a keyword default of :func:`databases`, its
URL's query, its own environment variable.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from multipool.config.entries import make_spec, problem_record, unusable_entry
from multipool.config.keys import ALIAS_KEYS, DEFAULT_KEY_RE, DEFAULT_URL, ENV_KEYS, env_prefix
from multipool.config.options import SplitOptions, split_options
from multipool.config.secret_settings import (
    TLS_FILE_FIELDS,
    alias_url,
    key_passphrase_from_file,
    secrets_from_env,
    tls_file_path,
    validate_secrets,
)
from multipool.config.source import Source
from multipool.config.specs import POOL_OPTION_KEYS, DatabaseSpec, PoolSpec
from multipool.config.urls import SCHEMES, URLParts, parse_url
from multipool.config.values import (
    option_value,
    parse_conn_max_age,
    parse_flag,
    parse_host,
    parse_pool_value,
)
from multipool.config.variables import stray_variables
from multipool.errors import ConfigurationError, InvalidURL
from multipool.setting_names import SettingNames
from multipool.tls import (
    MultipoolWarning,
    TLSSpec,
    check_tls_support,
    normalize_tls_field,
    validate_tls,
)

logger = logging.getLogger("multipool.config")

#: the fields a URL gives
_URL_FIELDS = ("url", "name", "user", "password", "host", "port")


def _check_default_keys(defaults: Mapping[str, Any]) -> None:
    known = [k.name() for k in ENV_KEYS]
    for key in defaults:
        if not DEFAULT_KEY_RE.fullmatch(key):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise TypeError(f"{key!r} is not a multipool environment key{hint}")


@dataclass
class _Layer:
    """Effective pool/TLS/CONN_MAX_AGE values of an alias, with where each came from."""

    pool: dict[str, tuple[Any, str]] = field(default_factory=dict)
    tls: dict[str, tuple[Any, str]] = field(default_factory=dict)
    conn_max_age: tuple[Any, str] | None = None

    def copy(self) -> _Layer:
        return _Layer(dict(self.pool), dict(self.tls), self.conn_max_age)

    def names(self) -> dict[str, str]:
        """Field -> the setting its value came from."""
        names = {key: name for key, (_, name) in self.pool.items()}
        names.update({f"tls_{f}": name for f, (_, name) in self.tls.items()})
        if self.conn_max_age is not None:
            names["conn_max_age"] = self.conn_max_age[1]
        return names


def _alias_from_env(
    alias: str,
    env: Source,
    *,
    inherited: _Layer | None,
    replica_of: str | None,
    replicas: list[str],
    replicas_var: str,
) -> tuple[DatabaseSpec, _Layer]:
    """One alias's spec, and its layer of values (that its replicas inherit)."""
    url, url_var, url_file = alias_url(
        alias, env, f"{env_prefix(alias)}URL", DEFAULT_URL if alias == "default" else None
    )
    parts = parse_url(alias, url_var, url)
    vendor = parts.vendor
    query = dict(parts.query)
    host = parts.host
    if "host" in query and vendor != "sqlite":  # ?host=/socket/dir
        socket = query.pop("host")
        host = socket[-1] if isinstance(socket, tuple) else socket
    host = parse_host(alias, url_var, host, vendor, InvalidURL)
    split = split_options(SettingNames(alias, vendor, written_in=url_var), query, env.base_dir)
    driver = {k: option_value(v) for k, v in split.driver.items()}
    if vendor == "postgresql" and not parts.name and not driver.get("service"):
        # (Hand-written entries may leave NAME empty: Django's maintenance connection does.)
        raise ConfigurationError(
            alias,
            url_var,
            "the URL names no database",
            "put the database name in the URL path (postgresql://host/NAME), or add ?service=NAME",
        )
    layer = _layer(alias, vendor, env, inherited, split, url_var)
    secrets, password, secret_names = secrets_from_env(
        alias, env, parts.password, url_var, url_file
    )
    names = SettingNames(
        alias, vendor, {**_names(alias, layer, url_var, replica_of, replicas_var), **secret_names}
    )
    tls = TLSSpec(**{f: v for f, (v, _) in layer.tls.items()})
    spec = make_spec(
        alias=alias,
        vendor=vendor,
        name=_database_name(parts, env.base_dir),
        user=parts.user,
        password=password,
        secrets=secrets,
        host=host,
        port=parts.port,
        options=driver,
        tls=check_tls_support(alias, vendor, tls, settings=names),
        pool=PoolSpec.from_options({k: v for k, (v, _) in layer.pool.items()}),
        conn_max_age=layer.conn_max_age[0] if layer.conn_max_age is not None else 0,
        replica_of=replica_of,
        replicas=replicas,
        settings=dict(names.recorded),
    )
    return spec, layer


def _database_name(parts: URLParts, base_dir: str) -> str:
    """The database name; a SQLite file's path is relative to ``base_dir``."""
    name = parts.name
    if parts.vendor == "sqlite" and name != ":memory:" and not name.startswith("file:"):
        return os.path.join(base_dir, os.path.expanduser(name))
    return name


def _layer(
    alias: str,
    vendor: str,
    env: Source,
    inherited: _Layer | None,
    split: SplitOptions,
    url_var: str,
) -> _Layer:
    """The alias's pool, TLS and CONN_MAX_AGE values, each from the highest source that
    sets it: the primary's layer, keyword defaults, the URL query, the environment."""
    layer = inherited.copy() if inherited is not None else _Layer()
    own = [(key.field, key.name(alias)) for key in ALIAS_KEYS]
    for field_name, var in own:
        if env.from_source(var) is None and env.from_defaults(var) is not None:
            _apply(layer, alias, vendor, field_name, var, env.from_defaults(var), env)
    layer.pool.update(split.pool)
    layer.tls.update({f: (v, url_var) for f, v in split.tls.items()})
    for field_name, var in own:
        raw = env.from_source(var)
        if raw is not None:
            _apply(layer, alias, vendor, field_name, var, raw, env)
    return layer


def _apply(
    layer: _Layer, alias: str, vendor: str, field_name: str, var: str, raw: Any, env: Source
) -> None:
    """Parse one environment value into ``layer`` (other keys are read elsewhere)."""
    base_dir = env.base_dir
    if field_name.startswith("tls_") and vendor == "sqlite":
        check_tls_support(alias, vendor, TLSSpec(mode="require"), settings={"mode": var})
    if field_name in POOL_OPTION_KEYS:
        layer.pool[field_name] = (parse_pool_value(alias, field_name, raw, var), var)
    elif field_name in TLS_FILE_FIELDS:
        tls_field = TLS_FILE_FIELDS[field_name]
        path = tls_file_path(alias, var, tls_field, raw, env)
        if path is not None:
            layer.tls[tls_field] = (path, var)
    elif field_name == "tls_key_password_file":
        passphrase = key_passphrase_from_file(alias, var, raw, env)
        if passphrase is not None:
            layer.tls["key_password"] = (passphrase, var)
    elif field_name.startswith("tls_"):
        tls_field = field_name.removeprefix("tls_")
        value = normalize_tls_field(alias, tls_field, raw, var, base_dir=base_dir)
        if value is not None:
            layer.tls[tls_field] = (value, var)
    elif field_name == "conn_max_age":
        layer.conn_max_age = (parse_conn_max_age(alias, var, raw), var)


def _names(
    alias: str, layer: _Layer, url_var: str, replica_of: str | None, replicas_var: str
) -> dict[str, str]:
    """Field -> the setting its value came from (or would come from, when set)."""
    names = {key.field: key.name(alias) for key in ALIAS_KEYS if key.field != "replicas"}
    names["replicas" if replica_of is None else "replica_of"] = replicas_var
    names.update({f: url_var for f in _URL_FIELDS})
    names.update(layer.names())
    return names


def _emit(message: str) -> None:
    logger.warning("%s", message)
    warnings.warn(message, MultipoolWarning, stacklevel=4)


def validate_spec(spec: DatabaseSpec, *, now: Any = None) -> list[str]:
    """Startup checks of one spec (TLS files, password and URL files, CONN_MAX_AGE);
    raise or return warnings."""
    validate_secrets(spec.alias, spec.setting_names, spec.secrets)
    found = validate_tls(
        spec.alias, spec.tls, settings=spec.setting_names, now=now, vendor=spec.vendor
    )
    if spec.pool.enabled and spec.conn_max_age != 0:
        found.append(
            f"database alias '{spec.alias}': {spec.setting('conn_max_age')} is "
            f"{spec.conn_max_age}; with pooling keep it 0 so that Django returns "
            "connections to the pool at the end of each request"
        )
    return found


def _aliases_from_env(env: Source) -> tuple[list[str], dict[str, list[str]]]:
    """The primary aliases and the replicas of each (``DATABASE_ALIASES``, ``*_REPLICAS``)."""
    aliases_var = "DATABASE_ALIASES"
    primaries = ["default", *(a for a in env.aliases(aliases_var, "default") if a != "default")]
    owners: dict[str, str] = {}
    replica_lists: dict[str, list[str]] = {}
    for primary in primaries:
        var = f"{env_prefix(primary)}REPLICAS"
        replica_lists[primary] = env.aliases(var, primary)
        for replica in replica_lists[primary]:
            if replica == "default" or replica in primaries:
                raise ConfigurationError(
                    primary,
                    var,
                    f"{replica!r} is a primary alias and cannot also be a replica",
                    f"remove {replica!r} from {var} or from {aliases_var}",
                )
            if replica in owners:
                raise ConfigurationError(
                    primary,
                    var,
                    f"{replica!r} is already a replica of {owners[replica]!r}",
                    "list each replica under one primary only",
                )
            owners[replica] = primary
    return primaries, replica_lists


def read_all(
    env: Source, *, validate: bool, warn: bool = True
) -> dict[str, DatabaseSpec | ConfigurationError]:
    """Every alias of the environment: its spec, or the error that stops it.

    A replica of a primary that cannot be read shares the primary's error (it
    would inherit the primary's settings).
    """
    primaries, replica_lists = _aliases_from_env(env)
    found: dict[str, DatabaseSpec | ConfigurationError] = {}
    for primary in primaries:
        replicas_var = f"{env_prefix(primary)}REPLICAS"
        try:
            spec, layer = _alias_from_env(
                primary,
                env,
                inherited=None,
                replica_of=None,
                replicas=replica_lists[primary],
                replicas_var=replicas_var,
            )
            found[primary] = _validated(spec, warn) if validate else spec
        except ConfigurationError as exc:
            found[primary] = exc
            found.update({replica: exc for replica in replica_lists[primary]})
            continue
        for replica in replica_lists[primary]:
            try:
                found[replica] = _replica(
                    env, replica, primary, layer, validate=validate, warn=warn
                )
            except ConfigurationError as exc:
                found[replica] = exc
    return found


def _replica(
    env: Source, replica: str, primary: str, inherited: _Layer, *, validate: bool, warn: bool
) -> DatabaseSpec:
    replicas_var = f"{env_prefix(primary)}REPLICAS"
    own = f"{env_prefix(replica)}REPLICAS"
    if env.get(own) is not None:
        raise ConfigurationError(
            replica,
            own,
            f"{replica!r} is a replica of {primary!r} and cannot have replicas",
            f"list every replica in {replicas_var}",
        )
    spec, _ = _alias_from_env(
        replica,
        env,
        inherited=inherited,
        replica_of=primary,
        replicas=[],
        replicas_var=replicas_var,
    )
    return _validated(spec, warn) if validate else spec


def _validated(spec: DatabaseSpec, warn: bool) -> DatabaseSpec:
    """``spec`` once its TLS files check out (raises what is wrong); its warnings are
    emitted when ``warn``."""
    messages = validate_spec(spec)
    for message in messages if warn else ():
        _emit(message)
    return spec


def make_source(
    source: Any,
    search_path: str | os.PathLike[str] | None,
    base_dir: str | os.PathLike[str] | None,
    defaults: Mapping[str, Any],
) -> Source:
    _check_default_keys(defaults)
    return Source(
        source,
        os.fspath(search_path) if search_path is not None else None,
        defaults,
        os.fspath(base_dir) if base_dir is not None else None,
    )


def read_environment(
    *,
    source: Any = None,
    search_path: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    validate: bool = True,
    **defaults: Any,
) -> dict[str, DatabaseSpec]:
    """Every alias configured in the environment, as specs; raises the first problem.

    ``defaults`` are fallback values of environment keys
    (``DATABASE_URL="sqlite:///db.sqlite3"``, ``DATABASE_POOL_SIZE=10``), used
    when the environment does not set them.

    ``source``: where values come from. Default: python-decouple's
    ``AutoConfig`` (``os.environ``, then ``settings.ini`` or ``.env`` found
    from ``search_path``, by default the caller's directory, upward). Also
    accepted: a mapping (used alone, e.g. in tests), a decouple ``Config`` /
    ``AutoConfig``, or a decouple repository (``RepositoryEnv(path)``).

    ``base_dir``: what relative paths (a SQLite file, certificate files) are
    relative to. Default: the directory of the ``.env`` / ``settings.ini`` in
    use, else ``search_path`` (the caller's directory); with an explicit
    ``source``, ``search_path`` or the current directory.

    With ``validate`` (default), TLS files are checked and warnings are
    emitted as :class:`MultipoolWarning` and logged.
    """
    env = make_source(source, search_path, base_dir, defaults)
    specs: dict[str, DatabaseSpec] = {}
    for alias, found in read_all(env, validate=validate).items():
        if isinstance(found, ConfigurationError):
            raise found
        specs[alias] = found
    return specs


def databases(
    *,
    source: Any = None,
    search_path: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    validate: bool = True,
    **defaults: Any,
) -> dict[str, dict[str, Any]]:
    """A Django ``DATABASES`` dict of every alias configured in the environment.

    ``multipool.databases(DATABASE_URL="sqlite:///db.sqlite3", DATABASE_POOL_SIZE=10)``:
    keyword arguments are fallbacks for environment keys. See :func:`read_environment`.

    A setting that cannot be used does not stop ``settings.py``: the alias's
    entry carries the problem, ``manage.py check`` reports it (``multipool.E001``
    to ``E005``, with the fix as hint) and the first use of the alias raises it
    (a :class:`~multipool.errors.ConfigurationError`, Django's
    ``ImproperlyConfigured``). :func:`read_environment` raises instead.

    Warnings (a certificate about to expire...) are not emitted here: the system
    checks report them, and a pool logs them once when it is created.
    """
    env = make_source(source, search_path, base_dir, defaults)
    try:
        found = read_all(env, validate=validate, warn=False)
    except ConfigurationError as exc:  # the list of aliases itself
        return {"default": unusable_entry(exc, "sqlite")}
    entries = {
        alias: unusable_entry(spec, _vendor_guess(env, alias))
        if isinstance(spec, ConfigurationError)
        else spec.to_django()
        for alias, spec in found.items()
    }
    _note_strays(entries, env)
    return entries


def _note_strays(entries: dict[str, dict[str, Any]], env: Source) -> None:
    """Record the variables that look like multipool's and are not read, for the
    system checks (W006/W007, or E007/E008 with ``DATABASE_STRICT``)."""
    try:
        strict = parse_flag("default", "DATABASE_STRICT", env.get("DATABASE_STRICT") or False)
    except ConfigurationError as exc:
        strict = True  # a value that is no boolean: the checks say so, strictly
        entries["default"].setdefault("MULTIPOOL", {})["strict_problem"] = problem_record(exc)
    for stray in stray_variables(env.names(), entries):
        owner = stray.alias if stray.kind == "unknown" else "default"
        meta = entries[owner].setdefault("MULTIPOOL", {})
        meta.setdefault("strays", []).append({**stray.as_dict(), "strict": strict})


def _vendor_guess(env: Source, alias: str) -> str:
    """The vendor of an alias whose settings cannot be read, from its URL's scheme."""
    url = env.get(f"{env_prefix(alias)}URL") if alias != "default" else env.get("DATABASE_URL")
    scheme = str(url or DEFAULT_URL).split(":", 1)[0].partition("+")[0].lower()
    return SCHEMES[scheme][0] if scheme in SCHEMES else "sqlite"
