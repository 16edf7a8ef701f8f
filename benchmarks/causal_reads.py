"""Causal reads against a time pin and no pinning: a read-mostly request mix.

Each of ``--clients`` threads is one client with its own cookies (Django's test
client, through ``PinningMiddleware`` and ``PrimaryReplicaRouter``), against a
real primary and its streaming replica over TLS, pausing ``--think-ms`` between
requests as a user does. One request in ten is a ``POST`` that inserts a row of
the client's own; the others are ``GET``\\s that count the client's rows. The
sessions commit synchronously (the test server's default is asynchronous,
which delays what a replica receives by up to the WAL writer's 200 ms).
Configurations, interleaved round by round in one process:

* ``causal``: the default -- positions in a signed cookie;
* ``time-pin``: ``MULTIPOOL_PIN_SECONDS = 15``, positions off;
* ``no-pin``: nothing carried across requests (reads may be stale).

Per configuration: requests/s (median of the rounds, and its ratio to
``no-pin``), the share of ``GET``\\s a replica served, and stale reads -- a
``GET`` that counted fewer rows than its client had written.

    python -m benchmarks.causal_reads --clients 16 --think-ms 20 --requests 100 --rounds 9
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    machine_info,
    median,
    package_versions,
    ratio,
    rounded,
    write_report,
)

CONFIGS: Mapping[str, Mapping[str, Any]] = {
    "causal": {"MULTIPOOL_CAUSAL_READS": True, "MULTIPOOL_PIN_SECONDS": 0},
    "time-pin": {"MULTIPOOL_CAUSAL_READS": False, "MULTIPOOL_PIN_SECONDS": 15},
    "no-pin": {"MULTIPOOL_CAUSAL_READS": False, "MULTIPOOL_PIN_SECONDS": 0},
}
TABLE = "causal_bench"
WRITE_EVERY = 10


# -- the application -------------------------------------------------------------------


def _model() -> Any:
    """An unmanaged model: what the router needs to route the raw SQL below."""
    from django.db import models

    class Row(models.Model):
        client = models.CharField(max_length=40)

        class Meta:
            app_label = "causalbench"
            db_table = TABLE
            managed = False

    return Row


def _views(row_model: Any) -> list[Any]:
    from django.db import connections, router
    from django.http import HttpRequest, JsonResponse
    from django.urls import path

    def write(request: HttpRequest) -> JsonResponse:
        alias = router.db_for_write(row_model)
        with connections[alias].cursor() as cursor:
            cursor.execute(f"INSERT INTO {TABLE} (client) VALUES (%s)", [request.POST["c"]])
        return JsonResponse({"db": alias})

    def count(request: HttpRequest) -> JsonResponse:
        alias = router.db_for_read(row_model)
        with connections[alias].cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {TABLE} WHERE client = %s", [request.GET["c"]])
            (rows,) = cursor.fetchone()
        return JsonResponse({"db": alias, "rows": rows})

    return [path("write/", write), path("count/", count)]


urlpatterns: list[Any] = []


def _sync_commit(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-c%20synchronous_commit%3Don"


def configure(primary: Any, replica: Any) -> tuple[str, str]:
    """Django with the primary as ``default`` and the replica as ``replica1``."""
    import django
    from django.conf import settings

    import multipool

    environ = {
        "DATABASE_URL": _sync_commit(primary.url("app")),
        "DATABASE_REPLICAS": "replica1",
        "REPLICA1_DATABASE_URL": _sync_commit(replica.url("app")),
        "DATABASE_POOL_SIZE": "8",
    }
    settings.configure(
        DEBUG=False,
        SECRET_KEY="multipool-benchmark-causal",
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        DATABASES=multipool.databases(source=environ),
        DATABASE_ROUTERS=["multipool.routers.PrimaryReplicaRouter"],
        MIDDLEWARE=["multipool.middleware.PinningMiddleware"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
    )
    django.setup()
    urlpatterns[:] = _views(_model())
    return "default", "replica1"


def create_table(primary: Any, replica: Any) -> None:
    """The benchmark's table, made by ``app`` in its database, replayed by the replica."""
    import psycopg

    with psycopg.connect(**primary.connect_params("app"), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, client text NOT NULL)")
        conn.execute(f"CREATE INDEX ON {TABLE} (client)")
    replica.wait_for_replay()


