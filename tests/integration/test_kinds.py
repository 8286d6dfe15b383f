"""Every analysis kind against real node processes, through a study file and the Python API.

One study file holds one analysis of every registered kind. It runs once (run id `kinds`);
then every kind's `Network` method is called with the same parameters and the study's keys,
so each node replays the study's release: the API and the study must give the same table
and spend nothing more. Where the synthetic truth has the quantity, the NETWORK (or member)
estimate must lie within K DP standard errors of it: the truth is the exact sample value, so
only DP noise separates them (tolerance as in test_end_to_end: Laplace tail at ALPHA).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from bridgestat.coordinator.analyses import REGISTRY
from bridgestat.coordinator.api import NETWORK, Network
from bridgestat.coordinator.client.query import INTAKE, Occasion, Term
from bridgestat.coordinator.statistics.tables import QueryResult, transition_table
from bridgestat.coordinator.studies import runner as study
from bridgestat.coordinator.studies.studyfile import parse_study
from tests.integration.conftest import LocalNetwork, local_network, spent

ALPHA = 2.5e-6
K = math.log(1 / ALPHA) / math.sqrt(2)  # about 9.1 DP standard errors
RUN = "kinds"
M12 = Occasion.month(12, 3)
PAID = ["paid_with_support", "paid_part_time", "paid_full_time", "self_employed"]

# (study entry, API arguments): the same analysis written both ways
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "count": ({"table": "participant", "epsilon": 0.5},
              {"table": "participant", "epsilon": 0.5}),
    "mean": ({"table": "assessment", "column": "bridge_total", "epsilon": 0.5},
             {"table": "assessment", "column": "bridge_total", "epsilon": 0.5}),
    "histogram": ({"table": "participant", "column": "household_type", "epsilon": 0.5},
                  {"table": "participant", "column": "household_type", "epsilon": 0.5}),
    "proportion": ({"table": "assessment", "column": "work_status", "categories": PAID,
                    "occasion": "month_12", "epsilon": 0.5},
                   {"table": "assessment", "column": "work_status", "categories": PAID,
                    "occasion": M12, "epsilon": 0.5}),
    "paired_change": ({"table": "assessment", "column": "bridge_total",
                       "occasion": "month_12", "clip": [-40, 40], "improvement": "increase",
                       "share_epsilon": 0.3, "epsilon": 0.6, "meta": True},
                      {"table": "assessment", "column": "bridge_total", "occasion": M12,
                       "clip": (-40, 40), "improvement": "increase", "share_epsilon": 0.3,
                       "epsilon": 0.6}),
    "share_improved": ({"table": "assessment", "column": "total_debt",
                        "occasion": "month_12", "improvement": "decrease", "epsilon": 0.3},
                       {"table": "assessment", "column": "total_debt", "occasion": M12,
                        "improvement": "decrease", "epsilon": 0.3}),
    "follow_up": ({"table": "assessment", "column": "bridge_total", "occasion": "month_12",
                   "epsilon": 0.5},
                  {"table": "assessment", "column": "bridge_total", "occasion": M12,
                   "epsilon": 0.5}),
    "transition": ({"table": "assessment", "column": "work_status", "occasion": "month_12",
                    "categories": PAID, "epsilon": 0.3},
                   {"table": "assessment", "column": "work_status", "occasion": M12,
                    "categories": PAID, "epsilon": 0.3}),
    "compare": ({"table": "assessment", "column": "work_status", "categories": PAID,
                 "occasion": "month_12", "epsilon": 0.3, "meta": True},
                {"table": "assessment", "column": "work_status", "categories": PAID,
                 "occasion": M12, "epsilon": 0.3}),
    "did": ({"table": "assessment", "column": "bridge_total", "occasion": "month_12",
             "clip": [-40, 40], "epsilon": 0.6, "meta": True},
            {"table": "assessment", "column": "bridge_total", "occasion": M12,
             "clip": (-40, 40), "epsilon": 0.6}),
    "regression": ({"table": "assessment", "rho": 0.05, "replicates": 200,
                    "terms": [{"column": "total_sessions", "clip": [0, 60]},
                              {"column": "bridge_total", "occasion": "month_12",
                               "baseline": "intake", "clip": [-40, 40]}]},
                   {"table": "assessment", "rho": 0.05, "replicates": 200,
                    "terms": [Term("total_sessions", clip=(0, 60)),
                              Term("bridge_total", occasion=M12, baseline=INTAKE,
                                   clip=(-40, 40))]}),
    "quantile": ({"table": "assessment", "column": "total_debt", "q": 0.5,
                  "candidates": {"from": 0, "to": 40000, "step": 1000}, "epsilon": 0.6},
                 {"table": "assessment", "column": "total_debt", "q": 0.5,
                  "candidates": [float(x) for x in range(0, 40001, 1000)], "epsilon": 0.6}),
}


def _study_doc() -> dict[str, Any]:
    return {"name": "every-kind", "occasions": {"month_12": {"month": 12, "window": 3}},
            "analyses": [{"id": f"k_{kind}", "statistic": kind, **entry}
                         for kind, (entry, _) in CASES.items()]}



@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with local_network(tmp_path_factory.mktemp("kinds-network"), members=3, seed=11,
                       total_epsilon=50.0, max_per_query=2.5) as running:
        yield running


@pytest.fixture(scope="module")
def ran(network: LocalNetwork, tmp_path_factory: pytest.TempPathFactory
        ) -> tuple[dict[str, Any], dict[str, float]]:
    """The study of every kind, run once; and what the members had spent after it."""
    out = tmp_path_factory.mktemp("kinds-out")
    checked = parse_study(_study_doc(), "every-kind.yaml")
    with Network.from_file(network.network) as net:
        doc = study.run(checked, net, out, run_id=RUN, echo=lambda _: None)
    return doc, spent(network)


def test_the_cases_cover_every_registered_kind() -> None:
    assert set(CASES) == set(REGISTRY)


def test_the_study_runs_every_kind_and_charges_what_the_kind_costs(
        ran: tuple[dict[str, Any], dict[str, float]]) -> None:
    doc, _ = ran
    checked = parse_study(_study_doc(), "every-kind.yaml")
    assert [a["kind"] for a in doc["analyses"]] == list(CASES)
    for analysis, planned in zip(doc["analyses"], checked.analyses, strict=True):
        assert analysis["tables"] and analysis["plots"], analysis["id"]
        cost = planned.spend()
        for member, loss in analysis["loss"].items():
            assert loss["epsilon"] == pytest.approx(cost.epsilon, rel=1e-9), (member, analysis)
            assert loss["rho"] == pytest.approx(cost.rho, rel=1e-9), (member, analysis)
        assert [q["key"] for q in analysis["queries"]] == \
            [f"{RUN}:{analysis['id']}:{p.suffix}" for p in planned.plan()]
    by_kind = {a["kind"]: a for a in doc["analyses"]}
    assert by_kind["paired_change"]["meta"], by_kind["paired_change"]["notes"]
    for kind in ("compare", "did"):  # too few members with a comparison arm: a note says so
        analysis = by_kind[kind]
        assert analysis["meta"] or any(n.startswith("meta-analysis not possible")
                                       for n in analysis["notes"]), analysis["notes"]


def _api_key(kind: str, arguments: dict[str, Any]) -> str:
    """The key under which the API sends the study's queries (see methods.query_key)."""
    single = len(REGISTRY[kind].plan(REGISTRY[kind].parse(**arguments))) == 1
    return f"{RUN}:k_{kind}" + (":0" if single else "")


