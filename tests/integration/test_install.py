"""The README's install route without Docker, as member IT and researchers follow it on a
fresh machine: build the wheel, install it with an extra into a new virtual environment from
the locked versions, and run the command.

- `bridgestat[node]` brings the node and nothing of the coordinator's (no scipy, matplotlib,
  jinja2 or babel);
- `bridgestat[coordinator]` would bring none of psycopg, openpyxl or prometheus-client (checked
  with pip's resolver report, without installing a second environment).

Needs PyPI (as `make install` does); pip's cache makes a repeat quick.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"


def _run(*cmd: str | Path, timeout: float = 900) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


# what the wheel is built from (pyproject.toml's package-dir and readme)
SOURCES = ("pyproject.toml", "README.md", "protos", "common", "node", "coordinator")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the sources: setuptools builds in the tree (build/, *.egg-info),
    and the container test builds the same package there, maybe at the same time."""
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source)
    [built] = dist.glob("bridgestat-*.whl")
    return built


def test_the_node_extra_installs_and_runs_without_the_coordinators_libraries(
        wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "node-venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS,
         f"{wheel}[node]")
    usage = _run(venv / "bin" / "bridgestat-node", "--help")
    assert "serve" in usage and "check" in usage
    probe = ("import importlib.util as u; print(','.join(m for m in ('scipy', 'matplotlib', "
             "'jinja2', 'babel', 'opendp', 'pandas', 'psycopg') if u.find_spec(m)))")
    found = _run(venv / "bin" / "python", "-c", probe).strip().split(",")
    assert found == ["opendp", "pandas", "psycopg"], found


def test_the_coordinator_extra_brings_no_node_only_libraries(wheel: Path,
                                                             tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    _run(sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
         "--report", report, "-c", CONSTRAINTS, f"{wheel}[coordinator]")
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"scipy", "matplotlib", "pandas", "opendp"} <= names, sorted(names)
    assert not names & {"psycopg", "psycopg-binary", "openpyxl", "prometheus-client"}, sorted(names)
