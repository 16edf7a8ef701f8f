"""``multipool config --explain``: where each value of each alias came from."""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any

from multipool.cli.masking import Masker
from multipool.cli.output import EXIT_OK, EXIT_USAGE, UsageError, print_json, render_table


def search_path() -> tuple[str, str]:
    """Where ``multipool.databases()`` looks for ``.env`` / ``settings.ini``, and a label:
    the settings module's directory (``DJANGO_SETTINGS_MODULE``), else here."""
    module = os.environ.get("DJANGO_SETTINGS_MODULE")
    if not module:
        return os.getcwd(), "environment"
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin:
        raise UsageError(f"cannot find the settings module {module!r} (DJANGO_SETTINGS_MODULE)")
    return os.path.dirname(found.origin), f"environment, as multipool.databases() in {module}"


def cmd_explain(args: argparse.Namespace, masker: Masker) -> int:
    from multipool.config.explain import explain, explain_as_dict, settings_files

    path, label = search_path()
    explained = explain(search_path=path)
    if args.alias:
        unknown = [a for a in args.alias if a not in explained]
        if unknown:
            known = ", ".join(explained)
            raise UsageError(f"unknown alias {', '.join(unknown)} (configured: {known})")
        explained = {a: explained[a] for a in args.alias}
    files = settings_files(path)
    errors = {a: str(v) for a, v in explained.items() if isinstance(v, Exception)}
    if args.json:
        print_json({
            "source": label,
            "files": [{"path": p, "read": used} for p, used in files],
            "aliases": {a: explain_as_dict(v) for a, v in explained.items() if isinstance(v, list)},
            "errors": errors,
        })
        return EXIT_USAGE if errors else EXIT_OK
    print(f"source: {label}")
    for path_, used in files:
        print(f"{'read' if used else 'not read (an earlier file wins)'}: {path_}")
    for alias, values in explained.items():
        print()
        if isinstance(values, Exception):
            print(f"{alias}: {values}")
            continue
        print(f"alias {alias!r}")
        rows = [[e.field, _text(e.value), e.setting, e.origin] for e in values]
        print(render_table(["FIELD", "VALUE", "SETTING", "FROM"], rows, indent="  "))
    return EXIT_USAGE if errors else EXIT_OK


def _text(value: Any) -> str:
    return "-" if value is None else str(value)
