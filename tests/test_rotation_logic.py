"""The rotation logic without a server: fast and exact.

* the pool (:mod:`multipool.pools.retirement`): connections tagged with the
  generation of their files, retired one at a time after a rotation, the look at the
  files made only when it is due;
* the material (:mod:`multipool.secrets.material`) with a stand-in connect function:
  validate-then-swap, a half-written rotation held back, files the server refuses
  rolled back, the driver given copies;
* credentials (:mod:`multipool.secrets.credentials`): a provider called once per
  validity window by many threads, a refresh that fails while the token is valid,
  the password that worked before after a refusal.

The real-server tests are ``tests/reliability/test_cert_rotation.py`` and
``test_credential_rotation.py``.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from multipool.config import DatabaseSpec, PoolSpec, read_environment
from multipool.config.specs import SecretSpec
from multipool.errors import AuthenticationFailed, CredentialsUnavailable, SecretFileError
from multipool.pools import retirement
from multipool.secrets.credentials import Credential, Credentials, refresh_margin
from multipool.secrets.material import Material
from tests.test_pool_logic import FakeConnection, make_pool
from tests.test_tls import PASSPHRASE, PKI, pki  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(30)


class FakeRotation:
    """What the pool sees of an alias's files: a generation, and when to look."""

    def __init__(self) -> None:
        self.generation = 1
        self.next_check = math.inf
        self.looks = 0

    def check(self, now: float) -> None:
        self.looks += 1
        self.next_check = now + 5

    def opened_generation(self) -> int:
        return self.generation


@pytest.fixture(autouse=True)
def _counts() -> None:
    FakeConnection.opened = FakeConnection.open_now = FakeConnection.most_open = 0


def rotating_pool(**settings: Any) -> tuple[Any, FakeRotation]:
    pool = make_pool(**settings)
    rotation = FakeRotation()
    pool.rotation = rotation
    return pool, rotation


# -- the pool ---------------------------------------------------------------------------------


def test_connections_carry_the_generation_they_were_opened_with() -> None:
    pool, rotation = rotating_pool(size=2, max_overflow=0)
    first = pool.checkout(FakeConnection)
    rotation.generation = 2
    second = pool.checkout(FakeConnection)
    assert (first.generation, second.generation) == (1, 2)


def test_after_a_rotation_connections_retire_one_at_a_time() -> None:
    pool, rotation = rotating_pool(size=3, max_overflow=0)
    leases = [pool.checkout(FakeConnection) for _ in range(3)]
    rotation.generation = 2
    kept = [pool.keep(lease) for lease in leases]
    # The first one given back is closed; the others wait for its replacement.
    assert kept == [False, True, True]
    assert leases[0].connection.closed and pool.stats().retired == 1
    assert pool.take_back(leases[1]) and pool.take_back(leases[2])
    replacement = pool.checkout(FakeConnection)
    assert replacement.generation == 2 and FakeConnection.opened == 4
    assert not pool.keep(leases[1])  # the replacement opened: the next one goes
    assert pool.keep(leases[2])  # and the last waits for the next replacement
    assert pool.stats().retired == 2


def test_retirement_pace_without_a_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retirement, "RETIRE_PACE", 0.05)
    pool, rotation = rotating_pool(size=2, max_overflow=0)
    a, b = pool.checkout(FakeConnection), pool.checkout(FakeConnection)
    rotation.generation = 2
    pool.checkin(a)  # retired
    assert pool.keep(b)  # not yet: no replacement opened, within the pace
    assert pool.take_back(b)
    time.sleep(0.06)  # the pace itself is what is tested
    assert not pool.keep(b) and b.connection.closed
    assert pool.stats().retired == 2


def test_idle_connections_of_an_old_generation_retire_when_taken() -> None:
    pool, rotation = rotating_pool(size=2, max_overflow=0)
    a, b = pool.checkout(FakeConnection), pool.checkout(FakeConnection)
    pool.checkin(a)
    pool.checkin(b)  # both idle in the queue
    rotation.generation = 2
    lease = pool.checkout(FakeConnection)
    assert lease.generation == 2  # an idle old one was closed, a new one opened
    assert pool.stats().retired == 1 and FakeConnection.opened == 3


