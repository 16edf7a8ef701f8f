"""Startup validation of TLS settings and their files.

:func:`validate_tls` checks that the settings fit together and that the files
exist, are readable and PEM, that a key file is private and decrypts, that the
key matches its certificate, that certificates are valid now and that the
client certificate chains to the CA. It raises the first problem and returns
warnings. Nothing here puts a key passphrase or PEM text in a message.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from typing import Any

from multipool.errors import (
    CertificateDateError,
    CertificateError,
    InvalidTLSSetting,
    TLSFileError,
)
from multipool.setting_names import SettingNames
from multipool.tls.files import check_crl, load_certs, load_key, public_der
from multipool.tls.pem import show_path
from multipool.tls.spec import TLSSpec, system_ca_bundle
from multipool.tls.support import check_tls_support

#: days before a certificate's expiry from which validate_tls warns
EXPIRY_WARNING_DAYS = 30

#: a CA file with at most this many certificates is a private CA (its expiry is
#: warned about), not a public bundle
_PRIVATE_CA_MAX = 10


class MultipoolWarning(UserWarning):
    """A setting works but probably not as intended (certificate about to expire, ...)."""


class ExpiryWarning(str):
    """A warning of :func:`validate_tls` that a certificate expires soon (a plain ``str``
    otherwise, so that callers can tell it from the other warnings without reading it).
    ``setting``, ``expires`` and ``days_left`` say which, when and how soon."""

    setting: str
    expires: _dt.datetime | None
    days_left: int

    def __new__(
        cls,
        text: str,
        *,
        setting: str = "",
        expires: _dt.datetime | None = None,
        days_left: int = 0,
    ) -> ExpiryWarning:
        warning = super().__new__(cls, text)
        warning.setting, warning.expires, warning.days_left = setting, expires, days_left
        return warning


def validate_tls(
    alias: str,
    spec: TLSSpec,
    *,
    settings: Mapping[str, str] | SettingNames | None = None,
    now: _dt.datetime | None = None,
    vendor: str | None = None,
) -> list[str]:
    """Check the TLS settings and their files; raise the first problem, return warnings.

    Raises :class:`~multipool.errors.InvalidTLSSetting` (verify without CA,
    certificate without key...), :class:`~multipool.errors.TLSFileError` (missing,
    unreadable, not PEM, key too permissive, key passphrase missing or wrong),
    :class:`~multipool.errors.CertificateError` (key does not match certificate,
    not signed by the given CA) and :class:`~multipool.errors.CertificateDateError`
    (expired or not yet valid). ``vendor`` adds the driver checks of
    :func:`~multipool.tls.check_tls_support`. Expiry warnings are :class:`ExpiryWarning`.
    """
    names = SettingNames.given(alias, vendor or "postgresql", settings)
    if vendor is not None:
        check_tls_support(alias, vendor, spec, settings=names)
    when = now or _dt.datetime.now(_dt.timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    warnings = _check_combination(names, spec)
    cas, ca_warnings = _check_ca(names, spec, vendor, when)
    warnings += ca_warnings
    if spec.capath is not None and not os.path.isdir(spec.capath):
        raise TLSFileError(
            alias,
            names.of("capath"),
            f"the CA directory {show_path(spec.capath)} does not exist",
            "point it at a directory of hashed CA certificates (c_rehash)",
        )
    if spec.crl is not None:
        check_crl(alias, names.of("crl"), spec.crl)
    warnings += _check_client(names, spec, cas, when)
    return warnings


def _check_combination(names: SettingNames, spec: TLSSpec) -> list[str]:
    """Settings that only work together: a verify mode and a CA, a certificate and its key."""
    alias = names.alias
    if spec.verifies and spec.ca is None and spec.capath is None:
        raise InvalidTLSSetting(
            alias,
            names.of("mode"),
            f"TLS mode {spec.mode} verifies the server certificate but no CA is set "
            f"({names.of('ca')})",
            f"set {names.of('ca')} to the CA bundle file, its PEM text, or 'system' "
            "for the operating system's CA store",
        )
    if spec.cert is not None and spec.key is None:
        raise InvalidTLSSetting(
            alias,
            names.of("key"),
            f"a client certificate is set ({names.of('cert')}) but no client key",
            f"set {names.of('key')} to the certificate's private key",
        )
    if spec.key is not None and spec.cert is None:
        raise InvalidTLSSetting(
            alias,
            names.of("cert"),
            f"a client key is set ({names.of('key')}) but no client certificate",
            f"set {names.of('cert')} to the client certificate",
        )
    files = ("ca", "cert", "key", "crl", "capath")
    if spec.mode == "disable" and any(getattr(spec, f) is not None for f in files):
        return [
            f"database alias '{alias}': TLS is disabled ({names.of('mode')}) but certificate "
            "settings are given; they are ignored"
        ]
    return []


def _check_ca(
    names: SettingNames, spec: TLSSpec, vendor: str | None, when: _dt.datetime
) -> tuple[list[Any], list[str]]:
    """The CA certificates (none for ``system``), and warnings about their expiry."""
    alias, setting = names.alias, names.of("ca")
    if spec.ca == "system":
        if vendor == "mysql" and system_ca_bundle() == (None, None):
            raise TLSFileError(
                alias,
                setting,
                "no system CA bundle was found for 'system'",
                "install the ca-certificates package, or give the CA bundle file path",
            )
        return [], []
    if spec.ca is None:
        return [], []
    cas = load_certs(alias, setting, spec.ca, "CA")
    valid = [c for c in cas if c.not_valid_before_utc <= when <= c.not_valid_after_utc]
    if not valid:
        # Every CA certificate is expired (or not yet valid): nothing can verify.
        check_dates(alias, setting, cas[0], "CA certificate", when)
    if len(cas) > _PRIVATE_CA_MAX:
        return cas, []
    found = (check_dates(alias, setting, c, "CA certificate", when) for c in valid)
    return cas, [w for w in found if w is not None]


def _check_client(
    names: SettingNames, spec: TLSSpec, cas: list[Any], when: _dt.datetime
) -> list[str]:
    """The client certificate and key: they match, are valid now and chain to the CA."""
    if spec.cert is None or spec.key is None:
        return []  # one without the other: refused by _check_combination
    alias = names.alias
    certs = load_certs(alias, names.of("cert"), spec.cert, "client certificate")
    key, warnings = load_key(
        alias, names.of("key"), spec.key, spec.key_password, names.of("key_password")
    )
    leaf = certs[0]
    if public_der(key.public_key()) != public_der(leaf.public_key()):
        raise CertificateError(
            alias,
            names.of("key"),
            f"the client key does not match the client certificate ({names.of('cert')})",
            "use the private key the certificate was issued for",
        )
    expiry = check_dates(alias, names.of("cert"), leaf, "client certificate", when)
    if expiry is not None:
        warnings.append(expiry)
    if cas:
        warnings += _check_issuer(alias, names.of("cert"), names.of("ca"), leaf, certs[1:], cas)
    return warnings


def check_dates(
    alias: str, setting: str, cert: Any, what: str, now: _dt.datetime
) -> ExpiryWarning | None:
    """Raise :class:`CertificateDateError` for a certificate not valid at ``now``;
    return a warning when it expires within :data:`EXPIRY_WARNING_DAYS`, else ``None``."""
    not_before = cert.not_valid_before_utc
    not_after = cert.not_valid_after_utc
    if now < not_before:
        raise CertificateDateError(
            alias,
            setting,
            f"the {what} is not valid before {not_before:%Y-%m-%d %H:%M} UTC",
            "check the system clock, or issue a certificate valid from now",
        )
    if now > not_after:
        raise CertificateDateError(
            alias,
            setting,
            f"the {what} expired on {not_after:%Y-%m-%d %H:%M} UTC",
            "renew the certificate",
        )
    left = not_after - now
    if left >= _dt.timedelta(days=EXPIRY_WARNING_DAYS):
        return None
    return ExpiryWarning(
        f"database alias '{alias}': the {what} ({setting}) expires on "
        f"{not_after:%Y-%m-%d %H:%M} UTC, in {left.days} days; renew it",
        setting=setting,
        expires=not_after,
        days_left=left.days,
    )


def _issued_by(cert: Any, issuer: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


def _check_issuer(
    alias: str,
    cert_setting: str,
    ca_setting: str,
    leaf: Any,
    chain: list[Any],
    cas: list[Any],
) -> list[str]:
    """The client certificate chains up to a certificate of the CA bundle."""
    current = leaf
    candidates = chain + cas
    ca_ids = {id(c) for c in cas}
    for _ in range(len(candidates) + 1):
        if any(
            c.subject == current.subject
            and public_der(c.public_key()) == public_der(current.public_key())
            for c in cas
        ):
            return []  # the certificate itself is trusted
        named = [c for c in candidates if c.subject == current.issuer]
        signer = next((c for c in named if _issued_by(current, c)), None)
        if signer is None:
            if named:
                raise CertificateError(
                    alias,
                    cert_setting,
                    "the client certificate was not signed by the CA in "
                    f"{ca_setting}, although that CA has the issuer's name "
                    "(was the CA regenerated?)",
                    "issue the client certificate again with the current CA, "
                    "or point the CA setting at the CA that signed it",
                )
            return [
                f"database alias '{alias}': the client certificate ({cert_setting}) was "
                f"issued by {current.issuer.rfc4514_string()!r}, which is not in "
                f"{ca_setting}; fine if the server trusts that CA for client "
                "certificates, otherwise the server will reject it"
            ]
        if id(signer) in ca_ids or signer is current:
            return []
        current = signer
    return []
