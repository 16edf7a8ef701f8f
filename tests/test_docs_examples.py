"""Every code block of README.md and docs/*.md runs here, so that a page cannot drift
from the code (the blocks are extracted by ``tests/docs_blocks.py``).

How each kind of block (:func:`kind`) is checked:

* ``settings``: a Python settings fragment, appended to the ``settings.py`` of a fresh
  ``django-admin startproject`` (after the page's fragments above it, or after
  :data:`SETTINGS` when none sets ``DATABASES``), with the page's blocks of variables
  as its ``.env``; ``python manage.py check`` must find no issue (and ``check --tag
  multipool`` must find multipool's checks when the fragment installs the app).
* ``api``: a snippet run with ``manage.py shell`` in that project, against the test
  servers, after one request per alias (for ``health``: after reads routed while
  ``replica1`` points at a closed port); the names a result comment shows must be in
  the result.
* ``script``: run as a Python script in that project, with good and with bad settings.
* ``variables``: a block of ``NAME=value`` lines, loaded as a ``.env`` (on top of the
  blocks above it in its section): no trailing `` # comment``, every variable read by
  an alias, accepted by ``multipool.config.read_environment()``, ``multipool config``
  and ``multipool check`` (no issue).
* ``commands``: each command run for real, in the project of the page's blocks above
  it, and exits 0; see :func:`run_documented` for ``venv``, ``pip`` and ``pytest``.
* ``output``: ``$ command`` transcripts, run with the variable blocks above them in
  their section as ``.env`` and compared with the real output after
  :func:`docs_blocks.normalized`; a ``...`` line stands for lines left out, and the
  text above the block must then say "shortened".
* ``synopsis``: a command's usage; its options are the parser's, both ways.
* ``entry``, ``hand-written``, ``before``, ``signatures``, ``sql``, ``diagram``,
  ``error-message``: see the test of each.

What cannot exist here is replaced, visibly (:func:`point_at_servers`; a failure lists
the replacements): every database URL's host, port and database name by a test
server's (PostgreSQL for ``postgres*`` schemes, else MySQL), the password of user
``app`` by its real one (other users keep name and password: the servers do not
know them, which is how docs/cli.md shows a refused login); TLS file settings (a
path, ``system``, or PEM text shortened with ``...``) by the server's CA and the
``certuser`` client certificate; a key passphrase ``...`` (or a passphrase file
that does not exist) by a real one of an encrypted copy of that key. A block of
variables without a ``DATABASE_URL`` is checked on top of the PostgreSQL test
server's. Output of commands that connect shows each test server's address as the
address it replaced, and the directory a transcript runs in as ``/srv/mysite``.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from multipool import config, errors
from multipool.cli import build_parser, main
from tests.docs_blocks import (
    ROOT,
    Block,
    blocks,
    commands,
    is_variables,
    matches,
    normalized,
    transcript,
    variables,
)

BLOCKS = blocks()
BIN = Path(sys.executable).parent
FILE_KEYS = ("SSLROOTCERT", "SSLCERT", "SSLKEY", "SSLCRL")
PASSPHRASE = "docs-test-passphrase"
WORKDIR = "/srv/mysite"  # where the transcripts appear to run
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def kind(block: Block) -> str:
    first = block.lines[0] if block.lines else ""
    if block.skip is not None:
        return "skip"
    if block.info == "python":
        if first.startswith("# before"):
            return "before"
        if first.startswith("{"):
            return "entry"
        if "config.databases(*" in block.text:
            return "signatures"
        if re.search(r"^(manager|health)\.|^for .* in health\.", block.text, re.M):
            return "api"
        if "sys.exit(" in block.text:
            return "script"
        return "hand-written" if "..." in block.text else "settings"
    if block.info == "sh":
        return "variables" if is_variables(block) else "commands"
    if block.info in ("text", ""):
        if first.startswith("$ "):
            return "output"
        if first.split(":")[0] in errors.__all__:
            return "error-message"
        if re.match(r"(multipool|python manage\.py) ", first):
            return "synopsis"
        if "-->" in block.text:
            return "diagram"
    return "sql" if block.info == "sql" else "unknown"


def of_kind(name: str) -> list[Any]:
    return [pytest.param(b, id=b.where) for b in BLOCKS if kind(b) == name]


def test_every_block_is_run_or_marked() -> None:
    unknown = [f"{b.where} ({b.info or 'no info'})" for b in BLOCKS if kind(b) == "unknown"]
    assert not unknown, f"blocks neither run nor marked <!-- docs-test: skip: why -->: {unknown}"
    unexplained = [b.where for b in BLOCKS if b.skip is not None and len(b.skip) < 10]
    assert not unexplained, f"skip markers without a reason: {unexplained}"


# -- the test servers, and what they replace -----------------------------------------------


class Servers(NamedTuple):
    postgresql: Any
    mysql: Any
    directory: Path  # an encrypted client key, and what else a block needs


@pytest.fixture(scope="module")
def servers(postgres_server: Any, mysql_server: Any) -> Iterator[Servers]:
    from cryptography.hazmat.primitives import serialization

    with tempfile.TemporaryDirectory(prefix="multipool-docs-") as directory:
        key_path = Path(directory) / "client-certuser.key"
        key = serialization.load_pem_private_key(
            postgres_server.certs.client("certuser")[1].read_bytes(), None
        )
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        ))
        key_path.chmod(0o600)
        yield Servers(postgres_server, mysql_server, Path(directory))


def _server_of(url: str, servers: Servers) -> Any:
    return servers.postgresql if url.startswith("p") else servers.mysql


def point_at_servers(
    env: dict[str, str], servers: Servers
) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """``(env, shown, notes)``: the values replaced as the module docstring says;
    ``shown`` maps a test server's address to the address it replaced."""
    out, shown, notes = dict(env), {}, []
    for name, value in env.items():
        if not name.endswith("DATABASE_URL") or value.startswith("sqlite") or "://" not in value:
            continue
        server, doc = _server_of(value, servers), urlsplit(value)
        real = urlsplit(server.url("app"))
        password = real.password if doc.username == "app" else doc.password
        userinfo = f"{doc.username or ''}{f':{password}' if password else ''}"
        netloc = f"{userinfo}@{real.hostname}:{real.port}".lstrip("@")
        out[name] = urlunsplit((doc.scheme, netloc, f"/{server.database}", doc.query, ""))
        place = f"{doc.hostname}:{doc.port or DEFAULT_PORTS[server.engine]}"
        shown[f"{real.hostname}:{real.port}/{server.database}"] = f"{place}{doc.path}"
        shown[f"{real.hostname}:{real.port}"] = place
        shown[f"localhost:{real.port}"] = place  # the same server, as budget names it
        notes.append(f"{name}: {place}{doc.path} -> the {server.flavor} test server")
    for name, value in env.items():
        prefix, _, suffix = name.rpartition("DATABASE_")
        if suffix not in (*FILE_KEYS, "SSLPASSWORD", "SSLPASSWORD_FILE") or os.path.exists(value):
            continue
        if value.startswith("-----BEGIN") and "..." not in value:
            continue
        certs = _server_of(env.get(f"{prefix}DATABASE_URL", "postgresql"), servers).certs
        files = {"SSLROOTCERT": certs.ca_cert, "SSLCERT": certs.client("certuser")[0],
                 "SSLKEY": certs.client("certuser")[1]}
        if {f"{prefix}DATABASE_SSLPASSWORD", f"{prefix}DATABASE_SSLPASSWORD_FILE"} & set(env):
            files["SSLKEY"] = servers.directory / "client-certuser.key"
        if suffix == "SSLPASSWORD":
            out[name] = PASSPHRASE
        elif suffix == "SSLPASSWORD_FILE":
            out[name] = str(_passphrase_file(servers.directory))
        elif value.startswith("-----BEGIN"):  # PEM text, shortened
            out[name] = files[suffix].read_text().strip().replace("\n", "\\n")
        else:
            out[name] = str(files[suffix])
        notes.append(f"{name}: {value[:40]} -> the test server's {suffix} file or text")
    return out, shown, notes


