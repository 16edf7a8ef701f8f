"""Where environment values come from: python-decouple (``os.environ``, then the
``settings.ini`` or ``.env`` file found from the caller's directory upward), a
mapping, or a decouple ``Config`` / repository given by the caller."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from decouple import Config, Csv, RepositoryEmpty, RepositoryEnv, RepositoryIni

from multipool.errors import ConfigurationError
from multipool.setting_names import short

ALIAS_RE = re.compile(r"[a-z][a-z0-9_]*")

#: the files python-decouple's ``AutoConfig`` reads, in its order of preference
SETTINGS_FILES = ("settings.ini", ".env")


def find_settings_file(start: str) -> str | None:
    """The ``settings.ini`` or ``.env`` python-decouple's ``AutoConfig`` would read:
    the first found in ``start`` or a parent directory (the root excluded, as there)."""
    path = os.path.abspath(start)
    root = os.path.normcase(os.path.abspath(os.sep))
    while path and os.path.normcase(path) != root:
        for name in SETTINGS_FILES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return None


class Source:
    """Raw values: the source (decouple by default), then the keyword defaults.

    ``base_dir``: what relative paths (a SQLite file, certificate files) are
    relative to -- the ``base_dir`` given, else the directory of the ``.env`` /
    ``settings.ini`` in use, else where it was looked for; never the current
    directory, so that ``manage.py`` finds the same files from anywhere.
    """

    def __init__(
        self,
        source: Any,
        search_path: str | None,
        defaults: Mapping[str, Any],
        base_dir: str | None = None,
    ):
        self.defaults = defaults
        self._get: Callable[[str], Any]
        self.file: str | None = None
        self._repository: Any = None  # the file's decouple repository, when we read it
        self._mapping: Mapping[str, Any] | None = None
        self.base_dir = base_dir or search_path or os.getcwd()
        if source is None:
            start = search_path or _caller_dir()
            self.file = find_settings_file(start)
            self._repository = RepositoryEmpty()
            if self.file is not None:
                kind = RepositoryIni if self.file.endswith(".ini") else RepositoryEnv
                self._repository = kind(self.file)
            config = Config(self._repository)
            self._get = lambda key: config(key, default=None)
            self.base_dir = base_dir or (os.path.dirname(self.file) if self.file else start)
        elif isinstance(source, Mapping):
            self._mapping = source
            self._get = source.get
        elif callable(source):  # a decouple Config / AutoConfig
            self._get = lambda key: source(key, default=None)
        elif hasattr(source, "__contains__") and hasattr(source, "__getitem__"):
            # a decouple Repository: os.environ first
            wrapped = Config(source)
            self._get = lambda key: wrapped(key, default=None)
        else:
            raise TypeError(
                "source must be a mapping, a decouple Config/AutoConfig or a decouple "
                f"Repository, not {type(source).__name__}"
            )

    def from_source(self, key: str) -> Any:
        """The source's value; ``None`` when unset or empty."""
        value = self._get(key)
        return None if value is None or value == "" else value

    def from_defaults(self, key: str) -> Any:
        """The keyword default; ``None`` when not given or empty."""
        value = self.defaults.get(key)
        return None if value is None or value == "" else value

    def get(self, key: str) -> Any:
        value = self.from_source(key)
        return value if value is not None else self.from_defaults(key)

    def origin(self, key: str) -> str:
        """Where the value of ``key`` comes from, for ``multipool config --explain``:
        the process environment, a ``.env`` / ``settings.ini`` file (with its path), a
        keyword argument of ``databases()``, the mapping given, or ``default``."""
        if self.from_source(key) is not None:
            if self._mapping is not None:
                return "the source mapping"
            if os.environ.get(key):
                return "environment"
            if self.file is not None and key in self._file_keys():
                return f"{os.path.basename(self.file)} at {self.file}"
            return "the source given"
        if self.from_defaults(key) is not None:
            return "keyword argument of databases()"
        return "default"

    def names(self) -> set[str]:
        """Every variable name the source holds (the environment's, the file's, the
        mapping's and the keyword defaults'), for the check of misspelled names."""
        if self._mapping is not None:
            found = {k for k in self._mapping if isinstance(k, str)}
        else:
            found = set(os.environ) | self._file_keys()
        return found | set(self.defaults)

    def _file_keys(self) -> set[str]:
        repository = self._repository
        if isinstance(repository, RepositoryEnv):
            return set(repository.data)
        if isinstance(repository, RepositoryIni) and repository.parser.has_section(
            repository.SECTION
        ):
            # (ConfigParser keeps option names in lower case; decouple reads them so)
            return {key.upper() for key in repository.parser.options(repository.SECTION)}
        return set()

    def aliases(self, key: str, owner: str) -> list[str]:
        raw = self.get(key)
        if raw is None:
            return []
        if isinstance(raw, (list, tuple)):
            items = [str(a).strip() for a in raw]
        else:
            try:
                items = Csv()(str(raw))
            except ValueError:
                raise ConfigurationError(
                    owner,
                    key,
                    "the list cannot be parsed (unbalanced quotes?)",
                    "use comma-separated names: alias1,alias2",
                ) from None
        out: list[str] = []
        for item in items:
            if item == "":
                continue
            if not ALIAS_RE.fullmatch(item):
                raise ConfigurationError(
                    owner,
                    key,
                    f"{short(item)} is not a valid alias name",
                    "use lower-case letters, digits and underscores, starting with a letter",
                )
            if item not in out:
                out.append(item)
        return out


def _caller_dir() -> str:
    """Directory of the first caller outside multipool (where decouple looks for .env)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # multipool/
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith("<"):
            path = os.path.abspath(filename)
            if not path.startswith(package):
                return os.path.dirname(path)
        frame = frame.f_back
    return os.getcwd()
