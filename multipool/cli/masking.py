"""Masking: every secret found in the environment and the settings, and any PEM
private key block, replaced by ``***`` in everything the command writes.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"

_PEM_KEY_RE = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S
)

_SENSITIVE_NAME_RE = re.compile(r"PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN", re.I)

_SENSITIVE_OPTIONS = ("password", "passwd", "sslpassword", "ssl_key_password")

_MIN_SECRET = 3


class Masker:
    """Replaces known secrets (and any PEM private key block) in text with ``***``."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: Any) -> None:
        if not isinstance(value, str) or len(value) < _MIN_SECRET:
            return
        variants = {
            value,
            quote(value, safe=""),
            quote(value),
            quote_plus(value),
            json.dumps(value)[1:-1],
            repr(value)[1:-1],
        }
        with self._lock:
            self._secrets.update(v for v in variants if len(v) >= _MIN_SECRET)

    def add_url(self, url: str) -> None:
        if "://" not in url or "@" not in url:
            return
        try:
            password = urlsplit(url.strip()).password
        except ValueError:
            return
        if password:
            self.add(password)
            self.add(unquote(password))

    def add_environment(self, environ: Mapping[str, str]) -> None:
        for name, value in environ.items():
            # DATABASE_PASSWORD_FILE names a file (a value that is no file name is
            # refused, unshown, when the settings are read)
            if _SENSITIVE_NAME_RE.search(name) and not name.endswith("_FILE"):
                self.add(value)
            self.add_url(value)

    def add_databases(self, databases: Mapping[str, Any]) -> None:
        for entry in databases.values():
            if not isinstance(entry, Mapping):
                continue
            self.add(entry.get("PASSWORD"))
            options = entry.get("OPTIONS")
            if isinstance(options, Mapping):
                for key in _SENSITIVE_OPTIONS:
                    self.add(options.get(key))

    def __call__(self, text: str) -> str:
        if "PRIVATE KEY-----" in text:
            text = _PEM_KEY_RE.sub("[private key not shown]", text)
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


class _MaskedStream(io.TextIOBase):
    """A text stream that masks everything written through it."""

    def __init__(self, stream: TextIO, masker: Masker) -> None:
        self._stream = stream
        self._masker = masker

    def write(self, text: str) -> int:
        self._stream.write(self._masker(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return bool(self._stream.isatty())

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"


@contextlib.contextmanager
def masked_output(masker: Masker) -> Iterator[None]:
    """stdout and stderr through ``masker`` while inside."""
    saved = sys.stdout, sys.stderr
    sys.stdout = _MaskedStream(sys.stdout, masker)
    sys.stderr = _MaskedStream(sys.stderr, masker)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        sys.stdout, sys.stderr = saved
