"""Connect-time failures explained: which alias, which setting, what to do.

A driver's connect error says what went wrong on the wire; it does not say
which alias or which setting led there. :func:`explain_connect_error` turns
the errors a setting explains into a :class:`~multipool.errors.ConnectError`
(a subclass of Django's ``OperationalError``, the driver's error as its
``__cause__``); any other error propagates unchanged:

* no TLS from the server although the settings ask for it: ``EncryptionRequired``;
* a server certificate the driver refused: ``ServerCertificateError``, with what
  a second look at the certificate found (:mod:`~multipool.backends.certificate_diagnosis`);
* a refused connection or a host name that does not resolve: ``ServerUnreachable``;
  no answer within the connect timeout: ``ConnectTimeout``;
* a refused login: ``AuthenticationFailed`` (never with the password).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from multipool.backends.certificate_diagnosis import certificate_error
from multipool.errors import (
    AuthenticationFailed,
    ConnectError,
    ConnectTimeout,
    EncryptionRequired,
    ServerUnreachable,
)

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec

__all__ = ["driver_said", "encryption_required", "explain_connect_error", "server_address"]

logger = logging.getLogger("multipool.backends")

#: libpq: "server does not support SSL, but SSL was required"; MariaDB
#: Connector/C: "SSL is required, but the server does not support it";
#: MySQL's libmysqlclient: "SSL is required but the server doesn't support it"
_NO_TLS = re.compile(r"server does not support SSL|server (does not|doesn't) support it", re.I)

#: a server certificate refused: libpq ("SSL error: certificate verify failed",
#: 'server certificate for "x" does not match host name "y"'), Connector/C
#: ("Validation of SSL server certificate failed", OpenSSL's verify reasons)
_CERTIFICATE_REFUSED = re.compile(
    r"certificate verify failed|server certificate|self.signed certificate|"
    r"local issuer certificate|certificate has expired|certificate is not yet valid|"
    r"unable to verify the first certificate|certificate signature failure",
    re.I,
)

#: libpq's prefix: 'connection failed: connection to server at "h" (1.2.3.4), port 5432
#: failed: ', or '... connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: '
_LIBPQ_WHERE = re.compile(
    r'^(?:connection failed: )?connection to server (?:at "(?P<host>[^"]*)"'
    r'(?: \([^)]*\))?, port (?P<port>\d+)|on socket "(?P<socket>[^"]*)") failed: '
)

#: MySQL client errors: can't connect (socket, TCP), unknown host, lost during the handshake
_CR_CONNECTION_ERROR, _CR_CONN_HOST_ERROR, _CR_UNKNOWN_HOST, _CR_SERVER_LOST = (
    2002,
    2003,
    2005,
    2013,
)
_ER_ACCESS_DENIED_ERROR = 1045
_ETIMEDOUT = re.compile(r"\(110\)|system error: 110\b")

_ENABLE_TLS = (
    "enable TLS on the server (PostgreSQL: ssl = on with ssl_cert_file and ssl_key_file; "
    "MariaDB/MySQL: ssl_cert, ssl_key and ssl_ca) or point the alias at a server that has "
    "it; only if plain text is acceptable, set {mode} to prefer"
)
_LISTEN = {
    "postgresql": "listen_addresses and port in postgresql.conf",
    "mysql": "bind_address and port in the server's configuration",
}


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[-1] if exc.args else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _mysql_code(exc: BaseException) -> int | None:
    code = exc.args[0] if len(exc.args) > 1 else None
    return code if isinstance(code, int) else None


def driver_said(spec: DatabaseSpec, exc: BaseException) -> str:
    """The driver's message, short: ``libpq: ...`` or ``MySQL error 2026: ...``."""
    message = re.sub(r"\s{2,}", " ", _LIBPQ_WHERE.sub("", _first_line(exc)))
    if spec.vendor == "postgresql":
        return f"libpq: {message}"
    code = _mysql_code(exc)
    return f"MySQL error {code}: {message}" if code is not None else message


