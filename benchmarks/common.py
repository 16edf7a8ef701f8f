"""What the benchmarks share: servers, bench databases, DATABASES entries, statistics."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

ENGINES = ("postgresql", "mysql")
#: TLS variant -> (test-server user, TLS mode). ``plain`` may log in without TLS;
#: ``app`` must use TLS.
TLS_VARIANTS: dict[str, tuple[str, str]] = {
    "off": ("plain", "disable"),
    "verify-full": ("app", "verify-full"),
}

#: configuration -> what it is (for tables and charts)
CONFIGS: dict[str, str] = {
    "conn_per_request": "stock Django, CONN_MAX_AGE=0 (new connection per request)",
    "persistent": "stock Django, CONN_MAX_AGE=None (persistent connection per thread)",
    "persistent_control": (
        "stock Django, CONN_MAX_AGE=None again, in a process of its own: the A/A control "
        "(its ratio to persistent shows the benchmark's own noise)"
    ),
    "django_pool": "Django's native pool (psycopg_pool, min_size=max_size=threads)",
    "dj_db_conn_pool": "django-db-connection-pool (pool_size=threads, defaults otherwise)",
    "multipool": "multipool (pool_size=threads, defaults otherwise)",
    "multipool_baseline": (
        "multipool as of another commit (--baseline REF), same settings, in a process of "
        "its own: what a change did, measured in the same run"
    ),
}
#: configurations that run multipool's backends (of this checkout or of the baseline)
MULTIPOOL_CONFIGS = ("multipool", "multipool_baseline")
#: Django's native pool (PostgreSQL's only), and its A/A control in the app-server benchmark
NATIVE_POOL_CONFIGS = ("django_pool", "django_pool_control")
#: configurations that exist only for some engines
ENGINE_CONFIGS: dict[str, tuple[str, ...]] = {
    "postgresql": tuple(c for c in CONFIGS if c != "multipool_baseline"),
    "mysql": tuple(c for c in CONFIGS if c not in ("django_pool", "multipool_baseline")),
}
LABELS: dict[str, str] = {
    "conn_per_request": "Django CONN_MAX_AGE=0",
    "persistent": "Django CONN_MAX_AGE=None",
    "persistent_control": "Django CONN_MAX_AGE=None (A/A control)",
    "django_pool": "Django native pool",
    "dj_db_conn_pool": "django-db-connection-pool",
    "multipool": "multipool",
    "multipool_baseline": "multipool (baseline commit)",
}


#: configurations that keep a connection per wrapper: under the asgi shape, one per request
PERSISTENT = ("persistent", "persistent_control")
#: shape -> the configuration every other is compared with: ``thread`` (a wrapper
#: serves request after request), ``asgi`` (a new wrapper per request)
SHAPE_REFERENCES = {"thread": "persistent", "asgi": "django_pool"}


def check_shape_configs(shape: str, configs: Sequence[str]) -> None:
    """Refuse persistent connections under the ``asgi`` shape (a new wrapper per
    request): each request would leave its connection open."""
    if shape == "asgi" and set(configs) & set(PERSISTENT):
        raise ValueError("the asgi shape makes a wrapper per request: persistent connections "
                         "would leak one connection per request; compare pools only")


def add_shape_arguments(
    parser: Any, known: Iterable[str], defaults: Mapping[str, Sequence[str]]
) -> None:
    """``--configs`` and ``--shape`` of a benchmark with the ``thread`` and ``asgi``
    shapes; ``defaults``: shape -> the configurations it runs without ``--configs``."""
    parser.add_argument(
        "--configs",
        default=None,
        help=f"subset of {','.join(known)} (default: "
        + "; ".join(f"{shape}: {','.join(c)}" for shape, c in defaults.items()) + ")",
    )
    parser.add_argument(
        "--shape", choices=tuple(defaults), default="thread",
        help="thread: a wrapper serves request after request (WSGI); "
        "asgi: a new wrapper per request, as under an ASGI server",
    )


def available_configs(engine: str) -> tuple[str, ...]:
    """The configurations of ``engine`` this installation can run (Django's native
    pool needs Django 5.1+)."""
    import django

    configs = ENGINE_CONFIGS[engine]
    if django.VERSION < (5, 1):
        configs = tuple(c for c in configs if c != "django_pool")
    return configs


BENCH_TABLE = "bench_item"
BENCH_ROWS = 1000

_VERSIONED = (
    "Django",
    "SQLAlchemy",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "mysqlclient",
    "django-db-connection-pool",
    "multipool",
)


# -- environment ---------------------------------------------------------------------


def package_versions(names: Iterable[str] = _VERSIONED) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    load: list[float] | None = None
    with contextlib.suppress(OSError, AttributeError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg": load,
        "packages": package_versions(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- statistics ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values``, nearest-rank on sorted data."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def median_ci(
    values: Iterable[float | None], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """A bootstrap confidence interval for the median of ``values`` (percentile
    method, seeded: the same values always give the same interval)."""
    present = [v for v in values if v is not None]
    if len(present) < 2:
        return None
    rng = random.Random(seed)
    n = len(present)
    medians = sorted(
        statistics.median(rng.choices(present, k=n)) for _ in range(resamples)
    )
    return _percentile_interval(medians, level)


def _percentile_interval(medians: Sequence[float], level: float) -> tuple[float, float]:
    """The ``level`` interval of sorted bootstrap medians (percentile method)."""
    tail = (1 - level) / 2
    last = len(medians) - 1
    return float(medians[int(tail * last)]), float(medians[math.ceil((1 - tail) * last)])


def balanced_orders(items: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of ``items`` in each of ``rounds`` rounds: the rows of a
    Williams design, repeated. Over each full cycle of rows (``len(items)``
    rows, twice that for an odd count) every item runs in every position
    equally often and follows every other item equally often, so neither a
    slot in the round nor what ran just before (a server busy closing 1,000
    connections, say) favours one configuration."""
    n = len(items)
    if n == 0:
        return [[] for _ in range(rounds)]
    first: list[int] = []
    low, high = 0, n - 1
    for i in range(n):  # 0, n-1, 1, n-2, ...: every difference once
        if i % 2 == 0:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    rows = [[(x + shift) % n for x in first] for shift in range(n)]
    if n % 2:
        rows += [row[::-1] for row in rows]
    return [[items[i] for i in rows[r % len(rows)]] for r in range(rounds)]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def clustered_median_ci(
    clusters: Sequence[Sequence[float | None]], *, level: float = 0.95, resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """A bootstrap confidence interval for the median of values that come in
    clusters -- rounds served by one pair of application-server processes, whose
    memory layout and hash seed move every round of the pair alike: each resample
    draws clusters with replacement, then values within each drawn cluster. With
    one cluster it is :func:`median_ci`."""
    present = [[v for v in c if v is not None] for c in clusters]
    present = [c for c in present if c]
    if len(present) == 1:
        return median_ci(present[0], level=level, resamples=resamples, seed=seed)
    if not present:
        return None
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(
            [v for c in rng.choices(present, k=len(present)) for v in rng.choices(c, k=len(c))]
        )
        for _ in range(resamples)
    )
    return _percentile_interval(medians, level)


