"""Why the driver refused the server's certificate: its issuer against the CA of
the settings, the host connected to against its names, its dates against now.

:func:`certificate_error` fetches the certificate again
(:mod:`~multipool.backends.server_certificate`), compares, and returns a
:class:`~multipool.errors.ServerCertificateError` naming the setting at fault.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from multipool.backends.server_certificate import FetchError, chain_error, fetch_certificate
from multipool.backends.verification import host_name_verified
from multipool.errors import ServerCertificateError
from multipool.tls import system_ca_bundle

if TYPE_CHECKING:
    from multipool.config import DatabaseSpec

__all__ = ["certificate_error", "certificate_names", "names_host"]

#: OpenSSL verify codes that still mean "the chain reached a trusted CA"
_DATES_ONLY = (9, 10)  # certificate not yet valid, certificate has expired
#: how many CA names a message lists
_SHOWN = 3
#: seconds a second look at a server's certificate is reused (see :func:`_second_look`)
LOOK_AGAIN_AFTER = 30.0
#: (spec, host, port) -> (when it was looked at, what was found); one lock per key
_looks: dict[tuple[DatabaseSpec, str, int], tuple[float, list[Finding] | str]] = {}
_look_locks: dict[tuple[DatabaseSpec, str, int], threading.Lock] = {}
_looks_lock = threading.Lock()

_RENEW = {
    "postgresql": "renew the server's certificate (ssl_cert_file, then SELECT pg_reload_conf())",
    "mysql": "renew the server's certificate (ssl_cert, then FLUSH SSL on MariaDB or "
    "ALTER INSTANCE RELOAD TLS on MySQL)",
}


class Finding(NamedTuple):
    setting: str
    problem: str  # what the certificate does, after "the certificate of HOST:PORT" or "it"
    fix: str


# -- the certificate's names ----------------------------------------------------------


def certificate_names(cert: Any) -> list[str]:
    """The host names and addresses of ``cert``: its subject alternative names, or
    its common name when it has none (as the drivers read it)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    dns = alt.get_values_for_type(x509.DNSName)
    return [*dns, *(str(ip) for ip in alt.get_values_for_type(x509.IPAddress))]


def _name_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):  # a wildcard stands for one whole left-most label
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


