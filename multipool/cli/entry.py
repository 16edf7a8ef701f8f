"""``main()``: the entry point of the ``multipool`` console script and ``python -m multipool``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from django.core.exceptions import ImproperlyConfigured

from multipool.cli.masking import Masker, masked_output
from multipool.cli.output import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, UsageError, one_line
from multipool.cli.parser import build_parser
from multipool.errors import ConfigurationError


def _project_importable() -> None:
    """With ``DJANGO_SETTINGS_MODULE`` set, the current directory's modules import, as
    ``manage.py``'s own directory does for ``manage.py`` (``python -m`` does this)."""
    if os.environ.get("DJANGO_SETTINGS_MODULE") and "" not in sys.path:
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``multipool`` console script; returns the exit code.

    Everything written to stdout/stderr meanwhile goes through the masker, which
    knows the secrets of the environment (and, once loaded, of the settings).
    """
    masker = Masker()
    masker.add_environment(os.environ)
    _project_importable()
    with masked_output(masker):
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        try:
            return int(handler(args, masker))
        except UsageError as exc:
            print(f"multipool: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (ConfigurationError, ImproperlyConfigured) as exc:
            print(f"multipool: configuration error: {one_line(str(exc), 2000)}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("multipool: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            return EXIT_OK
        except Exception:
            import traceback

            print("multipool: unexpected error:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return EXIT_PROBLEMS