def test_the_files_are_looked_at_only_when_due() -> None:
    pool, rotation = rotating_pool(size=1, max_overflow=0)
    lease = pool.checkout(FakeConnection)
    for _ in range(100):
        assert pool.keep(lease) and pool.take_back(lease)
    assert rotation.looks == 0
    rotation.next_check = 0.0
    for _ in range(100):
        assert pool.keep(lease) and pool.take_back(lease)
    assert rotation.looks == 1


def test_a_pool_without_rotation_never_retires() -> None:
    pool = make_pool(size=1, max_overflow=0)
    lease = pool.checkout(FakeConnection)
    assert lease.generation == 0 and pool.keep(lease)
    assert pool.stats().retired == 0


def test_recycle_applies_while_threads_wait() -> None:
    pool = make_pool(size=1, max_overflow=0, recycle=0.01, timeout=5.0)
    lease = pool.checkout(FakeConnection)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.checkout(FakeConnection)))
    waiter.start()
    while pool.stats().pending == 0:
        time.sleep(0.001)
    time.sleep(0.02)  # older than POOL_RECYCLE
    assert not pool.keep(lease)  # not handed over as it is: recycled
    waiter.join(5)
    assert got and got[0].connection is not lease.connection and FakeConnection.opened == 2


# -- the material -------------------------------------------------------------------------------

_aliases = itertools.count(1)


