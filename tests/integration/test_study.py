"""Study files against real node processes: plan, refusals before spending, run, replay."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from tests.integration.conftest import LocalNetwork, local_network

SUBSET = ("a01_household_type", "a05_paid_work", "a06_bridge_change", "a07_work_transitions",
          "a08_debt_median", "a09_meta_paid_work", "a10_did_bridge", "a11_dose_response")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with local_network(tmp_path_factory.mktemp("study-network"), members=3, seed=11,
                       total_epsilon=50.0, max_per_query=2.5) as running:
        yield running


def _bridgestat(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgestat.coordinator.cli.main",
                           *map(str, args)], capture_output=True, text=True, timeout=240)


def _write(tmp_path: Path, doc: dict[str, Any], name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _subset() -> dict[str, Any]:
    doc = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
    doc["analyses"] = [a for a in doc["analyses"] if a["id"] in SUBSET]
    return doc


def _spent(net: LocalNetwork) -> dict[str, float]:
    with Network.from_file(net.network) as client:
        info = client.info()
    return dict(zip(info.member, info.epsilon_spent, strict=True))


def test_plan_shows_cost_and_what_each_member_would_have_left(network: LocalNetwork) -> None:
    before = _spent(network)
    done = _bridgestat("study", "plan", STANDARD_STUDY, "--network", network.network)
    assert done.returncode == 0, done.stderr
    for member in before:
        line = next(x for x in done.stdout.splitlines() if x.startswith(member))
        assert "EXCEEDS" not in line
    assert "a11_dose_response" in done.stdout and "rho 0.1" in done.stdout
    assert _spent(network) == before  # planning spends nothing


def _bad(kind: str) -> dict[str, Any]:
    doc = _subset()
    target = next(a for a in doc["analyses"] if a["id"] == "a06_bridge_change")
    if kind == "column":
        target["column"] = "bridge_score"
    elif kind == "statistic":
        target["column"] = "household_type"
    elif kind == "occasion":
        doc["occasions"]["month_99"] = {"month": 99, "window": 3}
        target["occasion"] = "month_99"
    elif kind == "unaffordable":
        doc["analyses"] = [dict(copy.deepcopy(target), id=f"repeat_{i}", epsilon=2.0)
                           for i in range(30)]  # 30 x 2.0 plus shares > 50 per member
    return doc


@pytest.mark.parametrize(("kind", "message"), [
    ("column", r"\(a06_bridge_change\).column: unknown column 'bridge_score'"),
    ("statistic", r"\(a06_bridge_change\).column: a paired_change needs a numeric column"),
    ("occasion", r"\(a06_bridge_change\).occasion: window 96-102 lies outside"),
    ("unaffordable", r"the study's total loss is more than member-\d+ has left"),
])
def test_bad_studies_are_refused_before_anything_is_spent(network: LocalNetwork, tmp_path: Path,
                                                          kind: str, message: str) -> None:
    before = _spent(network)
    done = _bridgestat("study", "run", _write(tmp_path, _bad(kind)), "--network",
                       network.network, "--out", tmp_path / "out")
    assert done.returncode == 2, done.stdout
    assert __import__("re").search(message, done.stderr), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()
    assert _spent(network) == before


def test_run_saves_every_result_and_a_rerun_replays_for_free(network: LocalNetwork,
                                                             tmp_path: Path) -> None:
    study = _write(tmp_path, _subset())
    plan = _bridgestat("study", "plan", study, "--network", network.network)
    assert plan.returncode == 0, plan.stderr
    before = _spent(network)
    done = _bridgestat("study", "run", study, "--network", network.network, "--out",
                       tmp_path / "out", "--run-id", "run-1")
    assert done.returncode == 0, done.stderr
    assert "[8/8] a11_dose_response" in done.stdout  # progress per analysis
    assert "member-01 ok" in done.stdout  # and per member
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [a["id"] for a in doc["analyses"]] == list(SUBSET)
    for analysis in doc["analyses"]:
        assert analysis["tables"] and analysis["plots"], analysis["id"]
        for query in analysis["queries"]:
            assert query["key"].startswith(f"run-1:{analysis['id']}:")
            assert set(query["releases"]) == {"member-01", "member-02", "member-03"}
        assert all(loss["epsilon"] > 0 or loss["rho"] > 0
                   for loss in analysis["loss"].values())
    kinds = {p["kind"] for a in doc["analyses"] for p in a["plots"]}
    assert kinds == {"shares", "member_vs_network", "forest", "transition", "coefficients"}
    after = _spent(network)
    # the plan's cost is what was spent
    planned = {line.split()[0]: float(line.split()[2]) for line in plan.stdout.splitlines()
               if line.startswith("member-")}
    for row in doc["budget"]:
        assert row["epsilon_study"] == pytest.approx(planned[row["member"]], rel=1e-3)
        assert after[row["member"]] == pytest.approx(row["epsilon_after"], rel=1e-12)

    again = _bridgestat("study", "run", study, "--network", network.network, "--out",
                        tmp_path / "again", "--run-id", "run-1")
    assert again.returncode == 0, again.stderr
    assert _spent(network) == after  # every query replayed: nothing more spent
    redo = json.loads((tmp_path / "again" / "results.json").read_text())
    releases = [r for a in redo["analyses"] for q in a["queries"] for r in q["releases"].values()]
    assert releases and all(r["replayed"] for r in releases)
    first = doc["analyses"][2]["tables"][0]["rows"]
    assert redo["analyses"][2]["tables"][0]["rows"] == first  # the same answers
    assert before != after


def test_report_of_a_real_run_renders_in_chromium(network: LocalNetwork, tmp_path: Path) -> None:
    from bridgestat.coordinator.report.study_report import iter_plot_keys, load_results
    from tests.integration.chromium import ARTIFACTS, assert_renders_in_chromium, require_chromium

    require_chromium()  # before spending budget on a run whose report cannot be checked
    study = _write(tmp_path, _subset())
    done = _bridgestat("study", "run", study, "--network", network.network, "--out",
                       tmp_path / "out", "--run-id", "run-report", "--report")
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr  # e.g. matplotlib's layout warnings while rendering
    report = tmp_path / "out" / "report.html"
    plots = assert_renders_in_chromium(report, ARTIFACTS / "study-report.png")
    assert plots == list(iter_plot_keys(load_results(tmp_path / "out" / "results.json")))


def _predicted(stdout: str, ident: str) -> tuple[float, float]:
    """(network SE, MDE) that `study plan` printed for an analysis."""
    parts = next(x for x in stdout.splitlines() if x.startswith(ident + " ")).split()
    return float(parts[-2]), float(parts[-1])


def test_plan_predicts_precision_from_released_counts_and_a_target_sets_the_loss(
        network: LocalNetwork, tmp_path: Path) -> None:
    counted = {"name": "counts", "analyses": [
        {"id": "participants", "statistic": "count", "table": "participant", "epsilon": 0.5}]}
    first = _bridgestat("study", "run", _write(tmp_path, counted, "counts.yaml"), "--network",
                        network.network, "--out", tmp_path / "counts")
    assert first.returncode == 0, first.stderr
    doc = _subset()
    doc["sizes_from"] = "counts/results.json"  # relative to the study file
    doc["analyses"] = [a for a in doc["analyses"] if a["id"] == "a06_bridge_change"]
    for key in ("improvement", "share_epsilon"):  # the mean change alone: one query
        doc["analyses"][0].pop(key, None)
    before = _spent(network)
    plan = _bridgestat("study", "plan", _write(tmp_path, doc), "--network", network.network)
    assert plan.returncode == 0, plan.stderr
    assert "noisy participant count (participants) released earlier" in plan.stdout
    se, mde = _predicted(plan.stdout, "a06_bridge_change")
    assert 0 < se and mde == pytest.approx(2.8016 * se, rel=1e-3)
    assert _spent(network) == before  # planning spends nothing

    target = copy.deepcopy(doc)
    entry = target["analyses"][0]
    wanted = 1.2 * se
    del entry["epsilon"]
    entry["target_se"] = round(wanted, 6)
    study = _write(tmp_path, target)
    plan = _bridgestat("study", "plan", study, "--network", network.network)
    assert plan.returncode == 0, plan.stderr
    assert _predicted(plan.stdout, "a06_bridge_change")[0] == pytest.approx(wanted, rel=1e-3)
    line = next(x for x in plan.stdout.splitlines() if x.startswith("a06_bridge_change "))
    loss = float(line.split("epsilon ")[1].split()[0])
    assert 0 < loss < doc["analyses"][0]["epsilon"]  # a looser target needs less loss
    assert _spent(network) == before
    done = _bridgestat("study", "run", study, "--network", network.network, "--out",
                       tmp_path / "target")
    assert done.returncode == 0, done.stderr
    ran = json.loads((tmp_path / "target" / "results.json").read_text())
    query = ran["analyses"][0]["queries"][0]  # the change (then the share improved)
    assert query["query"]["epsilon"] == pytest.approx(loss, rel=1e-3)  # the run used it
    for member, spent in _spent(network).items():
        assert spent - before[member] == pytest.approx(query["query"]["epsilon"], rel=1e-9)


def test_a_run_stores_raw_and_adjusted_p_values_and_flags_d_z(network: LocalNetwork,
                                                                 tmp_path: Path) -> None:
    from statistics import NormalDist

    from bridgestat.coordinator.statistics.multiplicity import holm

    doc = _subset()
    doc["analyses"] = [a for a in doc["analyses"]
                       if a["id"] in ("a06_bridge_change", "a10_did_bridge")]
    doc["multiplicity"] = {"rule": "holm", "analyses": ["a06_bridge_change", "a10_did_bridge"]}
    done = _bridgestat("study", "run", _write(tmp_path, doc), "--network", network.network,
                       "--out", tmp_path / "out", "--report")
    assert done.returncode == 0, done.stderr
    ran = json.loads((tmp_path / "out" / "results.json").read_text())
    raw = []
    for analysis, table in zip(ran["analyses"], ("change", "did"), strict=True):
        [row] = [r for t in analysis["tables"] if t["name"] == table for r in t["rows"]
                 if r["member"] == "NETWORK"]
        raw.append(2 * NormalDist().cdf(-abs(row["estimate"] / row["se"])))
    tested = ran["multiplicity"]["analyses"]
    assert [t["id"] for t in tested] == ["a06_bridge_change", "a10_did_bridge"]
    assert [t["pvalue"] for t in tested] == pytest.approx(raw)
    assert [t["adjusted"] for t in tested] == pytest.approx(holm(raw))
    # the NETWORK d_z is flagged exactly as the rule says, from the public release figures
    from bridgestat.coordinator.statistics.pooling import d_z_flag
    query = ran["analyses"][0]["queries"][0]  # the change (then the share improved)
    cells = [r["cells"][0]["values"] for r in query["releases"].values()]
    flag = d_z_flag(sum(c["count"]["value"] for c in cells),
                    sum(c["sum_squares"]["variance"] for c in cells), 40.0)
    [network_row] = [r for r in ran["analyses"][0]["tables"][0]["rows"]
                     if r["member"] == "NETWORK"]
    assert network_row["d_z_status"] == ("ok" if flag is None else f"flagged: {flag}")
    report = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="multiplicity"' in report and "p adjusted (Holm" in report


def test_auto_losses_are_planned_and_spent_as_planned(network: LocalNetwork,
                                                      tmp_path: Path) -> None:
    doc = _subset()
    doc["analyses"] = [a for a in doc["analyses"]
                       if a["id"] in ("a05_paid_work", "a06_bridge_change")]
    doc["expected_size"] = 150
    doc["auto_budget"] = 1.0
    for analysis in doc["analyses"]:
        analysis["epsilon"] = "auto"
    doc["analyses"][1]["weight"] = 3
    study = _write(tmp_path, doc)
    before = _spent(network)
    plan = _bridgestat("study", "plan", study, "--network", network.network)
    assert plan.returncode == 0, plan.stderr
    assert _spent(network) == before
    assert "2 analyses share epsilon 0.8 per member" in plan.stdout  # 1.0 less share_epsilon
    shown = {}
    for ident in ("a05_paid_work", "a06_bridge_change"):
        line = next(x for x in plan.stdout.splitlines() if x.startswith(ident + " "))
        assert "(auto" in line
        shown[ident] = float(line.split("epsilon ")[1].split()[0])
    assert sum(shown.values()) == pytest.approx(1.0, abs=1e-3)
    done = _bridgestat("study", "run", study, "--network", network.network, "--out",
                       tmp_path / "out")
    assert done.returncode == 0, done.stderr
    ran = json.loads((tmp_path / "out" / "results.json").read_text())
    for analysis in ran["analyses"]:
        spent = sum(q["query"]["epsilon"] for q in analysis["queries"])
        assert spent == pytest.approx(shown[analysis["id"]], abs=1e-4)
    for member, spent in _spent(network).items():
        assert spent - before[member] == pytest.approx(sum(shown.values()), abs=1e-3)
