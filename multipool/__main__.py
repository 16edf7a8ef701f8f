"""``python -m multipool``: the ``multipool`` command (see :mod:`multipool.cli`)."""

from multipool.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
