"""TLS values in every spelling -> normalized :class:`~multipool.tls.TLSSpec` fields.

Three dialects are accepted for every server type: libpq ``OPTIONS`` keys
(``sslmode``, ``sslrootcert``...), mysqlclient's ``ssl`` dict and flat ``ssl_*``
keys, and one value at a time (environment variables, see
:func:`normalize_tls_field`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from multipool.errors import InvalidTLSSetting, TLSFileError
from multipool.setting_names import LIBPQ_KEYS, MYSQL_FLAT_KEYS, SettingNames, short
from multipool.tls.pem import is_pem_text, looks_like_pem_body, write_pem
from multipool.tls.spec import TLS_MODES, TLSSpec
from multipool.tls.support import check_tls_support

# Every spelling of a mode, after ``strip().lower().replace("_", "-")``.
_MODE_SPELLINGS: Mapping[str, str] = {
    # libpq
    **{m: m for m in TLS_MODES},
    # MySQL ssl_mode
    "disabled": "disable",
    "preferred": "prefer",
    "required": "require",
    "verify-identity": "verify-full",
    # MariaDB / generic switches (--ssl, --ssl-verify-server-cert, ssl=true)
    "verify-server-cert": "verify-full",
    "true": "require",
    "on": "require",
    "yes": "require",
    "1": "require",
    "false": "disable",
    "off": "disable",
    "no": "disable",
    "0": "disable",
}

_VERSION_SPELLINGS: Mapping[str, str] = {
    "tlsv1.2": "TLSv1.2",
    "tls1.2": "TLSv1.2",
    "1.2": "TLSv1.2",
    "tlsv1.3": "TLSv1.3",
    "tls1.3": "TLSv1.3",
    "1.3": "TLSv1.3",
}
_OLD_VERSIONS = frozenset(
    {"tlsv1", "tlsv1.0", "tlsv1.1", "tls1", "tls1.0", "tls1.1", "1.0", "1.1", "sslv3", "sslv2"}
)

#: keys inside a mysqlclient ``ssl`` dict (plus the flat spellings, also accepted there)
_SSL_DICT_KEYS: Mapping[str, str] = {
    "ca": "ca",
    "capath": "capath",
    "cert": "cert",
    "key": "key",
    "cipher": "ciphers",
    **MYSQL_FLAT_KEYS,
}

#: the ``OPTIONS`` keys that are TLS settings. Every accepted spelling is consumed
#: for every vendor, so a backend can strip them all from the driver parameters
#: and put :meth:`TLSSpec.driver_kwargs` in their place.
TLS_OPTION_NAMES: frozenset[str] = frozenset(LIBPQ_KEYS) | frozenset(MYSQL_FLAT_KEYS) | {"ssl"}

#: the fields whose values are not files (a NUL in them is not a file problem)
_TEXT_FIELDS = ("mode", "min_version", "ciphers")


# -- one value ----------------------------------------------------------------------------


def normalize_tls_field(
    alias: str, field_name: str, value: Any, setting: str, *, base_dir: str | None = None
) -> Any:
    """One TLS value, normalized: ``None`` when unset.

    ``field_name`` is a :class:`TLSSpec` field. Modes and versions accept every
    spelling; file fields accept a path (made absolute: relative to ``base_dir``,
    by default the current directory) or PEM text (written to a private file);
    ``ca`` also accepts ``system``.
    """
    if value is None:
        return None
    if field_name == "mode" and isinstance(value, bool):
        return "require" if value else "disable"
    text = _as_text(alias, field_name, value, setting)
    if field_name == "key_password":
        return text if text != "" else None
    text = text.strip()
    if text == "":
        return None
    parser = _PARSERS.get(field_name)
    if parser is None:
        raise ValueError(f"unknown TLS field {field_name!r}")
    return parser(alias, field_name, setting, text, base_dir)


def _as_text(alias: str, field_name: str, value: Any, setting: str) -> str:
    """A value as text: paths and UTF-8 bytes are accepted, NUL characters are not."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidTLSSetting(
                alias, setting, "the value is not UTF-8 text", "give a path or PEM text"
            ) from None
    if not isinstance(value, str):
        raise InvalidTLSSetting(
            alias,
            setting,
            f"expected text, got a {type(value).__name__}",
            "give the setting as a string",
        )
    if "\x00" in value:
        error = InvalidTLSSetting if field_name in _TEXT_FIELDS else TLSFileError
        raise error(
            alias,
            setting,
            "the value contains a NUL character (value not shown)",
            "give a path, PEM text or a passphrase without NUL characters",
        )
    return value


