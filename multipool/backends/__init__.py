"""Pooled Django database backends: ``multipool.backends.postgresql``, ``.mysql``, ``.sqlite3``."""
