"""A study's predicted precision and target losses, against planning's own functions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridgestat.coordinator.statistics import planning, precision
from bridgestat.coordinator.studies.runner import STANDARD_STUDY, StudyPlan
from bridgestat.coordinator.studies.studyfile import (
    MemberBudget,
    StudyError,
    parse_study,
    plan_costs,
    schema_tables,
)
from bridgestat.node.schema import load_schema
from bridgestat.node.serde import schema_to_pb

TABLES = schema_tables(schema_to_pb(load_schema()))
MEMBERS = ("member-01", "member-02", "member-03")
SIZES = {"member-01": 150.0, "member-02": 90.0, "member-03": 240.0}


def _budgets(cap: float = 2.5, total: float = 50.0, spent: float = 0.0
             ) -> tuple[MemberBudget, ...]:
    return tuple(MemberBudget(m, total, spent, 0.0, 1e-6, cap) for m in MEMBERS)


def _doc(**top: Any) -> dict[str, Any]:
    doc = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
    doc.update(top)
    return doc


def _analysis(doc: dict[str, Any], ident: str) -> dict[str, Any]:
    found: dict[str, Any] = next(a for a in doc["analyses"] if a["id"] == ident)
    return found


def _plan(doc: dict[str, Any], source: str = "study.yaml",
          budgets: tuple[MemberBudget, ...] = _budgets()) -> StudyPlan:
    study, predicted, auto = precision.resolve(parse_study(doc, source), budgets, TABLES)
    return StudyPlan(study, budgets, tuple(plan_costs(study, budgets)), {}, TABLES, predicted,
                     auto)


def _line(text: str, ident: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(ident + " "))


def test_plan_prints_planning_predictions_of_the_network_se_and_mde() -> None:
    shown = _plan(_doc(sizes=SIZES))
    text = shown.format()
    sizes = tuple(SIZES[m] for m in MEMBERS)
    # a06: paired change of bridge_total, clip [-40, 40], at the file's epsilon
    epsilon = _analysis(_doc(), "a06_bridge_change")["epsilon"]
    change = planning.PlanItem("a06", planning.Kind.MEAN, sizes, -40, 40)
    expected = planning.predict(change, [epsilon] * 3)
    line = _line(text, "a06_bridge_change")
    assert f"{expected.se:.4g}" in line and f"{expected.mde:.4g}" in line
    assert expected.mde == pytest.approx(planning.MDE_FACTOR * expected.se)
    # a02: the intake mean over the schema's bounds, epsilon 0.2
    column = TABLES["assessment"].columns["bridge_total"]
    mean = planning.PlanItem("a02", planning.Kind.MEAN, sizes, column.lower, column.upper)
    assert f"{planning.predict(mean, [0.2] * 3).se:.4g}" in _line(text, "a02_bridge_intake")
    # a histogram is not planned; the footnote says why and where the sizes come from
    assert "—" in _line(text, "a01_household_type")
    assert "sizes declared in the study file: a02_bridge_intake" in text
    assert "planning does not cover a histogram" in text


def test_a_proportions_cells_and_a_risk_difference_follow_the_schema() -> None:
    doc = _doc(expected_size=200)
    _analysis(doc, "a09_meta_paid_work")["planning"] = {"share": 0.4, "share_other": 0.3}
    found = {p.analysis: p for p in _plan(doc).precision}
    # a02_debt_step_low: bins [3] of debt_step -> 2 cells, one counted in the share
    share = planning.PlanItem("p", planning.Kind.PROPORTION, (200.0,) * 3, cells_in=1,
                              cells_out=1)
    assert found["a02_debt_step_low"].se == pytest.approx(planning.predict(share, [0.1] * 3).se)
    rd = planning.PlanItem("rd", planning.Kind.RISK_DIFFERENCE, (100.0,) * 3, share=0.4,
                           share_other=0.3, sizes_other=(100.0,) * 3, cells_in=4,
                           cells_out=len(TABLES["assessment"].columns["work_status"]
                                         .categories) - 4)
    assert found["a09_meta_paid_work"].se == pytest.approx(planning.predict(rd, [0.3] * 3).se)


def test_sizes_come_from_the_analysis_then_the_study_then_an_earlier_release(
        tmp_path: Path) -> None:
    earlier = {"format": "bridgestat-study-results/1", "analyses": [
        {"id": "counted", "kind": "count", "spec": {"table": "participant"},
         "tables": [{"rows": [{"member": m, "estimate": 300.0 + i, "status": "ok"}
                              for i, m in enumerate(MEMBERS)]
                     + [{"member": "NETWORK", "estimate": 903.0, "status": "ok"}]}]},
        {"id": "a06_bridge_change", "kind": "paired_change", "spec": {},
         "tables": [{"rows": [{"member": m, "n": 120.0 + i, "status": "ok"}
                              for i, m in enumerate(MEMBERS)]}]}]}
    (tmp_path / "results.json").write_text(json.dumps(earlier), encoding="utf-8")
    doc = _doc(sizes_from="results.json")
    _analysis(doc, "a02_bridge_intake")["expected_size"] = {m: 80 for m in MEMBERS}
    found = {p.analysis: p for p in _plan(doc, str(tmp_path / "s.yaml")).precision}
    assert found["a02_bridge_intake"].sizes_source == "expected_size of the analysis"
    assert found["a06_bridge_change"].sizes_source.startswith("noisy n of a06_bridge_change")
    assert found["a04_goals_set"].sizes_source.startswith("noisy participant count (counted)")
    item = planning.PlanItem("x", planning.Kind.MEAN, (120.0, 121.0, 122.0), -40, 40)
    epsilon = _analysis(doc, "a06_bridge_change")["epsilon"]
    assert found["a06_bridge_change"].se == pytest.approx(
        planning.predict(item, [epsilon] * 3).se)
    assert _plan(_doc()).precision[5].reason == precision.NO_SIZES
    with pytest.raises(StudyError, match=r"sizes_from: cannot read"):
        _plan(_doc(sizes_from="absent.json"), str(tmp_path / "s.yaml"))


def _target(field: str, value: float) -> dict[str, Any]:
    doc = _doc(sizes=SIZES)
    entry = _analysis(doc, "a06_bridge_change")
    del entry["epsilon"]
    entry[field] = value
    return doc


@pytest.mark.parametrize(("field", "value"), [("target_se", 1.2), ("target_mde", 3.0)])
def test_a_target_precision_becomes_the_loss_planning_finds(field: str, value: float) -> None:
    shown = _plan(_target(field, value))
    a06 = next(a for a in shown.study.analyses if a.id == "a06_bridge_change")
    item = planning.PlanItem("a06", planning.Kind.MEAN, tuple(SIZES[m] for m in MEMBERS),
                             -40, 40)
    loss = (planning.loss_for_se(item, value) if field == "target_se"
            else planning.loss_for_mde(item, value))[0]
    assert a06.params.epsilon == pytest.approx(loss)
    assert a06.plan()[0].query.epsilon == pytest.approx(loss)  # what the run sends
    got = next(p for p in shown.precision if p.analysis == "a06_bridge_change")
    reached = got.se if field == "target_se" else got.mde
    assert reached == pytest.approx(value, rel=1e-6)
    assert f"{field} {value:g}" in _line(shown.format(), "a06_bridge_change")


def test_a_target_no_member_can_pay_is_refused_naming_analysis_and_field() -> None:
    with pytest.raises(StudyError, match=r"a06_bridge_change\)\.target_se: 0\.62 needs epsilon "
                                         r"[\d.]+ per member, more than member-01's largest "
                                         r"loss per query \(2\.5\)"):
        _plan(_target("target_se", 0.62))  # the SE without DP noise is 0.609
    with pytest.raises(StudyError, match=r"\.target_mde: 3 needs epsilon [\d.]+ per member, "
                                         r"more than member-01 has left"):
        _plan(_target("target_mde", 3.0), budgets=_budgets(total=10.0, spent=9.8))
    with pytest.raises(StudyError, match=r"\.target_se: .*not above the SE without DP noise"):
        _plan(_target("target_se", 0.6))
    doc = _target("target_se", 1.0)
    del doc["sizes"]
    with pytest.raises(StudyError, match=r"\.target_se: no expected sizes"):
        _plan(doc)


def test_target_fields_are_checked_when_the_file_is_read() -> None:
    doc = _target("target_se", 1.0)
    _analysis(doc, "a06_bridge_change")["epsilon"] = 1.0
    with pytest.raises(StudyError, match=r"a06_bridge_change\): .*give one of epsilon, "
                                         r"target_se, target_mde, not epsilon and target_se"):
        parse_study(doc, "study.yaml")
    doc = _doc()
    _analysis(doc, "a10_ancova_bridge")["target_se"] = 1.0
    with pytest.raises(StudyError, match=r"a10_ancova_bridge\): unknown key 'target_se'"):
        parse_study(doc, "study.yaml")
    study = parse_study(_target("target_se", 1.0), "study.yaml")
    with pytest.raises(StudyError, match=r"target_se and the members' sizes: plan"):
        study.spend()


AUTO = ("a02_bridge_intake", "a06_bridge_change", "a05_paid_work")


def _auto(budget: float, weights: dict[str, float] | None = None) -> dict[str, Any]:
    doc = _doc(sizes=SIZES, auto_budget=budget)
    for ident in AUTO:
        _analysis(doc, ident)["epsilon"] = "auto"
        if weights and ident in weights:
            _analysis(doc, ident)["weight"] = weights[ident]
    return doc


def test_auto_losses_follow_the_cube_root_rule_within_the_budget() -> None:
    shown = _plan(_auto(1.5, {"a06_bridge_change": 4.0}))
    assert shown.auto is not None
    chosen = {a.id: float(a.params.epsilon) for a in shown.study.analyses if a.id in AUTO}
    share_epsilon = _analysis(_doc(), "a06_bridge_change")["share_epsilon"]
    assert shown.auto.pool == pytest.approx(1.5 - share_epsilon)
    assert sum(chosen.values()) <= shown.auto.pool
    assert sum(chosen.values()) == pytest.approx(shown.auto.pool, rel=1e-3)
    # the rule: loss proportional to (w C / scale^2)^(1/3), C the DP variance at loss 1
    items = {i: next(p for p in shown.precision if p.analysis == i) for i in AUTO}
    assert all(items[i].epsilon == chosen[i] for i in AUTO)
    sizes = tuple(SIZES[m] for m in MEMBERS)
    # C with each mean's calibrated SD weight (its SD term) at the split the query carries
    weights, splits = shown.auto.sd_weights, shown.auto.splits
    change = planning.PlanItem("c", planning.Kind.MEAN, sizes, -40, 40, weight=4.0,
                               sd_weight=weights["a06_bridge_change"])
    intake = planning.PlanItem("i", planning.Kind.MEAN, sizes, 0, 100,
                               sd_weight=weights["a02_bridge_intake"])

    def at_one(item: planning.PlanItem, ident: str) -> float:
        found = planning.predict(item, [1.0] * 3, splits.get(ident, planning.HAND_SPLIT))
        return found.criterion - found.sampling

    ratio = ((4.0 * at_one(change, "a06_bridge_change") / change.scale**2)
             / (at_one(intake, "a02_bridge_intake") / intake.scale**2)) ** (1 / 3)
    assert chosen["a06_bridge_change"] / chosen["a02_bridge_intake"] == pytest.approx(
        ratio, rel=1e-3)
    # every mean's SD is held at the target unless its weight reached the top (the SD's
    # noise counted as much as the mean's); an equal split either does worse on the
    # estimators or leaves an SD less determined (here: the latter)
    target = planning.SD_SHARE_TARGET * (1 + planning.CALIBRATION_TOLERANCE)
    top = planning.SD_WEIGHT_RANGE[1]
    assert all(0 < w <= top for w in shown.auto.sd_weights.values())
    assert shown.auto.sd_shares[0] <= target or top in shown.auto.sd_weights.values()
    assert shown.auto.weighted <= shown.auto.weighted_equal \
        or shown.auto.sd_shares[1] > shown.auto.sd_shares[0]
    text = shown.format()
    assert "(auto, weight 4)" in _line(text, "a06_bridge_change")
    assert "(auto)" in _line(text, "a02_bridge_intake")
    assert "3 analyses share epsilon" in text and "for an equal split" in text


def test_auto_is_bounded_by_the_tightest_member_and_the_per_query_cap() -> None:
    budgets = (MemberBudget("member-01", 50.0, 0.0, 0.0, 1e-6, 0.3),
               MemberBudget("member-02", 20.0, 10.0, 0.0, 1e-6, 2.5),
               MemberBudget("member-03", 50.0, 0.0, 0.0, 1e-6, 2.5))
    doc = _auto(100.0)
    shown = _plan(doc, budgets=budgets)
    chosen = [float(a.params.epsilon) for a in shown.study.analyses if a.id in AUTO]
    assert shown.auto is not None and shown.auto.pool < 2.0  # member-02's ~1.4 left, not 100
    assert max(chosen) <= 0.3  # member-01's cap
    assert all(c.affordable for c in shown.costs)
    uncapped = (MemberBudget("member-01", 50.0, 0.0, 0.0, 1e-6, 2.5), *budgets[1:])
    shown = _plan(_auto(100.0), budgets=uncapped)  # member-02's budget binds, no cap
    assert all(c.affordable for c in shown.costs)
    assert min(c.remaining_after for c in shown.costs) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(StudyError, match=r"a02_bridge_intake\)\.epsilon: auto has nothing "
                                         r"to share"):
        _plan(_auto(0.1))  # less than a06's share_epsilon


def test_auto_needs_a_budget_and_weight_needs_auto() -> None:
    doc = _auto(1.0)
    del doc["auto_budget"]
    with pytest.raises(StudyError, match=r"a02_bridge_intake\)\.epsilon: auto needs the "
                                         r"study's auto_budget"):
        parse_study(doc, "s.yaml")
    doc = _doc()
    _analysis(doc, "a02_bridge_intake")["weight"] = 2.0
    with pytest.raises(StudyError, match=r"weight: only with epsilon: auto"):
        parse_study(doc, "s.yaml")
    doc = _auto(1.0)
    _analysis(doc, "a01_household_type")["epsilon"] = "auto"
    with pytest.raises(StudyError, match=r"a01_household_type\)\.epsilon: must be a number > 0"):
        parse_study(doc, "s.yaml")
