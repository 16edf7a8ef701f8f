"""Reading a file that holds a secret, once, with errors that name the setting.

A secret file is read with one ``open``, one ``fstat`` of what was opened and
one ``read``: the content and its :data:`Signature` belong to the same file,
even while a rotation replaces it. A :data:`Signature` (device, inode, size,
modification and change times) is what a later ``stat`` compares against to
see whether the file changed, without reading it.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from multipool.errors import ConfigurationError, SecretFileError
from multipool.tls.files import key_permission_error, key_too_open
from multipool.tls.pem import show_path

__all__ = [
    "FileRead", "Signature", "read_secret_file", "read_secret_text", "secret_text", "signature",
]

#: (device, inode, size, mtime_ns, ctime_ns) of a file; ``None``: it cannot be looked at
Signature = tuple[int, int, int, int, int]

_MAX_SIZE = 16 * 1024 * 1024


class FileRead(NamedTuple):
    data: bytes
    signature: Signature


def _signature_of(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def signature(path: str) -> Signature | None:
    """The file's signature now (one ``stat``), or ``None`` if it cannot be looked at."""
    try:
        return _signature_of(os.stat(path))
    except (OSError, ValueError):
        return None


def read_secret_file(
    alias: str,
    setting: str,
    path: str,
    what: str,
    error: type[ConfigurationError],
    *,
    private_key: bool = False,
) -> FileRead:
    """The content of the regular file ``path`` and its signature.

    Raises ``error`` naming ``setting`` when the file is missing, not a regular
    file, unreadable or empty; with ``private_key``, also when group or others
    may read it (libpq's rule, :func:`~multipool.tls.files.key_too_open`).
    """
    shown = show_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(
            alias, setting, f"the {what} file {shown} does not exist",
            f"point {setting} at an existing file",
        ) from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise error(
            alias, setting, f"the {what} file {shown} cannot be read ({reason})",
            "make it and its directories readable by the user running the application",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise error(alias, setting, f"the {what} file {shown} is {kind}",
                        f"point {setting} at a file")
        if private_key and key_too_open(st):
            raise key_permission_error(alias, setting, path, st)
        data = _read_all(alias, setting, fd, what, shown, error)
    finally:
        os.close(fd)
    if not data.strip():
        raise error(
            alias, setting, f"the {what} file {shown} is empty",
            f"write the {what} into it (a rotation writes the new file, then renames it "
            "over the old one)",
        )
    return FileRead(data, _signature_of(st))


def _read_all(
    alias: str, setting: str, fd: int, what: str, shown: str, error: type[ConfigurationError]
) -> bytes:
    chunks = []
    size = 0
    try:
        while size <= _MAX_SIZE:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error(
            alias, setting, f"the {what} file {shown} cannot be read ({exc.strerror})",
            "make it readable by the user running the application",
        ) from None
    if size > _MAX_SIZE:
        raise error(alias, setting, f"the {what} file {shown} is larger than 16 MiB",
                    f"point {setting} at the {what} file itself")
    return b"".join(chunks)


def secret_text(
    alias: str, setting: str, path: str, data: bytes, what: str, error: type[ConfigurationError]
) -> str:
    """A secret file's content as text, without the one line ending editors and
    ``echo`` add (``\\n`` or ``\\r\\n``); other white space is part of the secret."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(
            alias, setting, f"the {what} file {show_path(path)} is not UTF-8 text",
            f"write the {what} as UTF-8 text",
        ) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if text == "" or "\x00" in text:
        problem = "is empty" if text == "" else "contains a NUL character"
        raise error(alias, setting, f"the {what} file {show_path(path)} {problem}",
                    f"write the {what} into it, on one line")
    return text


def read_secret_text(alias: str, setting: str, path: str, what: str) -> str:
    """The text of the secret file ``path`` (:func:`read_secret_file`, then
    :func:`secret_text`); what is wrong with it raises a
    :class:`~multipool.errors.SecretFileError` naming ``setting``."""
    read = read_secret_file(alias, setting, path, what, SecretFileError)
    return secret_text(alias, setting, path, read.data, what, SecretFileError)
