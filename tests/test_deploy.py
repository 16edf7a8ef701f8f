"""The deploy files (``deploy/``), kept honest without a Docker engine; and the PgBouncer
test harness (``multipool.testing.pgbouncer``, fixture ``pgbouncer_server``).

Without Docker nothing here builds an image or starts a container. Instead:

* the variable lists are regenerated from ``ENV_KEYS`` and compared;
* every multipool-looking variable (``*DATABASE_*``) is one multipool reads for the
  declared aliases;
* the compose file and the Kubernetes manifests parse and pass their JSON schemas
  (``check-jsonschema``'s compose-spec, ``kubernetes-validate``), and every file they
  or the Dockerfiles reference exists;
* the shell scripts pass ``sh -n``;
* the example app loads its settings from ``.env.example`` and passes
  ``manage.py check --deploy`` with no ``multipool.*`` message;
* the PgBouncer image's ``pgbouncer.ini`` and entrypoint run for real, with the
  local pgbouncer binary, in front of the PostgreSQL test server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from multipool.certs import generate_dev_certs
from multipool.config import ENV_KEYS, env_prefix, read_environment
from multipool.testing.servers import free_port, in_ci

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S = DEPLOY / "k8s"
EXAMPLE = DEPLOY / "example"
PGBOUNCER_INI = DEPLOY / "pgbouncer" / "pgbouncer.ini"
PGBOUNCER_ENTRYPOINT = DEPLOY / "pgbouncer" / "entrypoint.sh"

#: what "multipool certs init certs/" writes (the compose file mounts some of them)
GENERATED_CERTS = {"ca.crt", "ca.key", "server.crt", "server.key"}
#: host names the deploy README tells "multipool certs init" to put in the certificate
CERT_HOSTS = ("pgbouncer", "postgres-primary", "postgres-replica", "mysql")

MULTIPOOL_VAR = re.compile(r"(?<![A-Za-z0-9_])(?:[A-Z][A-Z0-9_]*_)?DATABASE_[A-Z0-9_]+")
#: Django settings that look like multipool variables
NOT_MULTIPOOL = {"DATABASE_ROUTERS"}


def _need(module: str, what: str) -> None:
    """Skip without ``module``, or fail under ``CI=true`` (the dev extra installs it)."""
    if importlib.util.find_spec(module) is None:
        message = f"{what} needs the {module!r} package (pip install -e '.[dev]')"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


# -- .env files as Docker Compose reads them ------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return arg
            return value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise KeyError(f"{name} is required: {arg}")
            return value
        if value is None:
            raise KeyError(f"{name} is not set")
        return value

    return _INTERPOLATION.sub(replace, value)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines; double-quoted and bare values interpolated from earlier keys."""
    env: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        assert match, f"{path.name}:{number}: not KEY=value: {raw!r}"
        key, value = match.groups()
        assert key not in env, f"{path.name}:{number}: {key} is set twice"
        if len(value) >= 2 and value[0] == value[-1] == "'":
            env[key] = value[1:-1]
        else:
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            else:
                assert " #" not in value, f"{path.name}:{number}: quote values with comments"
            env[key] = interpolate(value, env)
    return env


def declared_aliases(env: dict[str, str]) -> dict[str, str]:
    """``{alias: "primary" | "replica"}`` declared by DATABASE_ALIASES / *_REPLICAS."""
    primaries = ["default", *(a.strip() for a in env.get("DATABASE_ALIASES", "").split(","))]
    roles = {a: "primary" for a in primaries if a}
    for primary in list(roles):
        for replica in env.get(f"{env_prefix(primary)}REPLICAS", "").split(","):
            if replica.strip():
                roles[replica.strip()] = "replica"
    return roles


def allowed_names(roles: dict[str, str]) -> set[str]:
    """Every variable multipool reads for these aliases."""
    names = set()
    for key in ENV_KEYS:
        if key.scope == "global":
            names.add(key.name())
            continue
        for alias, role in roles.items():
            if key.scope == "primary" and role != "primary":
                continue
            names.add(key.name(alias))
    return names


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def roles(example_env: dict[str, str]) -> dict[str, str]:
    return declared_aliases(example_env)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path, doc


