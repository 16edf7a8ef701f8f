"""PEM text given in a setting: recognized, written once to a private file, never shown.

PEM text is written mode 0600 into a private 0700 directory; equal text gives an
equal path, so equal configurations give equal specs.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import tempfile
import threading

_pem_lock = threading.Lock()
_pem_dir: str | None = None
_pem_dir_pid: int | None = None

#: base64 text with no dot, dash or underscore: more likely a PEM body pasted
#: without its ``-----BEGIN`` line than a file name
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/=]{32,}")


def is_pem_text(value: str) -> bool:
    """Whether a setting's value is PEM text rather than a path."""
    return value.lstrip().startswith("-----BEGIN")


def looks_like_pem_body(value: str) -> bool:
    """Whether a value looks like the base64 body of a PEM block (never echo it)."""
    return _BASE64_BODY.fullmatch(value) is not None


def show_path(path: str) -> str:
    """A path for a message; never echo something that may be key material."""
    if (
        len(path) > 255
        or "\n" in path
        or not path.isprintable()
        or looks_like_pem_body(path.strip())
    ):
        return "(the value, not shown: if it is PEM text, include its -----BEGIN line)"
    return repr(path)


def _cleanup_pem_dir() -> None:
    # Only the process that made the directory removes it: forked workers share it.
    if _pem_dir is not None and _pem_dir_pid == os.getpid():
        shutil.rmtree(_pem_dir, ignore_errors=True)


def _private_dir() -> str:
    global _pem_dir, _pem_dir_pid
    if _pem_dir is None or not os.path.isdir(_pem_dir):
        _pem_dir = tempfile.mkdtemp(prefix="multipool-tls-")
        os.chmod(_pem_dir, 0o700)
        if _pem_dir_pid is None:
            atexit.register(_cleanup_pem_dir)
        _pem_dir_pid = os.getpid()
    return _pem_dir


def _pem_bytes(text: str) -> bytes:
    text = text.strip()
    if "\n" not in text and "\\n" in text:
        # A one-line environment variable with escaped newlines (common in .env files).
        text = text.replace("\\n", "\n")
    text = text.replace("\r\n", "\n")
    return (text + "\n").encode("utf-8")


def write_pem(kind: str, text: str) -> str:
    """Write PEM text to a 0600 file in a private 0700 directory; return its path.

    The file name is a digest of the content: the same text gives the same
    path within a process, and is written only once.
    """
    data = _pem_bytes(text)
    digest = hashlib.sha256(data).hexdigest()[:40]
    with _pem_lock:
        directory = _private_dir()
        path = os.path.join(directory, f"{kind}-{digest}.pem")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    return path
