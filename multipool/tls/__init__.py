"""TLS settings: one normalized :class:`TLSSpec` whatever the input spelling.

Inputs come in three dialects, all accepted for every server type:

* libpq ``OPTIONS`` keys: ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``,
  ``sslpassword``, ``sslcrl``, ``ssl_min_protocol_version``;
* mysqlclient: an ``ssl`` dict (``ca``, ``capath``, ``cert``, ``key``,
  ``cipher``) or ``ssl=True``, plus ``ssl_mode`` (``DISABLED`` ...
  ``VERIFY_IDENTITY``), and the flat ``ssl_ca`` / ``ssl_cert`` / ... spelling;
* environment variables (see :mod:`multipool.config`), parsed field by field
  with :func:`normalize_tls_field`.

File values may be paths or PEM text (``-----BEGIN ...``), kept once in a
private file (in memory on Linux, see :mod:`~multipool.tls.pem`).
:func:`validate_tls` checks the files at startup and returns warnings. Nothing
here ever puts a key passphrase or PEM text in a repr, a log line or an
exception message.

Modules: :mod:`~multipool.tls.spec` (the spec and its driver arguments),
:mod:`~multipool.tls.spellings` (input spellings), :mod:`~multipool.tls.support`
(what each driver can do), :mod:`~multipool.tls.pem` and
:mod:`~multipool.tls.pem_files` (PEM text -> private files),
:mod:`~multipool.tls.files` and :mod:`~multipool.tls.validation` (startup checks).
"""

from __future__ import annotations

from multipool.tls.pem import is_pem_text, write_pem
from multipool.tls.spec import (
    ENCRYPTED_MODES,
    MYSQL_SSL_MODES,
    TLS_MODES,
    TLS_VERSIONS,
    VENDORS,
    TLSSpec,
    system_ca_bundle,
)
from multipool.tls.spellings import (
    TLS_OPTION_NAMES,
    normalize_tls_field,
    tls_fields_from_options,
    tls_from_options,
)
from multipool.tls.support import check_tls_support
from multipool.tls.validation import (
    EXPIRY_WARNING_DAYS,
    ExpiryWarning,
    MultipoolWarning,
    validate_tls,
)

__all__ = [
    "ENCRYPTED_MODES",
    "EXPIRY_WARNING_DAYS",
    "MYSQL_SSL_MODES",
    "TLS_MODES",
    "TLS_OPTION_NAMES",
    "TLS_VERSIONS",
    "VENDORS",
    "ExpiryWarning",
    "MultipoolWarning",
    "TLSSpec",
    "check_tls_support",
    "is_pem_text",
    "normalize_tls_field",
    "system_ca_bundle",
    "tls_fields_from_options",
    "tls_from_options",
    "validate_tls",
    "write_pem",
]