def round_ratios(
    rounds: Sequence[Mapping[str, float]], numerator: str, denominator: str,
    block_sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The ratio of two configurations' throughput in each round, their median,
    and a bootstrap 95 % confidence interval of that median; with ``block_sizes``
    (the rounds of each process pair, in order) the interval resamples the pairs
    too (:func:`clustered_median_ci`), and each pair's median is reported."""
    per_round = [ratio(r.get(numerator), r.get(denominator)) for r in rounds]
    sizes = list(block_sizes) if block_sizes else [len(per_round)]
    bounds = list(itertools.accumulate(sizes, initial=0))
    clusters = [per_round[lo:hi] for lo, hi in itertools.pairwise(bounds)]
    ci = clustered_median_ci(clusters)
    result = {
        "median": rounded(median(per_round)),
        "ci95": None if ci is None else [rounded(ci[0]), rounded(ci[1])],
        "rounds": [rounded(x) for x in per_round],
    }
    if len(clusters) > 1:
        result["per_process"] = [rounded(median(c)) for c in clusters]
    return result


def round_blocks(rounds: int, processes: int) -> list[range]:
    """Split ``rounds`` into ``processes`` consecutive blocks, as even as can be."""
    processes = max(1, min(processes, rounds))
    bounds = [round(i * rounds / processes) for i in range(processes + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(processes)]


def fmt(value: float | None, spec: str = ".2f") -> str:
    """``value`` formatted for a table; ``-`` for ``None``."""
    return "-" if value is None else format(value, spec)


def fmt_ci(ci: Sequence[float] | None) -> str:
    """A confidence interval for a table: ``low to high``, or ``-``."""
    return "-" if not ci else f"{ci[0]:.2f} to {ci[1]:.2f}"


def configure_django(databases: Mapping[str, Mapping[str, Any]]) -> None:
    """Set up Django in a benchmark process (once per process) with ``databases``."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="multipool-benchmark",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DATABASES={alias: dict(entry) for alias, entry in databases.items()},
        INSTALLED_APPS=[],
    )
    django.setup()


def parse_selection(
    parser: Any, engines: str, tls: str, configs: str | None
) -> tuple[list[str], list[str], list[str] | None]:
    """The ``--engines``, ``--tls`` and ``--configs`` options as lists; an
    unknown name is a usage error (``parser.error``)."""
    chosen = (
        [e for e in engines.split(",") if e],
        [t for t in tls.split(",") if t],
        [c for c in configs.split(",") if c] if configs else None,
    )
    kinds: tuple[tuple[Container[str], str], ...] = (
        (ENGINES, "engine"),
        (TLS_VARIANTS, "TLS variant"),
        (CONFIGS, "configuration"),
    )
    for value, (known, what) in zip(chosen, kinds, strict=True):
        unknown = [v for v in value or () if v not in known]
        if unknown:
            parser.error(f"unknown {what}: {', '.join(unknown)}")
    return chosen


def write_report(out: Path, name: str, results: Mapping[str, Any], text: str) -> Path:
    """Write ``<name>.json`` (``results``) and ``<name>.md`` (``text``) to ``out``,
    print ``text`` and where the results went; the JSON file's path."""
    path = write_json(out / f"{name}.json", results)
    (out / f"{name}.md").write_text(text + "\n")
    print(text)
    print(f"\nresults: {path}", file=sys.stderr)
    return path


def worker_env(code_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a benchmark worker process: this checkout importable
    (``code_dir`` first: a directory holding another version of ``multipool``),
    no settings module of the caller's (the worker configures Django itself)."""
    env = dict(os.environ)
    first = [str(code_dir)] if code_dir is not None else []
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (*first, str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(extra)
    return env


def bench_groups(
    servers: Mapping[str, Any], configs: Sequence[str], tls_variants: Sequence[str]
) -> Iterator[tuple[str, Any, str, list[str]]]:
    """``(engine, server, tls_variant, configs)`` for each group, engines in
    :data:`ENGINES` order, ``configs`` narrowed to those the engine has.
    Each configuration's database is created before an engine's first group
    and dropped after its last."""
    for engine in ENGINES:
        server = servers.get(engine)
        if server is None:
            continue
        chosen = [c for c in configs if c in available_configs(engine)]
        for config in chosen:
            create_bench_database(server, database_name(config))
        try:
            for tls_variant in tls_variants:
                yield engine, server, tls_variant, chosen
        finally:
            for config in chosen:
                drop_bench_database(server, database_name(config))


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


# -- servers -------------------------------------------------------------------------


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    if value is None:
        yield
        return
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextlib.contextmanager
def open_servers(
    engines: Sequence[str], *, postgres_url: str | None = None, mysql_url: str | None = None
) -> Iterator[dict[str, Any]]:
    """Start (or, given an admin URL, attach to) the test server of each engine."""
    from multipool.testing import start_mysql, start_postgres
    from multipool.testing.servers import ENV_MYSQL_URL, ENV_POSTGRES_URL

    servers: dict[str, Any] = {}
    try:
        for engine in engines:
            if engine == "postgresql":
                with _env(ENV_POSTGRES_URL, postgres_url):
                    servers[engine] = start_postgres()
            elif engine == "mysql":
                with _env(ENV_MYSQL_URL, mysql_url):
                    servers[engine] = start_mysql()
            else:
                raise ValueError(f"unknown engine {engine!r}")
            print(servers[engine].summary(), file=sys.stderr)
        yield servers
    finally:
        for server in servers.values():
            server.close()


@dataclass
class ServerRef:
    """What the micro-benchmark needs of a test server, as plain data: it can cross
    into another process (its URLs hold passwords: pass it on stdin, not argv)."""

    engine: str
    flavor: str
    version: str
    backend: str
    host: str
    database: str
    urls: dict[str, str] = field(repr=False)

    @classmethod
    def of(cls, server: Any) -> ServerRef:
        return cls(
            engine=server.engine,
            flavor=server.flavor,
            version=server.version,
            backend=server.backend,
            host=server.host,
            database=server.database,
            urls={f"{u}|{t}": server.url(u, tls=t) for u, t in TLS_VARIANTS.values()},
        )

    def url(self, user: str, *, tls: str, database: str | None = None) -> str:
        if database not in (None, self.database):
            raise ValueError(f"ServerRef knows database {self.database!r} only")
        return self.urls[f"{user}|{tls}"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- CPU placement -----------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Which CPUs the client (worker processes) and the server run on.

    On a small machine the scheduler otherwise moves client threads and
    server backends between the same few CPUs, and where they land decides
    how often a reply wakes a thread on another CPU: measured on 2 vCPUs,
    the same configuration ran at 5,000 or 11,000 requests/s from one round
    to the next. Apart, as the application and the database are in
    production, a round repeats within a few percent.
    """

    client: frozenset[int]
    server: frozenset[int]

    @classmethod
    def split(cls) -> Placement | None:
        """The server on the upper half of this process's CPUs, the client on
        the lower half; ``None`` with a single CPU or no affinity support."""
        getter = getattr(os, "sched_getaffinity", None)
        if getter is None:
            return None
        cpus = sorted(getter(0))
        if len(cpus) < 2:
            return None
        half = len(cpus) // 2
        return cls(client=frozenset(cpus[:half]), server=frozenset(cpus[half:]))

    def to_dict(self) -> dict[str, list[int]]:
        return {"client": sorted(self.client), "server": sorted(self.server)}

    def pin_servers(self, servers: Mapping[str, Any]) -> dict[str, Any]:
        """Move each server multipool started to the server CPUs (see
        :func:`pin_server`); the placement as the results record it."""
        pinned = {engine: pin_server(server, self.server) for engine, server in servers.items()}
        return {**self.to_dict(), "servers_pinned": pinned}


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def pin_server(server: Any, cpus: Iterable[int]) -> bool:
    """Move a locally started server (every process and thread; later
    backends inherit it) to ``cpus``. ``False`` for a server multipool did
    not start (attached by URL, or in a container)."""
    pid = getattr(getattr(server, "controller", None), "pid", None)
    if pid is None:
        return False
    return pin_process_tree(pid, cpus)


def pin_process_tree(pid: int, cpus: Iterable[int]) -> bool:
    """Move process ``pid`` and its descendants, every thread of each, to ``cpus``
    (threads and processes they start later inherit it); ``False`` without
    affinity support."""
    if not hasattr(os, "sched_setaffinity"):
        return False
    cpu_set = set(cpus)
    for process in _process_tree(pid):
        try:
            tasks = [int(t) for t in os.listdir(f"/proc/{process}/task")]
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(task, cpu_set)
    return True


def server_info(server: Any) -> dict[str, Any]:
    return {
        "engine": server.engine,
        "flavor": server.flavor,
        "version": server.version,
        "backend": server.backend,
        "host": server.host,
    }


def create_bench_database(server: Any, name: str, rows: int = BENCH_ROWS) -> None:
    """(Re)create database ``name`` with table ``bench_item(id primary key, name)``,
    readable by the ``app`` and ``plain`` users."""
    server.drop_database(name)
    server.create_database(name)
    users = [u for u in ("app", "plain") if u in server.users]
    if server.engine == "postgresql":
        statements = [
            (f"CREATE TABLE {BENCH_TABLE} (id integer PRIMARY KEY, name text)", None),
            (
                f"INSERT INTO {BENCH_TABLE} SELECT g, 'item ' || g FROM generate_series(1, %s) g",
                (rows,),
            ),
            (f"ANALYZE {BENCH_TABLE}", None),
            *((f'GRANT SELECT ON {BENCH_TABLE} TO "{u}"', None) for u in users if u != "app"),
        ]
        conn = _pg_connect(server.connect_params("app", database=name))
        try:
            with contextlib.closing(conn.cursor()) as cursor:
                for sql, params in statements:
                    cursor.execute(sql, params)
        finally:
            conn.close()
    else:
        server.query(
            f"CREATE TABLE `{name}`.{BENCH_TABLE} (id INT PRIMARY KEY, name VARCHAR(40))"
        )
        values = ", ".join(f"({i}, 'item {i}')" for i in range(1, rows + 1))
        server.query(f"INSERT INTO `{name}`.{BENCH_TABLE} VALUES {values}")
        for user in users:
            server.query(f"GRANT SELECT ON `{name}`.* TO %s@'%%'", (user,))


def _pg_connect(params: Mapping[str, Any]) -> Any:
    """An autocommit connection with psycopg 3, or psycopg2 where only that imports."""
    try:
        import psycopg
    except ImportError:
        import psycopg2

        conn = psycopg2.connect(**params)
        conn.autocommit = True
        return conn
    return psycopg.connect(**params, autocommit=True)


def drop_bench_database(server: Any, name: str) -> None:
    with contextlib.suppress(Exception):
        server.drop_database(name)


# -- DATABASES entries ---------------------------------------------------------------


def multipool_environ(
    server: Any, *, user: str, tls: str, database: str, **env: Any
) -> dict[str, str]:
    """The environment variables of a multipool configuration."""
    environ = {"DATABASE_URL": server.url(user, tls=tls, database=database)}
    environ.update({f"DATABASE_{k}": str(v) for k, v in env.items()})
    return environ


def multipool_entry(server: Any, *, user: str, tls: str, database: str, **env: Any) -> dict:
    """A multipool DATABASES entry built as users build it: from environment variables."""
    return entry_from_environ(
        multipool_environ(server, user=user, tls=tls, database=database, **env)
    )


def entry_from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """``DATABASES["default"]`` as the imported ``multipool`` reads ``environ``: in a
    baseline worker, the baseline's code reads the same variables its own way."""
    import multipool

    saved = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)
    try:
        return dict(multipool.databases()["default"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def stock_entry(mp_entry: Mapping[str, Any], vendor: str) -> dict[str, Any]:
    """Stock Django's entry for the same server, user and TLS settings as ``mp_entry``."""
    from multipool.config import POOL_OPTION_KEYS

    entry = {
        k: v for k, v in mp_entry.items() if k in ("NAME", "USER", "PASSWORD", "HOST", "PORT")
    }
    entry["ENGINE"] = f"django.db.backends.{vendor}"
    entry["OPTIONS"] = {
        k: v for k, v in mp_entry.get("OPTIONS", {}).items() if k not in POOL_OPTION_KEYS
    }
    return entry


def config_entry(
    config: str,
    server: Any,
    *,
    user: str,
    tls: str,
    database: str,
    threads: int,
    max_overflow: int = 5,
) -> dict[str, Any]:
    """The DATABASES entry of one benchmark configuration."""
    vendor = server.engine
    environ = multipool_environ(
        server, user=user, tls=tls, database=database, POOL_SIZE=threads, MAX_OVERFLOW=max_overflow
    )
    mp = entry_from_environ(environ)
    if config in MULTIPOOL_CONFIGS:
        return mp
    entry = stock_entry(mp, vendor)
    if config == "conn_per_request":
        entry["CONN_MAX_AGE"] = 0
    elif config in ("persistent", "persistent_control"):
        entry["CONN_MAX_AGE"] = None
    elif config == "django_pool":
        if vendor != "postgresql":
            raise ValueError("Django's native pool exists for PostgreSQL only")
        entry["CONN_MAX_AGE"] = 0
        entry["OPTIONS"]["pool"] = {"min_size": threads, "max_size": threads}
    elif config == "dj_db_conn_pool":
        entry["ENGINE"] = f"dj_db_conn_pool.backends.{vendor}"
        entry["CONN_MAX_AGE"] = 0
        entry["POOL_OPTIONS"] = {"POOL_SIZE": threads, "MAX_OVERFLOW": max_overflow}
    else:
        raise ValueError(f"unknown configuration {config!r}")
    return entry


def config_environ(
    config: str, server: Any, *, user: str, tls: str, database: str, threads: int,
    max_overflow: int = 5,
) -> dict[str, str] | None:
    """The environment variables behind a multipool configuration's entry (None for
    the others): what a worker running another multipool reads again."""
    if config not in MULTIPOOL_CONFIGS:
        return None
    return multipool_environ(
        server, user=user, tls=tls, database=database, POOL_SIZE=threads, MAX_OVERFLOW=max_overflow
    )


def database_name(config: str) -> str:
    return f"mpbench_{config}"


# -- server-side counters ------------------------------------------------------------


def server_sessions(server: Any, databases: Sequence[str]) -> dict[str, int] | None:
    """PostgreSQL: sessions ever established per database (``pg_stat_database.sessions``,
    PostgreSQL 14+; flushed by each backend within about a second). ``None`` elsewhere."""
    if server.engine != "postgresql" or getattr(server, "server_version_num", 0) < 140000:
        return None
    rows = server.query(
        "SELECT datname, sessions FROM pg_stat_database WHERE datname = ANY(%s)",
        (list(databases),),
    )
    return {str(name): int(count) for name, count in rows}


def settled_sessions(server: Any, databases: Sequence[str]) -> dict[str, int] | None:
    """:func:`server_sessions` once the counters stopped moving (backends flush late)."""
    last = server_sessions(server, databases)
    if last is None:
        return None
    time.sleep(1.2)
    for _ in range(20):
        now = server_sessions(server, databases)
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    return last


def connections_counter(server: Any) -> int | None:
    """MySQL/MariaDB: connection attempts since the server started (``Connections``)."""
    if server.engine != "mysql":
        return None
    rows = server.query("SHOW GLOBAL STATUS LIKE 'Connections'")
    return int(rows[0][1])
