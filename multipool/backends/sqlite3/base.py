"""Pooled SQLite backend for file databases (the embedded default).

``ENGINE: "multipool.backends.sqlite3"``. In-memory databases are not pooled:
Django keeps their single connection open for the life of the process.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.sqlite3 import base as django_sqlite3
from django.db.backends.sqlite3.creation import DatabaseCreation as _DjangoCreation

from multipool.backends.creation import PooledCreationMixin
from multipool.backends.pooled import PooledWrapperMixin


class DatabaseCreation(PooledCreationMixin, _DjangoCreation):
    pass


class DatabaseWrapper(PooledWrapperMixin, django_sqlite3.DatabaseWrapper):
    multipool_vendor = "sqlite"
    creation_class = DatabaseCreation
    # A file database cannot go away underneath an open connection.
    needs_ping = False

    def pool_supported(self) -> bool:
        return not self.is_in_memory_db()

    def transaction_may_be_open(self, connection: Any) -> bool:
        return bool(connection.in_transaction) or super().transaction_may_be_open(connection)