# -- generated lists and variable names ----------------------------------------------------


def _generate_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_generate", DEPLOY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_variable_lists_are_current() -> None:
    generate = _generate_module()
    assert ENV_EXAMPLE.read_text() == generate.render_env_example(), (
        "deploy/.env.example is out of date: run python deploy/generate.py"
    )
    assert COMPOSE.read_text() == generate.render_compose(COMPOSE.read_text()), (
        "the x-multipool-env block of deploy/docker-compose.yml is out of date: "
        "run python deploy/generate.py"
    )


def test_env_example_lists_every_variable_multipool_reads(
    example_env: dict[str, str], roles: dict[str, str]
) -> None:
    assert roles == {"default": "primary", "replica1": "replica", "legacy": "primary"}
    listed = {name for name in example_env if MULTIPOOL_VAR.fullmatch(name)}
    assert listed == allowed_names(roles)


@pytest.mark.parametrize(
    "path",
    [
        COMPOSE,
        ENV_EXAMPLE,
        *sorted(K8S.glob("*.yaml")),
        PGBOUNCER_INI,
        DEPLOY / "example" / "exampleproject" / "settings.py",
    ],
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_multipool_variable_names_are_real(path: Path, roles: dict[str, str]) -> None:
    allowed = allowed_names(roles) | NOT_MULTIPOOL
    found = set(MULTIPOOL_VAR.findall(path.read_text()))
    unknown = sorted(found - allowed)
    assert not unknown, (
        f"{path.relative_to(ROOT)} uses {unknown}: not variables multipool reads for the "
        f"aliases {sorted(roles)} (see multipool.config.ENV_KEYS)"
    )


def test_compose_app_gets_every_multipool_variable(
    compose: dict[str, Any], roles: dict[str, str]
) -> None:
    for service in ("app", "migrate"):
        env = compose["services"][service]["environment"]
        assert allowed_names(roles) <= set(env), service


def test_k8s_env_names_are_real(roles: dict[str, str]) -> None:
    allowed = allowed_names(roles)
    seen = set()
    for _, doc in k8s_documents():
        data = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
        for key in data:
            if MULTIPOOL_VAR.fullmatch(key):
                seen.add(key)
                assert key in allowed, key
    # The ConfigMap declares the same aliases as the compose example.
    config = next(d for _, d in k8s_documents() if d["metadata"]["name"] == "multipool-env")
    assert declared_aliases(config["data"]) == roles
    assert {"DATABASE_URL", "REPLICA1_DATABASE_URL", "LEGACY_DATABASE_URL"} <= seen


# -- docker-compose.yml --------------------------------------------------------------------


def test_compose_references_existing_files(compose: dict[str, Any]) -> None:
    problems = []
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = DEPLOY / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get(
                "dockerfile", "Dockerfile"
            )
            if not (context / dockerfile).is_file():
                problems.append(f"{name}: build {context / dockerfile} missing")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and source.startswith((".", "/")) and not (DEPLOY / source).exists():
                problems.append(f"{name}: volume source {source} missing")
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            if source not in compose.get("secrets", {}):
                problems.append(f"{name}: secret {source} is not defined")
        for other in service.get("depends_on", {}):
            if other not in compose["services"]:
                problems.append(f"{name}: depends on unknown service {other}")
        for env_file in service.get("env_file", []):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            if not (DEPLOY / path).is_file():
                problems.append(f"{name}: env_file {path} missing")
    for name, secret in compose.get("secrets", {}).items():
        if "file" in secret:
            path = Path(secret["file"])
            if path.parts[:2] == (".", "certs") or path.parts[0] == "certs":
                if path.name not in GENERATED_CERTS:
                    problems.append(f"secret {name}: {path} is not made by multipool certs init")
            elif not (DEPLOY / path).is_file():
                problems.append(f"secret {name}: file {path} missing")
        else:
            assert "environment" in secret, name
    assert not problems, "\n".join(problems)


def test_compose_interpolations_are_defined(example_env: dict[str, str]) -> None:
    """Every ``${VAR}`` of the compose file has a default or is set in .env.example."""
    text = COMPOSE.read_text()
    missing = []
    for match in _INTERPOLATION.finditer(text):
        if match.group(0) == "$$":
            continue
        name, op = match.group(1), match.group(2)
        if op in (":-", "-"):
            continue
        if name not in example_env:
            missing.append(name)
    for name, secret in yaml.safe_load(text)["secrets"].items():
        if "environment" in secret and secret["environment"] not in example_env:
            missing.append(f"{secret['environment']} (secret {name})")
    assert not missing, f"not in deploy/.env.example: {missing}"


def test_compose_resolves_with_env_example(
    compose: dict[str, Any], example_env: dict[str, str], roles: dict[str, str]
) -> None:
    """What the app container gets, resolved as Compose does: the multipool settings."""
    resolved = yaml.safe_load(interpolate(COMPOSE.read_text(), dict(example_env)))
    env = {k: str(v) for k, v in resolved["services"]["app"]["environment"].items()}
    multipool_env = {k: v for k, v in env.items() if k in allowed_names(roles)}
    assert multipool_env["DATABASE_URL"] == example_env["DATABASE_URL"]
    assert "${" not in multipool_env["DATABASE_URL"]
    migrate = resolved["services"]["migrate"]["environment"]
    assert "@postgres-primary:5432/" in migrate["DATABASE_URL"]
    assert migrate["DATABASE_POOLER"] == "none"


def test_compose_schema(compose: dict[str, Any]) -> None:
    _need("check_jsonschema", "validating docker-compose.yml against the compose-spec schema")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- Dockerfiles and scripts ---------------------------------------------------------------


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].upper() != "COPY":
            continue
        args = [p for p in parts[1:] if not p.startswith("--")]
        if any(p.startswith("--from") for p in parts[1:]):
            continue
        sources += args[:-1]
    return sources