def _passphrase_file(directory: Path) -> Path:
    """A file holding the encrypted test key's passphrase, as a container secret."""
    path = directory / "key-passphrase"
    if not path.exists():
        path.write_text(PASSPHRASE + "\n")
        path.chmod(0o400)
    return path


def dotenv(blocks_: list[Block], env: dict[str, str]) -> str:
    """The blocks as a ``.env``, as written (comments, quotes), with ``env``'s values."""
    lines, seen = [], set()
    for block in blocks_:
        for raw in block.lines:
            name, eq, value = raw.strip().partition("=")
            if not eq or name.startswith("#"):
                lines.append(raw.strip())
                continue
            quote_ = value[0] if value[:1] in ("'", '"') else ""
            lines.append(f"{name}={quote_}{env[name]}{quote_}")
            seen.add(name)
    lines += [f"{name}={value}" for name, value in env.items() if name not in seen]
    return "\n".join(lines) + "\n"


def env_blocks(block: Block, scope: str) -> list[Block]:
    """The variable blocks above ``block`` in its ``section`` or on its ``page`` (above
    it), or all of the page's (``page``, for a project)."""
    return [
        b for b in BLOCKS
        if b.page == block.page and kind(b) == "variables" and b is not block
        and (scope == "page" or b.line < block.line)
        and (scope != "section" or b.section == block.section)
    ]


