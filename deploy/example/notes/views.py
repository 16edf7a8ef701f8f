"""A read view, a write view and two health endpoints.

* ``GET /notes/`` reads from a replica (``PrimaryReplicaRouter``), or from the
  primary when this client wrote a moment ago (``PinningMiddleware``);
* ``POST /notes/`` writes a note to the primary and an audit entry to ``legacy``;
* ``GET /healthz`` (liveness) reports this process's pools without touching a database;
* ``GET /readyz`` (readiness) runs ``SELECT 1`` on every alias, through the pools.
"""

from __future__ import annotations

import json
import os
import socket

from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from multipool.pools import manager

from .models import AuditEntry, Note

MAX_TEXT = Note._meta.get_field("text").max_length


def _pool_stats() -> dict[str, dict[str, object]]:
    return {alias: stats.as_dict() for alias, stats in manager.stats().items()}


@require_GET
def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {
            "service": "multipool example",
            "endpoints": {
                "GET /notes/": "latest notes (read from a replica)",
                "POST /notes/": 'add a note: {"text": "..."} (written to the primary)',
                "GET /healthz": "liveness: pool statistics of this worker process",
                "GET /readyz": "readiness: SELECT 1 on every database alias",
            },
        }
    )


@csrf_exempt  # a JSON API without sessions or cookies-based auth
@require_http_methods(["GET", "POST"])
def notes(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        return _add_note(request)
    queryset = Note.objects.all()[:20]
    items = list(queryset)
    database = items[0]._state.db if items else queryset.db
    return JsonResponse({"database": database, "notes": [n.as_dict() for n in items]})


def _add_note(request: HttpRequest) -> JsonResponse:
    if request.content_type == "application/json":
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            return JsonResponse({"error": "the body is not JSON"}, status=400)
        text = payload.get("text") if isinstance(payload, dict) else None
    else:
        text = request.POST.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > (MAX_TEXT or 500):
        return JsonResponse({"error": f"text: 1 to {MAX_TEXT} characters"}, status=400)
    note = Note.objects.create(text=text.strip())  # the router sends it to the primary
    AuditEntry.objects.create(action="note.created", note_id=note.id)  # to legacy
    return JsonResponse(
        {"database": note._state.db, "note": note.as_dict()},
        status=201,
    )


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Pool statistics of this worker, no database access."""
    return JsonResponse(
        {"status": "ok", "host": socket.gethostname(), "pid": os.getpid(), "pools": _pool_stats()}
    )


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: every alias answers ``SELECT 1`` (a checkout from its pool)."""
    checks: dict[str, str] = {}
    for alias in connections:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            checks[alias] = "ok"
        except Exception as exc:  # report the kind of failure, never the message
            checks[alias] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "databases": checks, "pools": _pool_stats()},
        status=200 if ready else 503,
    )
