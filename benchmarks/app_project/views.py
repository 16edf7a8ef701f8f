"""The benchmark's views: the same two reads, sync and async, and the pool's counters."""

from __future__ import annotations

import os
import random

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from benchmarks.app_project.models import Item
from benchmarks.common import BENCH_ROWS
from benchmarks.cycle_worker import pool_stats


def sync_read(request: HttpRequest, alias: str = "default") -> JsonResponse:
    """A primary-key lookup and a count through the ORM, in a sync view."""
    items = Item.objects.using(alias)
    item = items.get(pk=random.randint(1, BENCH_ROWS))
    return JsonResponse({"name": item.name, "count": items.count()})


async def async_read(request: HttpRequest, alias: str = "default") -> JsonResponse:
    """The same reads through Django's async ORM (``aget``, ``acount``)."""
    items = Item.objects.using(alias)
    item = await items.aget(pk=random.randint(1, BENCH_ROWS))
    return JsonResponse({"name": item.name, "count": await items.acount()})


def pool(request: HttpRequest) -> JsonResponse:
    """This worker process's pool counters (multipool's and Django's native pool;
    ``null`` for the others), with the process id: with several workers, each
    request reaches one of them."""
    return JsonResponse({"pid": os.getpid(), "pool": pool_stats(settings.MPBENCH_CONFIG)})