@pytest.mark.parametrize(
    ("dockerfile", "context"),
    [(DEPLOY / "Dockerfile", ROOT), (DEPLOY / "pgbouncer" / "Dockerfile", DEPLOY / "pgbouncer")],
    ids=["app", "pgbouncer"],
)
def test_dockerfile_copies_existing_files(dockerfile: Path, context: Path) -> None:
    sources = _copy_sources(dockerfile)
    assert sources
    missing = [s for s in sources if not (context / s).exists()]
    assert not missing, f"{dockerfile.relative_to(ROOT)} copies missing files: {missing}"


def test_app_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert "**" in ignore
    for source in _copy_sources(DEPLOY / "Dockerfile"):
        top = source.rstrip("/").split("/")[0]
        assert any(line.startswith(f"!{top}") for line in ignore), source


@pytest.mark.parametrize(
    "script",
    sorted(p for p in DEPLOY.rglob("*.sh")),
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_shell_scripts_parse(script: Path) -> None:
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert script.read_text().startswith("#!/bin/sh\n")


# -- Kubernetes ------------------------------------------------------------------------------


def test_k8s_manifests_parse() -> None:
    kinds = [(path.name, doc.get("kind")) for path, doc in k8s_documents()]
    assert {kind for _, kind in kinds} >= {
        "Deployment", "ConfigMap", "Secret", "Service", "Job", "Kustomization",
    }
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    listed = set(kustomization["resources"]) | {"kustomization.yaml"}
    assert {p.name for p in K8S.glob("*.yaml")} == listed


def test_k8s_schema() -> None:
    _need("kubernetes_validate", "validating the Kubernetes manifests against their schemas")
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for _, doc in k8s_documents():
        if doc.get("kind") == "Kustomization":
            continue
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_pod_wiring() -> None:
    docs = {
        (doc["kind"], doc["metadata"]["name"]): doc
        for _, doc in k8s_documents()
        if "metadata" in doc
    }
    pod = docs["Deployment", "multipool-example"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "pgbouncer")
    assert sidecar["restartPolicy"] == "Always"
    app = next(c for c in pod["containers"] if c["name"] == "app")
    for container in (sidecar, app):
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes, mount
    for volume in volumes.values():
        if "secret" in volume:
            assert ("Secret", volume["secret"]["secretName"]) in docs, volume
        if "configMap" in volume:
            assert ("ConfigMap", volume["configMap"]["name"]) in docs, volume
    for source in app["envFrom"]:
        if "secretRef" in source:
            assert ("Secret", source["secretRef"]["name"]) in docs, source
        if "configMapRef" in source:
            assert ("ConfigMap", source["configMapRef"]["name"]) in docs, source
    config = docs["ConfigMap", "multipool-env"]["data"]
    ca_mount = next(m for m in app["volumeMounts"] if m["name"] == "tls-ca")["mountPath"]
    assert config["DATABASE_SSLROOTCERT"] == f"{ca_mount}/ca.crt"
    assert config["DATABASE_POOLER"] == "pgbouncer"
    ini = docs["ConfigMap", "pgbouncer-config"]["data"]["pgbouncer.ini"]
    for setting in ("pool_mode = transaction", "client_tls_sslmode = require",
                    "server_tls_sslmode = verify-full", "listen_addr = 127.0.0.1"):
        assert setting in ini
    url = docs["Secret", "multipool-db"]["stringData"]["DATABASE_URL"]
    assert "@127.0.0.1:6432/" in url
    job = docs["Job", "multipool-example-migrate"]["spec"]["template"]["spec"]
    migrate_env = {e["name"]: e for e in job["containers"][0]["env"]}
    assert migrate_env["DATABASE_POOLER"]["value"] == "none"
    ref = migrate_env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert "@postgres-primary:5432/" in docs["Secret", ref["name"]]["stringData"][ref["key"]]


# -- the example app -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def example_certs() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="multipool-deploy-certs-"))
    try:
        generate_dev_certs(directory / "certs", hosts=CERT_HOSTS)
        yield directory / "certs"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def app_environment(example_env: dict[str, str], certs: Path) -> dict[str, str]:
    """The app's environment from .env.example, with the CA a real file."""
    return {
        key: value.replace("/run/secrets/ca.crt", str(certs / "ca.crt"))
        for key, value in example_env.items()
    }


def test_example_settings_from_env_example(
    example_env: dict[str, str], roles: dict[str, str], example_certs: Path
) -> None:
    env = app_environment(example_env, example_certs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no MultipoolWarning either
        specs = read_environment(source={k: v for k, v in env.items() if k in allowed_names(roles)})
    assert set(specs) == {"default", "replica1", "legacy"}
    default, replica, legacy = specs["default"], specs["replica1"], specs["legacy"]
    assert (default.vendor, default.host, default.port) == ("postgresql", "pgbouncer", 6432)
    assert default.pool.pooler == "pgbouncer"
    assert replica.replica_of == "default" and replica.pool.pooler == "pgbouncer"
    assert replica.name == "app_replica"
    assert (legacy.vendor, legacy.host, legacy.pool.pooler) == ("mysql", "mysql", None)
    for spec in specs.values():
        assert spec.tls.mode == "verify-full"
        assert spec.tls.ca == str(example_certs / "ca.crt")
        assert spec.password and "change-me" in spec.password


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items()
        if not MULTIPOOL_VAR.fullmatch(k) and not k.startswith(("DJANGO_", "MULTIPOOL_"))
    }
    clean.pop("PYTHONPATH", None)
    clean.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE, env=clean, capture_output=True, text=True, timeout=120,
    )


