"""The fenced code blocks of README.md and docs/*.md, and how to read them.

Used by ``tests/test_docs_examples.py``: :func:`blocks` extracts every block with its
page, line, info string, section and skip marker; the helpers below parse blocks of
variables (as python-decouple reads a ``.env``), shell commands and ``$ command``
transcripts, and normalize command output for comparison.

A block that the tests cannot run carries a marker on the line just before its fence::

    <!-- docs-test: skip: needs a Docker engine -->
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^`]*)$")
_HEADING = re.compile(r"^#{1,6} +(.*?) *#* *$")
MARKER = re.compile(r"^ *<!-- docs-test: (?P<what>[^:]+?)(?:: (?P<why>.*?))? -->$")
_VARIABLE = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository, e.g. "docs/cli.md"
    line: int  # line of the opening fence, 1-based
    info: str  # "python", "sh", "text", "" ...
    text: str  # the content, without the fence's indentation
    section: str  # the heading the block is under
    skip: str | None  # the reason of a skip marker, or None
    before: str  # the paragraph just above the block (prose that introduces it)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


def blocks(pages: list[Path] = PAGES) -> list[Block]:
    """Every fenced block of ``pages``; a marker that is not followed by a fence fails."""
    found = []
    for page in pages:
        lines = page.read_text().splitlines()
        section, index = "", 0
        while index < len(lines):
            line = lines[index]
            heading = _HEADING.match(line)
            if heading:
                section = heading.group(1)
            opening = _FENCE.match(line)
            if not opening:
                marker = MARKER.match(line)
                following = lines[index + 1] if index + 1 < len(lines) else ""
                if marker and not _FENCE.match(following):
                    raise ValueError(f"{page.name}:{index + 1}: marker not before a fence")
                index += 1
                continue
            indent, fence = len(opening["indent"]), opening["fence"]
            end = index + 1
            while not re.match(rf"^ *{re.escape(fence)} *$", lines[end]):
                end += 1
            marker = MARKER.match(lines[index - 1]) if index else None
            if marker and marker["what"] != "skip":
                raise ValueError(f"{page.name}:{index}: unknown marker {marker['what']!r}")
            found.append(Block(
                page=str(page.relative_to(ROOT)),
                line=index + 1,
                info=opening["info"].strip(),
                text="\n".join(x[indent:] for x in lines[index + 1:end]),
                section=section,
                skip=(marker["why"] or "") if marker else None,
                before=_paragraph_above(lines, index - (2 if marker else 1)),
            ))
            index = end + 1
    return found


def _paragraph_above(lines: list[str], index: int) -> str:
    while index >= 0 and not lines[index].strip():
        index -= 1
    paragraph: list[str] = []
    while index >= 0 and lines[index].strip() and not lines[index].lstrip().startswith("```"):
        paragraph.insert(0, lines[index].strip())
        index -= 1
    return " ".join(paragraph)


# -- blocks of variables ---------------------------------------------------------------


def is_variables(block: Block) -> bool:
    """Only ``NAME=value`` lines, comments and blank lines (what a ``.env`` holds)."""
    lines = [x.strip() for x in block.lines if x.strip() and not x.strip().startswith("#")]
    return block.info == "sh" and bool(lines) and all(_VARIABLE.match(x) for x in lines)


def variables(block: Block) -> dict[str, str]:
    """The values python-decouple reads from the block as a ``.env`` file.

    Raises ``ValueError`` for a trailing `` # comment``, which decouple keeps as part of
    the value.
    """
    out = {}
    for number, raw in enumerate(block.lines, start=block.line + 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _VARIABLE.match(line)
        assert match, f"{block.page}:{number}: not NAME=value: {line}"
        value = match["value"].strip()
        if re.search(r"\s#", value):
            raise ValueError(
                f"{block.page}:{number}: {match['name']} has a trailing comment, which "
                "python-decouple keeps as part of the value; put the comment on its own line"
            )
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[match["name"]] = value
    return out


# -- commands and transcripts ----------------------------------------------------------


@dataclass(frozen=True)
class Command:
    env: dict[str, str]  # NAME=value words before the program
    argv: list[str]
    output: str | None = None  # what a transcript shows after ``$ command``

    def __str__(self) -> str:
        return shlex.join(self.argv)


def commands(text: str) -> list[Command]:
    """The commands of a shell block: ``\\`` continuations joined, comments dropped,
    ``&&`` chains split, leading ``NAME=value`` words taken as the environment."""
    found = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            part, words = words[:cut], words[cut + 1:]
            env = {}
            while part and _VARIABLE.match(part[0]):
                name, _, value = part.pop(0).partition("=")
                env[name] = value
            found.append(Command(env, part))
    return found


def transcript(text: str) -> list[Command]:
    """The ``$ command`` lines of an output block, each with the output shown after it."""
    found: list[Command] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            (command,) = commands(line[2:])
            found.append(Command(command.env, command.argv, ""))
        elif found:
            last = found[-1]
            found[-1] = Command(last.env, last.argv, f"{last.output}{line}\n")
    return found


# -- comparing output ------------------------------------------------------------------

#: What varies from run to run, replaced on both sides before comparing (kept short):
VARYING = [
    (r"\b\d[\d,]*(\.\d+)? (ms|s)\b", r"<time \2>"),  # timings
    (r"\b\d+(\.\d+)?x\b", "<ratio>x"),  # speed-ups
    (r"(requests/s\s+)[\d,]+\s+[\d,]+", r"\1<rate> <rate>"),  # throughputs
    (r"(connects|server sessions)(\s+)\d+", r"\1\2<n>"),  # pooled connects: up to one a thread
    (r"\d+ connects instead", "<n> connects instead"),
    (r"(PostgreSQL|MariaDB|MySQL) \d+(\.\d+)*", r"\1 <version>"),  # the server's version
    (r"'@'[^']*'", "'@'<client address>'"),  # the client as a MySQL server names it
    # a pool's open, idle and connects counts: one connection per thread that ran at once
    (r"(active\s+\d+\s+\d+\s+)\d+(\s+\d+\s+)\d+(\s+\d+\s+\d+\s+)\d+", r"\1<n>\2<n>\3<n>"),
]


def normalized(text: str) -> str:
    """``text`` with :data:`VARYING` replaced, column alignment ignored (runs of two or
    more spaces compare equal, and so do runs of dashes), and no trailing blank lines."""
    out = []
    for line in text.rstrip().splitlines():
        for pattern, replacement in VARYING:
            line = re.sub(pattern, replacement, line)
        line = re.sub(r"-{3,}", "---", line.rstrip())
        out.append(re.sub(r"(?<=\S) {2,}", "  ", line))
    return "\n".join(out)


def matches(shown: str, real: str) -> bool:
    """Whether ``real`` output is what ``shown`` shows; a ``...`` line in ``shown``
    stands for any number of lines (the block must then say it is shortened)."""
    pattern = "".join(
        r"(?:.*\n)*?" if line.strip() == "..." else re.escape(line) + r"\n"
        for line in normalized(shown).splitlines()
    )
    return re.fullmatch(pattern, normalized(real) + "\n") is not None
