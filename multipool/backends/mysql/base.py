"""Pooled MySQL / MariaDB backend (mysqlclient).

``ENGINE: "multipool.backends.mysql"``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from django.db.backends.mysql import base as django_mysql
from django.db.backends.mysql.client import DatabaseClient as _DjangoClient
from django.db.backends.mysql.creation import DatabaseCreation as _DjangoCreation

from multipool.backends.client import PemShellMixin
from multipool.backends.creation import PooledCreationMixin
from multipool.backends.diagnosis import encryption_required
from multipool.backends.pooled import PooledWrapperMixin
from multipool.backends.sockets import set_network_timeout

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec


def _status(connection: Any, statement: str) -> str:
    cursor = connection.cursor()
    try:
        cursor.execute(statement)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return "" if row is None or row[1] is None else str(row[1])


class DatabaseClient(_DjangoClient, PemShellMixin):
    pass


class DatabaseCreation(PooledCreationMixin, _DjangoCreation):
    pass


class DatabaseWrapper(PooledWrapperMixin, django_mysql.DatabaseWrapper):
    multipool_vendor = "mysql"
    # Django's MySQL session setup is ``SET SQL_AUTO_IS_NULL = 0; SET SESSION
    # TRANSACTION ISOLATION LEVEL ...``: a round trip whose effect lasts for
    # the session, so it runs once per physical connection.
    init_once = True
    client_class = DatabaseClient
    creation_class = DatabaseCreation

    def network_params(self, spec: DatabaseSpec) -> dict[str, Any]:
        return {"connect_timeout": math.ceil(spec.pool.connect_timeout)}

    def configure_socket(self, connection: Any, spec: DatabaseSpec) -> None:
        # mysqlclient has no keepalive or user-timeout options: set them on the
        # connection's TCP socket (a Unix socket needs none).
        set_network_timeout(connection.fileno(), spec.pool.network_timeout)

    def confirm_encryption(self, connection: Any, spec: DatabaseSpec) -> None:
        # mysqlclient built against MariaDB Connector/C does not enforce
        # ssl_mode=REQUIRED (nor a bare ssl dict): a server without TLS is
        # answered in plain text. The server's own status says whether this
        # session is encrypted.
        if _status(connection, "SHOW SESSION STATUS LIKE 'Ssl_cipher'"):
            return
        have_ssl = _status(connection, "SHOW GLOBAL VARIABLES LIKE 'have_ssl'") or "unknown"
        raise encryption_required(
            spec, f"the server accepted the session without TLS: Ssl_cipher is empty, "
            f"have_ssl is {have_ssl}"
        )

    def db_system_name(self, connection: Any) -> str:
        # the server's version string, from the handshake (no round trip)
        return "mariadb" if "mariadb" in connection.get_server_info().lower() else "mysql"

    def tls_protocol(self, connection: Any) -> str | None:
        # the server's view (one round trip, when the event is logged); behind a
        # pooler that is the pooler's session, not this connection
        if self.multipool_spec().pool.pooler is not None:
            return None
        return _status(connection, "SHOW SESSION STATUS LIKE 'Ssl_version'") or "none"

    def connection_is_broken(self, connection: Any) -> bool:
        # mysqlclient does not report the server's transaction state: Django's
        # own state tells whether one is open (transaction_may_be_open; a raw
        # START TRANSACTION goes unnoticed, docs/pools.md).
        return not connection.open

    def reset_session(self, connection: Any) -> None:
        # COM_CHANGE_USER to the same account: the server resets the session
        # (variables, temporary tables, locks, user variables) as for a new
        # login, on the same TCP and TLS connection.
        user, password = self.login()  # a rotated password: the one that works now
        connection.change_user(user, password, self.settings_dict["NAME"] or "")

    def ping_connection(self, connection: Any) -> None:
        connection.ping()
