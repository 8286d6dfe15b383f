"""examples/researcher.ipynb, executed cell by cell in a real ipykernel kernel (nbclient)
against a real local network of node processes over mutual TLS.

The kernel's loop is running while the cells make blocking `Network` calls: this is what
failed with "Cannot run the event loop while another loop is running" before `Network` got a
loop of its own. After the notebook's cells, the test appends one probe cell that prints the
values the notebook computed as JSON; DP estimates are checked against the synthetic truth
with the tolerance of `test_end_to_end` (K DP standard errors, false-alarm rate 2.5e-6).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests.integration.conftest import LocalNetwork, local_network

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "researcher.ipynb"
ALPHA = 2.5e-6
K = math.log(1 / ALPHA) / math.sqrt(2)  # about 9.1 DP standard errors
CELL_TIMEOUT = 300  # seconds; the regression's bootstrap and a busy machine

PROBE = """
import json
def network_row(frame, **where):
    rows = frame[frame.member == NETWORK]
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return {k: (None if v != v else v) for k, v in rows.iloc[0].to_dict().items()}
fit = fits[NETWORK]
slope = next(c for c in fit.coefficients if c.name == "total_sessions")
print("PROBE " + json.dumps({
    "info_members": list(info.member), "reachable": bool(info.reachable.all()),
    "intake": network_row(intake), "intake_status": list(intake.status),
    "change": network_row(change), "change_status": list(change.status),
    "meta_k": meta.k, "meta_hksj": [meta.hksj.estimate, meta.hksj.ci_low, meta.hksj.ci_high],
    "risk_difference": network_row(comparison, measure="risk_difference"),
    "slope": [slope.estimate, slope.se], "async_members": list(before_after[1].member),
    "closed": net.closed}, default=float))
"""


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    # a regression at rho 0.1 is charged epsilon 2.45 (delta 1e-6): the cap allows it
    with local_network(tmp_path_factory.mktemp("notebook"), members=4, seed=21,
                       total_epsilon=20.0, max_per_query=2.5,
                       sizes=(300, 350, 400, 450)) as running:
        yield running


def _execute(notebook: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh python3 kernel (the venv's ipykernel); raises
    CellExecutionError naming the cell that raised."""
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return notebook


def _outputs(notebook: nbformat.NotebookNode, tag: str) -> list[dict[str, Any]]:
    cell = next(c for c in notebook.cells if tag in c.metadata.get("tags", []))
    return list(cell.outputs)


def _within(row: dict[str, Any], truth: float, what: str) -> None:
    assert row["status"] == "ok", (what, row)
    assert abs(row["estimate"] - truth) <= K * row["se_dp"], (what, row, truth)


def test_the_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_notebook_runs_in_a_kernel_against_a_real_network(
        network: LocalNetwork, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGESTAT_NETWORK", str(network.network))  # the kernel inherits it
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE))
    done = _execute(notebook, tmp_path)

    errors = [o for c in done.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
    printed = "".join(o.get("text", "") for o in done.cells[-1].outputs)
    probe = json.loads(printed.split("PROBE ", 1)[1])
    names = [m.name for m in network.members]
    assert probe["info_members"] == names and probe["reachable"]
    assert probe["async_members"] == names and probe["closed"]
    sample = network.truth["network"]["sample"]
    assert probe["intake_status"] == ["ok"] * (len(names) + 1)
    _within(probe["intake"], sample["intake_bridge_mean"], "intake mean")
    assert probe["change_status"] == ["ok"] * (len(names) + 1)
    _within(probe["change"], sample["bridge_change"]["all"]["mean"], "12-month change")
    low, estimate, high = probe["meta_hksj"][1], probe["meta_hksj"][0], probe["meta_hksj"][2]
    assert probe["meta_k"] == len(names) and low < estimate < high
    difference = probe["risk_difference"]
    assert difference["status"] == "ok" and math.isfinite(difference["estimate"])
    assert -1 <= difference["estimate"] <= 1 and difference["se"] > 0
    assert all(math.isfinite(v) for v in probe["slope"]) and probe["slope"][1] > 0

    forest = [o for o in _outputs(done, "forest") if o.output_type == "display_data"]
    images = [o.data["image/svg+xml"] for o in forest if "image/svg+xml" in o.data]
    assert len(images) == 1 and "<svg" in images[0] and "Random effects (HKSJ)" in images[0]
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for o in _outputs(done, "info"))
    assert all(name in shown for name in names)


def test_the_notebook_says_what_to_set_when_the_network_is_not_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGESTAT_NETWORK", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.raises(CellExecutionError, match="BRIDGESTAT_NETWORK is not set"):
        _execute(notebook, tmp_path)
