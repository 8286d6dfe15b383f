"""`epsilon: auto` chooses a mean's split too, and the study's queries carry it; a study's
own split and clip counts enter the prediction."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bridgestat.coordinator.statistics import planning, precision
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from bridgestat.coordinator.studies.studyfile import MemberBudget, parse_study, schema_tables
from bridgestat.node.schema import load_schema
from bridgestat.node.serde import schema_to_pb

TABLES = schema_tables(schema_to_pb(load_schema()))
MEMBERS = ("member-01", "member-02", "member-03")
SIZES = {"member-01": 150.0, "member-02": 90.0, "member-03": 240.0}
BUDGETS = tuple(MemberBudget(m, 50.0, 0.0, 0.0, 1e-6, 2.5) for m in MEMBERS)
AUTO = ("a02_bridge_intake", "a06_bridge_change")


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
    doc.update(sizes=SIZES, auto_budget=1.5)
    return doc


def _entry(doc: dict[str, Any], ident: str) -> dict[str, Any]:
    found: dict[str, Any] = next(a for a in doc["analyses"] if a["id"] == ident)
    return found


def _resolve(doc: dict[str, Any]) -> tuple[Any, Any, Any]:
    return precision.resolve(parse_study(doc, "study.yaml"), BUDGETS, TABLES)


def test_auto_chooses_the_planners_split_and_the_query_carries_it() -> None:
    doc = _doc()
    for ident in AUTO:
        _entry(doc, ident)["epsilon"] = "auto"
    study, found, auto = _resolve(doc)
    by_id = {a.id: a for a in study.analyses}
    sizes = tuple(SIZES[m] for m in MEMBERS)
    change = planning.PlanItem("c", planning.Kind.MEAN, sizes, -40, 40,
                               sd_weight=auto.sd_weights["a06_bridge_change"])
    best = planning.best_split(change)
    assert auto.splits["a06_bridge_change"] == best
    # the split holds the change's SD noise at the planner's target
    assert planning.sd_noise_share(change, [auto.losses["a06_bridge_change"]] * 3, best) \
        <= planning.SD_SHARE_TARGET * (1 + planning.CALIBRATION_TOLERANCE)
    # no planning mean: the count is weighted for a mean anywhere in the clip, not starved
    assert best.count > 3 * planning.MIN_COUNT_SHARE
    [query, *_] = [p.query for p in by_id["a06_bridge_change"].plan()]
    assert query.split == pytest.approx((best.count, best.sum, best.sum_squares))
    # the prediction shown is at the split sent, not the node's default
    shown = next(p for p in found if p.analysis == "a06_bridge_change")
    expected = planning.predict(change, [shown.epsilon] * 3, best)
    assert (shown.prediction.sampling, shown.prediction.dp) == (expected.sampling, expected.dp)
    # analyses that are not auto keep the node's default split (nothing sent)
    assert by_id["a08_debt_change"].plan()[0].query.split is None


def test_an_auto_mean_with_its_own_split_keeps_it() -> None:
    doc = _doc()
    for ident in AUTO:
        _entry(doc, ident)["epsilon"] = "auto"
    _entry(doc, "a06_bridge_change")["split"] = [0.2, 0.4, 0.4]
    study, _, auto = _resolve(doc)
    assert "a06_bridge_change" not in auto.splits
    change = next(a for a in study.analyses if a.id == "a06_bridge_change")
    assert change.plan()[0].query.split == (0.2, 0.4, 0.4)


def test_clip_counts_take_their_share_from_the_predicted_precision() -> None:
    doc = _doc()
    _entry(doc, "a06_bridge_change")["clip_counts"] = True
    _, with_counts, _ = _resolve(doc)
    _, without, _ = _resolve(_doc())
    [a, b] = [next(p for p in found if p.analysis == "a06_bridge_change")
              for found in (with_counts, without)]
    assert a.prediction.sampling == b.prediction.sampling
    epsilon = a.epsilon
    sizes = tuple(SIZES[m] for m in MEMBERS)
    item = planning.PlanItem("c", planning.Kind.MEAN, sizes, -40, 40)
    expected = planning.predict(item, [epsilon * (1 - planning.CLIP_SHARE)] * 3)
    assert a.prediction.dp == pytest.approx(expected.dp, rel=1e-12)


@pytest.mark.parametrize("split", [[0.2, 0.5, 0.2], [0, 0.5, 0.5], {"count": 0.5, "sum": 0.5}])
def test_a_bad_split_in_the_study_file_names_the_field(split: Any) -> None:
    doc = _doc()
    _entry(doc, "a06_bridge_change")["split"] = split
    with pytest.raises(Exception, match=r"a06_bridge_change\)\.split"):
        parse_study(doc, "study.yaml")


def test_a_paired_changes_planning_sd_becomes_its_d_z_reference() -> None:
    doc = _doc()
    _entry(doc, "a06_bridge_change")["planning"] = {"sd": 11.0}
    _entry(doc, "a08_debt_change")["planning"] = {"sd": 5.0}
    _entry(doc, "a08_debt_change")["reference_sd"] = 7.0  # its own wins
    study, _, _ = _resolve(doc)
    by_id = {a.id: a for a in study.analyses}
    assert by_id["a06_bridge_change"].params.reference_sd == 11.0
    assert by_id["a08_debt_change"].params.reference_sd == 7.0
    assert by_id["a07_earned_income_change"].params.reference_sd is None


@pytest.mark.parametrize("option", [{"clip_counts": True}, {"split": [0.2, 0.4, 0.4]}])
def test_secure_mode_takes_neither_option(option: dict[str, Any]) -> None:
    doc = _doc()
    _entry(doc, "a06_bridge_change").update(secure=True, meta=False, improvement=None,
                                           share_epsilon=None, **option)
    with pytest.raises(Exception, match=r"secure mode takes neither split nor clip_counts"):
        parse_study(doc, "study.yaml")
