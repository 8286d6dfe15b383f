"""Meta-analysis and secure aggregation exclude each other (issue 13): a meta-analysis pools
each member's estimate, secure aggregation releases only the NETWORK sum. The study file,
the CLI and the Python API (`meta_from_table`) refuse the pair before any query, naming the
analysis and both fields."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from bridgestat.coordinator.cli import main as cli
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.secure import aggregation as secure
from bridgestat.coordinator.secure.aggregation import SecureResult
from bridgestat.coordinator.statistics.meta import MetaError
from bridgestat.coordinator.statistics.tables import meta_from_table
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from bridgestat.coordinator.studies.studyfile import StudyError, parse_study

STANDARD = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))


def _study(analysis: str, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(STANDARD)
    index = next(i for i, a in enumerate(doc["analyses"]) if a["id"] == analysis)
    doc["analyses"][index].update(changes)
    return doc


def test_study_file_refuses_meta_with_secure() -> None:
    with pytest.raises(StudyError, match=r"analyses\[\d+\] \(a02_bridge_intake\).meta: .*"
                                         r"meta: true and secure: true exclude each other in "
                                         r"a mean analysis"):
        parse_study(_study("a02_bridge_intake", meta=True, secure=True), "study.yaml")
    # each alone is accepted
    parse_study(_study("a02_bridge_intake", meta=True), "study.yaml")
    parse_study(_study("a02_bridge_intake", secure=True), "study.yaml")


def test_cli_refuses_meta_with_secure_before_any_query(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-network.yaml"  # never opened: the refusal comes first
    code = cli.main(["query", "--network", str(missing), "mean", "assessment",
                     "bridge_total", "--secure", "true", "--meta"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "query mean: --meta and --secure exclude each other" in err
    assert str(missing) not in err


def test_api_meta_from_a_secure_table_is_refused() -> None:
    query = Query("mean", "assessment", "bridge_total", 0.0, rho=0.1)
    result = SecureResult(query, "k", "s1", ("member-01", "member-02", "member-03"), (),
                          (), {}, threshold=3, colluding=1, aborted="a test abort")
    frame = secure.mean_table(result)
    assert list(frame.member) == [secure.NETWORK]
    with pytest.raises(MetaError, match="needs each member's estimate; this table comes "
                                        "from secure aggregation .mean, session s1"):
        meta_from_table(frame)
    # a plain table with the same rows is not refused for being secure
    plain = pd.DataFrame(frame.to_dict("records"))
    with pytest.raises(MetaError) as caught:
        meta_from_table(plain)
    assert "secure" not in str(caught.value)
