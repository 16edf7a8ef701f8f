"""Pooled PostgreSQL backend (psycopg 3 or psycopg2, whichever Django picks).

``ENGINE: "multipool.backends.postgresql"``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as django_postgresql
from django.db.backends.postgresql.client import DatabaseClient as _DjangoClient
from django.db.backends.postgresql.creation import DatabaseCreation as _DjangoCreation
from django.db.backends.postgresql.psycopg_any import IsolationLevel, is_psycopg3

from multipool.backends.binding import BROKEN, CHANGED, IDLE, IN_TRANSACTION, SessionState
from multipool.backends.client import PemShellMixin
from multipool.backends.creation import PooledCreationMixin
from multipool.backends.pooled import PooledWrapperMixin
from multipool.errors import ConfigurationError
from multipool.pools import manager

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec

# libpq's PQtransactionStatus: 0 idle, 1 active, 2 in transaction, 3 in error, 4 unknown (bad).
_IDLE = 0
_UNKNOWN = 4


class DatabaseClient(_DjangoClient, PemShellMixin):
    pass


class DatabaseCreation(PooledCreationMixin, _DjangoCreation):
    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> Any:
        connection = self.connection
        spec = connection.multipool_spec()  # type: ignore[attr-defined]
        if spec.pool.pooler is None or connection.pg_version < 130000:
            return super()._destroy_test_db(test_database_name, verbosity)
        # Behind PgBouncer, server sessions to the test database stay open in
        # PgBouncer's own pool, out of Django's reach: FORCE ends them.
        manager.dispose(connection.alias)
        with connection._nodb_cursor() as cursor:
            name = connection.ops.quote_name(test_database_name)
            cursor.execute(f"DROP DATABASE {name} WITH (FORCE)")
        return None


class DatabaseWrapper(PooledWrapperMixin, django_postgresql.DatabaseWrapper):
    multipool_vendor = "postgresql"
    # Django's PostgreSQL session setup (the time zone, assume_role) runs at a
    # checkout unless the connection's last request end checked the time zone
    # (release_checks_setup).
    init_once = False
    # Django's get_connection_params() reads the settings and sets nothing.
    params_only_read_settings = True
    client_class = DatabaseClient
    creation_class = DatabaseCreation

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(settings_dict, alias)
        if alias == NO_DB_ALIAS:
            return
        try:
            pooler = self.multipool_spec().pool.pooler
        except ConfigurationError:
            # Django creates wrappers while it imports models: a settings problem is
            # reported by the system checks and raised when the alias connects.
            return
        if pooler == "pgbouncer":
            # Also for hand-written entries: no server-side cursors behind PgBouncer.
            self.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = True

    def network_params(self, spec: DatabaseSpec) -> dict[str, Any]:
        # libpq's own: connect_timeout counts whole seconds per host; keepalives
        # probe an idle connection; tcp_user_timeout fails unacknowledged data.
        params: dict[str, Any] = {"connect_timeout": math.ceil(spec.pool.connect_timeout)}
        silence = spec.pool.network_timeout
        if silence > 0:
            params.update(
                keepalives=1,
                keepalives_idle=max(1, int(silence // 3)),
                keepalives_interval=max(1, int(silence // 9)),
                keepalives_count=3,
                tcp_user_timeout=int(silence * 1000),
            )
        return params

    def prepare_checkout(self, connection: Any) -> None:
        # Django's get_new_connection sets the wrapper's isolation level before
        # connecting; a reused connection must leave the wrapper in that state.
        value = self.settings_dict["OPTIONS"].get("isolation_level")
        self.isolation_level = (
            IsolationLevel.READ_COMMITTED if value is None else IsolationLevel(value)
        )

    def release_state(self, connection: Any) -> SessionState:
        # One libpq call: PQtransactionStatus is UNKNOWN on a closed or broken
        # connection. Outside a transaction, the time zone check of Django's
        # session setup, read from libpq's parameter status (no round trip).
        if is_psycopg3:
            status = connection.pgconn.transaction_status
        elif connection.closed:
            return BROKEN
        else:
            status = connection.get_transaction_status()
        if status != _IDLE:
            return BROKEN if status == _UNKNOWN else IN_TRANSACTION
        expected = self.timezone_name
        if not expected:
            return IDLE
        if is_psycopg3:
            current = connection.pgconn.parameter_status(b"TimeZone")
            changed = current is None or current.decode() != expected
        else:
            changed = connection.get_parameter_status("TimeZone") != expected
        return CHANGED if changed else IDLE

    def release_checks_setup(self) -> bool:
        # release_state compares the time zone; a role set with SET ROLE cannot be
        # read without a round trip, so assume_role is set again at every checkout.
        return not self.settings_dict["OPTIONS"].get("assume_role")

    def rollback_transaction(self, connection: Any) -> None:
        if not is_psycopg3 and connection.autocommit:
            # psycopg2's rollback() does nothing in autocommit mode, even when
            # a raw BEGIN opened a transaction on the server.
            cursor = connection.cursor()
            try:
                cursor.execute("ROLLBACK")
            finally:
                cursor.close()
            return
        connection.rollback()

    def restore_session(self, connection: Any) -> None:
        # Django's own time zone setup (a SET), only if user code changed the
        # time zone during the request (release_state compares it).
        if not self.timezone_name:
            return
        configure = getattr(self, "_configure_timezone", None)  # Django 5.0+
        changed = configure(connection) if configure is not None else self.ensure_timezone()
        if changed and not self.get_autocommit():
            connection.commit()

    def reset_session(self, connection: Any) -> None:
        # DISCARD ALL: RESET ALL, drop temporary tables, release advisory
        # locks, deallocate prepared statements, UNLISTEN *. It refuses to run
        # inside a transaction block, hence autocommit for the statement.
        connection.autocommit = True
        cursor = connection.cursor()
        try:
            cursor.execute("DISCARD ALL")
        finally:
            cursor.close()

    def ping_connection(self, connection: Any) -> None:
        super().ping_connection(connection)
        # Without autocommit the SELECT opened a transaction: close it.
        if connection.info.transaction_status != _IDLE:
            connection.rollback()

    def tls_protocol(self, connection: Any) -> str | None:
        # psycopg2 reads libpq's SSL attributes; psycopg 3 only tells whether TLS
        # is in use, so the server is asked (one round trip, when the event is
        # logged). Behind a pooler the server's view is the pooler's session.
        if not is_psycopg3:
            info = connection.info
            return info.ssl_attribute("protocol") if info.ssl_in_use else "none"
        if not connection.pgconn.ssl_in_use:
            return "none"
        if self.multipool_spec().pool.pooler is not None:
            return None
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            row = cursor.fetchone()
        finally:
            cursor.close()
            if connection.info.transaction_status != _IDLE:
                connection.rollback()
        return str(row[0]) if row and row[0] else None