def material_for_files(pki: PKI, directory: Path, **pool: Any) -> tuple[Material, Path, Path]:  # noqa: F811
    directory.mkdir(exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    shutil.copy(pki.cert, cert)
    shutil.copy(pki.key, key)
    key.chmod(0o600)
    alias = f"mat{next(_aliases)}"
    spec = read_environment(source={
        "DATABASE_URL": "sqlite://", "DATABASE_ALIASES": alias,
        f"{alias.upper()}_DATABASE_URL": "postgresql://app@db.internal/app",
        f"{alias.upper()}_DATABASE_SSLMODE": "verify-full",
        f"{alias.upper()}_DATABASE_SSLROOTCERT": pki.ca,
        f"{alias.upper()}_DATABASE_SSLCERT_FILE": str(cert),
        f"{alias.upper()}_DATABASE_SSLKEY_FILE": str(key),
        f"{alias.upper()}_DATABASE_ROTATION_CHECK": "0",
    })[alias]
    return Material(spec), cert, key


class Server:
    """A stand-in connect function: records what it was given; refuses certificates
    whose file content is in ``refused``."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.refused: set[bytes] = set()

    def __call__(self, params: dict[str, Any]) -> object:
        self.seen.append(params)
        with open(params["sslcert"], "rb") as handle:
            if handle.read() in self.refused:
                raise OSError("SSL error: tlsv1 alert unknown ca")
        return object()


def replace(path: Path, source: str | Path) -> None:
    tmp = path.with_name(path.name + ".new")
    shutil.copy(source, tmp)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def test_the_driver_reads_copies_not_the_live_files(pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    material, cert, key = material_for_files(pki, tmp_path / "tls")
    server = Server()
    material.open(server, {"host": "db"})
    params = server.seen[0]
    assert params["sslcert"] != str(cert) and params["sslkey"] != str(key)
    with open(params["sslkey"], "rb") as copy:
        assert copy.read() == key.read_bytes()
    key.unlink()  # the live file may go: the copy stays
    material.open(server, {"host": "db"})
    assert material.generation == 1 and material.held_back is not None


def test_a_half_written_rotation_is_held_back(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    caplog.set_level(logging.INFO, logger="multipool.secrets")
    material, cert, key = material_for_files(pki, tmp_path / "tls")
    server = Server()
    material.open(server, {})
    new_cert, new_key = pki.client("renewed")
    replace(cert, new_cert)
    for _ in range(3):
        material.open(server, {})
        material.check(time.monotonic())
    assert material.generation == 1
    assert "does not match" in str(material.held_back)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "SSLKEY_FILE" in errors[0].getMessage()
    replace(key, new_key)
    material.open(server, {})
    assert material.generation == 2 and material.held_back is None
    with open(server.seen[-1]["sslcert"], "rb") as handle:
        assert handle.read() == Path(new_cert).read_bytes()
    assert material.status()["certificate"]["subject"] == "CN=renewed"


def test_a_key_rotated_to_a_new_passphrase_waits_for_a_restart(
    pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    """``SSLPASSWORD_FILE`` is read at start: the driver gets that passphrase, and a
    key encrypted with another one is held back, naming the variable."""
    caplog.set_level(logging.INFO, logger="multipool.secrets")
    directory = tmp_path / "tls"
    directory.mkdir()
    cert, key, passphrase = directory / "tls.crt", directory / "tls.key", tmp_path / "passphrase"
    first_cert, first_key = pki.client("first", password=PASSPHRASE)
    replace(cert, first_cert)
    replace(key, first_key)
    passphrase.write_text(PASSPHRASE + "\n")
    passphrase.chmod(0o400)
    spec = read_environment(source={
        "DATABASE_URL": "postgresql://app@db.internal/app", "DATABASE_SSLMODE": "verify-full",
        "DATABASE_SSLROOTCERT": pki.ca, "DATABASE_SSLCERT_FILE": str(cert),
        "DATABASE_SSLKEY_FILE": str(key), "DATABASE_SSLPASSWORD_FILE": str(passphrase),
        "DATABASE_ROTATION_CHECK": "0",
    })["default"]
    material, server = Material(spec), Server()
    material.open(server, {})
    assert server.seen[-1]["sslpassword"] == PASSPHRASE
    other_cert, other_key = pki.client("other", password="another-passphrase")
    replace(cert, other_cert)
    replace(key, other_key)
    material.open(server, {})
    assert material.generation == 1
    assert "does not decrypt" in str(material.held_back)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "DATABASE_SSLPASSWORD_FILE" in errors[0]
    assert PASSPHRASE not in errors[0] and "another-passphrase" not in errors[0]
    renewed_cert, renewed_key = pki.client("renewed", password=PASSPHRASE)
    replace(cert, renewed_cert)
    replace(key, renewed_key)
    material.open(server, {})
    assert material.generation == 2 and material.held_back is None


def refused_rotation(pki: PKI, tmp_path: Path) -> tuple[Material, Server, bytes]:  # noqa: F811
    material, cert, key = material_for_files(pki, tmp_path / "tls")
    server = Server()
    material.open(server, {})
    old_cert = cert.read_bytes()
    new_cert, new_key = pki.client("untrusted")
    server.refused.add(Path(new_cert).read_bytes())
    replace(key, new_key)
    replace(cert, new_cert)
    material.open(server, {})  # refused with the new files, opened with the old ones
    return material, server, old_cert


def test_files_the_server_refuses_are_rolled_back(pki: PKI, tmp_path: Path) -> None:  # noqa: F811
    material, server, old_cert = refused_rotation(pki, tmp_path)
    with open(server.seen[-1]["sslcert"], "rb") as handle:
        assert handle.read() == old_cert
    assert material.generation == 1
    refused = material.held_back
    assert refused is not None and "unknown ca" in refused.problem
    assert "SSLCERT_FILE" in refused.setting and "SSLKEY_FILE" in refused.setting
    tries = len(server.seen)
    material.open(server, {})  # not tried again within RETRY_REFUSED
    assert len(server.seen) == tries + 1
    assert material.status()["tls_problem"].endswith(refused.problem)


def test_refused_files_are_tried_again(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    from multipool.secrets import material as material_module

    monkeypatch.setattr(material_module, "RETRY_REFUSED", 0.0)
    material, server, _ = refused_rotation(pki, tmp_path)
    tries = len(server.seen)
    material.open(server, {})  # tried again (refused), then the old files
    assert len(server.seen) == tries + 2 and material.held_back is not None
    server.refused.clear()  # the server's trust was fixed
    material.open(server, {})
    assert material.held_back is None and material.generation > 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # the same refusal is logged once


# -- credentials ---------------------------------------------------------------------------------


def provider_spec(path: str, **pool: Any) -> DatabaseSpec:
    return DatabaseSpec(
        alias=f"cred{next(_aliases)}", vendor="postgresql", name="app", user="app",
        host="db", port=5432, secrets=SecretSpec(credentials=path), pool=PoolSpec(**pool),
    )


CALLS: list[float] = []
ANSWER: dict[str, Any] = {}


def counted_provider(request: Any) -> Any:
    CALLS.append(time.monotonic())
    if isinstance(ANSWER.get("raise"), BaseException):
        raise ANSWER["raise"]
    time.sleep(ANSWER.get("slow", 0.0))  # a token service's round trip
    return ANSWER.get("value") or Credential(f"token{len(CALLS)}", expires_in=ANSWER["valid"])


@pytest.fixture(autouse=True)
def _reset_provider() -> None:
    CALLS.clear()
    ANSWER.clear()


def test_refresh_margin() -> None:
    assert refresh_margin(900) == 60 and refresh_margin(2) == pytest.approx(0.2)


def test_many_threads_one_call_per_validity_window() -> None:
    ANSWER.update(valid=0.5, slow=0.05)
    credentials = Credentials(provider_spec(f"{__name__}:counted_provider"))
    seen: set[str] = set()
    lock = threading.Lock()
    stop = time.monotonic() + 1.2

    def connect_often() -> None:
        while time.monotonic() < stop:
            asked = time.monotonic()
            login = credentials.get()
            assert asked < login.expires  # valid when it was handed out
            with lock:
                seen.add(login.password)

    threads = [threading.Thread(target=connect_often) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # 1.2 s of tokens replaced after 0.45 s: three windows, three calls
    assert 3 <= len(CALLS) <= 4, CALLS
    assert seen == {f"token{n}" for n in range(1, len(CALLS) + 1)}


def test_a_failed_refresh_keeps_the_valid_token(caplog: pytest.LogCaptureFixture) -> None:
    ANSWER.update(valid=0.2)
    credentials = Credentials(provider_spec(f"{__name__}:counted_provider"))
    first = credentials.get()
    ANSWER["raise"] = RuntimeError("token service down")
    time.sleep(0.185)  # into the refresh margin, before the expiry
    assert credentials.get() is first
    assert "token service down" in caplog.text
    time.sleep(0.02)
    with pytest.raises(CredentialsUnavailable) as caught:
        credentials.get()
    assert "token service down" in caught.value.problem
    assert caught.value.setting == "DATABASE_PASSWORD" or caught.value.alias.startswith("cred")


@pytest.mark.parametrize(
    "value", [42, ("token", 0), ("token", "soon"), Credential(""), None]
)
def test_a_provider_answer_that_is_no_password(value: Any) -> None:
    ANSWER["value"] = value if value is not None else object()
    credentials = Credentials(provider_spec(f"{__name__}:counted_provider"))
    with pytest.raises(CredentialsUnavailable, match="not a password"):
        credentials.get()


def test_plain_answers() -> None:
    ANSWER["value"] = "just-a-password"
    credentials = Credentials(provider_spec(f"{__name__}:counted_provider"))
    assert credentials.get().password == "just-a-password"
    assert credentials.get().expires == math.inf and len(CALLS) == 1
    ANSWER["value"] = ("pair", 60)
    credentials = Credentials(provider_spec(f"{__name__}:counted_provider"))
    assert credentials.get().password == "pair"


def password_spec(path: Path) -> DatabaseSpec:
    return DatabaseSpec(
        alias=f"pw{next(_aliases)}", vendor="postgresql", name="app", user="app",
        secrets=SecretSpec(password_file=str(path)),
    )


def test_password_file_read_at_each_connect_and_the_last_good_kept(tmp_path: Path) -> None:
    path = tmp_path / "db-password"
    path.write_text("first\n")
    credentials = Credentials(password_spec(path))
    first = credentials.get()
    assert first.password == "first"
    credentials.accepted(first)
    path.write_text("second\r\n")
    second = credentials.get()
    assert second.password == "second"
    # refused: the one the server accepted, then the file's again
    assert list(credentials.retries(second, known=first)) == [first, second]
    credentials.accepted(second)
    # the server accepted it, for another connect, since this one began
    assert list(credentials.retries(second, known=first)) == [second]
    assert list(credentials.retries(second, known=second)) == []  # nothing else
    path.write_text("")  # a rotation that writes in place, caught half-way
    assert credentials.get() is second
    assert credentials.status()["problem"] is not None


def test_password_file_missing_before_any_connect(tmp_path: Path) -> None:
    credentials = Credentials(password_spec(tmp_path / "missing"))
    with pytest.raises(SecretFileError):
        credentials.get()


def test_password_with_spaces_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "db-password"
    path.write_text("  two spaces  \n\n")
    assert Credentials(password_spec(path)).get().password == "  two spaces  \n"


def test_authentication_failure_is_not_a_certificate_problem() -> None:
    assert not issubclass(AuthenticationFailed, CredentialsUnavailable)


class PasswordServer:
    """A stand-in connect function that takes one password at a time. ``meanwhile``:
    what happens once, right after it refuses the next login and before the refused
    connect goes on (an ``ALTER ROLE`` that commits then, another thread's connect)."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.meanwhile: Callable[[], None] | None = None
        self.tried: list[str] = []

    def __call__(self, params: dict[str, Any]) -> object:
        self.tried.append(params["password"])
        if params["password"] != self.password:
            meanwhile, self.meanwhile = self.meanwhile, None
            if meanwhile is not None:
                meanwhile()
            raise AuthenticationFailed("pw", "PW_DATABASE_PASSWORD_FILE", "refused", "fix")
        return object()

    def takes(self, password: str) -> Callable[[], None]:
        def change() -> None:
            self.password = password

        return change


def logged_in_then_file_rotated(tmp_path: Path) -> tuple[Material, PasswordServer]:
    """A password file read as "old", one connect in with it, then the file says "new"."""
    path = tmp_path / "db-password"
    path.write_text("old\n")
    material = Material(password_spec(path))
    server = PasswordServer("old")
    material.open(server, {})
    path.write_text("new\n")
    return material, server


def test_the_server_changes_between_the_attempts_of_one_connect(tmp_path: Path) -> None:
    material, server = logged_in_then_file_rotated(tmp_path)
    material.open(server, {})  # the new password refused, the old one accepted
    assert server.tried == ["old", "new", "old"]
    server.meanwhile = server.takes("new")  # the server follows, between two attempts
    material.open(server, {})  # new (refused), old (refused now), new once more
    assert server.tried[3:] == ["new", "old", "new"]
    assert material.credentials is not None
    assert material.credentials.last_accepted().password == "new"  # type: ignore[union-attr]
    material.open(server, {})
    assert server.tried[6:] == ["new"]


def test_both_passwords_refused_is_the_first_refusal(tmp_path: Path) -> None:
    material, server = logged_in_then_file_rotated(tmp_path)
    server.password = "another"  # neither: three attempts, the first refusal raised
    with pytest.raises(AuthenticationFailed):
        material.open(server, {})
    assert server.tried[1:] == ["new", "old", "new"]


def test_another_connect_gets_in_with_the_new_password_first(tmp_path: Path) -> None:
    material, server = logged_in_then_file_rotated(tmp_path)
    credentials = material.credentials
    assert credentials is not None

    def server_changes_and_another_thread_logs_in() -> None:
        server.password = "new"
        credentials.accepted(credentials.get())

    # This connect's new password was refused just before the server took it, and
    # another thread's connect got in with it before this one tries again.
    server.meanwhile = server_changes_and_another_thread_logs_in
    material.open(server, {})
    assert server.tried[1:] == ["new", "new"]


def test_a_login_accepted_late_does_not_replace_a_newer_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "db-password"
    path.write_text("old\n")
    credentials = Credentials(password_spec(path))
    old = credentials.get()
    credentials.accepted(old)
    path.write_text("new\n")
    new = credentials.get()
    with caplog.at_level(logging.INFO, logger="multipool.secrets"):
        credentials.accepted(new)
        # A connect that logged in with the old password just before the server
        # changed, and reports it after a connect with the new one did.
        credentials.accepted(old)
    assert credentials.last_accepted() is new
    news = [r for r in caplog.records if "log in with the new credentials" in r.getMessage()]
    assert len(news) == 1  # the rotation is announced once, never undone