def _mode(alias: str, field_name: str, setting: str, text: str, base_dir: str | None) -> str:
    mode = _MODE_SPELLINGS.get(text.lower().replace("_", "-"))
    if mode is None:
        raise InvalidTLSSetting(
            alias,
            setting,
            f"unknown TLS mode {short(text)}",
            "use one of "
            + ", ".join(TLS_MODES)
            + " (MySQL spellings DISABLED, PREFERRED, REQUIRED, VERIFY_CA, "
            "VERIFY_IDENTITY are accepted too)",
        )
    return mode


def _min_version(
    alias: str, field_name: str, setting: str, text: str, base_dir: str | None
) -> str:
    """The lowest version of a list (``TLSv1.2,TLSv1.3``); obsolete versions are refused."""
    lowered = text.lower().replace(" ", "").replace("_", ".")
    unknown = InvalidTLSSetting(
        alias, setting, f"unknown TLS version {short(text)}", "use TLSv1.2 or TLSv1.3"
    )
    canonical = []
    for version in (v for v in lowered.split(",") if v):
        if version in _OLD_VERSIONS:
            raise InvalidTLSSetting(
                alias,
                setting,
                f"{short(text)} allows an obsolete, insecure protocol version",
                "use TLSv1.2 or TLSv1.3",
            )
        if version not in _VERSION_SPELLINGS:
            raise unknown
        canonical.append(_VERSION_SPELLINGS[version])
    if not canonical:
        raise unknown
    return min(canonical)  # "TLSv1.2" < "TLSv1.3"


def _ciphers(alias: str, field_name: str, setting: str, text: str, base_dir: str | None) -> str:
    return text


def _file(alias: str, field_name: str, setting: str, text: str, base_dir: str | None) -> str:
    """A file (or CA directory) setting: ``system`` (CA only), PEM text, or a path."""
    if field_name == "ca" and text.lower() == "system":
        return "system"
    if is_pem_text(text):
        return _pem_file(alias, field_name, setting, text)
    path = os.path.abspath(os.path.join(base_dir or "", os.path.expanduser(text)))
    if looks_like_pem_body(text) and not os.path.exists(path):
        # A PEM body whose -----BEGIN line was lost (a secret manager, a
        # flattened variable): never echo it, not even as a file name.
        raise TLSFileError(
            alias,
            setting,
            "the value is neither an existing file nor PEM text (value not shown)",
            "give a file path, or the whole PEM text including its -----BEGIN and "
            "-----END lines",
        )
    return path


def _pem_file(alias: str, field_name: str, setting: str, text: str) -> str:
    if field_name == "capath":
        raise InvalidTLSSetting(
            alias, setting, "a CA directory cannot be PEM text", "give a directory path"
        )
    try:
        return write_pem(field_name, text)
    except UnicodeEncodeError:
        raise TLSFileError(
            alias, setting, "the PEM text is not valid text", "paste the PEM file as is"
        ) from None
    except OSError as exc:
        raise TLSFileError(
            alias,
            setting,
            f"cannot write the PEM text to a private file ({exc.strerror})",
            "make the temporary directory writable (TMPDIR), or give a file path",
        ) from None


