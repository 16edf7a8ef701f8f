"""The Celery app of the test project, set up as the Django guide of Celery says.

The broker and the result backend come from ``CELERY_BROKER_URL`` (one Redis for
both); the tasks are in ``tests.project.testapp.tasks``. The worker's main process
reads the database once at start-up, as an application's start-up check would.
"""

import logging
import os

from celery import Celery, signals

import multipool.celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.project.settings")

logger = logging.getLogger(__name__)

app = Celery("tests.project")
app.conf.update(
    broker_url=os.environ["CELERY_BROKER_URL"],
    result_backend=os.environ["CELERY_BROKER_URL"],
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)
app.autodiscover_tasks()
multipool.celery.setup()


@signals.worker_init.connect
def check_database_at_start(**kwargs: object) -> None:
    """A start-up check in the main process (it logs the connection it used)."""
    from django.db import connection

    from tests.project.testapp.tasks import server_connection_id

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    logger.warning("start-up check on connection %s", server_connection_id())
