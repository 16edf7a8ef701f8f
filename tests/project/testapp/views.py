from django.http import HttpRequest, JsonResponse

from tests.project.testapp.models import Item


def items(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"count": Item.objects.count()})


def add_item(request: HttpRequest) -> JsonResponse:
    item = Item.objects.create(name=request.GET.get("name", "item"))
    return JsonResponse({"id": item.pk})
