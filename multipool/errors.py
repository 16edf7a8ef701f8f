"""Every error multipool raises, in one place.

Each message names the alias, the setting at fault (the environment variable
when the value came from the environment, else the ``DATABASES`` key) and the
fix. No message ever contains a password, a key passphrase or key material.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.db.utils import OperationalError

__all__ = [
    "AuthenticationFailed",
    "CertificateDateError",
    "CertificateError",
    "ConfigurationError",
    "ConnectError",
    "ConnectTimeout",
    "CredentialProviderError",
    "CredentialsUnavailable",
    "EncryptionRequired",
    "InvalidPoolSetting",
    "InvalidTLSSetting",
    "InvalidURL",
    "MultipoolError",
    "PoolTimeout",
    "RotationRefused",
    "SecretFileError",
    "ServerCertificateError",
    "ServerUnreachable",
    "TLSFileError",
    "UnknownScheme",
]


class MultipoolError(Exception):
    """Base class of multipool's own errors (mixed into the Django ones below)."""


class ConfigurationError(MultipoolError, ImproperlyConfigured):
    """A setting is wrong. ``alias`` and ``setting`` say where; ``fix`` says what to do."""

    def __init__(self, alias: str, setting: str, problem: str, fix: str) -> None:
        self.alias = alias
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"database alias '{alias}', setting {setting}: {problem}. Fix: {fix}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.alias, self.setting, self.problem, self.fix))


class InvalidURL(ConfigurationError):
    """A database URL that cannot be parsed."""


class UnknownScheme(ConfigurationError):
    """A database URL whose scheme names no supported engine."""


class InvalidPoolSetting(ConfigurationError):
    """A pool size, overflow, timeout, recycle or ping setting out of range or not a number."""


class InvalidTLSSetting(ConfigurationError):
    """An unknown TLS mode, TLS version, or an inconsistent combination (verify without CA)."""


class TLSFileError(ConfigurationError):
    """A certificate, key, CA or CRL file is missing, unreadable, not PEM or too permissive."""


class CertificateError(ConfigurationError):
    """Certificates that parse but do not fit: key/cert mismatch, wrong CA, not valid now."""


class CertificateDateError(CertificateError):
    """A certificate that is not valid now: expired, or not valid yet."""


class SecretFileError(ConfigurationError):
    """A ``*_FILE`` variable names a file that is missing, unreadable or empty."""


class CredentialProviderError(ConfigurationError):
    """``DATABASE_CREDENTIALS`` names no importable callable."""


class ConnectError(MultipoolError, OperationalError):
    """A physical connection failed or was refused for a reason the settings explain.

    A subclass of Django's ``OperationalError`` (what Django raises for the
    driver's own connect errors), so existing handlers keep working; the
    driver's error is its ``__cause__``. ``alias``, ``setting``, ``problem``
    and ``fix`` as in :class:`ConfigurationError`.
    """

    def __init__(self, alias: str, setting: str, problem: str, fix: str) -> None:
        self.alias = alias
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"database alias '{alias}', setting {setting}: {problem}. Fix: {fix}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.alias, self.setting, self.problem, self.fix))


class EncryptionRequired(ConnectError):
    """The settings ask for TLS and the server did not provide it.

    Raised instead of lending a plain-text connection, whatever the client
    library would have allowed (see ``docs/tls.md``).
    """


class ServerCertificateError(ConnectError):
    """The driver refused the server's TLS certificate: not issued by a CA of the
    settings, not for the host connected to, or not valid now. The message says
    which, from a second look at the certificate (see ``docs/troubleshooting.md``).
    """


class ServerUnreachable(ConnectError):
    """No connection to the server's host and port: refused, or the host name
    does not resolve."""


class ConnectTimeout(ServerUnreachable):
    """The server did not answer within the connect timeout."""


class AuthenticationFailed(ConnectError):
    """The server refused the login: a wrong password, an unknown user, or an
    account that must connect over TLS. The message never contains the password."""


class CredentialsUnavailable(ConnectError):
    """The credential provider failed, returned something unusable, or did not
    answer in time when a connection was opened."""


class RotationRefused(ConnectError):
    """The server refused a connection opened with the new certificate files; the
    previous files stay in use. Logged and shown in the pool status, not raised."""


class PoolTimeout(MultipoolError, OperationalError):
    """No connection became free within the pool timeout.

    A subclass of Django's ``OperationalError`` so existing handlers keep working.
    """

    def __init__(
        self,
        alias: str,
        *,
        timeout: float,
        pool_size: int,
        max_overflow: int,
        checked_out: int,
        settings: tuple[str, str, str] = ("POOL_SIZE", "MAX_OVERFLOW", "POOL_TIMEOUT"),
    ) -> None:
        self.alias = alias
        self.timeout = timeout
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.checked_out = checked_out
        self.settings = settings
        size_var, overflow_var, timeout_var = settings
        super().__init__(
            f"database alias '{alias}': no connection free after waiting {timeout:g}s "
            f"(pool_size={pool_size}, max_overflow={max_overflow}, {checked_out} in use). "
            f"Fix: return connections sooner (close them at the end of each request, "
            f"CONN_MAX_AGE=0), or raise {size_var} / {overflow_var}, or {timeout_var}"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (
            _rebuild_pool_timeout,
            (
                self.alias,
                self.timeout,
                self.pool_size,
                self.max_overflow,
                self.checked_out,
                self.settings,
            ),
        )


def _rebuild_pool_timeout(
    alias: str,
    timeout: float,
    pool_size: int,
    max_overflow: int,
    checked_out: int,
    settings: tuple[str, str, str],
) -> PoolTimeout:
    return PoolTimeout(
        alias,
        timeout=timeout,
        pool_size=pool_size,
        max_overflow=max_overflow,
        checked_out=checked_out,
        settings=settings,
    )
