"""Django views of multipool: :func:`metrics`, the pools' metrics for Prometheus.

::

    # urls.py
    from django.urls import path

    import multipool.views

    urlpatterns = [path("metrics", multipool.views.metrics)]

The view serves ``prometheus_client``'s exposition (``multipool[prometheus]``):
with ``PROMETHEUS_MULTIPROC_DIR`` set, the metrics of every process of the
application server, summed; else this process's (see ``docs/metrics.md``). It
checks no permission: serve it where only the scraper reaches it, or wrap it
(``user_passes_test``, a network rule).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from multipool.metrics.prometheus import MetricsUnavailable, exposition

__all__ = ["metrics"]


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """The pools' metrics in Prometheus' text format (OpenMetrics if asked for)."""
    try:
        body, content_type = exposition(request.headers.get("Accept"))
    except MetricsUnavailable as exc:
        return HttpResponse(f"{exc}\n", status=500, content_type="text/plain; charset=utf-8")
    return HttpResponse(body, content_type=content_type)