# -- one round -------------------------------------------------------------------------


def client_run(
    name: str, requests: int, think: float, replica: str, tally: dict[str, int]
) -> None:
    from django.core.signals import request_finished
    from django.test import Client

    client = Client()
    written = 0
    for number in range(requests):
        if number % WRITE_EVERY == 0:
            response = client.post("/write/", {"c": name})
            written += 1
        else:
            response = client.get("/count/", {"c": name})
            body = json.loads(response.content)
            tally["reads"] += 1
            tally["replica_reads"] += body["db"] == replica
            tally["stale"] += body["rows"] < written
        tally["errors"] += response.status_code != 200
        request_finished.send(sender=None)  # the test client keeps connections; a server does not
        time.sleep(think)  # the user reads the page


def run_round(
    config: str, clients: int, requests: int, think: float, replica: str, round_no: int
) -> dict:
    from django.test import override_settings

    tallies = [dict(reads=0, replica_reads=0, stale=0, errors=0) for _ in range(clients)]
    names = [f"{config}-{round_no}-{i}-{time.monotonic_ns()}" for i in range(clients)]
    with override_settings(**CONFIGS[config]):
        threads = [
            threading.Thread(
                target=client_run, args=(names[i], requests, think, replica, tallies[i])
            )
            for i in range(clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    total = {key: sum(t[key] for t in tallies) for key in tallies[0]}
    return {"requests_per_s": clients * requests / elapsed, **total}


# -- the whole run ---------------------------------------------------------------------


def summarize(rounds: Mapping[str, list[dict]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    base = median(r["requests_per_s"] for r in rounds["no-pin"])
    for config, results in rounds.items():
        reads = sum(r["reads"] for r in results)
        rate = median(r["requests_per_s"] for r in results)
        out[config] = {
            "requests_per_s": rounded(rate, 1),
            "x_no_pin": rounded(ratio(rate, base)),
            "replica_share": rounded(sum(r["replica_reads"] for r in results) / max(reads, 1)),
            "stale_reads": sum(r["stale"] for r in results),
            "reads": reads,
            "errors": sum(r["errors"] for r in results),
        }
    return out


def markdown(summary: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any]) -> str:
    lines = [
        f"{params['clients']} clients x {params['requests']} requests x {params['rounds']} "
        f"rounds, {params['think_ms']} ms between a client's requests, 1 write in "
        f"{WRITE_EVERY}, PostgreSQL primary + streaming replica, TLS verify-full",
        "",
        "| configuration | req/s (median) | x no-pin | reads served by the replica "
        "| stale reads | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config, s in summary.items():
        lines.append(
            f"| {config} | {s['requests_per_s']:.0f} | {s['x_no_pin']:.2f} "
            f"| {100 * s['replica_share']:.1f} % | {s['stale_reads']} of {s['reads']} "
            f"| {s['errors']} |"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def servers() -> Iterator[tuple[Any, Any]]:
    from multipool.testing import start_postgres, start_postgres_replica

    with start_postgres() as primary, start_postgres_replica(primary) as replica:
        yield primary, replica


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.causal_reads",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--think-ms", type=float, default=20.0, help="pause between requests")
    parser.add_argument("--requests", type=int, default=100, help="per client per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="causal_reads")
    args = parser.parse_args(argv)
    params = {"clients": args.clients, "requests": args.requests, "rounds": args.rounds,
              "think_ms": args.think_ms}
    think = args.think_ms / 1000
    with servers() as (primary, replica):
        create_table(primary, replica)
        _, replica_alias = configure(primary, replica)
        order = list(CONFIGS)
        rounds: dict[str, list[dict]] = {c: [] for c in order}
        run_round("no-pin", args.clients, 10, think, replica_alias, -1)  # warm-up
        for number in range(args.rounds):
            for config in order[number % len(order):] + order[: number % len(order)]:
                rounds[config].append(
                    run_round(config, args.clients, args.requests, think, replica_alias, number)
                )
            print(f"round {number + 1}/{args.rounds}", file=sys.stderr)
        from django.db import connections

        connections.close_all()
    summary = summarize(rounds)
    results = {
        "parameters": params,
        "machine": machine_info(),
        "versions": package_versions(),
        "summary": summary,
        "rounds": rounds,
    }
    write_report(args.out, args.name, results, markdown(summary, params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