def server_address(spec: DatabaseSpec, exc: BaseException | None = None) -> tuple[str, int]:
    """The host and port connected to: as libpq names them, else from the settings.
    A Unix socket is its path (and port 0)."""
    found = _LIBPQ_WHERE.match(_first_line(exc)) if exc is not None else None
    if found and found["socket"]:
        return found["socket"], 0
    if found:
        return found["host"], int(found["port"])
    default_port = 5432 if spec.vendor == "postgresql" else 3306
    host = (spec.host or "localhost").split(",")[0]
    return host, spec.port or default_port


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
    try:
        host, port = server_address(spec, exc)
        if host.startswith("/") or "through socket" in message:  # no TLS, no host name
            return _login_refused(spec, exc)
        if _CERTIFICATE_REFUSED.search(message):
            return certificate_error(spec, host, port, driver_said(spec, exc))
        return _unreachable(spec, exc, host, port) or _login_refused(spec, exc)
    except Exception:
        # The driver's own error is better than a failure of its explanation.
        logger.warning("multipool: cannot explain a connect error of %r", spec.alias, exc_info=True)
        return None


def _address_setting(spec: DatabaseSpec) -> str:
    host, port = spec.setting("host"), spec.setting("port")
    return host if host == port or spec.port is None else f"{host} / {port}"


def _unreachable(
    spec: DatabaseSpec, exc: BaseException, host: str, port: int
) -> ServerUnreachable | None:
    """Refused, timed out, or a host name that does not resolve."""
    message, code = _first_line(exc), _mysql_code(exc)
    where, said, setting = f"{host}:{port}", driver_said(spec, exc), _address_setting(spec)
    mysql_connect = code in (_CR_CONNECTION_ERROR, _CR_CONN_HOST_ERROR, _CR_SERVER_LOST)
    if "timeout expired" in message or (mysql_connect and _ETIMEDOUT.search(message)):
        timeout = spec.pool.connect_timeout
        name = spec.setting("connect_timeout")
        return ConnectTimeout(
            spec.alias,
            name,
            f"{where} did not answer within {timeout:g} s ({said})",
            f"check that {setting} names the server's host and port and that no firewall "
            f"drops the packets on the way; if the server is only slow to answer, raise {name}",
        )
    if "could not translate host name" in message or code == _CR_UNKNOWN_HOST:
        return ServerUnreachable(
            spec.alias,
            spec.setting("host"),
            f"the host name {host!r} does not resolve ({said})",
            f"correct the host in {spec.setting('host')}; in a container, the database "
            "service must be on one of the container's networks",
        )
    if "Connection refused" in message or code in (_CR_CONNECTION_ERROR, _CR_CONN_HOST_ERROR):
        return ServerUnreachable(
            spec.alias,
            setting,
            f"nothing accepts connections at {where} ({said})",
            f"check the host and port in {setting}, and that the server runs and listens "
            f"there ({_LISTEN[spec.vendor]})",
        )
    return None


def _login_refused(spec: DatabaseSpec, exc: BaseException) -> AuthenticationFailed | None:
    """A wrong password, or an account the server accepts only over TLS."""
    message, said = _first_line(exc), driver_said(spec, exc)
    user = spec.user or ""
    encrypted = spec.tls.requires_encryption(spec.vendor)
    mode, password = spec.setting("tls_mode"), spec.setting("password")
    if "password authentication failed" in message:
        return AuthenticationFailed(
            spec.alias,
            password,
            f"the server refused the password of user {user!r} ({said})",
            f"correct the password in {password} (in a URL, percent-encode @ : / as "
            "%40 %3A %2F); after a password change on the server, deploy the new one",
        )
    if "no encryption" in message and "pg_hba.conf" in message:
        return AuthenticationFailed(
            spec.alias,
            mode,
            f"the server accepts user {user!r} only over TLS, and this connection is not "
            f"encrypted ({said})",
            f"set {mode} to verify-full, and {spec.setting('tls_ca')} to the server's CA",
        )
    if _mysql_code(exc) != _ER_ACCESS_DENIED_ERROR:
        return None
    fix = (
        f"correct the user or password in {password} (in a URL, percent-encode @ : / as "
        f"%40 %3A %2F), or create the account for this client's host on the server"
    )
    if not encrypted:
        fix += f"; if the account requires TLS (REQUIRE SSL), set {mode} to verify-full"
    return AuthenticationFailed(
        spec.alias, password, f"the server refused the login of user {user!r} ({said})", fix
    )
