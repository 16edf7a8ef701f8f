#!/usr/bin/env python
"""Run the test project's management commands (the repository root must be importable)."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")
    if os.environ.get("MULTIPOOL_FORCE_PSYCOPG2") == "1":
        # As on a machine with only psycopg2: Django falls back to it.
        sys.modules["psycopg"] = None  # type: ignore[assignment]
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
