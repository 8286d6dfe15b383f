"""Study files: every refusal names the file, the analysis and the field, before any query."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from bridgestat.coordinator.studies.studyfile import (
    MemberBudget,
    StudyError,
    check_affordable,
    check_against,
    check_per_query,
    load_study,
    parse_study,
    plan_costs,
    schema_tables,
)
from bridgestat.node.schema import load_schema
from bridgestat.node.serde import schema_to_pb

TABLES = schema_tables(schema_to_pb(load_schema()))
STANDARD = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))


def _study(**changes: Any) -> dict[str, Any]:
    """The standard study with analysis a06_bridge_change (index 19) changed."""
    doc = copy.deepcopy(STANDARD)
    index = next(i for i, a in enumerate(doc["analyses"]) if a["id"] == "a06_bridge_change")
    doc["analyses"][index].update(changes)
    return doc


def _refused(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(StudyError, match=match):
        check_against(parse_study(doc, "study.yaml"), TABLES)


def test_the_standard_study_fits_the_default_schema() -> None:
    study = load_study(STANDARD_STUDY)
    check_against(study, TABLES)
    numbers = {a.number for a in study.analyses}
    assert numbers == set(range(1, 13)), "the standard study covers analyses 1-12"
    spend = study.spend()
    assert spend.epsilon > 0 and spend.rho > 0


@pytest.mark.parametrize(("changes", "match"), [
    ({"column": "bridge_totl"},
     r"study.yaml: analyses\[\d+\] \(a06_bridge_change\).column: unknown column 'bridge_totl'"),
    ({"column": "work_status"},
     r"\(a06_bridge_change\).column: a paired_change needs a numeric column"),
    ({"occasion": "month_18"},
     r"\(a06_bridge_change\).occasion: unknown occasion 'month_18'"),
    ({"statistic": "median"}, r"\(a06_bridge_change\).statistic: must be one of"),
    ({"epsilon": -1}, r"\(a06_bridge_change\).epsilon: must be a number > 0"),
    ({"clip": [-400, 40]}, r"\(a06_bridge_change\).clip: must lie inside \[-100, 100\]"),
    ({"colour": "red"}, r"\(a06_bridge_change\): unknown key 'colour'"),
    ({"bins": [1, 2]}, r"\(a06_bridge_change\): unknown key 'bins'"),
    ({"table": "goals"}, r"\(a06_bridge_change\).table: unknown table 'goals'"),
    ({"where": {"arm": ["treated"]}},
     r"\(a06_bridge_change\).where.arm: 'treated' is not a category of 'arm'"),
    ({"where": {"n_children": ["1"]}},
     r"\(a06_bridge_change\).where.n_children: 'n_children' is integer"),
    ({"meta": "yes"}, r"\(a06_bridge_change\).meta: must be true or false"),
    ({"improvement": "better"}, r"\(a06_bridge_change\).improvement: must be increase"),
])
def test_bad_analyses_are_refused_naming_analysis_and_field(changes: dict[str, Any],
                                                             match: str) -> None:
    _refused(_study(**changes), match)


def test_an_occasion_outside_the_month_bounds_is_refused() -> None:
    doc = _study(occasion="month_90")
    doc["occasions"]["month_90"] = {"month": 90, "window": 3}
    _refused(doc, r"\(a06_bridge_change\).occasion: window 87-93 lies outside "
                  r"months_since_intake \[0, 84\]")


def test_regression_terms_are_checked() -> None:
    doc = copy.deepcopy(STANDARD)
    index = next(i for i, a in enumerate(doc["analyses"]) if a["id"] == "a11_dose_response")
    doc["analyses"][index]["terms"][0] = {"column": "arm", "category": "treated"}
    _refused(doc, r"\(a11_dose_response\).terms\[0\].category: 'treated' is not a category")
    doc["analyses"][index]["terms"][0] = {"column": "total_sessions", "occasion": "month_12"}
    _refused(doc, r"\(a11_dose_response\).terms\[0\].occasion: 'total_sessions' belongs to "
                  "'participant', which has no occasions")
    doc["analyses"][index]["epsilon"] = 0.5
    with pytest.raises(StudyError, match=r"\(a11_dose_response\).epsilon: a regression "
                                         "spends rho"):
        parse_study(doc, "study.yaml")


def test_duplicate_ids_and_bad_files_are_refused(tmp_path: Path) -> None:
    doc = copy.deepcopy(STANDARD)
    doc["analyses"].append(copy.deepcopy(doc["analyses"][0]))
    with pytest.raises(StudyError, match="a01_household_type.*used more than once"):
        parse_study(doc, "study.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("analyses: [1, 2\n", encoding="utf-8")
    with pytest.raises(StudyError, match=f"{bad}: cannot read study file: not valid YAML"):
        load_study(bad)
    with pytest.raises(StudyError, match="cannot read study file"):
        load_study(tmp_path / "missing.yaml")


def _budget(member: str, spent: float = 0.0, total: float = 50.0,
            per_query: float = 2.5) -> MemberBudget:
    return MemberBudget(member, total, spent, 0.0, 1e-6, per_query)


def test_costs_add_rho_in_zcdp_and_refuse_what_a_member_cannot_afford() -> None:
    study = load_study(STANDARD_STUDY)
    costs = plan_costs(study, [_budget("a"), _budget("b", spent=45.0)])
    spend = study.spend()
    assert costs[0].study > spend.epsilon  # rho's (epsilon, delta) equivalent is added
    assert costs[0].affordable and not costs[1].affordable
    with pytest.raises(StudyError, match=r"more than b has left: .* nothing was spent"):
        check_affordable(study, costs)


def test_a_query_above_a_members_per_query_cap_is_refused() -> None:
    study = load_study(STANDARD_STUDY)
    with pytest.raises(StudyError, match=r"\(a10_ancova_bridge\).rho: rho 0.1 is epsilon "
                                         r"2.142 at delta 1e-06, which exceeds m's largest"):
        check_per_query(study, [_budget("m", per_query=2.0)])
