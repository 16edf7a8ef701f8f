"""Test-database handling shared by the pooled backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from multipool.pools import manager

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper


class PooledCreationMixin:
    """Release pooled connections before Django drops or clones a test database.

    PostgreSQL refuses ``DROP DATABASE`` and ``CREATE DATABASE ... TEMPLATE``
    while any session is connected to that database, and the pool keeps idle
    sessions open by design; so the alias's pool is disposed first. The next
    checkout builds a fresh pool for whatever ``NAME`` is current then.
    """

    def _alias(self) -> str:
        connection: BaseDatabaseWrapper = self.connection  # type: ignore[attr-defined]
        return connection.alias

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> Any:
        manager.dispose(self._alias())
        return super()._destroy_test_db(test_database_name, verbosity)  # type: ignore[misc]

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> Any:
        manager.dispose(self._alias())
        return super()._clone_test_db(suffix, verbosity, keepdb)  # type: ignore[misc]
