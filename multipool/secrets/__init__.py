"""Secrets that change while the process runs: files, providers, certificate rotation.

* :mod:`~multipool.secrets.files` -- reading a secret file once, with its signature;
* :mod:`~multipool.secrets.credentials` -- the login from ``DATABASE_PASSWORD_FILE``,
  ``DATABASE_URL_FILE`` or a ``DATABASE_CREDENTIALS`` provider
  (:class:`Credential`, :class:`CredentialRequest`);
* :mod:`~multipool.secrets.tls_files` -- a validated snapshot of the certificate files;
* :mod:`~multipool.secrets.material` -- both, per alias, consulted when a physical
  connection is opened, and the cheap check the pool makes (validate-then-swap);
* :mod:`~multipool.secrets.registry` -- one material per alias;
* :mod:`~multipool.secrets.aws` -- a provider of AWS RDS IAM tokens (needs boto3).

See ``docs/tls.md`` (rotation) and ``docs/configuration.md`` (the variables).
"""

from __future__ import annotations

from multipool.secrets.credentials import Credential, CredentialRequest
from multipool.secrets.registry import material_for, rotation_for, status

__all__ = ["Credential", "CredentialRequest", "material_for", "rotation_for", "status"]