def test_example_manage_check_deploy(
    example_env: dict[str, str], roles: dict[str, str], example_certs: Path
) -> None:
    env = app_environment(example_env, example_certs)
    # Every multipool variable set (empty ones too): a stray deploy/.env is never read.
    env.update({name: env.get(name, "") for name in allowed_names(roles)})
    result = _manage(env, "check", "--deploy", "--fail-level", "ERROR")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "multipool." not in output, output  # no multipool error or warning at all


def test_example_migrations_match_models(tmp_path: Path) -> None:
    env = {
        "DJANGO_SECRET_KEY": "test",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'default.sqlite3'}",
        "DATABASE_ALIASES": "legacy",
        "LEGACY_DATABASE_URL": f"sqlite:///{tmp_path / 'legacy.sqlite3'}",
    }
    result = _manage(env, "makemigrations", "--check", "--dry-run", "--no-input")
    assert result.returncode == 0, result.stdout + result.stderr


# -- the PgBouncer image's configuration, run for real --------------------------------------


def _wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the entrypoint exited with {proc.returncode}:\n{out}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    pytest.fail(f"nothing listens on {port} after {timeout}s")


def test_deploy_pgbouncer_image_config_runs(postgres_server: Any) -> None:
    """deploy/pgbouncer/{entrypoint.sh,pgbouncer.ini} with the local pgbouncer binary:
    only host names, ports and paths are rewritten."""
    import psycopg

    from multipool.testing.pgbouncer import find_pgbouncer

    binary = find_pgbouncer()
    base = Path(tempfile.mkdtemp(prefix="multipool-deploy-pgbouncer-"))
    proc: subprocess.Popen[str] | None = None
    try:
        os.chmod(base, 0o755)  # the entrypoint drops to the postgres user when we are root
        tls = base / "secrets"
        tls.mkdir(mode=0o700)
        shutil.copyfile(postgres_server.certs.ca_cert, tls / "ca.crt")
        shutil.copyfile(postgres_server.certs.server_cert, tls / "server.crt")
        shutil.copyfile(postgres_server.certs.server_key, tls / "server.key")
        password = postgres_server.user("app").password
        (tls / "app_db_password").write_text(password + "\n")
        run_dir = base / "run"
        port = free_port()
        ini = PGBOUNCER_INI.read_text()
        for host in ("postgres-primary", "postgres-replica"):
            ini = ini.replace(
                f"host={host} port=5432 dbname=app",
                f"host=127.0.0.1 port={postgres_server.port} dbname={postgres_server.database}",
            )
        ini = ini.replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")
        ini = ini.replace("listen_port = 6432", f"listen_port = {port}")
        ini = ini.replace("/run/pgbouncer/", f"{run_dir}/")
        assert f"host=127.0.0.1 port={postgres_server.port}" in ini
        assert "/run/pgbouncer/" not in ini and "postgres-" not in ini
        config = base / "pgbouncer.ini"
        config.write_text(ini)
        os.chmod(config, 0o644)
        env = {
            "PATH": f"{binary.parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            "PGBOUNCER_AUTH_USERS": f"app={tls / 'app_db_password'}",
            "PGBOUNCER_TLS_DIR": str(tls),
            "PGBOUNCER_RUN_DIR": str(run_dir),
            "PGBOUNCER_CONFIG": str(config),
        }
        proc = subprocess.Popen(
            ["sh", str(PGBOUNCER_ENTRYPOINT)], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        _wait_listening(port, proc)
        assert oct((run_dir / "userlist.txt").stat().st_mode & 0o777) == oct(0o600)
        for database in ("app", "app_replica"):
            with psycopg.connect(
                host="127.0.0.1", port=port, user="app", password=password, dbname=database,
                sslmode="verify-full", sslrootcert=str(tls / "ca.crt"), connect_timeout=10,
            ) as conn:
                assert conn.pgconn.ssl_in_use
                row = conn.execute("SELECT current_database(), current_user").fetchone()
                assert row == (postgres_server.database, "app")
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.stdout:
                proc.stdout.close()
        shutil.rmtree(base, ignore_errors=True)


# ===========================================================================================
# PgBouncer test harness: multipool.testing.pgbouncer, fixture pgbouncer_server
# ===========================================================================================


def test_pgbouncer_harness_connects_with_tls_on_both_sides(pgbouncer_server: Any) -> None:
    backend = pgbouncer_server.backend_server
    assert pgbouncer_server.port != backend.port
    with pgbouncer_server.connect("app", tls="verify-full", application_name="harness") as conn:
        assert conn.pgconn.ssl_in_use  # client -> PgBouncer
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        # PgBouncer -> PostgreSQL, as the server sees it.
        rows = backend.query("SELECT ssl FROM pg_stat_ssl WHERE pid = %s", (pid,))
        assert rows == [(True,)]
    with pgbouncer_server.connect("plain", tls="require") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("plain",)


def test_pgbouncer_harness_refuses_plaintext(pgbouncer_server: Any) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError):
        pgbouncer_server.connect("app", tls="disable").close()
    with pytest.raises(ValueError, match="client certificates"):
        pgbouncer_server.url("app", client_cert=True)