def merged(blocks_: list[Block]) -> dict[str, str]:
    return {name: value for b in blocks_ for name, value in variables(b).items()}


# -- running things ------------------------------------------------------------------------


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory removed at the end (it holds test passwords and keys)."""
    with tempfile.TemporaryDirectory(prefix="multipool-docs-") as directory:
        yield Path(directory)


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if "DATABASE_" not in k and k != "DJANGO_SETTINGS_MODULE"}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run(argv: list[str], cwd: Path, **env: str) -> tuple[int, str]:
    """``argv`` in a subprocess: exit code, stdout and stderr as a terminal shows them."""
    name = Path(argv[0]).name
    program = sys.executable if name in ("python", "python3") else str(BIN / name)
    proc = subprocess.run(
        [program, *argv[1:]], cwd=cwd, env=clean_environ(**env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180,
    )
    return proc.returncode, proc.stdout


@pytest.fixture(scope="module")
def startproject() -> Iterator[Path]:
    from django.core.management import call_command

    with tempfile.TemporaryDirectory(prefix="multipool-docs-") as directory:
        call_command("startproject", "mysite", directory, verbosity=0)
        yield Path(directory)


def make_project(
    where: Path, template: Path, block: Block, env_scope: str, servers: Servers
) -> list[str]:
    """A startproject in ``where`` with the page's settings fragments above ``block``
    (itself included) and the ``env_scope`` variable blocks as ``.env``; the notes of
    :func:`point_at_servers`."""
    shutil.copytree(template, where, dirs_exist_ok=True)
    fragments = [b.text for b in BLOCKS if b.page == block.page and kind(b) == "settings"
                 and b.line <= block.line]
    if not any("DATABASES =" in f for f in fragments):
        fragments.insert(0, SETTINGS)
    with (where / "mysite" / "settings.py").open("a") as settings:
        settings.write("\n\n" + "\n\n".join(fragments) + "\n")
    sources = env_blocks(block, env_scope)
    env, _, notes = point_at_servers(merged(sources), servers)
    (where / ".env").write_text(dotenv(sources, env))
    return notes


#: settings for a page that shows none (as README.md shows them)
SETTINGS = "import multipool\n\nDATABASES = multipool.databases()"


# -- python --------------------------------------------------------------------------------


@pytest.mark.parametrize("block", of_kind("settings"))
def test_settings(block: Block, startproject: Path, servers: Servers, workdir: Path) -> None:
    notes = make_project(workdir, startproject, block, "page", servers)
    code, out = run(["python", "manage.py", "check"], workdir)
    assert code == 0 and "System check identified no issues" in out, f"{out}\n{notes}"
    if "INSTALLED_APPS" in block.text:  # the tag exists only when the app is installed
        code, out = run(["python", "manage.py", "check", "--tag", "multipool"], workdir)
        assert code == 0, out


def _shown_names(comment: str) -> dict[str, str | None]:
    """``name=`` and ``"name": "value"`` of a result comment (values only when quoted)."""
    names: dict[str, str | None] = {n: None for n in re.findall(r"(\w+)=", comment)}
    names.update(re.findall(r'"(\w+)": "(\w+)"', comment))
    names.update({n: None for n in re.findall(r'"(\w+)": [^"]', comment)})
    return names


@pytest.mark.parametrize("block", of_kind("api"))
def test_api(block: Block, startproject: Path, servers: Servers, workdir: Path) -> None:
    """Each expression statement prints its result, like the interpreter would."""
    make_project(workdir, startproject, block, "page", servers)
    if "health" in block.text:  # something to report: a replica that is down
        from multipool.testing.servers import free_port

        env = (workdir / ".env").read_text()
        replica = re.search(r"^REPLICA1_DATABASE_URL=(\S+)", env, re.M)
        assert replica, "the page configures no replica1"
        url = urlsplit(replica[1])
        down = url._replace(netloc=f"{url.netloc.rpartition(':')[0]}:{free_port()}").geturl()
        (workdir / ".env").write_text(env.replace(replica[1], down))
        before = ("from django.db import router\nfrom django.contrib.auth.models import User\n"
                  "for _ in range(3):\n    router.db_for_read(User)\n")
    else:  # one request per alias
        before = ("from django.db import connections\nfor c in connections.all():\n"
                  "    c.ensure_connection()\n    c.close()\n")
    tree = ast.parse(block.text)
    for index, node in enumerate(tree.body):
        if isinstance(node, ast.Expr):
            show = ast.parse(f"print('@@{node.lineno}', repr(None))").body[0]
            show.value.args[1].args[0] = node.value  # type: ignore[attr-defined]
            tree.body[index] = show
    code, out = run(["python", "manage.py", "shell", "-c", before + ast.unparse(tree)], workdir)
    assert code == 0, out
    results = dict(re.findall(r"^@@(\d+) (.*)$", out, re.M))
    for number, line in enumerate(block.lines, start=1):
        comment = line.partition("#")[2]
        for name, value in _shown_names(comment).items():
            result = results.get(str(number), "(not an expression)")
            assert re.search(rf"\b{name}\b", result), (line, result)
            assert value is None or f"'{name}': '{value}'" in result, (line, result)


@pytest.mark.parametrize("block", of_kind("script"))
def test_script(block: Block, startproject: Path, servers: Servers, workdir: Path) -> None:
    make_project(workdir, startproject, block, "page", servers)
    (workdir / "snippet.py").write_text(block.text)
    code, out = run(["python", "snippet.py"], workdir)
    assert code == 0, out
    code, out = run(["python", "snippet.py"], workdir, DATABASE_POOL_SIZE="lots")
    assert code == 1, out
    assert "DATABASE_POOL_SIZE: 'lots' is not a whole number" in out, out


@pytest.mark.parametrize("block", of_kind("before"))
def test_before(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old configuration a migration starts from: with only the ENGINE switched to
    multipool's, the leftover pool option is refused, naming it as the page does."""
    code = compile(block.text, block.where, "exec")
    if "ENGINE" not in block.text:
        return  # dj-database-url, not installed here: compiled only
    monkeypatch.setenv("DB_PASSWORD", "secret")
    namespace: dict[str, Any] = {"os": os}
    exec(code, namespace)
    entry = {**namespace["DATABASES"]["default"], "ENGINE": "multipool.backends.postgresql"}
    with pytest.raises(errors.InvalidPoolSetting) as refused:
        config.spec_from_settings("default", entry)
    page = (ROOT / block.page).read_text()
    assert refused.value.setting in page, str(refused.value)


