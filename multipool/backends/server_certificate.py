"""The certificate a database server presents, fetched again to explain a refusal.

When the driver refuses the server's certificate, its message says little
("certificate verify failed"). :func:`fetch_certificate` opens a connection of
its own, starts TLS the way the server's protocol wants it, and returns the
certificate without verifying it; :func:`chain_error` runs OpenSSL's own chain
verification against a CA, as the drivers do. Both are bounded by ``timeout``
seconds in all, and never log in: the server sees a connection that ends after
the TLS handshake.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

__all__ = ["FetchError", "chain_error", "fetch_certificate"]

#: PostgreSQL's SSLRequest: length 8, then the code 1234.5679
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)

# MySQL capability flags of the client's SSL request packet
_CLIENT_LONG_PASSWORD = 0x1
_CLIENT_PROTOCOL_41 = 0x200
_CLIENT_SSL = 0x800
_CLIENT_SECURE_CONNECTION = 0x8000
_MYSQL_FLAGS = _CLIENT_LONG_PASSWORD | _CLIENT_PROTOCOL_41 | _CLIENT_SSL | _CLIENT_SECURE_CONNECTION
_MAX_PACKET = 16 * 1024 * 1024
_UTF8MB4 = 45


class FetchError(Exception):
    """The server did not start TLS (the message says what it did instead)."""


class _Deadline:
    """One time budget for every wait of a fetch."""

    def __init__(self, timeout: float) -> None:
        self.end = time.monotonic() + timeout

    def left(self) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        return remaining


def _receive(sock: socket.socket, size: int, deadline: _Deadline) -> bytes:
    data = b""
    while len(data) < size:
        sock.settimeout(deadline.left())
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise FetchError("the server closed the connection before TLS")
        data += chunk
    return data


def _postgres_preamble(sock: socket.socket, deadline: _Deadline) -> None:
    sock.sendall(_SSL_REQUEST)
    answer = _receive(sock, 1, deadline)
    if answer == b"N":
        raise FetchError("the server does not offer TLS")
    if answer != b"S":
        raise FetchError(f"the server answered the SSL request with {answer!r}")


def _mysql_preamble(sock: socket.socket, deadline: _Deadline) -> None:
    header = _receive(sock, 4, deadline)
    greeting = _receive(sock, int.from_bytes(header[:3], "little"), deadline)
    if greeting[:1] == b"\xff":  # an error packet: 2 bytes of code, then the text
        text = greeting[3:].decode("utf-8", "replace")
        raise FetchError(f"the server refused the connection: {text}")
    if greeting[:1] != b"\x0a":
        raise FetchError("the server's greeting is not MySQL protocol 10")
    # version (NUL-terminated), connection id, 8 bytes of salt, a filler, then flags
    flags_at = greeting.index(b"\0", 1) + 1 + 4 + 8 + 1
    (flags,) = struct.unpack_from("<H", greeting, flags_at)
    if not flags & _CLIENT_SSL:
        raise FetchError("the server does not offer TLS")
    request = struct.pack("<IIB23x", _MYSQL_FLAGS, _MAX_PACKET, _UTF8MB4)
    sequence = header[3] + 1
    sock.sendall(len(request).to_bytes(3, "little") + bytes([sequence]) + request)


def _handshake(
    vendor: str, host: str, port: int, timeout: float, context: ssl.SSLContext
) -> bytes:
    """The server's certificate (DER) after a TLS handshake under ``context``."""
    deadline = _Deadline(timeout)
    with socket.create_connection((host, port), timeout=deadline.left()) as sock:
        if vendor == "postgresql":
            _postgres_preamble(sock, deadline)
        else:
            _mysql_preamble(sock, deadline)
        sock.settimeout(deadline.left())
        with context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise FetchError("the server presented no certificate")
    return der


def fetch_certificate(vendor: str, host: str, port: int, timeout: float) -> bytes:
    """The DER certificate ``host:port`` presents, not verified.

    Raises :class:`FetchError` when the server does not start TLS, ``OSError``
    (``TimeoutError`` included) when the network does not let it, and
    ``ssl.SSLError`` when the handshake fails.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return _handshake(vendor, host, port, timeout, context)


def chain_error(
    vendor: str,
    host: str,
    port: int,
    timeout: float,
    *,
    cafile: str | None = None,
    capath: str | None = None,
) -> tuple[int, str] | None:
    """OpenSSL's verify code and reason for refusing the chain ``host:port``
    presents against the CA in ``cafile`` / ``capath`` (the system store when
    both are ``None``), or ``None`` when it verifies. Host names are not checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if cafile is None and capath is None:
        context.load_default_certs()
    else:
        context.load_verify_locations(cafile=cafile, capath=capath)
    try:
        _handshake(vendor, host, port, timeout, context)
    except ssl.SSLCertVerificationError as exc:
        return int(exc.verify_code), str(exc.verify_message)
    return None
