"""gunicorn settings of the metrics tests (``-c python:tests.project.gunicorn_metrics``):
what docs/metrics.md tells users to add for Prometheus' multiprocess mode."""

from typing import Any

from prometheus_client import multiprocess


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)
