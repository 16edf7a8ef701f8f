"""What an alias's TLS settings make the driver verify: the server certificate's
chain (against the CA), and the host name (against the certificate's names).

=====================  ==============================  ==============================
mode (CA given)        PostgreSQL (libpq)              MySQL (mysqlclient + MariaDB
                                                       Connector/C)
=====================  ==============================  ==============================
no mode                nothing (prefer)                chain (multipool passes
                                                       ssl_mode=REQUIRED)
require                chain ("require behaves like    chain
                       verify-ca" with a root CA)
verify-ca              chain                           chain and host name
verify-full            chain and host name             chain and host name
=====================  ==============================  ==============================

MySQL's own client library (libmysqlclient) checks the host name only under
``VERIFY_IDENTITY``, and the chain only under the ``VERIFY_*`` modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec

__all__ = ["chain_verified", "host_name_verified", "mysql_client_is_connector_c"]


def mysql_client_is_connector_c() -> bool:
    """Whether mysqlclient is built against MariaDB Connector/C (version 3.x),
    which verifies the chain whenever a CA is given and the host name under
    ``VERIFY_CA`` too."""
    try:
        import MySQLdb
    except ImportError:
        return False
    return str(MySQLdb.get_client_info()).split(".")[0] == "3"


def _has_ca(spec: DatabaseSpec) -> bool:
    return spec.tls.ca is not None or spec.tls.capath is not None


def chain_verified(spec: DatabaseSpec) -> bool:
    """Whether the driver checks the server's certificate against the CA."""
    mode = spec.tls.mode
    if mode in ("verify-ca", "verify-full"):
        return True
    if spec.vendor == "postgresql":
        return mode == "require" and _has_ca(spec)
    if spec.vendor == "mysql":
        return mode in (None, "require") and _has_ca(spec) and mysql_client_is_connector_c()
    return False


def host_name_verified(spec: DatabaseSpec) -> bool:
    """Whether the driver checks that the server's certificate names the host."""
    mode = spec.tls.mode
    if mode == "verify-full":
        return True
    return spec.vendor == "mysql" and mode == "verify-ca" and mysql_client_is_connector_c()
