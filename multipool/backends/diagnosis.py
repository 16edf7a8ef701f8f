"""Connect-time failures explained: which alias, which setting, what to do.

A driver's connect error says what went wrong on the wire; it does not say
which alias or which setting led there. :func:`explain_connect_error` turns
the errors a setting explains into a :class:`~multipool.errors.ConnectError`
(a subclass of Django's ``OperationalError``, the driver's error as its
``__cause__``); any other error propagates unchanged.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from multipool.errors import ConnectError, EncryptionRequired

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec

__all__ = ["encryption_required", "explain_connect_error"]

#: libpq: "server does not support SSL, but SSL was required"; MariaDB
#: Connector/C: "SSL is required, but the server does not support it";
#: MySQL's libmysqlclient: "SSL is required but the server doesn't support it"
_NO_TLS = re.compile(r"server does not support SSL|server (does not|doesn't) support it", re.I)

_ENABLE_TLS = (
    "enable TLS on the server (PostgreSQL: ssl = on with ssl_cert_file and ssl_key_file; "
    "MariaDB/MySQL: ssl_cert, ssl_key and ssl_ca) or point the alias at a server that has "
    "it; only if plain text is acceptable, set {mode} to prefer"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[-1] if exc.args else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def encryption_required(spec: DatabaseSpec, answer: str) -> EncryptionRequired:
    """The error for a connection that is not encrypted although ``spec`` asks for it;
    ``answer`` is what the server or the driver said."""
    return EncryptionRequired(
        spec.alias,
        spec.encryption_setting() or spec.setting("tls_mode"),
        f"the connection must be encrypted, but the server does not offer TLS ({answer})",
        _ENABLE_TLS.format(mode=spec.setting("tls_mode")),
    )


def explain_connect_error(spec: DatabaseSpec, exc: BaseException) -> ConnectError | None:
    """A :class:`ConnectError` naming the alias and the setting behind ``exc``
    (a driver's connect error), or ``None`` when the settings do not explain it."""
    message = _first_line(exc)
    if spec.encryption_setting() is not None and _NO_TLS.search(message):
        return encryption_required(spec, f"the driver: {message}")
    return None
