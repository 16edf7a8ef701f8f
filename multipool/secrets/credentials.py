"""The user and password an alias logs in with, when they can change while it runs.

Three sources, each consulted only when a physical connection is opened:

* ``DATABASE_PASSWORD_FILE``: the file is read at every connect;
* ``DATABASE_URL_FILE``: the file's URL is read at every connect, for its user
  and password (the rest of the URL was read with the settings);
* ``DATABASE_CREDENTIALS``: a provider, ``package.module:callable``, called with
  a :class:`CredentialRequest` and returning a :class:`Credential`. Its answer
  is cached until shortly before it expires (:func:`refresh_margin`); one
  thread at a time calls it, and while a refresh is under way the others go on
  with the answer that is still valid.

:class:`Credentials` also remembers the last login the server accepted, which a
connect tries when the server refuses the newest (:meth:`Credentials.retries`):
a rotation done file first, then server, fails no connect, even one that
overlaps the server's change.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from multipool.config.secret_settings import PROVIDER_RE
from multipool.errors import (
    ConfigurationError,
    CredentialProviderError,
    CredentialsUnavailable,
)
from multipool.notices import first_report
from multipool.secrets.files import read_secret_text

if TYPE_CHECKING:
    from multipool.config.specs import DatabaseSpec

__all__ = [
    "Credential",
    "CredentialRequest",
    "Credentials",
    "Login",
    "load_provider",
    "refresh_margin",
]

logger = logging.getLogger("multipool.secrets")



@dataclass(frozen=True)
class Credential:
    """What a credential provider returns.

    ``password``: the password or token; ``expires_in``: seconds it stays valid
    (``None``: until the server refuses it); ``user``: a user name that replaces
    the one in the URL (dynamic users, as Vault's database engine hands out).
    """

    password: str = field(repr=False)
    expires_in: float | None = None
    user: str | None = None

    def __repr__(self) -> str:
        return f"Credential(password='***', expires_in={self.expires_in!r}, user={self.user!r})"


@dataclass(frozen=True)
class CredentialRequest:
    """What a credential provider is called with: the alias and where it connects."""

    alias: str
    vendor: str
    host: str | None
    port: int | None
    user: str | None
    database: str


@dataclass(frozen=True)
class Login:
    """One user and password, and when they were obtained (monotonic and wall time)."""

    user: str | None
    password: str = field(repr=False)
    obtained: float = 0.0
    obtained_at: _dt.datetime = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    expires: float = math.inf  # monotonic
    refresh: float = math.inf  # monotonic: fetch a new one from then on

    def __repr__(self) -> str:
        return f"Login(user={self.user!r}, password='***')"

    def same(self, other: Login | None) -> bool:
        return other is not None and (other.user, other.password) == (self.user, self.password)


def refresh_margin(valid_for: float) -> float:
    """How long before its expiry a cached answer is replaced: a tenth of its
    validity, at most a minute (a 15-minute token is refreshed after 14)."""
    return min(60.0, valid_for / 10)


def load_provider(alias: str, setting: str, path: str) -> Callable[..., Any]:
    """The callable ``package.module:name``; :class:`CredentialProviderError` if
    there is none."""
    if not PROVIDER_RE.fullmatch(path):
        raise CredentialProviderError(
            alias, setting, f"{path!r} is not of the form package.module:callable",
            "name the function, e.g. myproject.db_auth:rds_token",
        )
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as exc:
        raise CredentialProviderError(
            alias, setting, f"{path!r} cannot be imported ({type(exc).__name__}: {_first(exc)})",
            "check the module path and that the module imports without errors",
        ) from None
    if not callable(found):
        raise CredentialProviderError(
            alias, setting, f"{path!r} is not callable", "name a function"
        )
    return found


def _first(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Credentials:
    """The login of one alias from a password file, a URL file or a provider."""

    def __init__(self, spec: DatabaseSpec) -> None:
        self.spec = spec
        self.setting = spec.setting("password")
        secrets = spec.secrets
        self.kind = (
            "provider" if secrets.credentials else "url file" if secrets.url_file else "file"
        )
        self._lock = threading.Lock()  # one provider call at a time; guards the fields
        self._provider: Callable[..., Any] | None = None
        self._current: Login | None = None  # the last read or fetched
        self._accepted: Login | None = None  # the last the server accepted
        self._rotated_at: _dt.datetime | None = None
        self._problem: str | None = None

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    # -- what a connect uses ------------------------------------------------------------
    def get(self) -> Login:
        """The login for a new connection (reads the file, or asks the provider when
        its answer is due)."""
        if self.kind == "provider":
            return self._cached_or_fetched()
        try:
            login = self._read()
        except ConfigurationError as exc:
            fallback = self._accepted
            if fallback is None:
                raise
            self._note_problem(f"{exc.problem}; the last password that worked is used")
            return fallback
        with self._lock:
            if login.same(self._current):
                return self._current  # type: ignore[return-value]
            self._current = login
        return login

    def retries(self, refused: Login, known: Login | None) -> Iterator[Login]:
        """The logins a connect tries, in order, after the server refused the newest,
        ``refused``; ``known``: the last one it had accepted when the connect began.

        A provider: a fresh answer. A file: the last login the server accepted --
        ``refused`` itself if another connect got in with it since this one began
        (the server took it meanwhile) -- and if the server refuses that one too,
        the newest, read again. A rotation done in the documented order (the file,
        then the server) can change the server between two attempts of one connect:
        the new password refused because the server does not take it yet, the old
        one because it no longer does; the new one then works."""
        if self.kind == "provider":
            fresh = self._fetch_locked(refused=refused)
            if not fresh.same(refused):
                yield fresh
            return
        accepted = self.last_accepted()
        if accepted is None or (accepted.same(refused) and refused.same(known)):
            return  # the server took this login before, and refuses it now
        yield accepted
        newest = self.get()
        if not newest.same(accepted):
            yield newest

    def last_accepted(self) -> Login | None:
        """The last login the server accepted (``None`` before the first)."""
        with self._lock:
            return self._accepted

    def accepted(self, login: Login) -> None:
        """The server accepted ``login``."""
        with self._lock:
            previous = self._accepted
            if login.same(previous):
                return
            if previous is not None and login.obtained < previous.obtained:
                # Read before the one accepted already: a connect that logged in just
                # before the server took the newer login, and reports it only now.
                return
            self._accepted = login
            self._problem = None
            if previous is not None:
                self._rotated_at = _dt.datetime.now(_dt.timezone.utc)
        if previous is not None:
            logger.info(
                "multipool: alias %r: new connections log in with the new credentials from %s",
                self.spec.alias, self.setting,
            )

    def refused(self, login: Login, cause: str) -> None:
        """The server refused ``login`` and accepted the one it had accepted before."""
        self._note_problem(f"the server refused the newest credentials ({cause}); "
                           "the ones that worked before are used")

    def _note_problem(self, problem: str) -> None:
        with self._lock:
            self._problem = problem
        if first_report(self.spec.alias, f"{self.setting}: {problem}"):
            logger.warning("multipool: alias %r, setting %s: %s",
                           self.spec.alias, self.setting, problem)

    # -- files --------------------------------------------------------------------------
    def _read(self) -> Login:
        spec, secrets = self.spec, self.spec.secrets
        path = secrets.url_file if self.kind == "url file" else secrets.password_file
        assert path is not None
        what = "database URL" if self.kind == "url file" else "password"
        text = read_secret_text(spec.alias, self.setting, path, what)
        now = time.monotonic()
        if self.kind == "file":
            return Login(spec.user, text, now)
        from multipool.config.urls import parse_url

        parts = parse_url(spec.alias, self.setting, text)
        if (parts.vendor, parts.name, parts.port) != (spec.vendor, spec.name, spec.port):
            self._note_problem(
                "the URL now names another database; only its user and password are read "
                "again, the rest applies after a restart"
            )
        return Login(parts.user, parts.password or "", now)

    # -- a provider ---------------------------------------------------------------------
    def _cached_or_fetched(self) -> Login:
        current = self._current
        now = time.monotonic()
        if current is not None and now < current.refresh:
            return current
        if current is not None and now < current.expires:
            # Due for a refresh but still valid: whoever gets the lock refreshes.
            if not self._lock.acquire(blocking=False):
                return current
            try:
                return self._refresh_or_keep(current)
            finally:
                self._lock.release()
        return self._fetch_locked()

    def _refresh_or_keep(self, current: Login) -> Login:
        try:
            return self._fetch()
        except CredentialsUnavailable as exc:
            self._problem = exc.problem
            logger.warning("multipool: alias %r: %s; the cached credentials stay in use "
                           "until they expire", self.spec.alias, exc.problem)
            return current

    def _fetch_locked(self, *, refused: Login | None = None) -> Login:
        """The cached answer if it is still due no refresh, else a new one. After the
        server ``refused`` a login: a new one, unless another thread got one meanwhile."""
        timeout = self.spec.pool.connect_timeout
        if not self._lock.acquire(timeout=timeout):
            raise CredentialsUnavailable(
                self.spec.alias, self.setting,
                f"the credential provider did not answer within {timeout:g} s",
                f"make the provider answer faster, or raise {self.spec.setting('connect_timeout')}",
            )
        try:
            current, now = self._current, time.monotonic()
            if current is not None and (
                (refused is None and now < current.refresh)
                or (refused is not None and not current.same(refused) and now < current.expires)
            ):
                return current  # another thread fetched it meanwhile
            return self._fetch()
        finally:
            self._lock.release()

    def _fetch(self) -> Login:
        """Call the provider (the lock is held) and cache its answer."""
        spec = self.spec
        path = spec.secrets.credentials
        assert path is not None
        if self._provider is None:
            self._provider = load_provider(spec.alias, self.setting, path)
        request = CredentialRequest(spec.alias, spec.vendor, spec.host, spec.port, spec.user,
                                    spec.name)
        started = time.monotonic()
        try:
            answer = self._provider(request)
        except Exception as exc:
            raise CredentialsUnavailable(
                spec.alias, self.setting,
                f"the credential provider {path} failed ({type(exc).__name__}: {_first(exc)})",
                "see the provider's error; the alias connects again once it answers",
            ) from exc
        login = self._login(answer, started)
        self._current = login
        return login

    def _login(self, answer: Any, started: float) -> Login:
        spec, path = self.spec, self.spec.secrets.credentials
        if isinstance(answer, str):
            answer = Credential(answer)
        elif isinstance(answer, tuple) and len(answer) == 2:
            answer = Credential(*answer)
        valid = answer.expires_in if isinstance(answer, Credential) else None
        if (
            not isinstance(answer, Credential)
            or not isinstance(answer.password, str)
            or not answer.password
            or (valid is not None and not (isinstance(valid, (int, float)) and valid > 0))
        ):
            raise CredentialsUnavailable(
                spec.alias, self.setting,
                f"the credential provider {path} returned {type(answer).__name__}, not a "
                "password and a positive number of seconds it stays valid",
                "return multipool.secrets.Credential(password=..., expires_in=seconds), "
                "a (password, seconds) tuple, or the password alone",
            )
        if valid is None:
            return Login(answer.user or spec.user, answer.password, started)
        valid = float(valid)
        return Login(
            answer.user or spec.user, answer.password, started,
            expires=started + valid, refresh=started + valid - refresh_margin(valid),
        )

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            login = self._accepted or self._current
            rotated, problem = self._rotated_at, self._problem
        now = time.monotonic()
        expires = None
        if login is not None and login.expires != math.inf:
            expires = login.obtained_at + _dt.timedelta(seconds=login.expires - login.obtained)
        return {
            "source": self.setting,
            "obtained_at": login.obtained_at.isoformat() if login else None,
            "age_seconds": round(now - login.obtained, 1) if login else None,
            "expires_at": expires.isoformat() if expires else None,
            "rotated_at": rotated.isoformat() if rotated else None,
            "problem": problem,
        }
