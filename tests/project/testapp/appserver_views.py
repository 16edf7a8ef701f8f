"""Views the application-server tests drive: sync and async (Django's async ORM)
reads and writes, and this process's pool statistics."""

import os

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

from multipool.pools import manager
from tests.project.testapp.models import Item


def ping(request: HttpRequest) -> JsonResponse:
    """Touches no database: the readiness probe of the tests."""
    return JsonResponse({"pid": os.getpid()})


def pool(request: HttpRequest) -> JsonResponse:
    """This worker's pid and its pools' statistics (no database round trip)."""
    stats = {alias: s.as_dict() for alias, s in manager.stats().items()}
    return JsonResponse({"pid": os.getpid(), "pools": stats})


def read(request: HttpRequest) -> JsonResponse:
    last = Item.objects.order_by("-pk").values_list("pk", flat=True).first()
    return JsonResponse({"count": Item.objects.count(), "last": last})


def write(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    item = Item.objects.create(name="sync", value=os.getpid())
    return JsonResponse({"id": item.pk})


async def aread(request: HttpRequest) -> JsonResponse:
    count = await Item.objects.acount()
    last = await Item.objects.order_by("-pk").afirst()
    if last is not None:
        last = await Item.objects.aget(pk=last.pk)
    return JsonResponse({"count": count, "last": last.pk if last else None})


async def awrite(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    item = await Item.objects.acreate(name="async", value=os.getpid())
    return JsonResponse({"id": item.pk})
