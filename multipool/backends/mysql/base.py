"""Pooled MySQL / MariaDB backend (mysqlclient).

``ENGINE: "multipool.backends.mysql"``.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.mysql import base as django_mysql
from django.db.backends.mysql.creation import DatabaseCreation as _DjangoCreation

from multipool.backends.creation import PooledCreationMixin
from multipool.backends.pooled import BROKEN, IDLE, IN_TRANSACTION, PooledWrapperMixin


class DatabaseCreation(PooledCreationMixin, _DjangoCreation):
    pass


class DatabaseWrapper(PooledWrapperMixin, django_mysql.DatabaseWrapper):
    multipool_vendor = "mysql"
    # Django's MySQL session setup is ``SET SQL_AUTO_IS_NULL = 0; SET SESSION
    # TRANSACTION ISOLATION LEVEL ...``: a round trip whose effect lasts for
    # the session, so it runs once per physical connection.
    init_once = True
    creation_class = DatabaseCreation

    def connection_is_broken(self, connection: Any) -> bool:
        return not connection.open

    def release_state(self, connection: Any) -> int:
        # mysqlclient does not report the server's transaction state: Django's
        # own state tells (a raw START TRANSACTION goes unnoticed, docs/pools.md).
        if not connection.open:
            return BROKEN
        if self.in_atomic_block or not self.autocommit or self.needs_rollback:
            return IN_TRANSACTION
        return IDLE

    def reset_session(self, connection: Any) -> None:
        # COM_CHANGE_USER to the same account: the server resets the session
        # (variables, temporary tables, locks, user variables) as for a new
        # login, on the same TCP and TLS connection.
        settings = self.settings_dict
        connection.change_user(
            settings["USER"] or "", settings["PASSWORD"] or "", settings["NAME"] or ""
        )

    def ping_connection(self, connection: Any) -> None:
        connection.ping()
