"""Primary/replica routing over multipool's per-alias pools.

``DATABASE_ROUTERS = ["multipool.routers.PrimaryReplicaRouter"]``. See
``docs/routing.md`` for the whole story; in short:

* **Groups.** Every alias of ``DATABASES`` that is not a replica is the
  primary of a group; its replicas are the aliases named in its
  ``DATABASES[alias]["MULTIPOOL"]["replicas"]`` or naming it in their
  ``["MULTIPOOL"]["replica_of"]`` (both are written by
  :func:`multipool.databases` from ``DATABASE_REPLICAS`` /
  ``<ALIAS>_DATABASE_REPLICAS``). The topology is read from
  ``django.db.connections.settings`` and re-read whenever it changes.
* **Which group a model belongs to.** The database of a model instance given
  as a hint (a related lookup follows its object), else
  ``settings.MULTIPOOL_ROUTES`` (``{"app_label": alias,
  "app_label.ModelName": alias}``; a model entry wins over its app's), else
  ``default``.
* **Writes** go to the group's primary, and pin the group: later reads in the
  same pin scope (request, thread, asyncio task) go to the primary too.
* **Reads** go to a healthy replica of the group (``MULTIPOOL_READ_STRATEGY``:
  ``round-robin``, ``random`` or ``least-busy``), or to the primary when the
  group is pinned, inside ``transaction.atomic`` on the primary, or when no
  replica is usable. A replica the current thread already holds a connection
  to is preferred (no second checkout; monotonic reads within a request).
* **Causal reads.** A client whose earlier request wrote carries the
  primary's position then (:class:`~multipool.middleware.PinningMiddleware`'s
  signed cookie); its reads go to a replica only once the replica has
  replayed that position.
* **Health.** Choosing a replica makes sure the thread holds a connection to
  it (the checkout the query would do anyway, made a moment earlier); when that
  fails the replica is marked down in :data:`multipool.health.health` and the
  next candidate is tried (:mod:`multipool.routing.replicas`). No extra round
  trip per read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import connections

from multipool.routing.lag import replica_lag
from multipool.routing.pins import (
    ALL,
    PinState,
    current_pin_state,
    is_pinned,
    note_write,
    pin,
    pin_scope,
    pinned,
    pinned_now,
    required_position,
    unpin,
)
from multipool.routing.replicas import ReplicaChooser
from multipool.routing.settings import STRATEGIES, RouterSettings, router_settings
from multipool.routing.topology import Topology, build_topology, topology

__all__ = [
    "ALL",
    "STRATEGIES",
    "PinState",
    "PrimaryReplicaRouter",
    "RouterSettings",
    "Topology",
    "build_topology",
    "current_pin_state",
    "is_pinned",
    "pin",
    "pin_scope",
    "pinned",
    "replica_lag",
    "router_settings",
    "topology",
    "unpin",
]


class PrimaryReplicaRouter:
    """Writes to a group's primary, reads from a healthy replica (see the module doc)."""

    def __init__(self) -> None:
        self.chooser = ReplicaChooser()
        router_settings()  # report a mistake in the settings when Django loads the router

    # -- Django's router API ---------------------------------------------------
    def db_for_read(self, model: Any, **hints: Any) -> str:
        topo = topology()
        primary = self._group_for(topo, model, hints)
        replicas = topo.replicas.get(primary, ())
        if not replicas or pinned_now(primary) or self._in_transaction(primary):
            return primary
        needed, position = required_position(primary)
        if needed and position is None:
            return primary  # a write whose position is unknown: the primary has it
        return self.chooser.choose(primary, replicas, position)

    def db_for_write(self, model: Any, **hints: Any) -> str:
        topo = topology()
        primary = self._group_for(topo, model, hints)
        if topo.replicas.get(primary):
            note_write(primary)
        return primary

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        topo = topology()
        first = self._object_group(topo, obj1)
        second = self._object_group(topo, obj2)
        if first is None or second is None:
            return None
        return first == second

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        topo = topology()
        if db not in topo.primary_of:
            return None
        if topo.is_replica(db):
            return False
        model = hints.get("model")
        primary = topo.model_group(model) if model is not None else (
            topo.route(app_label, model_name)
        )
        return db == primary

    def choose_replica(self, primary: str, replicas: tuple[str, ...]) -> str:
        """A usable replica of ``primary`` (``primary`` itself when none is)."""
        return self.chooser.choose(primary, replicas)

    # -- groups ------------------------------------------------------------------
    @staticmethod
    def _group_for(topo: Topology, model: Any, hints: Mapping[str, Any]) -> str:
        instance = hints.get("instance")
        if instance is not None:
            db = getattr(getattr(instance, "_state", None), "db", None)
            if db and db in topo.primary_of:
                return topo.primary_of[db]
        return topo.model_group(model)

    @staticmethod
    def _object_group(topo: Topology, obj: Any) -> str | None:
        db = getattr(getattr(obj, "_state", None), "db", None)
        if db:
            return topo.primary_of.get(db)
        return topo.model_group(type(obj))

    @staticmethod
    def _in_transaction(primary: str) -> bool:
        try:
            return bool(connections[primary].in_atomic_block)
        except Exception:  # pragma: no cover - an alias Django cannot load
            return False
