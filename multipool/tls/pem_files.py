"""PEM text in temporary files, where there is no in-memory file (not Linux).

Each text is written once, mode 0600, into a private 0700 directory
(``multipool-tls-*`` under the temporary directory) and named by a digest of
the content. The process that made the directory removes it when it exits
(``atexit``), and on SIGTERM or SIGINT where nothing handles them (see
:func:`_install_signal_cleanup`). Nothing can run on SIGKILL: after it, the
directory stays until something else removes it.

The caller (:func:`multipool.tls.pem.write_pem`) holds its lock around
:func:`write_pem_file`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import threading
from types import FrameType

#: the signals that remove the directory before they end the process
CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_pem_dir: str | None = None
_pem_dir_pid: int | None = None
_signals_installed = False


def write_pem_file(kind: str, digest: str, data: bytes) -> str:
    """Write ``data`` to ``<kind>-<digest>.pem`` in the private directory; its path."""
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


def remove_pem_dir() -> None:
    """Remove the directory, in the process that made it only (forked workers share it)."""
    if _pem_dir is not None and _pem_dir_pid == os.getpid():
        shutil.rmtree(_pem_dir, ignore_errors=True)


def _private_dir() -> str:
    global _pem_dir, _pem_dir_pid
    if _pem_dir is None or not os.path.isdir(_pem_dir):
        _pem_dir = tempfile.mkdtemp(prefix="multipool-tls-")
        os.chmod(_pem_dir, 0o700)
        if _pem_dir_pid is None:  # once per interpreter: forked children inherit both
            atexit.register(remove_pem_dir)
        _pem_dir_pid = os.getpid()
        _install_signal_cleanup()
    return _pem_dir


def _install_signal_cleanup() -> None:
    """Remove the directory on SIGTERM and SIGINT where their default action is in place.

    The default action ends the process at once, without ``atexit``: our handler
    removes the directory first, then the process dies of the same signal, as it
    would have. A handler the application installed is kept as it is and
    decides: a graceful shutdown may still open connections, so the files stay
    until the process exits, and ``atexit`` removes them then (Python's own
    SIGINT handler raises KeyboardInterrupt, which ends in an exit too).
    Replacing it would change nothing but what ``signal.getsignal()`` tells
    others (``asyncio.run()`` handles Ctrl-C only over Python's own handler).
    """
    global _signals_installed
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return  # signal.signal() works in the main thread only; atexit still cleans up
    for signum in CLEANUP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _on_signal)
    _signals_installed = True


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Remove the directory, then take the signal's default action: the process ends."""
    remove_pem_dir()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
