"""``scripts/test``, the README's test command: what it installs, when it stops, what it runs.

The system around the script is replaced by small programs on ``PATH`` that record how
they were called (``dpkg-query`` answering from a list, ``id``, ``sudo``, ``apt-get``),
and the virtualenv by a directory whose ``python`` and ``pip`` do the same: the
script's own decisions run for real, nothing is installed on this machine.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "test"
REQUIRED = ["postgresql", "mariadb-server", "pgbouncer", "redis-server",
            "libpq-dev", "libmariadb-dev", "pkg-config", "valgrind"]


def recorder(directory: Path, name: str, body: str = "exit 0") -> None:
    path = directory / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\n{body}\n')
    path.chmod(0o755)


def fake_system(tmp_path: Path, *, installed: list[str], uid: int, sudo_works: bool) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    listed = " ".join(installed)
    recorder(bin_dir, "dpkg-query", f'for p in {listed}; do [ "$p" = "$3" ] && '
                                    "printf 'install ok installed' && exit 0; done; exit 1")
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (bin_dir / "id").chmod(0o755)
    recorder(bin_dir, "sudo", 'if [ "$1" = "-n" ] && [ "$2" = true ]; then exit '
                              f'{0 if sudo_works else 1}; fi; shift; exec "$@"')
    recorder(bin_dir, "apt-get")
    return bin_dir


def fake_venv(tmp_path: Path, *, current: bool) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    recorder(venv / "bin", "python")
    recorder(venv / "bin", "pip")
    if current:
        digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
        (venv / ".multipool-requirements").write_text(digest + "\n")
    return venv


def run_script(tmp_path: Path, bin_dir: Path, venv: Path, *args: str,
               python: str = "python3") -> tuple[subprocess.CompletedProcess[str], list[str]]:
    calls = tmp_path / "calls"
    calls.touch()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
           "MULTIPOOL_VENV": str(venv), "PYTHON": python}
    done = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    return done, calls.read_text().splitlines()


def test_the_readme_and_ci_run_this_script() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "\nscripts/test\n" in readme
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith("#")]
    assert "scripts/test" in ci
    assert os.access(SCRIPT, os.X_OK)


def test_without_root_or_sudo_it_names_the_missing_packages_and_stops_before_pip(
        tmp_path: Path) -> None:
    bin_dir = fake_system(tmp_path, installed=[*REQUIRED[:5], "pkg-config"], uid=1000,
                          sudo_works=False)
    venv = tmp_path / "venv"
    done, calls = run_script(tmp_path, bin_dir, venv, "-x")
    assert done.returncode == 2, done
    assert "sudo apt-get install -y libmariadb-dev valgrind" in done.stderr
    assert not any(call.startswith("apt-get") for call in calls), calls
    assert not venv.exists(), "the virtualenv was made although packages are missing"


def test_as_root_it_installs_exactly_what_is_missing(tmp_path: Path) -> None:
    missing = ["pgbouncer", "redis-server"]
    bin_dir = fake_system(tmp_path, installed=[p for p in REQUIRED if p not in missing],
                          uid=0, sudo_works=False)
    done, calls = run_script(tmp_path, bin_dir, fake_venv(tmp_path, current=True))
    assert done.returncode == 0, done
    installs = [c for c in calls if c.startswith("apt-get") and " install " in f" {c} "]
    assert len(installs) == 1, calls
    assert shlex.split(installs[0])[-2:] == missing


def test_with_passwordless_sudo_it_installs_through_sudo(tmp_path: Path) -> None:
    bin_dir = fake_system(tmp_path, installed=REQUIRED[1:], uid=1000, sudo_works=True)
    done, calls = run_script(tmp_path, bin_dir, fake_venv(tmp_path, current=True))
    assert done.returncode == 0, done
    assert any(c.startswith("sudo -n apt-get install") and c.endswith(" postgresql")
               for c in calls), calls


@pytest.mark.parametrize("current", [True, False], ids=["requirements-unchanged", "changed"])
def test_it_installs_the_project_when_its_requirements_changed_and_passes_arguments_on(
        tmp_path: Path, current: bool) -> None:
    bin_dir = fake_system(tmp_path, installed=REQUIRED, uid=1000, sudo_works=False)
    venv = fake_venv(tmp_path, current=current)
    done, calls = run_script(tmp_path, bin_dir, venv, "-x", "-k", "tls and not slow")
    assert done.returncode == 0, done
    pip_installs = [c for c in calls if c.startswith("pip install -q -e")]
    assert pip_installs == ([] if current else ["pip install -q -e .[dev]"])
    assert calls[-1] == "python -m pytest -x -k tls and not slow"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    assert (venv / ".multipool-requirements").read_text().strip() == digest


def test_an_unusable_python_is_named_before_anything_is_installed(tmp_path: Path) -> None:
    bin_dir = fake_system(tmp_path, installed=REQUIRED, uid=1000, sudo_works=False)
    recorder(bin_dir, "python3.9", "exit 1")
    venv = tmp_path / "venv"
    done, _ = run_script(tmp_path, bin_dir, venv, python="python3.9")
    assert done.returncode == 2
    assert "older than 3.10" in done.stderr and "PYTHON=" in done.stderr
    assert not venv.exists()
