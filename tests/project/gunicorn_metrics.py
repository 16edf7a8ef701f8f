"""gunicorn settings of the metrics tests (``-c python:tests.project.gunicorn_metrics``):
what docs/metrics.md tells users to add for Prometheus' multiprocess mode."""

from prometheus_client import multiprocess


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    multiprocess.mark_process_dead(worker.pid)
