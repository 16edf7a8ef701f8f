"""Replica health: which read replicas the router may use right now.

The public name of :mod:`multipool.routing.health`: ``from multipool.health
import health`` gives the process-wide record (``health.status()``,
``health.as_dict()``).
"""

from multipool.routing.health import (
    DOWN,
    LAGGING,
    PROBE,
    UP,
    ReplicaHealth,
    ReplicaStatus,
    health,
)

__all__ = ["DOWN", "LAGGING", "PROBE", "UP", "ReplicaHealth", "ReplicaStatus", "health"]
