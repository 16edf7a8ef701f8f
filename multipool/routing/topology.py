"""Primary/replica groups of ``DATABASES`` and the model routes (``MULTIPOOL_ROUTES``).

Every alias of ``DATABASES`` that is not a replica is the primary of a group;
its replicas are the aliases named in its ``["MULTIPOOL"]["replicas"]`` or
naming it in their ``["MULTIPOOL"]["replica_of"]`` (``multipool.databases()``
writes both). The topology is read from ``django.db.connections.settings`` and
rebuilt whenever it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections

from multipool.errors import ConfigurationError

__all__ = ["Topology", "build_topology", "topology"]

@dataclass(frozen=True)
class Topology:
    """Primary/replica groups of ``DATABASES`` and the model routes."""

    primary_of: Mapping[str, str]  # every alias -> the primary of its group
    replicas: Mapping[str, tuple[str, ...]]  # primary -> its replicas (may be empty)
    app_routes: Mapping[str, str]  # app_label -> primary
    model_routes: Mapping[tuple[str, str], str]  # (app_label, model_name) -> primary
    default: str = DEFAULT_DB_ALIAS

    @property
    def primaries(self) -> tuple[str, ...]:
        return tuple(self.replicas)

    def is_replica(self, alias: str) -> bool:
        return self.primary_of.get(alias, alias) != alias

    def group(self, alias: str) -> str:
        """The primary of ``alias``'s group (``alias`` itself for a primary)."""
        try:
            return self.primary_of[alias]
        except KeyError:
            raise KeyError(f"database alias {alias!r} is not in DATABASES") from None

    def route(self, app_label: str, model_name: str | None = None) -> str:
        """The primary of the group an app (or one of its models) belongs to."""
        if model_name is not None:
            primary = self.model_routes.get((app_label, model_name.lower()))
            if primary is not None:
                return primary
        return self.app_routes.get(app_label, self.default)

    def model_group(self, model: Any) -> str:
        meta = getattr(model, "_meta", None)
        if meta is None:
            return self.default
        if self.model_routes:
            primary = self.model_routes.get((meta.app_label, meta.model_name))
            if primary is None and meta.proxy:
                concrete = meta.concrete_model._meta
                primary = self.model_routes.get((concrete.app_label, concrete.model_name))
            if primary is not None:
                return primary
        return self.app_routes.get(meta.app_label, self.default)


_topology_cache: tuple[Any, Any, Topology] | None = None


def _fingerprint(databases: Mapping[str, Any]) -> tuple[Any, ...]:
    out: list[tuple[Any, ...]] = []
    for alias, entry in databases.items():
        meta = entry.get("MULTIPOOL") if isinstance(entry, Mapping) else None
        if isinstance(meta, Mapping):
            replicas = meta.get("replicas")
            if isinstance(replicas, list):
                replicas = tuple(replicas)
            out.append((alias, meta.get("replica_of"), replicas))
        else:
            out.append((alias, meta))
    return tuple(out)


def topology() -> Topology:
    """The current topology: cached, rebuilt when ``DATABASES`` topology or routes change."""
    global _topology_cache
    databases = connections.settings
    fingerprint = _fingerprint(databases)
    routes = getattr(settings, "MULTIPOOL_ROUTES", None)
    cached = _topology_cache
    if cached is not None and cached[0] == fingerprint and cached[1] == routes:
        return cached[2]
    built = build_topology(databases, routes)
    _topology_cache = (fingerprint, dict(routes) if isinstance(routes, Mapping) else routes, built)
    return built


def build_topology(databases: Mapping[str, Any], routes: Any = None) -> Topology:
    """Parse the ``MULTIPOOL`` keys of ``databases`` and ``routes`` (raises on mistakes)."""
    declared_of, listed = _declared(databases)
    primary_of = _primaries(declared_of, listed)
    groups: dict[str, list[str]] = {a: [] for a in databases if a not in primary_of}
    for primary, replicas in listed.items():
        groups[primary].extend(replicas)
    for replica, primary in primary_of.items():
        if replica not in groups[primary]:
            groups[primary].append(replica)
    full_primary_of = {alias: primary_of.get(alias, alias) for alias in databases}
    app_routes, model_routes = _parse_routes(routes, full_primary_of)
    default = full_primary_of.get(DEFAULT_DB_ALIAS, DEFAULT_DB_ALIAS)
    return Topology(
        primary_of=full_primary_of,
        replicas={p: tuple(r) for p, r in groups.items()},
        app_routes=app_routes,
        model_routes=model_routes,
        default=default,
    )


