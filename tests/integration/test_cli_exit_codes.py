"""`bridgestat info`, `query` and `study run` in scripts: exit codes, failures on stderr, and
--json/--csv output, against real node processes over mutual TLS.

0 every member answered; 3 some failed (named on stderr) and the rest were pooled; 4 no member
answered or every member refused; 2 a usage or file error.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from bridgestat.coordinator.api import NETWORK
from bridgestat.coordinator.demo import local
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from tests.integration.conftest import LocalNetwork, local_network

MAX_PER_QUERY = 2.0
MEAN = ("query", "mean", "assessment", "bridge_total", "--epsilon", "1")


def _network(root: Path) -> Iterator[LocalNetwork]:
    with local_network(root, members=3, seed=13, total_epsilon=20.0,
                       max_per_query=MAX_PER_QUERY, sizes=(300, 350, 400)) as running:
        yield running


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from _network(tmp_path_factory.mktemp("exit-codes"))


@pytest.fixture
def stoppable(tmp_path: Path) -> Iterator[LocalNetwork]:
    """A network of its own, for a test that stops its nodes."""
    yield from _network(tmp_path)


def _bridgestat(*args: str | Path, network: LocalNetwork | None = None
                ) -> subprocess.CompletedProcess[str]:
    """The installed `bridgestat` command; `network` adds --network and a short deadline."""
    where = ["--network", str(network.network), "--timeout", "5"] if network else []
    return subprocess.run([*local.coordinator_command(), *map(str, args), *where],
                          capture_output=True, text=True, timeout=240, check=False)


def _study(tmp_path: Path) -> Path:
    """The standard study cut to one histogram (cheap, answered by every member)."""
    doc = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
    doc["analyses"] = [a for a in doc["analyses"] if a["id"] == "a01_household_type"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _spent(network: LocalNetwork) -> dict[str, float]:
    """Every member's ledger total (read-only beside the live node)."""
    spent = {}
    for member in network.members:
        path = member.config.parent / "ledger.sqlite"
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            spent[member.name] = db.execute("SELECT spent FROM budget").fetchone()[0]
    return spent


def test_every_member_answers_exit_0_with_json_and_csv(network: LocalNetwork,
                                                       tmp_path: Path) -> None:
    names = [m.name for m in network.members]
    query = _bridgestat(*MEAN, "--json", network=network)
    assert query.returncode == 0, query.stderr
    rows = json.loads(query.stdout)
    assert [r["member"] for r in rows] == [*names, NETWORK]
    assert all(r["status"] == "ok" for r in rows) and query.stderr == ""
    info = _bridgestat("info", "--csv", network=network)
    assert info.returncode == 0, info.stderr
    records = list(csv.DictReader(io.StringIO(info.stdout)))
    assert [r["member"] for r in records] == names
    assert all(r["reachable"] == "True" and r["status"] == "ok" for r in records)
    table = _bridgestat(*MEAN, network=network)  # the readable table by default
    assert table.returncode == 0 and "NETWORK" in table.stdout and "ci_low" in table.stdout
    study = _bridgestat("study", "run", _study(tmp_path), "--out", tmp_path / "out",
                        network=network)
    assert study.returncode == 0, study.stderr
    assert (tmp_path / "out" / "results.json").exists()


def test_every_member_refusing_exits_4_and_spends_nothing(network: LocalNetwork) -> None:
    before = _spent(network)
    refused = _bridgestat("query", "mean", "assessment", "bridge_total", "--epsilon",
                          str(2 * MAX_PER_QUERY), network=network)
    assert refused.returncode == 4, refused.stderr
    for member in network.members:
        assert f"member failed: {member.name}: " in refused.stderr
    assert "no member answered" in refused.stderr
    assert _spent(network) == before
    unknown = _bridgestat("query", "mean", "assessment", "no_such_column", network=network)
    assert unknown.returncode == 4 and "INVALID_ARGUMENT" in unknown.stderr


@pytest.mark.parametrize(("args", "expected"), [
    (("info", "--network", "missing.yaml"), "missing.yaml"),
    (("query", "--network", "missing.yaml", "mean", "assessment", "bridge_total"),
     "missing.yaml"),
    (("query", "--network", "n.yaml", "mean", "assessment", "x", "--epsilon", "lots"),
     "invalid float value"),
    (("info", "--network", "n.yaml", "--json", "--csv"), "not allowed with argument"),
    (("query", "--network", "n.yaml", "--frobnicate", "mean", "assessment", "x"),
     "unrecognized arguments"),
], ids=["info-missing-file", "query-missing-file", "bad-epsilon", "json-and-csv",
        "unknown-option"])
def test_usage_and_file_errors_exit_2(tmp_path: Path, args: tuple[str, ...],
                                      expected: str) -> None:
    done = subprocess.run([*local.coordinator_command(), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_stopped_members_exit_3_then_4(stoppable: LocalNetwork, tmp_path: Path) -> None:
    victim = stoppable.members[1]
    local.stop_nodes([stoppable.processes[1]])
    partial = _bridgestat(*MEAN, "--json", network=stoppable)
    assert partial.returncode == 3, partial.stderr
    assert f"member failed: {victim.name}: UNAVAILABLE" in partial.stderr
    assert not any(f"failed: {m.name}:" in partial.stderr
                   for m in stoppable.members if m is not victim)
    pooled = next(r for r in json.loads(partial.stdout) if r["member"] == NETWORK)
    assert pooled["status"] == "ok" and pooled["estimate"] is not None
    info = _bridgestat("info", network=stoppable)
    assert info.returncode == 3 and victim.name in info.stderr
    study = _bridgestat("study", "run", _study(tmp_path), "--out", tmp_path / "out",
                        network=stoppable)
    assert study.returncode == 3, study.stderr
    assert f"member failed: {victim.name}: UNAVAILABLE" in study.stderr

    local.stop_nodes(stoppable.processes)
    for args in (MEAN, ("info",)):
        none = _bridgestat(*args, network=stoppable)
        assert none.returncode == 4, (args, none.stderr)
        assert all(f"member failed: {m.name}: UNAVAILABLE" in none.stderr
                   for m in stoppable.members)
        assert "no member answered" in none.stderr
    study = _bridgestat("study", "run", _study(tmp_path), "--out", tmp_path / "none",
                        network=stoppable)
    assert study.returncode == 4, study.stderr
    assert "no member is reachable" in study.stderr
