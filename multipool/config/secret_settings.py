"""Settings that name where a secret is: ``*_FILE`` variables and a credential provider.

The container convention (the official postgres image's ``POSTGRES_PASSWORD_FILE``):
``X_FILE`` names a file that holds what ``X`` would hold. multipool reads

* ``DATABASE_URL_FILE``: the URL, with the settings (for the server, the
  database and the options) and again at each connect (for the user and
  password);
* ``DATABASE_PASSWORD_FILE``: the password, at each connect;
* ``DATABASE_CREDENTIALS``: a provider, ``package.module:callable``, called at a
  connect when its last answer is due (:mod:`multipool.secrets.credentials`);
* ``DATABASE_SSLROOTCERT_FILE``, ``SSLCERT_FILE``, ``SSLKEY_FILE``,
  ``SSLCRL_FILE``: the certificate files, as ``SSLROOTCERT=/path`` would, but
  never PEM text;
* ``DATABASE_SSLPASSWORD_FILE``: the client key's passphrase, once, with the
  settings (the spec keeps it, as it keeps ``SSLPASSWORD``).

A variable and its ``_FILE`` form together are an error, and so is more than
one source of the password. Nothing here keeps a database password from a file
in a spec: the spec records the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from multipool.config.source import Source
from multipool.config.specs import SecretSpec
from multipool.errors import ConfigurationError, SecretFileError, TLSFileError
from multipool.setting_names import SettingNames
from multipool.tls.pem import is_pem_text, looks_like_pem_body

__all__ = [
    "PROVIDER_RE",
    "TLS_FILE_FIELDS",
    "alias_url",
    "check_secrets",
    "key_passphrase_from_file",
    "secrets_from_env",
    "secrets_from_meta",
    "tls_file_path",
    "validate_secrets",
]

#: ``package.module:callable`` (the callable may be an attribute path: ``mod:obj.method``)
PROVIDER_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")

#: the ``tls_*_file`` fields of the environment keys -> the TLS field they set
TLS_FILE_FIELDS: Mapping[str, str] = {
    "tls_ca_file": "ca",
    "tls_cert_file": "cert",
    "tls_key_file": "key",
    "tls_crl_file": "crl",
}


def _path(value: Any, base_dir: str) -> str:
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(str(value).strip())))


def _file_path(
    alias: str, var: str, raw: Any, base_dir: str, error: type[ConfigurationError]
) -> str:
    """The absolute path a ``*_FILE`` variable names. A value that is no path of an
    existing file and looks like the secret itself (a URL, a word without ``/``, a
    base64 body) is refused without being shown."""
    text = str(raw).strip()
    path = _path(text, base_dir)
    if "://" in text or (
        ("/" not in text or looks_like_pem_body(text)) and not os.path.exists(path)
    ):
        raise error(
            alias, var, "the value names no existing file (value not shown: is it the "
            "secret itself?)",
            f"put the secret in a file and set {var} to its path, e.g. /run/secrets/...",
        )
    return path


def _conflict(alias: str, file_var: str, other: str, what: str) -> ConfigurationError:
    return ConfigurationError(
        alias, file_var, f"{other} is set too: both give the {what}",
        f"keep one of {other} and {file_var}",
    )


def alias_url(
    alias: str, env: Source, url_var: str, default: str | None
) -> tuple[Any, str, str | None]:
    """The alias's URL, the variable it came from, and the ``URL_FILE`` path (or None).

    ``default``: the URL when neither is set (``None``: an error)."""
    file_var = f"{url_var}_FILE"
    raw_file = env.get(file_var)
    url = env.get(url_var)
    if raw_file is None:
        if url is not None:
            return url, url_var, None
        if default is None:
            raise ConfigurationError(
                alias, url_var, "is not set",
                f"set {url_var} to the database URL, e.g. postgresql://user:password@host:5432/"
                f"name, or {file_var} to a file holding it",
            )
        return default, url_var, None
    if url is not None:
        raise _conflict(alias, file_var, url_var, "database URL")
    path = _file_path(alias, file_var, raw_file, env.base_dir, SecretFileError)
    from multipool.secrets.files import read_secret_text

    return read_secret_text(alias, file_var, path, "database URL").strip(), file_var, path


def secrets_from_env(
    alias: str, env: Source, url_password: str | None, url_var: str, url_file: str | None
) -> tuple[SecretSpec, str | None, dict[str, str]]:
    """The alias's :class:`SecretSpec`, the password the spec keeps (none when it
    comes from a file or a provider), and the setting names of the password."""
    prefix = url_var.removesuffix("_FILE").removesuffix("URL")
    password_var, credentials_var = f"{prefix}PASSWORD_FILE", f"{prefix}CREDENTIALS"
    raw_password_file = env.get(password_var)
    credentials = env.get(credentials_var)
    names: dict[str, str] = {}
    for var, given in ((password_var, raw_password_file), (credentials_var, credentials)):
        if given is not None and url_password:
            raise ConfigurationError(
                alias, var, f"the URL ({url_var}) has a password too",
                f"remove the password from the URL, or unset {var}",
            )
    if raw_password_file is not None and credentials is not None:
        raise _conflict(alias, credentials_var, password_var, "password")
    if raw_password_file is not None:
        names["password"] = password_var
    elif credentials is not None:
        names["password"] = credentials_var
    password_file = None
    if raw_password_file is not None:
        password_file = _file_path(
            alias, password_var, raw_password_file, env.base_dir, SecretFileError
        )
    secrets = SecretSpec(
        password_file=password_file,
        url_file=url_file,
        credentials=str(credentials).strip() if credentials is not None else None,
    )
    return secrets, None if url_file is not None else url_password, names


def tls_file_path(
    alias: str, file_var: str, tls_field: str, raw: Any, env: Source
) -> str | None:
    """The path a ``SSL*_FILE`` variable gives (never PEM text, never ``system``);
    ``None`` when unset. The variable without ``_FILE`` must not be set too."""
    if raw is None or str(raw).strip() == "":
        return None
    plain_var = file_var.removesuffix("_FILE")
    if _plain_form_set(env, file_var):
        raise _conflict(alias, file_var, plain_var, f"TLS {tls_field} file")
    text = str(raw).strip()
    if is_pem_text(text) or (tls_field == "ca" and text.lower() == "system"):
        raise TLSFileError(
            alias, file_var, "the value is not a file path (value not shown)",
            f"give PEM text or 'system' in {plain_var}; {file_var} names a file",
        )
    return _file_path(alias, file_var, text, env.base_dir, TLSFileError)


def _plain_form_set(env: Source, file_var: str) -> bool:
    """Whether the variable without ``_FILE`` is set where ``file_var`` is not
    outranked: in the environment, or in the defaults when ``file_var`` is not set."""
    plain_var = file_var.removesuffix("_FILE")
    return env.from_source(plain_var) is not None or (
        env.from_source(file_var) is None and env.from_defaults(plain_var) is not None
    )


def key_passphrase_from_file(alias: str, file_var: str, raw: Any, env: Source) -> str | None:
    """The passphrase in the file a ``SSLPASSWORD_FILE`` variable names; ``None``
    when unset. ``SSLPASSWORD`` must not be set too."""
    if raw is None or str(raw).strip() == "":
        return None
    if _plain_form_set(env, file_var):
        raise _conflict(alias, file_var, file_var.removesuffix("_FILE"), "client key passphrase")
    from multipool.secrets.files import read_secret_text

    path = _file_path(alias, file_var, raw, env.base_dir, SecretFileError)
    return read_secret_text(alias, file_var, path, "client key passphrase")


def check_secrets(
    names: SettingNames, password: str | None, secrets: SecretSpec
) -> None:
    """One source of the password at most, a provider spelled as one, none for SQLite."""
    if secrets.is_empty:
        return
    alias = names.alias
    given = [
        (key, names.of(key))
        for key in ("password_file", "url_file", "credentials")
        if getattr(secrets, key) is not None
    ]
    if names.vendor == "sqlite":
        raise ConfigurationError(
            alias, given[0][1], "SQLite has no password", f"remove {given[0][1]}"
        )
    if password:
        raise ConfigurationError(
            alias, given[0][1], f"a password is given too ({names.of('password')})",
            f"keep one of {names.of('password')} and {given[0][1]}",
        )
    if secrets.password_file is not None and secrets.credentials is not None:
        raise _conflict(alias, names.of("credentials"), names.of("password_file"), "password")
    if secrets.credentials is not None and not PROVIDER_RE.fullmatch(secrets.credentials):
        raise ConfigurationError(
            alias, names.of("credentials"),
            f"{secrets.credentials!r} is not of the form package.module:callable",
            "name the provider function, e.g. myproject.db_auth:token",
        )


def secrets_from_meta(alias: str, meta: Mapping[str, Any]) -> SecretSpec:
    """The ``MULTIPOOL`` keys ``password_file``, ``url_file``, ``credentials``."""
    values: dict[str, str | None] = {}
    for key in ("password_file", "url_file", "credentials"):
        value = meta.get(key)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ConfigurationError(
                alias, f"DATABASES[{alias!r}]['MULTIPOOL'][{key!r}]",
                f"expected text, got a {type(value).__name__}", "give a path or a dotted name",
            )
        text = os.fspath(value).strip() if value is not None else ""
        if not text:
            values[key] = None
        else:
            values[key] = text if key == "credentials" else os.path.abspath(text)
    return SecretSpec(**values)


def validate_secrets(alias: str, names: SettingNames, secrets: SecretSpec) -> None:
    """The password and URL files exist, can be read and are not empty."""
    from multipool.secrets.files import read_secret_text

    for key, what in (("password_file", "password"), ("url_file", "database URL")):
        path = getattr(secrets, key)
        if path is not None:
            read_secret_text(alias, names.of(key), path, what)
