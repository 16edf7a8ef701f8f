"""What one alias's physical connections are opened with, while files rotate.

A :class:`Material` holds the alias's validated certificate files
(:class:`~multipool.secrets.tls_files.TLSFiles`) and its
:class:`~multipool.secrets.credentials.Credentials`. It is consulted when a
physical connection is opened (:meth:`Material.open`) and, cheaply, by the
pool: :attr:`Material.next_check` is a monotonic time the pool compares on a
checkin, and once it has passed :meth:`Material.check` looks at the files (one
``stat`` each, by one thread).

Rotation is validate-then-swap. Changed files are read, copied and validated
first; a set that fails (a certificate without its new key yet, a damaged or
expired file) is held back -- one error logged, shown in the status -- and the
previous set stays in use until the files change again. A set that validates
becomes the one new connections use, and :attr:`Material.generation` moves on:
the pool replaces connections opened before, one at a time. Until the server
has accepted one connection with the new set, the previous set is kept: if the
server refuses the new one (a CA it does not trust), the connection is opened
with the previous set instead, the error is logged once, and the new set is
held back.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multipool.backends.diagnosis import driver_said
from multipool.errors import (
    ConfigurationError,
    RotationRefused,
    ServerUnreachable,
    TLSFileError,
)
from multipool.metrics.events import log_tls_warning
from multipool.notices import first_report
from multipool.secrets.credentials import Credentials, Login
from multipool.secrets.tls_files import (
    TLSFiles,
    load_tls_files,
    signatures,
    watched_paths,
)

if TYPE_CHECKING:
    from multipool.config.specs import DatabaseSpec

__all__ = ["Material"]

logger = logging.getLogger("multipool.secrets")

Connect = Callable[[dict[str, Any]], Any]


#: seconds after which files the server refused are tried again (its trust may
#: have been fixed meanwhile): one connection, refused or not, per this interval
RETRY_REFUSED = 60.0


@dataclass(frozen=True)
class HeldBack:
    """Files that changed and are not used, and why; ``retry_at`` (monotonic): when
    to try them again (never for files that do not validate)."""

    signatures: Any
    error: ConfigurationError | RotationRefused
    since: _dt.datetime
    retry_at: float = float("inf")


class Material:
    """The certificate files and credentials of one alias (see the module doc)."""

    def __init__(self, spec: DatabaseSpec) -> None:
        self.spec = spec
        self.interval = float(spec.pool.rotation_check)
        #: monotonic time from which :meth:`check` looks at the files again
        self.next_check = 0.0
        #: the generation of the set new connections use (read by the pool)
        self.generation = 0
        self.paths = watched_paths(spec.tls)
        self.credentials = None if spec.secrets.is_empty else Credentials(spec)
        self._lock = threading.Lock()  # guards the sets below
        self._check_lock = threading.Lock()  # one thread looks at the files at a time
        self._opened = threading.local()
        self._current: TLSFiles | None = None
        self._previous: TLSFiles | None = None  # kept until the current set is confirmed
        self._confirmed = False
        self._held_back: HeldBack | None = None
        self._rotated_at: _dt.datetime | None = None
        self._generations = 0  # sets loaded so far: the next one's generation is this + 1

    @property
    def held_back(self) -> ConfigurationError | RotationRefused | None:
        """Why the newest certificate files are not used (``None``: they are)."""
        with self._lock:
            held = self._held_back
        return held.error if held is not None else None

    @property
    def rotates(self) -> bool:
        """Whether any certificate file can change (the pool must watch)."""
        return bool(self.paths)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        if self.credentials is not None:
            self.credentials.after_fork()

    # -- the pool's cheap check ---------------------------------------------------------
    def check(self, now: float, *, force: bool = False) -> None:
        """Look at the files if :attr:`next_check` has passed, or ``force`` (one thread;
        the others go on). A racy read of ``next_check`` only leads here, where it is
        read again."""
        if not self._check_lock.acquire(blocking=False):
            return
        try:
            if not force and now < self.next_check:
                return
            self.next_check = now + self.interval
            self._look(now)
        except Exception:  # never the request's failure: the files in use stay
            logger.exception("multipool: alias %r: looking at the certificate files failed",
                             self.spec.alias)
        finally:
            self._check_lock.release()

    def opened_generation(self) -> int:
        """The generation of the connection this thread opened last."""
        return int(getattr(self._opened, "generation", self.generation))

    def _look(self, now: float) -> None:
        """Swap in files that changed and validate; hold back those that do not."""
        with self._lock:
            current, held = self._current, self._held_back
            generation = self._generations + 1
        if current is None or not self.paths:
            return
        found = signatures(self.paths)
        if found == current.signatures:
            return
        if held is not None and found == held.signatures and now < held.retry_at:
            return
        try:
            new = load_tls_files(self.spec, self.paths, generation)
        except ConfigurationError as exc:
            self._hold_back(found, exc, current)
            return
        except OSError as exc:  # the copy could not be written (no memfd, no TMPDIR)
            self._hold_back(found, _copy_error(self.spec, exc), current)
            return
        if new.signatures != current.signatures:  # (else: changed back while we looked)
            self._swap(current, new, retry=held is not None and found == held.signatures)

    def _hold_back(self, found: Any, exc: ConfigurationError, current: TLSFiles) -> None:
        with self._lock:
            self._held_back = HeldBack(found, exc, _dt.datetime.now(_dt.timezone.utc))
        logger.error(  # once: the same files are not looked at again
            "multipool: alias %r: the certificate files changed but are not used: %s. "
            "Connections keep the files in use (client certificate %s) until the files "
            "change again.",
            self.spec.alias, exc, _short(current),
        )

    def _swap(self, current: TLSFiles, new: TLSFiles, *, retry: bool) -> None:
        with self._lock:
            if self._current is not current:
                return  # the server refused a set meanwhile: the next look decides
            if self._confirmed:
                self._previous = current
            self._current, self._confirmed, self._held_back = new, False, None
            self._rotated_at = new.loaded_at
            self._generations = new.generation
            self.generation = new.generation
        logger.log(
            logging.DEBUG if retry else logging.INFO,
            "multipool: alias %r: new certificate files validated (client certificate %s, "
            "changed: %s); connections opened before are replaced one at a time",
            self.spec.alias, _short(new), ", ".join(self._settings(new.changed_fields(current))),
        )
        for message in new.warnings:
            if first_report(self.spec.alias, message):
                log_tls_warning(logger, self.spec.alias, message)

    def _settings(self, fields: list[str]) -> list[str]:
        return [self.spec.setting(f"tls_{name}") for name in fields]

    # -- opening a connection -------------------------------------------------------------
    def open(self, connect: Connect, params: dict[str, Any]) -> Any:
        """A new physical connection: ``connect(params)`` with the current files and
        credentials; if the server refuses them, with the previous files, or else
        with other credentials (:meth:`Credentials.retries`)."""
        current, fallback = self._sets()
        credentials = self.credentials
        known = credentials.last_accepted() if credentials is not None else None
        login = credentials.get() if credentials is not None else None
        try:
            connection = connect(self._params(params, current, login))
        except ServerUnreachable:
            raise  # nothing the files or credentials explain
        except Exception as exc:
            # The first error is the one to report when nothing else works.
            if fallback is not None:
                connection = self._with_previous_files(
                    connect, params, exc, current, fallback, login
                )
            elif login is not None:
                connection = self._with_other_login(connect, params, exc, current, login, known)
            else:
                connection = None
            if connection is None:
                raise
            return connection
        self._succeeded(current, login)
        return connection

    def _with_previous_files(
        self,
        connect: Connect,
        params: dict[str, Any],
        exc: Exception,
        current: TLSFiles | None,
        fallback: TLSFiles,
        login: Login | None,
    ) -> Any:
        """The connection opened with the files used before, or ``None``."""
        try:
            connection = connect(self._params(params, fallback, login))
        except Exception:
            return None
        assert current is not None
        self._refused(current, fallback, exc)
        self._succeeded(fallback, login)
        return connection

    def _with_other_login(
        self,
        connect: Connect,
        params: dict[str, Any],
        exc: Exception,
        files: TLSFiles | None,
        login: Login,
        known: Login | None,
    ) -> Any:
        """The connection opened with the first of :meth:`Credentials.retries` the
        server accepts, or ``None``."""
        credentials = self.credentials
        assert credentials is not None
        for other in credentials.retries(login, known):
            try:
                connection = connect(self._params(params, files, other))
            except Exception:
                continue
            if not other.same(login):
                credentials.refused(login, _cause(self.spec, exc))
            self._succeeded(files, other)
            return connection
        return None

    def _params(
        self, params: dict[str, Any], files: TLSFiles | None, login: Login | None
    ) -> dict[str, Any]:
        out = dict(params)
        if files is not None:
            out.update(files.driver_kwargs(self.spec.vendor))
        if login is not None:
            if login.user:
                out["user"] = login.user
            if login.password:
                out["password"] = login.password
            else:
                out.pop("password", None)
        return out

    def _succeeded(self, files: TLSFiles | None, login: Login | None) -> None:
        if files is not None:
            self._opened.generation = files.generation
            if not self._confirmed:
                self._confirm(files)
        if login is not None and self.credentials is not None:
            self.credentials.accepted(login)

    def _confirm(self, files: TLSFiles) -> None:
        with self._lock:
            if self._current is not files or self._confirmed:
                return
            self._confirmed, self._previous = True, None
            first = files.generation == 1
        if not first:
            logger.info(
                "multipool: alias %r: the server accepted the new certificate files "
                "(client certificate %s)", self.spec.alias, _short(files),
            )

    def _refused(self, new: TLSFiles, previous: TLSFiles, exc: BaseException) -> None:
        """The server refused ``new``: go back to ``previous`` and hold ``new`` back."""
        settings = ", ".join(self._settings(new.changed_fields(previous))) or "the TLS files"
        error = RotationRefused(
            self.spec.alias, settings,
            f"the server refused the connection with the new certificate files "
            f"(client certificate {_short(new)}): {_cause(self.spec, exc)}",
            "make the server trust the new certificate's issuer (PostgreSQL ssl_ca_file, "
            "MariaDB/MySQL ssl_ca) or put back files it accepts; meanwhile the previous "
            f"files (client certificate {_short(previous)}) stay in use, and the new ones "
            "are tried again every minute and whenever they change",
        )
        with self._lock:
            if self._current is not new:
                return  # another thread got there first
            self._current, self._previous, self._confirmed = previous, None, True
            self._held_back = HeldBack(
                new.signatures, error, _dt.datetime.now(_dt.timezone.utc),
                retry_at=time.monotonic() + RETRY_REFUSED,
            )
            self.generation = previous.generation
        if first_report(self.spec.alias, str(error)):
            logger.error("multipool: %s", error)

    def _sets(self) -> tuple[TLSFiles | None, TLSFiles | None]:
        """The set a new connection uses and, until it is confirmed, the previous one.
        Loads the files at the first connect, and looks at them at every connect."""
        if not self.paths and self.spec.tls.cert is None and self.spec.tls.ca is None:
            return None, None
        if self._current is None:
            self._load_first()
        elif self.paths:
            self.check(time.monotonic(), force=True)  # a connect always looks: a stat per file
        with self._lock:
            current = self._current
            return current, None if self._confirmed else self._previous

    def _load_first(self) -> None:
        timeout = self.spec.pool.connect_timeout
        if not self._lock.acquire(timeout=timeout):  # pragma: no cover - a hung file system
            raise _copy_error(self.spec, TimeoutError(f"not read within {timeout:g} s"))
        try:
            if self._current is None:
                # A problem here is the alias's settings problem: raised, nothing to fall back on.
                try:
                    self._current = load_tls_files(self.spec, self.paths, 1)
                except OSError as exc:
                    raise _copy_error(self.spec, exc) from None
                self._generations = self.generation = 1
                self.next_check = time.monotonic() + self.interval
        finally:
            self._lock.release()

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the pool status shows: certificates, credentials, rotations, problems."""
        with self._lock:
            current, held, rotated = self._current, self._held_back, self._rotated_at
            confirmed = self._confirmed
        out: dict[str, Any] = {
            "certificate": current.cert.as_dict() if current and current.cert else None,
            "ca": current.ca.as_dict() if current and current.ca else None,
            "tls_generation": current.generation if current else None,
            "tls_confirmed": confirmed if current else None,
            "tls_rotated_at": rotated.isoformat() if rotated else None,
            "tls_problem": f"{held.error.setting}: {held.error.problem}" if held else None,
            "tls_problem_since": held.since.isoformat() if held else None,
            "watched_files": sorted(self._settings(list(self.paths))),
            "check_interval": self.interval,
        }
        out["credentials"] = self.credentials.status() if self.credentials is not None else None
        return out


def _copy_error(spec: DatabaseSpec, exc: BaseException) -> TLSFileError:
    """The certificate files could be read but not kept (or not read in time)."""
    settings = ", ".join(spec.setting(f"tls_{name}") for name in watched_paths(spec.tls))
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return TLSFileError(
        spec.alias, settings or spec.setting("tls_cert"),
        f"the certificate files cannot be copied for the driver ({reason})",
        "make the temporary directory writable (TMPDIR); on Linux, allow memfd_create",
    )


def _short(files: TLSFiles) -> str:
    """A client certificate in a message: fingerprint prefix and expiry."""
    if files.cert is None:
        return "none"
    cert = files.cert
    return f"SHA-256 {cert.fingerprint[:16]}, expires {cert.not_after:%Y-%m-%d}"


def _cause(spec: DatabaseSpec, exc: BaseException) -> str:
    """What the server or driver said, in one line (never a password: the drivers
    do not echo it, and multipool's own messages never contain it)."""
    problem = getattr(exc, "problem", None)
    if isinstance(problem, str):
        return problem
    return driver_said(spec, exc)[:300]