#: TLS field -> its parser (after the text is stripped; empty text is unset)
_PARSERS: Mapping[str, Callable[[str, str, str, str, str | None], Any]] = {
    "mode": _mode,
    "min_version": _min_version,
    "ciphers": _ciphers,
    "ca": _file,
    "cert": _file,
    "key": _file,
    "crl": _file,
    "capath": _file,
}


# -- OPTIONS ------------------------------------------------------------------------------


def tls_fields_from_options(
    alias: str,
    vendor: str,
    options: Mapping[str, Any],
    *,
    settings: Mapping[str, str] | SettingNames | None = None,
    base_dir: str | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The TLS values found in ``options`` (normalized) and the setting each came from.

    Returns ``(values, names)``, both keyed by :class:`TLSSpec` field. Unset and
    empty values are left out. The same field given twice (``sslrootcert`` and
    ``ssl['ca']``) must agree. ``settings``: the names of the settings (see
    :class:`~multipool.setting_names.SettingNames`).
    """
    names = SettingNames.given(alias, vendor, settings)
    found: dict[str, tuple[Any, str]] = {}
    for field_name, value, spelled in _entries(names, options):
        name = names.of(field_name, spelled)
        normalized = normalize_tls_field(alias, field_name, value, name, base_dir=base_dir)
        if normalized is None:
            continue
        if field_name in found and found[field_name][0] != normalized:
            raise InvalidTLSSetting(
                alias,
                name,
                f"conflicts with {found[field_name][1]}: both set the TLS "
                f"{field_name.replace('_', ' ')}",
                "keep only one of them",
            )
        found[field_name] = (normalized, name)
    values = {k: v for k, (v, _) in found.items()}
    return values, {k: n for k, (_, n) in found.items()}


def _entries(names: SettingNames, options: Mapping[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """``(TLS field, value, where it was written)`` of each TLS value in ``options``."""
    for key, value in options.items():
        if key in LIBPQ_KEYS:
            yield LIBPQ_KEYS[key], value, names.option(key)
        elif key in MYSQL_FLAT_KEYS:
            yield MYSQL_FLAT_KEYS[key], value, names.option(key)
        elif key == "ssl":
            yield from _ssl_entries(names, value)


def _ssl_entries(names: SettingNames, value: Any) -> Iterator[tuple[str, Any, str]]:
    """The entries of mysqlclient's ``ssl`` option: a dict, or a switch."""
    if isinstance(value, Mapping):
        for sub, sub_value in value.items():
            if sub not in _SSL_DICT_KEYS:
                raise InvalidTLSSetting(
                    names.alias,
                    names.option("ssl", sub),
                    f"unknown key {short(sub)} in the ssl dict",
                    "use ca, capath, cert, key or cipher (mysqlclient ignores others)",
                )
            yield _SSL_DICT_KEYS[sub], sub_value, names.option("ssl", sub)
    elif value is None or value == "":
        return
    elif isinstance(value, (bool, str)):
        yield "mode", value, names.option("ssl")
    elif isinstance(value, int) and value in (0, 1):
        yield "mode", bool(value), names.option("ssl")
    else:
        raise InvalidTLSSetting(
            names.alias,
            names.option("ssl"),
            f"expected a dict or true/false, got a {type(value).__name__}",
            "use {'ca': ..., 'cert': ..., 'key': ...} or ssl_mode",
        )


def tls_from_options(
    alias: str,
    vendor: str,
    options: Mapping[str, Any],
    *,
    settings: Mapping[str, str] | None = None,
) -> TLSSpec:
    """The :class:`TLSSpec` of a ``DATABASES`` ``OPTIONS`` dict (any dialect).

    ``settings`` maps a :class:`TLSSpec` field name (``mode``, ``ca``, ...; a
    ``tls_`` prefix is accepted too) to the setting name used in error messages.
    """
    values, found = tls_fields_from_options(alias, vendor, options, settings=settings)
    names = SettingNames(alias, vendor, {**found, **(settings or {})})
    return check_tls_support(alias, vendor, TLSSpec(**values), settings=names)
