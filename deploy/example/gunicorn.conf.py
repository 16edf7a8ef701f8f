"""gunicorn settings of the example, from the environment.

Each worker process has its own pool per database alias, shared by its threads.
The worst case per alias is WEB_CONCURRENCY x hosts x (POOL_SIZE + MAX_OVERFLOW)
connections -- check it with ``multipool budget --workers N --hosts M``.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
# Keep DATABASE_POOL_SIZE >= threads: every thread of a worker may hold one connection.
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
# The heartbeat files live in memory (the container's root file system is read-only).
worker_tmp_dir = "/dev/shm"
accesslog = "-"
errorlog = "-"
# Forking after the pools exist is safe (multipool detaches inherited sockets), but
# nothing is gained: every worker opens its own connections on first use.
preload_app = False


def when_ready(server):
    """In the master, before the first fork: with preload_app, a query made while the
    application loaded left a connection in the master's pool for its whole life
    (one per alias and host in the connection budget). Close it."""
    import multipool

    multipool.close_all()
