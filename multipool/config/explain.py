"""Where each value of each alias came from (``multipool config --explain``).

A value can come from the process environment, a ``.env`` or ``settings.ini``
file (found from the settings module's directory upward), a keyword argument
of ``multipool.databases()``, the alias's primary (a replica inherits its pool
and TLS settings), or multipool's default. When a value is not what you
expected, this says which of them won.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from multipool.config.environment import make_source, read_all
from multipool.config.keys import env_prefix
from multipool.config.specs import DatabaseSpec
from multipool.errors import ConfigurationError
from multipool.setting_names import POOL_ATTRIBUTES, TLS_FIELDS
from multipool.tls.pem import from_pem_text

__all__ = ["Explained", "explain", "explain_as_dict", "settings_files"]

_VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*")
#: fields never shown as they are
_SECRETS = ("password", "tls_key_password")


@dataclass(frozen=True)
class Explained:
    """One value of one alias, with the setting it came from and that setting's source."""

    field: str
    value: Any
    setting: str
    origin: str


def explain(
    *, source: Any = None, search_path: Any = None, base_dir: Any = None, **defaults: Any
) -> dict[str, list[Explained] | ConfigurationError]:
    """Every alias of the environment: its values with their sources (or its error).

    The arguments are :func:`multipool.databases`'s."""
    env = make_source(source, search_path, base_dir, defaults)
    found = read_all(env, validate=False, warn=False)
    return {
        alias: spec if isinstance(spec, ConfigurationError) else list(_values(spec, env))
        for alias, spec in found.items()
    }


def settings_files(search_path: str) -> list[tuple[str, bool]]:
    """Every ``settings.ini`` / ``.env`` from ``search_path`` upward, and whether it is
    the one read (python-decouple reads only the first it finds)."""
    from multipool.config.source import SETTINGS_FILES, find_settings_file

    used = find_settings_file(search_path)
    found = []
    path = os.path.abspath(search_path)
    while True:
        for name in SETTINGS_FILES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                found.append((candidate, candidate == used))
        parent = os.path.dirname(path)
        if parent == path:
            return found
        path = parent


def _values(spec: DatabaseSpec, env: Any) -> Iterator[Explained]:
    def one(field: str, value: Any, setting: str | None = None) -> Explained:
        setting = setting or spec.setting(field)
        shown = "***" if field in _SECRETS and value else _shown(value, setting)
        return Explained(field, shown, setting, _origin(spec, setting, env))

    secrets = spec.secrets
    for field in ("name", "user", "password", "host", "port"):
        if field == "password" and spec.password is None and not secrets.is_empty:
            # never the content: where it is read, and when
            setting = spec.setting(field)
            text = f"(read from {setting} at each connect)"
            yield Explained(field, text, setting, _origin(spec, setting, env))
            continue
        yield one(field, getattr(spec, field))
    for key in ("password_file", "url_file", "credentials"):
        if getattr(secrets, key) is not None:
            yield one(key, getattr(secrets, key))
    for key, value in spec.options:  # driver options, from the URL's query
        yield one(key, value, f"{spec.setting('url')} (option {key})")
    for key, attribute in POOL_ATTRIBUTES.items():
        yield one(key, getattr(spec.pool, attribute))
    if spec.vendor != "sqlite":
        for tls_field in TLS_FIELDS:
            yield one(f"tls_{tls_field}", getattr(spec.tls, tls_field))
    yield one("conn_max_age", spec.conn_max_age)


def _shown(value: Any, setting: str) -> Any:
    """PEM text given in a variable lives in a private file: name the variable instead."""
    if isinstance(value, str) and from_pem_text(value):
        return f"(PEM text from {setting})"
    return value


def _origin(spec: DatabaseSpec, setting: str, env: Any) -> str:
    """Where the value behind ``setting`` came from."""
    variable = setting.split(" ", 1)[0]  # "DATABASE_URL (option x)" -> DATABASE_URL
    if not _VARIABLE.fullmatch(variable) or env.get(variable) is None:
        return "default"
    origin = str(env.origin(variable))
    own = env_prefix(spec.alias)
    inherited = not variable.startswith(own) and not variable.endswith("_REPLICAS")
    if spec.replica_of is not None and inherited:
        origin += f", inherited from {spec.replica_of!r}"
    return origin


def explain_as_dict(explained: list[Explained]) -> dict[str, dict[str, Any]]:
    """JSON-ready: field -> {value, setting, from}."""
    return {
        e.field: {"value": e.value if _plain(e.value) else str(e.value), "setting": e.setting,
                  "from": e.origin}
        for e in explained
    }


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))

