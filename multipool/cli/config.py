"""``multipool config``: every alias as resolved (passwords shown as ``***``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from multipool.cli.masking import MASK, Masker
from multipool.cli.output import EXIT_OK, EXIT_USAGE, print_json, render_table
from multipool.cli.sources import engine_of, is_multipool, load_source, select_aliases, vendor_label
from multipool.errors import ConfigurationError
from multipool.tls.pem import from_pem_text

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec


def _shown_path(path: str | None, setting: str) -> str | None:
    """A TLS file's path, or where its PEM text came from (never the text)."""
    if path is None:
        return None
    if from_pem_text(path):  # PEM text given in the setting, kept in a private file
        return f"(PEM text from {setting})"
    return path


def describe_alias(alias: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Everything about one alias, for display: never a password (``***`` when set)."""
    from multipool.config import spec_from_settings

    engine = engine_of(entry)
    out: dict[str, Any] = {"alias": alias, "engine": engine, "vendor": vendor_label(entry)}
    try:
        spec = spec_from_settings(alias, entry)
    except ConfigurationError as exc:
        out["error"] = str(exc)
        return out
    except Exception as exc:
        out["error"] = f"the entry cannot be read ({type(exc).__name__})"
        return out
    pooled = is_multipool(entry) and spec.pool.enabled
    role = "primary" if spec.replica_of is None else f"replica of {spec.replica_of}"
    out.update(
        {
            "vendor": spec.vendor,
            "role": role,
            "replicas": list(spec.replicas),
            "host": spec.host,
            "port": spec.port,
            "database": spec.name,
            "user": spec.user,
            "password": MASK if spec.password else _password_source(spec),
            "pooled": pooled,
            "pool": dataclasses.asdict(spec.pool),
            "conn_max_age": spec.conn_max_age,
            "tls": None if spec.vendor == "sqlite" else _describe_tls(spec),
            "settings": {k: v for k, v in spec.settings},
        }
    )
    return out


def _password_source(spec: DatabaseSpec) -> str | None:
    """Where a password read at each connect comes from: ``(file)``, ``(provider)``."""
    secrets = spec.secrets
    if secrets.credentials is not None:
        return "(provider)"
    return "(file)" if secrets.password_file or secrets.url_file else None


def _describe_tls(spec: DatabaseSpec) -> dict[str, Any]:
    """The alias's TLS settings: file paths and flags, never a key or a passphrase."""
    tls = spec.tls
    return {
        "mode": tls.mode or "driver default",
        "verifies": tls.verifies,
        "ca": _shown_path(tls.ca, spec.setting("tls_ca")),
        "client_cert": tls.cert is not None,
        "cert": _shown_path(tls.cert, spec.setting("tls_cert")),
        "key": _shown_path(tls.key, spec.setting("tls_key")),
        "key_encrypted": bool(tls.key_password),
        "min_version": tls.min_version,
        "crl": tls.crl is not None,
    }


#: the table's columns; ``--json`` shows every setting
_HEADERS = (
    "ALIAS", "ROLE", "ENGINE", "HOST", "PORT", "DATABASE", "USER", "PASSWORD",
    "POOL", "TIMEOUT", "CONN_MAX_AGE", "TLS", "CA", "CLIENT CERT",
)


def cmd_config(args: argparse.Namespace, masker: Masker) -> int:
    if getattr(args, "explain", False):
        from multipool.cli.explain import cmd_explain

        return cmd_explain(args, masker)
    source = load_source(masker)
    described = [describe_alias(a, e) for a, e in select_aliases(source, args.alias).items()]
    errors = [f"{d['alias']}: {d['error']}" for d in described if "error" in d]
    if args.json:
        print_json({"source": source.label, "aliases": described})
        return EXIT_USAGE if errors else EXIT_OK
    print(f"source: {source.label}")
    rows = [_row(d) for d in described if "error" not in d]
    if rows:
        print(render_table(_HEADERS, rows))
        print("POOL = pool_size+max_overflow per process; --json shows every setting")
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return EXIT_USAGE if errors else EXIT_OK


def _pool_text(d: Mapping[str, Any]) -> str:
    """``5+10`` (pool_size+max_overflow), ``... via pgbouncer``, ``off`` or ``not pooled``."""
    if not is_multipool({"ENGINE": d["engine"]}):
        return "not pooled"
    pool = d["pool"]
    if not pool["enabled"]:
        return "off"
    text = f"{pool['size']}+{pool['max_overflow']}"
    return f"{text} via {pool['pooler']}" if pool["pooler"] else text


def _row(d: Mapping[str, Any]) -> list[Any]:
    """One line of the table, from :func:`describe_alias` (``None`` shows as ``-``)."""
    tls = d["tls"]
    return [
        d["alias"],
        d["role"],
        d["vendor"],
        d["host"],
        d["port"],
        d["database"],
        d["user"],
        d["password"],
        _pool_text(d),
        f"{d['pool']['timeout']:g}s",
        "None" if d["conn_max_age"] is None else d["conn_max_age"],
        "n/a" if tls is None else tls["mode"],
        None if tls is None else tls["ca"],
        "n/a" if tls is None else ("yes" if tls["client_cert"] else "no"),
    ]