def test_pgbouncer_harness_show_pools(pgbouncer_server: Any) -> None:
    with pgbouncer_server.connect("app") as conn:
        conn.execute("SELECT 1")
        (pool,) = pgbouncer_server.pools(database=pgbouncer_server.database, user="app")
        assert pool["pool_mode"] == "transaction"
        assert pool["cl_active"] + pool["cl_waiting"] >= 1
        clients = pgbouncer_server.show("SHOW CLIENTS")
        assert any(c["user"] == "app" for c in clients)
    servers = pgbouncer_server.show("servers")
    assert any(s["user"] == "app" and s["database"] == pgbouncer_server.database for s in servers)
    assert pgbouncer_server.server_connections(database=pgbouncer_server.database, user="app") >= 1
    with pytest.raises(ValueError):
        pgbouncer_server.show("POOLS; SHUTDOWN")


def test_pgbouncer_harness_transaction_pooling_shares_servers(pgbouncer_server: Any) -> None:
    """Two clients in turn get the same server connection (transaction pooling)."""
    pids = set()
    with pgbouncer_server.connect("plain") as first, pgbouncer_server.connect("plain") as second:
        for conn in (first, second, first, second):
            pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    assert len(pids) == 1


def test_pgbouncer_harness_url_through_multipool(pgbouncer_server: Any) -> None:
    """The fixture's URL, read by multipool, connects through PgBouncer with verify-full."""
    import psycopg

    url = pgbouncer_server.url("app")
    (spec,) = read_environment(
        source={"DATABASE_URL": url, "DATABASE_POOLER": "pgbouncer"}
    ).values()
    assert (spec.host, spec.port, spec.pool.pooler) == ("127.0.0.1", pgbouncer_server.port,
                                                        "pgbouncer")
    assert spec.tls.mode == "verify-full"
    assert spec.tls.ca == str(pgbouncer_server.certs.ca_cert)
    with psycopg.connect(url, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)


def test_pgbouncer_harness_reaches_every_database(pgbouncer_server: Any) -> None:
    """The wildcard entry: ``postgres`` and new (``test_*``) databases are reachable."""
    name = "test_multipool_pgbouncer_harness"
    with pgbouncer_server.connect("app", database="postgres") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("postgres",)
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with pgbouncer_server.connect("app", database=name) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        pgbouncer_server.drop_database(name)  # closes PgBouncer's server connections first
    assert not pgbouncer_server.query("SELECT 1 FROM pg_database WHERE datname = %s", (name,))


def test_pgbouncer_harness_stop_and_start(pgbouncer_server: Any) -> None:
    import psycopg

    port = pgbouncer_server.port
    pgbouncer_server.stop()
    try:
        assert not pgbouncer_server.running
        with pytest.raises(psycopg.OperationalError):
            pgbouncer_server.connect("app", connect_timeout=2).close()
    finally:
        pgbouncer_server.start()
    assert pgbouncer_server.running and pgbouncer_server.port == port
    with pgbouncer_server.connect("app") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert pgbouncer_server.show("POOLS")  # the console connection is reopened
