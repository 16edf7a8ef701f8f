"""A credential provider for AWS RDS and Aurora IAM database authentication.

``DATABASE_CREDENTIALS=multipool.secrets.aws:rds_iam_token``: each token comes
from boto3's ``generate_db_auth_token`` for the alias's host, port and user,
and is valid for 15 minutes; multipool asks for a new one after 14. boto3 is
imported on the first call, so it is needed only where this provider is used
(``pip install boto3``). The region comes from boto3's usual configuration
(``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile), or from
``MULTIPOOL_RDS_REGION``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from multipool.secrets.credentials import Credential, CredentialRequest

__all__ = ["TOKEN_LIFETIME", "rds_iam_token"]

#: how long an RDS IAM authentication token is valid (AWS's fixed 15 minutes)
TOKEN_LIFETIME = 15 * 60

_clients: dict[str | None, Any] = {}
_lock = threading.Lock()


def _client(region: str | None) -> Any:
    with _lock:
        if region not in _clients:
            import boto3

            _clients[region] = boto3.client("rds", region_name=region)
        return _clients[region]


def rds_iam_token(request: CredentialRequest) -> Credential:
    """A fresh IAM authentication token for ``request``'s host, port and user."""
    region = os.environ.get("MULTIPOOL_RDS_REGION") or None
    default_port = 5432 if request.vendor == "postgresql" else 3306
    token = _client(region).generate_db_auth_token(
        DBHostname=request.host,
        Port=request.port or default_port,
        DBUsername=request.user,
        Region=region,
    )
    return Credential(password=token, expires_in=TOKEN_LIFETIME)