@pytest.fixture(scope="module")
def api(network: LocalNetwork, ran: tuple[dict[str, Any], dict[str, float]]
        ) -> dict[str, Any]:
    """Every kind through its Network method, with the study's keys (replayed, free)."""
    with Network.from_file(network.network) as net:
        return {kind: getattr(net, kind)(**arguments, key=_api_key(kind, arguments))
                for kind, (_, arguments) in CASES.items()}


def test_the_api_replays_the_study_and_spends_nothing(
        network: LocalNetwork, ran: tuple[dict[str, Any], dict[str, float]],
        api: dict[str, Any]) -> None:
    doc, after_study = ran
    assert spent(network) == after_study
    tables = {a["kind"]: a["tables"][0] for a in doc["analyses"]}
    for kind, value in api.items():
        if kind == "regression":
            saved_fits = doc["analyses"][list(CASES).index(kind)]["regression"]
            assert set(value) == set(saved_fits)
            for member, fit in value.items():
                if isinstance(fit, str):
                    assert saved_fits[member] == {"status": fit}
                    continue
                estimates = [c["estimate"] for c in saved_fits[member]["coefficients"]]
                assert [c.estimate for c in fit.coefficients] == pytest.approx(estimates)
            continue
        frame = transition_table(value) if isinstance(value, QueryResult) else value
        saved = pd.DataFrame(tables[kind]["rows"], columns=tables[kind]["columns"])
        pd.testing.assert_frame_equal(_comparable(frame), _comparable(saved), check_dtype=False,
                                      obj=kind)


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """NaN and None alike (the results document writes both as null)."""
    return frame.astype(object).where(frame.notna(), None).reset_index(drop=True)


def _row(frame: pd.DataFrame, member: str = NETWORK, **cells: str) -> pd.Series:
    chosen = frame[frame.member == member]
    for column, value in cells.items():
        chosen = chosen[chosen[column] == value]
    assert len(chosen) == 1, (member, cells, frame)
    return chosen.iloc[0]


def _within(row: pd.Series, truth: float, what: str) -> None:
    assert row["status"] == "ok", (what, row["status"])
    assert abs(row["estimate"] - truth) <= K * row["se_dp"], (what, row.to_dict(), truth)


def test_network_estimates_recover_the_synthetic_truth(network: LocalNetwork,
                                                        api: dict[str, Any]) -> None:
    sample = network.truth["network"]["sample"]
    _within(_row(api["count"]), sample["n_participants"], "count")
    _within(_row(api["mean"]), sample["intake_bridge_mean"], "mean")
    _within(_row(api["proportion"]), sample["paid_work_share_12m"], "proportion")
    _within(_row(api["paired_change"]), sample["bridge_change"]["all"]["mean"], "change")
    _within(_row(api["follow_up"]), sample["share_12m"], "follow-up")
    for household, share in sample["household_type_share"].items():
        _within(_row(api["histogram"], category=household), share, household)


def test_member_did_recovers_each_members_arm_contrast(network: LocalNetwork,
                                                       api: dict[str, Any]) -> None:
    checked = 0
    for member in network.truth["members"]:
        change = member["sample"]["bridge_change"]
        row = _row(api["did"], member["name"])
        if row["status"] != "ok":
            continue  # a member without a comparison arm is named, not estimated
        truth = change["mobility_mentoring"]["mean"] - change["comparison"]["mean"]
        _within(row, truth, member["name"])
        checked += 1
    assert checked >= 1, api["did"]


def test_regression_and_quantile_give_network_rows(api: dict[str, Any]) -> None:
    fits = api["regression"]
    assert not isinstance(fits[NETWORK], str), fits
    assert str(_row(api["quantile"])["status"]).startswith("ok")
    assert _row(api["share_improved"])["status"] == "ok"
    assert set(_row(api["compare"], measure="risk_difference").index) >= {"estimate", "se"}
