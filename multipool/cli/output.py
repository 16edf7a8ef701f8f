"""What the commands return and print: exit codes, usage errors, tables, JSON."""

from __future__ import annotations

import json
from typing import Any

from multipool.status import render_table

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "UsageError",
    "error_text",
    "ms",
    "one_line",
    "plural",
    "print_json",
    "render_table",
]

#: exit codes: ok; problems found (a failed check or connect, over budget, refused
#: to overwrite); wrong usage or an unusable configuration
EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Wrong arguments or an unusable configuration: exit code 2."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, shortened to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_text(exc: BaseException) -> str:
    """A one-line description of a driver error (masked later by the output stream)."""
    return one_line(f"{type(exc).__name__}: {exc}")


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 host``, ``2 hosts``; ``many`` for other plurals (``alias``, ``aliases``)."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def print_json(data: Any) -> None:
    """``--json`` output: indented, anything not JSON as its ``str()``."""
    print(json.dumps(data, indent=2, default=str))


def ms(seconds: float | None) -> str:
    """``1.25 ms`` (``-`` for none)."""
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"