def names_host(cert: Any, host: str) -> bool:
    """Whether ``cert`` is for ``host`` (a name, or an IP address)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return any(_name_matches(name, host) for name in certificate_names(cert))
    for name in certificate_names(cert):
        try:
            if ipaddress.ip_address(name) == address:
                return True
        except ValueError:
            continue
    return False


# -- the CA of the settings -----------------------------------------------------------


def _ca_locations(spec: DatabaseSpec) -> tuple[str | None, str | None]:
    """``(cafile, capath)`` of the settings; ``"system"`` is the system store."""
    if spec.tls.ca == "system":
        return system_ca_bundle()
    return spec.tls.ca, spec.tls.capath


def _load_cas(cafile: str | None, capath: str | None) -> list[Any]:
    from cryptography import x509

    paths = [cafile] if cafile else []
    if capath and os.path.isdir(capath):
        paths += sorted(os.path.join(capath, n) for n in os.listdir(capath))
    found: list[Any] = []
    for path in paths:
        try:
            with open(path, "rb") as file:
                found += x509.load_pem_x509_certificates(file.read())
        except (OSError, ValueError):
            continue
    return found


def _signed_by(cert: Any, ca: Any) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return False
    return True


def _holds(spec: DatabaseSpec, cas: list[Any]) -> str:
    if spec.tls.ca == "system":
        return "the system CA store"
    if not cas:
        return "it holds no certificate that can be read"
    names = [repr(ca.subject.rfc4514_string()) for ca in cas[:_SHOWN]]
    more = f" and {len(cas) - _SHOWN} more" if len(cas) > _SHOWN else ""
    return f"it holds {', '.join(names)}{more}"


# -- the findings -------------------------------------------------------------------


def _verifying_setting(spec: DatabaseSpec) -> str:
    """The setting that makes the driver verify the certificate."""
    if spec.tls.mode in ("verify-ca", "verify-full") or (
        spec.tls.ca is None and spec.tls.capath is None
    ):
        return spec.setting("tls_mode")
    return spec.setting("tls_ca" if spec.tls.ca is not None else "tls_capath")


def _issuer(spec: DatabaseSpec, cert: Any, host: str, port: int) -> list[Finding]:
    """The certificate does not chain up to a CA of the settings."""
    if spec.tls.ca is None and spec.tls.capath is None:
        return []  # no CA in the settings to compare with
    cafile, capath = _ca_locations(spec)
    cas = _load_cas(cafile, capath)
    if any(_signed_by(cert, ca) for ca in cas):
        return []
    # Not signed by one of them directly: maybe through an intermediate CA the
    # server sends along. OpenSSL decides, as it does for the driver; if it
    # cannot be asked, the certificate's own issuer is all there is to report.
    try:
        verdict = chain_error(
            spec.vendor, host, port, spec.pool.connect_timeout, cafile=cafile, capath=capath
        )
    except (OSError, FetchError):
        verdict = (0, "")
    if verdict is None or verdict[0] in _DATES_ONLY:
        return []
    setting = spec.setting("tls_ca" if spec.tls.capath is None else "tls_capath")
    issuer = cert.issuer.rfc4514_string()
    if any(ca.subject == cert.issuer for ca in cas):
        problem = (
            f"was issued by {issuer!r} but not signed by the CA of that name in {setting} "
            "(was the CA generated again?)"
        )
    else:
        problem = f"was issued by {issuer!r}, which is not a CA in {setting} ({_holds(spec, cas)})"
    fix = (
        f"set {setting} to the CA that issued the server's certificate ({issuer!r}); "
        "while the server moves to another CA, to a bundle of both"
    )
    return [Finding(setting, problem, fix)]


def _dates(spec: DatabaseSpec, cert: Any, now: dt.datetime) -> list[Finding]:
    """The certificate is not valid now."""
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        problem = f"is not valid before {not_before:%Y-%m-%d %H:%M} UTC"
        fix = "check the clocks of this machine and of the server, or issue a certificate valid now"
    elif now > not_after:
        problem = f"expired on {not_after:%Y-%m-%d %H:%M} UTC"
        fix = f"{_RENEW[spec.vendor]}; if it has not expired, correct this machine's clock"
    else:
        return []
    return [Finding(_verifying_setting(spec), problem, fix)]


def _host(spec: DatabaseSpec, cert: Any, host: str) -> list[Finding]:
    """The host name is verified and the certificate does not name the host."""
    if not host_name_verified(spec) or names_host(cert, host):
        return []
    names = ", ".join(repr(n) for n in certificate_names(cert)) or "no host name"
    mode = spec.tls.mode
    checks = "which checks the host name"
    if spec.vendor == "mysql" and mode == "verify-ca":
        checks = "and MariaDB Connector/C checks the host name under VERIFY_CA too"
    setting = spec.setting("host")
    problem = (
        f"is for {names}, not for {host!r}, the host connected to "
        f"({spec.setting('tls_mode')} is {mode}, {checks})"
    )
    fix = (
        f"connect to a name the certificate has ({names}) in {setting}, or issue the server "
        f"a certificate with {host!r} among its subject alternative names"
    )
    return [Finding(setting, problem, fix)]


# -- the error ------------------------------------------------------------------------


def _unexplained(spec: DatabaseSpec, where: str, said: str, reason: str) -> ServerCertificateError:
    ca = spec.setting("tls_ca" if spec.tls.capath is None else "tls_capath")
    fix = (
        f"check that {ca} holds the CA that issued the server's certificate and that "
        f"{spec.setting('host')} names a host the certificate has"
    )
    if spec.tls.crl is not None:
        fix += f", and whether the CRL in {spec.setting('tls_crl')} revokes it"
    return ServerCertificateError(
        spec.alias,
        _verifying_setting(spec),
        f"the certificate of {where} was refused ({said}); {reason}",
        fix,
    )


def _look(spec: DatabaseSpec, host: str, port: int, now: dt.datetime) -> list[Finding] | str:
    """What the certificate ``host:port`` presents has against the settings, or why
    nothing was found (a reason, for the message)."""
    from cryptography import x509

    try:
        der = fetch_certificate(spec.vendor, host, port, spec.pool.connect_timeout)
    except (OSError, FetchError) as exc:
        return f"fetching it again to compare failed ({str(exc) or type(exc).__name__})"
    cert = x509.load_der_x509_certificate(der)
    findings = _issuer(spec, cert, host, port) + _dates(spec, cert, now) + _host(spec, cert, host)
    return findings or "its issuer, names and dates fit the settings"


def _second_look(
    spec: DatabaseSpec, host: str, port: int, now: dt.datetime | None
) -> list[Finding] | str:
    """:func:`_look`, at most once per :data:`LOOK_AGAIN_AFTER` seconds for an alias's
    settings and server: a storm of failing connects (every thread, every retry) costs
    the server one more handshake per period, not one per connect. Threads that fail
    meanwhile wait for the look under way and share it; other aliases do not wait."""
    key = (spec, host, port)
    with _looks_lock:
        lock = _look_locks.setdefault(key, threading.Lock())
    with lock:
        cached = _looks.get(key)
        if now is None and cached is not None and time.monotonic() - cached[0] < LOOK_AGAIN_AFTER:
            return cached[1]
        found = _look(spec, host, port, now or dt.datetime.now(dt.timezone.utc))
        _looks[key] = (time.monotonic(), found)
        return found


def certificate_error(
    spec: DatabaseSpec, host: str, port: int, said: str, *, now: dt.datetime | None = None
) -> ServerCertificateError:
    """The error for a server certificate the driver refused; ``said`` is the
    driver's message. Fetches the certificate from ``host:port`` again to compare
    it with the settings (at ``now``, default: the current time)."""
    where = f"{host}:{port}"
    findings = _second_look(spec, host, port, now)
    if isinstance(findings, str):
        return _unexplained(spec, where, said, findings)
    problems = [f"the certificate of {where} {findings[0].problem}"]
    problems += [f"it {f.problem}" for f in findings[1:]]
    return ServerCertificateError(
        spec.alias,
        findings[0].setting,
        "; ".join(problems) + f" ({said})",
        "; ".join(dict.fromkeys(f.fix for f in findings)),
    )
