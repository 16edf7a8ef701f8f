"""Pooled Django database backends: ``multipool.backends.postgresql``, ``.mysql``, ``.sqlite3``."""

import os

from multipool.backends.pooled import abandon_inherited_connections

if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=abandon_inherited_connections)
