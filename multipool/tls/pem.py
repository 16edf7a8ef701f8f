"""PEM text given in a setting: recognized, kept in a private file, never shown.

The drivers read certificates and keys from files only. Where the system has
``memfd_create`` (Linux), PEM text goes into an anonymous in-memory file, mode
0600, sealed once written, and the drivers get its ``/proc/self/fd/N`` path:
nothing is written to a disk, and nothing is left behind however the process
ends (exit, SIGTERM, SIGKILL): the kernel frees the memory with the last
descriptor. Forked children (pre-fork servers) inherit the descriptor, so the
same path works in them. The descriptor is closed on ``exec``: a program the
application runs does not get the key; a re-executed application reads its
settings again and makes its own.

Elsewhere the text goes to a temporary file (:mod:`multipool.tls.pem_files`).

Either way equal text gives an equal path within a process, so equal
configurations give equal specs.

:func:`snapshot_file` keeps the content of a certificate or key *file* the same
way: the drivers then read a copy that was validated and cannot change, not
the live file a rotation may be rewriting (see :mod:`multipool.secrets`).
Messages name the live file.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading

from multipool.forking import in_child_after_fork
from multipool.tls.pem_files import write_pem_file

#: False writes PEM text to temporary files even where in-memory files exist
#: (tests use it to run that path on Linux)
use_memfd: bool = hasattr(os, "memfd_create")

_lock = threading.Lock()
#: (kind, digest) -> (descriptor, device, inode) of an in-memory file made here
_memfds: dict[tuple[str, str], tuple[int, int, int]] = {}
#: every path handed out for PEM text: shown as "PEM text", never as the path
_pem_paths: set[str] = set()
#: the path of a snapshot of a file -> the file it was read from (shown instead)
_snapshots: dict[str, str] = {}

#: base64 text with no dot, dash or underscore: more likely a PEM body pasted
#: without its ``-----BEGIN`` line than a file name
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/=]{32,}")


def is_pem_text(value: str) -> bool:
    """Whether a setting's value is PEM text rather than a path."""
    return value.lstrip().startswith("-----BEGIN")


def looks_like_pem_body(value: str) -> bool:
    """Whether a value looks like the base64 body of a PEM block (never echo it)."""
    return _BASE64_BODY.fullmatch(value) is not None


def from_pem_text(path: str) -> bool:
    """Whether ``path`` is where :func:`write_pem` put PEM text in this process."""
    return path in _pem_paths


def inherited_descriptor(path: str) -> int | None:
    """The descriptor behind an in-memory PEM path made here, for a program the
    application starts on purpose (``dbshell``) to inherit; None for other paths."""
    for fd, device, inode in list(_memfds.values()):
        if path == f"/proc/self/fd/{fd}" and _still_ours(fd, device, inode):
            return fd
    return None


def show_path(path: str) -> str:
    """A path for a message; never echo something that may be key material."""
    if from_pem_text(path):
        return "(the PEM text given)"
    if path in _snapshots:
        return repr(_snapshots[path])
    if (
        len(path) > 255
        or "\n" in path
        or not path.isprintable()
        or looks_like_pem_body(path.strip())
    ):
        return "(the value, not shown: if it is PEM text, include its -----BEGIN line)"
    return repr(path)


def _pem_bytes(text: str) -> bytes:
    text = text.strip()
    if "\n" not in text and "\\n" in text:
        # A one-line environment variable with escaped newlines (common in .env files).
        text = text.replace("\\n", "\n")
    text = text.replace("\r\n", "\n")
    return (text + "\n").encode("utf-8")


def write_pem(kind: str, text: str) -> str:
    """Keep PEM text in a private file readable by this user only; return its path.

    An in-memory file (``/proc/self/fd/N``) where the system has one, else a
    temporary file. The same text gives the same path within a process, and
    is written only once.
    """
    data = _pem_bytes(text)
    with _lock:
        path = _store(kind, data)
        _pem_paths.add(path)
    return path


def snapshot_file(kind: str, data: bytes, source: str) -> str:
    """Keep the content of the file ``source`` in a private file that cannot change;
    return its path. Messages show ``source`` for it. The same content gives the
    same path within a process; nothing is removed before the process ends."""
    with _lock:
        path = _store(f"file-{kind}", data)
        _snapshots[path] = source
    return path


def _store(kind: str, data: bytes) -> str:
    """Under the lock: an in-memory file holding ``data``, else a temporary file."""
    digest = hashlib.sha256(data).hexdigest()[:40]
    path = _memfd_path(kind, digest, data) if use_memfd else None
    return path if path is not None else write_pem_file(kind, digest, data)


def _memfd_path(kind: str, digest: str, data: bytes) -> str | None:
    """The ``/proc/self/fd/N`` path of an in-memory file holding ``data``, or None."""
    known = _memfds.get((kind, digest))
    if known is not None and _still_ours(*known):
        return f"/proc/self/fd/{known[0]}"
    fd = _new_memfd(kind, data)
    if fd is None:
        return None
    st = os.fstat(fd)
    _memfds[(kind, digest)] = (fd, st.st_dev, st.st_ino)
    return f"/proc/self/fd/{fd}"


def _still_ours(fd: int, device: int, inode: int) -> bool:
    """Whether the descriptor is still our file: code that closes every descriptor
    (a daemonizing worker) may have closed it, and the number been reused."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def _new_memfd(kind: str, data: bytes) -> int | None:
    """An in-memory file holding ``data``, mode 0600 and sealed; None if there is none."""
    import fcntl  # POSIX only, like memfd_create

    try:
        fd = os.memfd_create(f"multipool-tls-{kind}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None  # refused (a sandbox, an old kernel): a temporary file then
    try:
        if fd <= 2:
            # Daemonizing code redirects 0-2 to /dev/null: keep clear of them.
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = moved
        os.fchmod(fd, 0o600)  # it starts at 0777, and libpq refuses a key others can read
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        # No more writes, no resizing, no more seals: the content is fixed.
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        with open(f"/proc/self/fd/{fd}", "rb") as check:  # what the drivers will open
            if check.read() != data:
                raise OSError("the in-memory file reads back differently")
    except OSError:
        os.close(fd)
        return None  # e.g. no /proc mounted: a temporary file then
    return fd


def _new_lock_after_fork() -> None:
    # A thread of the parent may have held the lock when it forked.
    global _lock
    _lock = threading.Lock()


in_child_after_fork("state", _new_lock_after_fork)
