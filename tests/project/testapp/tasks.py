"""Celery tasks of the test project: each returns the pid of the process that ran it
and the server's id of the database connection it used."""

import os

from celery import shared_task
from django.db import connection

from tests.project.testapp.models import Item


def server_connection_id() -> int:
    """The server's id of this thread's connection (PostgreSQL: the backend pid)."""
    if connection.vendor == "postgresql":
        sql = "SELECT pg_backend_pid()"
    else:
        sql = "SELECT CONNECTION_ID()"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return int(cursor.fetchone()[0])


@shared_task
def count_items(prefix: str) -> dict[str, int]:
    """Read: the number of items whose name starts with ``prefix``."""
    count = Item.objects.filter(name__startswith=prefix).count()
    return {"pid": os.getpid(), "connection_id": server_connection_id(), "count": count}


@shared_task
def add_item(name: str) -> dict[str, int]:
    """Write: one new item called ``name``."""
    item = Item.objects.create(name=name)
    return {"pid": os.getpid(), "connection_id": server_connection_id(), "id": item.pk}