@pytest.mark.parametrize("block", of_kind("hand-written"))
def test_hand_written(block: Block, servers: Servers) -> None:
    """A hand-written ``DATABASES``: ``...`` (the rest of an entry) is filled with the
    PostgreSQL test server's connection, paths with its CA; no check error, connects."""
    from multipool.checks import check_databases
    from multipool.cli import probe

    real = config.databases(source={"DATABASE_URL": servers.postgresql.url("app")})["default"]
    rest = {k: real[k] for k in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")}
    code = re.sub(r"\{\.\.\.,", "{**REST,", block.text)
    code = re.sub(r"^(\s*)# \.\.\..*$", r"\1**REST,", code, flags=re.M)
    code = re.sub(r'"/[^"]+\.(crt|pem)"', repr(str(servers.postgresql.certs.ca_cert)), code)
    namespace: dict[str, Any] = {"REST": rest}
    exec(compile(code, block.where, "exec"), namespace)
    databases = namespace["DATABASES"]
    assert not [m for m in check_databases(databases, []) if m.is_serious()]
    for alias, entry in databases.items():
        assert probe(alias, entry)["ok"], alias


@pytest.mark.parametrize("block", of_kind("entry"))
def test_generated_entry(block: Block) -> None:
    """The entry shown is what ``databases()`` makes of the page's first block of
    variables (``...``: the value is not shown, or more keys follow)."""
    shown = ast.literal_eval(re.sub(r",\s*\.\.\.\s*\}", "}", block.text))
    first = next(b for b in BLOCKS if b.page == block.page and kind(b) == "variables")
    real = config.databases(source=variables(first), validate=False)["default"]

    def compare(shown: Any, real: Any, where: str) -> None:
        if isinstance(shown, dict):  # all keys, unless the dict shown ends with "..."
            elided = bool(re.search(rf"{re.escape(where.split('.')[-1])}\W+\{{[^{{}}]*\.\.\.\s*\}}",
                                    block.text))
            assert elided or set(shown) == set(real), (where, set(real) ^ set(shown))
            for key in shown:
                compare(shown[key], real[key], f"{where}.{key}")
        elif shown != "...":
            assert shown == real, where

    compare(shown, real, "entry")


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("block", of_kind("signatures"))
def test_signatures(block: Block) -> None:
    """``config.NAME(PARAMETERS)`` lines: the function's real parameters
    (``config.NAME`` alone: the name exists)."""
    signature = inspect.signature(config.databases).replace(return_annotation=inspect._empty)
    for match in re.finditer(r"^config\.(\w+)(?:\(([^)]*)\))?", block.text, re.M):
        real = getattr(config, match[1])
        if match[2] is not None:
            fake: dict[str, Any] = {}
            shown = match[2].replace("...same arguments...", str(signature)[1:-1])
            exec(f"def f({shown}): pass", fake)
            assert _parameters(fake["f"]) == _parameters(real), match[0]


# -- shell -------------------------------------------------------------------------------


@pytest.mark.parametrize("block", of_kind("variables"))
def test_variables(
    block: Block, servers: Servers, workdir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sources = [*env_blocks(block, "section"), block]
    shown = merged(sources)
    if "DATABASE_URL" not in shown:
        shown = {"DATABASE_URL": servers.postgresql.url("app"), **shown}
    env, _, notes = point_at_servers(shown, servers)
    (workdir / ".env").write_text(dotenv(sources, env))
    for key in list(os.environ):
        if "DATABASE_" in key or key == "DJANGO_SETTINGS_MODULE":
            monkeypatch.delenv(key)
    monkeypatch.chdir(workdir)
    from decouple import RepositoryEnv

    assert RepositoryEnv(str(workdir / ".env")).data == env, "python-decouple reads otherwise"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        specs = config.read_environment(search_path=workdir)
    read = {name for spec in specs.values() for _, name in spec.settings} | {"DATABASE_ALIASES"}
    unread = sorted(set(variables(block)) - read)
    assert not unread, f"variables that no alias reads: {unread}"
    assert main(["config"]) == 0, capsys.readouterr()
    assert main(["check"]) == 0, capsys.readouterr()
    assert "System check identified no issues" in capsys.readouterr().out, notes


def run_documented(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """A documented command, run: ``python3 -m venv`` and ``pip install`` are what made
    the environment this suite runs in (checked, not redone); ``python -m pytest`` and
    ``scripts/test`` are this suite (collected, not run again); the rest runs in ``cwd``."""
    name = Path(argv[0]).name
    if argv[:3] == ["python3", "-m", "venv"]:
        return int(sys.prefix == sys.base_prefix), f"running in a venv: {sys.prefix}"
    if name == "pip" and argv[1] == "install":
        for requirement in (a for a in argv[2:] if a != "-e"):
            check_installed(requirement)
        return 0, "installed"
    if name in ("python", "python3") and argv[1:3] == ["-m", "pytest"]:
        return run([*argv, "--collect-only", "-q", "-p", "no:cacheprovider"], ROOT)
    if argv[0] == "scripts/test":  # this suite's command (tests/test_test_script.py runs it)
        assert os.access(ROOT / argv[0], os.X_OK), f"{argv[0]} is not executable"
        pytest_argv = [sys.executable, "-m", "pytest", *argv[1:]]
        return run([*pytest_argv, "--collect-only", "-q", "-p", "no:cacheprovider"], ROOT)
    if name == "multipool" or argv[1:2] == ["manage.py"]:
        return run(argv, cwd, **env)
    raise AssertionError(f"cannot run {argv[0]} here: mark the block <!-- docs-test: skip -->")


def check_installed(requirement: str) -> None:
    """This project with extras it has (``.``: this checkout, editable), or another
    package at a version the requirement allows."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    project, _, wanted = requirement.partition("[")
    if project == ".":
        assert Path(config.__file__).is_relative_to(ROOT), config.__file__
        project = "multipool"
    required = Requirement(f"{project}[{wanted}" if wanted else project)
    installed = distribution(required.name)
    extras = set(installed.metadata.get_all("Provides-Extra") or [])
    assert required.name != "multipool" or required.extras <= extras, requirement
    assert required.specifier.contains(installed.version, prereleases=True), (
        f"{requirement}: {installed.version} installed"
    )


@pytest.mark.parametrize("block", of_kind("commands"))
def test_commands(block: Block, startproject: Path, servers: Servers, workdir: Path) -> None:
    notes = make_project(workdir, startproject, block, "above", servers)
    for command in commands(block.text):
        env, _, more = point_at_servers(command.env, servers)
        code, out = run_documented(command.argv, env, workdir)
        assert code == 0, (str(command), out, notes + more)


@pytest.mark.parametrize("block", of_kind("output"))
def test_output(block: Block, servers: Servers, workdir: Path) -> None:
    sources = env_blocks(block, "section")
    for command in transcript(block.text):
        connects = "--connect" in command.argv or command.argv[1:2] == ["demo"]
        env, shown, notes = (point_at_servers(merged(sources), servers) if connects
                             else (merged(sources), {}, []))
        (workdir / ".env").write_text(dotenv(sources, env))
        code, out = run(command.argv, workdir)
        for real, doc in sorted(shown.items(), key=lambda item: -len(item[0])):
            out = out.replace(real, doc)
        out = out.replace(str(workdir), WORKDIR)
        assert command.output is not None
        if not matches(command.output, out):
            diff = difflib.unified_diff(normalized(command.output).splitlines(),
                                        normalized(out).splitlines(), "docs", "real", lineterm="")
            pytest.fail(f"{block.where}: $ {command}\n" + "\n".join(diff)
                        + f"\n\nthe real output:\n{out}\n{notes}")
        if re.search(r"^\.\.\.$", command.output, re.M):
            assert "shortened" in block.before, f"{block.where}: say that it is shortened"
        pasted = re.findall(r"^ *[A-Z0-9_]*DATABASE_[A-Z_]+=\S+ +#.*", out, re.M)
        assert not pasted, f"{block.where}: a variable to paste into .env with a comment: {pasted}"
        # exit 1 when the output shows a problem: a failed connect, over budget, a refusal
        problems = re.search(r"FAILED| OVER\b|already exists", command.output)
        assert code == (1 if problems else 0), (code, out)


@pytest.mark.parametrize("block", of_kind("synopsis"))
def test_synopsis(block: Block) -> None:
    """Each usage line names the parser's options, no more, no less, with their choices."""
    import argparse

    from multipool.management.commands.multipool_status import Command

    for usage in re.split(r"\n(?=\S)", block.text):
        words = usage.split()
        if words[:2] == ["python", "manage.py"]:
            parser = argparse.ArgumentParser()
            Command().add_arguments(parser)  # type: ignore[arg-type]
        else:
            parser = build_parser()
            for word in (w for w in words[1:] if re.fullmatch(r"[a-z]+", w)):
                parser = parser._subparsers._group_actions[0].choices[word]  # type: ignore
        options = {o: a for a in parser._actions for o in a.option_strings if o != "-h"
                   and o != "--help"}
        assert set(re.findall(r"--[a-z-]+", usage)) == set(options), usage
        for option, action in options.items():
            if action.choices:
                assert f"{option} {{{','.join(action.choices)}}}" in usage, option


# -- the rest ------------------------------------------------------------------------------


@pytest.mark.parametrize("block", of_kind("sql"))
def test_sql(block: Block, postgres_server: Any) -> None:
    """The query is one the package runs (a string constant of its source), and runs."""
    query = " ".join(block.text.split())
    constants = {
        node.value for path in (ROOT / "multipool").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    assert query in constants, "no such query in multipool/"
    assert len(postgres_server.query(block.text)) == 1  # it runs, and answers one row


@pytest.mark.parametrize("block", of_kind("diagram"))
def test_diagram(block: Block) -> None:
    """The services the stack's diagram names are the compose file's."""
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    named = set(re.findall(r"(?:^|-->\s*)([a-z][a-z0-9-]*)", block.text, re.M))
    assert named and named <= set(compose["services"]), named - set(compose["services"])


@pytest.fixture(scope="module")
def error_messages(mysql_server_without_tls: Any) -> set[str]:
    """The messages tests/test_docs.py triggers for docs/troubleshooting.md."""
    from tests.test_docs import _encryption_required, error_examples

    with tempfile.TemporaryDirectory() as directory:
        found = {message for _, message in error_examples(Path(directory))}
    found.add(f"EncryptionRequired: {_encryption_required(mysql_server_without_tls)}")
    return found


@pytest.mark.parametrize("block", of_kind("error-message"))
def test_error_message(block: Block, error_messages: set[str]) -> None:
    """tests/test_docs.py checks that each message it triggers is in the page; this
    checks the converse: each message shown is one of them."""
    assert block.text.strip() in error_messages, block.text

