"""A study's multiplicity rule: checked when the file is read, applied to NETWORK effects."""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import pytest
import yaml

from bridgestat.coordinator.statistics import multiplicity
from bridgestat.coordinator.studies.results_doc import validate_results
from bridgestat.coordinator.studies.runner import STANDARD_STUDY, multiplicity_doc
from bridgestat.coordinator.studies.studyfile import MultiplicitySpec, StudyError, parse_study


def _doc(**spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
    doc["multiplicity"] = spec
    return doc


def test_the_rule_and_its_analyses_are_read() -> None:
    study = parse_study(_doc(rule="bh", analyses=["a06_bridge_change", "a10_did_bridge",
                                                  "a09_meta_paid_work"]), "s.yaml")
    assert study.multiplicity is not None
    assert study.multiplicity.rule == "benjamini-hochberg"


@pytest.mark.parametrize(("spec", "match"), [
    ({"rule": "bonferroni", "analyses": ["a06_bridge_change"]},
     r"multiplicity\.rule: must be one of holm, bh"),
    ({"rule": "holm", "analyses": []}, r"multiplicity\.analyses"),
    ({"rule": "holm", "analyses": ["a99"]}, r"multiplicity\.analyses\[0\]: no analysis 'a99'"),
    ({"rule": "holm", "analyses": ["a06_bridge_change", "a06_bridge_change"]},
     r"multiplicity\.analyses\[1\]: 'a06_bridge_change' is named twice"),
    ({"rule": "holm", "analyses": ["a02_bridge_intake"]},
     (r"multiplicity\.analyses\[0\]: 'a02_bridge_intake' is a mean, whose estimate has no "
     r"null value of 0")),
])
def test_a_bad_multiplicity_section_is_refused_naming_the_key(spec: dict[str, Any],
                                                              match: str) -> None:
    with pytest.raises(StudyError, match=r"s\.yaml: " + match):
        parse_study(_doc(**spec), "s.yaml")


def _effect(ident: str, kind: str, table: str, estimate: float | None, se: float,
            status: str = "ok", **labels: str) -> dict[str, Any]:
    rows = [{"member": "m1", "estimate": 9.0, "se": 1.0, "status": "ok", **labels},
            {"member": "NETWORK", "estimate": estimate, "se": se, "status": status,
             **labels}]
    return {"id": ident, "kind": kind, "tables": [{"name": table, "rows": rows}]}


@pytest.mark.parametrize("rule", ["holm", "benjamini-hochberg"])
def test_raw_and_adjusted_p_values_of_the_network_effects(rule: str) -> None:
    analyses = [_effect("a", "paired_change", "change", 2.0, 0.8),
                _effect("b", "did", "did", -0.5, 0.4),
                _effect("c", "compare", "comparison", 0.08, 0.03,
                        measure="risk_difference"),
                _effect("d", "paired_change", "change", None, 0.5,
                        status="not estimable: noisy n too small")]
    analyses[2]["tables"][0]["rows"].insert(0, {"member": "NETWORK", "measure": "log_odds_ratio",
                                                "estimate": 5.0, "se": 0.1, "status": "ok"})
    doc = multiplicity_doc(MultiplicitySpec(rule=rule, analyses=["a", "b", "c", "d"]),
                           analyses)
    raw = [2 * NormalDist().cdf(-abs(z)) for z in (2.0 / 0.8, 0.5 / 0.4, 0.08 / 0.03)]
    assert [r["pvalue"] for r in doc["analyses"][:3]] == pytest.approx(raw)
    adjusted = multiplicity.adjust([*raw, 1.0], rule)  # the failed effect counts as p = 1
    assert [r["adjusted"] for r in doc["analyses"][:3]] == pytest.approx(adjusted[:3])
    assert doc["analyses"][3]["pvalue"] is None and doc["analyses"][3]["adjusted"] is None
    assert doc["analyses"][3]["status"] == "NETWORK not estimable: noisy n too small"
    assert doc["rule"] == rule
    validate_results({"analyses": [], "multiplicity": doc})  # the results model takes it