def _declared(
    databases: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``(replica -> the primary it names, primary -> the replicas it lists)``."""
    declared_of: dict[str, str] = {}
    listed: dict[str, list[str]] = {}
    for alias, entry in databases.items():
        meta = entry.get("MULTIPOOL") if isinstance(entry, Mapping) else None
        if meta is None:
            continue
        setting = f"DATABASES[{alias!r}]['MULTIPOOL']"
        if not isinstance(meta, Mapping):
            raise ConfigurationError(
                alias, setting, "must be a dict", "use {'replica_of': ..., 'replicas': [...]}"
            )
        replica_of = meta.get("replica_of")
        if replica_of not in (None, ""):
            declared_of[alias] = _named_primary(alias, replica_of, databases, setting)
        replicas = _listed_replicas(alias, meta.get("replicas") or (), databases, setting)
        if replicas:
            listed[alias] = replicas
    return declared_of, listed


def _named_primary(
    alias: str, replica_of: Any, databases: Mapping[str, Any], setting: str
) -> str:
    if not isinstance(replica_of, str) or replica_of not in databases:
        raise ConfigurationError(
            alias,
            f"{setting}['replica_of']",
            f"names {replica_of!r}, which is not in DATABASES",
            "name the primary's alias",
        )
    if replica_of == alias:
        raise ConfigurationError(
            alias, f"{setting}['replica_of']", "names the alias itself", "remove it"
        )
    return replica_of


def _listed_replicas(
    alias: str, replicas: Any, databases: Mapping[str, Any], setting: str
) -> list[str]:
    if isinstance(replicas, str) or not all(isinstance(r, str) for r in replicas):
        raise ConfigurationError(
            alias, f"{setting}['replicas']", "must be a list of aliases", "use ['replica1']"
        )
    for replica in replicas:
        if replica not in databases:
            raise ConfigurationError(
                alias,
                f"{setting}['replicas']",
                f"names {replica!r}, which is not in DATABASES",
                f"add a DATABASES entry for {replica!r} (e.g. set "
                f"{replica.upper()}_DATABASE_URL) or remove it from the list",
            )
        if replica == alias:
            raise ConfigurationError(
                alias, f"{setting}['replicas']", "lists the alias itself", "remove it"
            )
    return list(replicas)


def _primaries(
    declared_of: Mapping[str, str], listed: Mapping[str, list[str]]
) -> dict[str, str]:
    """Every replica's primary, from both sides; one primary each, one level deep."""
    primary_of: dict[str, str] = {}
    for primary, replicas in listed.items():
        for replica in replicas:
            owner = primary_of.get(replica) or declared_of.get(replica)
            if owner is not None and owner != primary:
                raise ConfigurationError(
                    replica,
                    f"DATABASES[{primary!r}]['MULTIPOOL']['replicas']",
                    f"{replica!r} is already a replica of {owner!r}",
                    "list each replica under one primary only",
                )
            primary_of[replica] = primary
    for replica, primary in declared_of.items():
        primary_of.setdefault(replica, primary)
    for replica, primary in primary_of.items():
        if primary in primary_of:
            raise ConfigurationError(
                replica,
                f"DATABASES[{replica!r}]['MULTIPOOL']",
                f"its primary {primary!r} is itself a replica of {primary_of[primary]!r}",
                "point every replica at the group's primary",
            )
        if replica in listed:
            raise ConfigurationError(
                replica,
                f"DATABASES[{replica!r}]['MULTIPOOL']['replicas']",
                f"{replica!r} is a replica of {primary!r} and cannot have replicas",
                f"list every replica under {primary!r}",
            )
    return primary_of


def _parse_routes(
    routes: Any, primary_of: Mapping[str, str]
) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    if routes is None:
        return {}, {}
    if not isinstance(routes, Mapping):
        raise ImproperlyConfigured(
            "settings.MULTIPOOL_ROUTES must be a dict like "
            "{'app_label': 'alias', 'app_label.ModelName': 'alias'}"
        )
    app_routes: dict[str, str] = {}
    model_routes: dict[tuple[str, str], str] = {}
    for key, alias in routes.items():
        setting = f"MULTIPOOL_ROUTES[{key!r}]"
        parts = key.split(".") if isinstance(key, str) else []
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise ImproperlyConfigured(
                f"settings.{setting}: keys are 'app_label' or 'app_label.ModelName'"
            )
        if not isinstance(alias, str) or alias not in primary_of:
            raise ConfigurationError(
                str(alias),
                f"settings.{setting}",
                f"{alias!r} is not in DATABASES",
                "route to the alias of a group's primary",
            )
        if primary_of[alias] != alias:
            raise ConfigurationError(
                alias,
                f"settings.{setting}",
                f"{alias!r} is a replica of {primary_of[alias]!r}",
                f"route to the primary {primary_of[alias]!r}; reads use its replicas",
            )
        if len(parts) == 1:
            app_routes[parts[0]] = alias
        else:
            model_routes[(parts[0], parts[1].lower())] = alias
    return app_routes, model_routes
