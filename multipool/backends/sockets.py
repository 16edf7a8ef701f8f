"""TCP options that make a silent network fail a connection instead of hanging it."""

from __future__ import annotations

import os
import socket

__all__ = ["set_network_timeout"]


def set_network_timeout(fd: int, seconds: float) -> bool:
    """Keepalives and ``TCP_USER_TIMEOUT`` on the TCP socket ``fd`` (what libpq's
    ``keepalives*`` and ``tcp_user_timeout`` parameters do): an idle connection is
    probed after ``seconds / 3``, and data left unacknowledged for ``seconds``
    fails. ``False`` for a Unix socket or ``seconds == 0`` (nothing set)."""
    if seconds <= 0:
        return False
    sock = socket.socket(fileno=os.dup(fd))  # the same socket, through a second descriptor
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", max(1, int(seconds // 3))),
            ("TCP_KEEPINTVL", max(1, int(seconds // 9))),
            ("TCP_KEEPCNT", 3),
            ("TCP_USER_TIMEOUT", int(seconds * 1000)),
        ):
            option = getattr(socket, name, None)
            if option is not None:  # Linux has them all; others fewer
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
        return True
    finally:
        sock.close()
