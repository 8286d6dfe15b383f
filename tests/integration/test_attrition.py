"""Attrition made visible, against real node processes.

A synthetic network whose completers truly differ at intake (`intake_shift_followed`: the
intake Bridge score of those with a 12-month occasion is 6 points above that of those without)
runs a paired change and a follow-up analysis with `attrition_epsilon`. The truth is the exact
sample value recomputed from the members' files (`truth.json`): the pooled difference must lie
within 4 of its SEs (sampling and DP; the brief's band, generous for a sample truth), and the
noisy cell counts within K DP standard errors of the exact counts (K as in test_kinds: a
Laplace tail at 2.5e-6). Each member is charged exactly the losses asked, both disjoint cells
for one loss; a request the node or the study file refuses spends nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pandas as pd
import pytest

from bridgestat.coordinator.api import NETWORK, Network
from bridgestat.coordinator.client.query import INTAKE, Occasion, Query
from bridgestat.coordinator.demo import synth
from bridgestat.coordinator.report.study_report import report_html
from bridgestat.coordinator.studies import runner as study
from bridgestat.coordinator.studies.studyfile import parse_study
from tests.integration.conftest import LocalNetwork, local_network, spent

SHIFT = 6.0
ALPHA = 2.5e-6
K = math.log(1 / ALPHA) / math.sqrt(2)  # about 9.1 DP standard errors
M12 = Occasion.month(12, 3)
CHANGE = {"id": "change", "statistic": "paired_change", "table": "assessment",
          "column": "bridge_total", "occasion": "month_12", "clip": [-40, 40], "epsilon": 0.4,
          "attrition_epsilon": 0.6}
FOLLOWED = {"id": "followed", "statistic": "follow_up", "table": "assessment",
            "column": "bridge_total", "occasion": "month_12", "epsilon": 0.2,
            "attrition_epsilon": 0.5}


def _doc(*analyses: dict[str, Any]) -> dict[str, Any]:
    return {"name": "attrition", "occasions": {"month_12": {"month": 12, "window": 3}},
            "analyses": list(analyses)}



@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    selective = replace(synth.DEFAULT_NETWORK, intake_shift_followed=SHIFT)
    with local_network(tmp_path_factory.mktemp("attrition-network"), members=3, seed=29,
                       total_epsilon=5.0, max_per_query=1.0, sizes=[500, 350, 250],
                       network=selective) as running:
        yield running


@pytest.fixture(scope="module")
def ran(network: LocalNetwork, tmp_path_factory: pytest.TempPathFactory
        ) -> tuple[dict[str, Any], dict[str, float], dict[str, float]]:
    """The study, run once; what the members had spent before and after it."""
    before = spent(network)
    checked = parse_study(_doc(CHANGE, FOLLOWED), "attrition.yaml")
    with Network.from_file(network.network) as net:
        doc = study.run(checked, net, tmp_path_factory.mktemp("attrition-out"),
                        run_id="attrition", echo=lambda _: None)
    return doc, before, spent(network)


def _table(doc: dict[str, Any], analysis: str) -> pd.DataFrame:
    found = next(a for a in doc["analyses"] if a["id"] == analysis)
    table = next(t for t in found["tables"] if t["name"] == "attrition")
    return pd.DataFrame(table["rows"], columns=table["columns"])


def _row(frame: pd.DataFrame, member: str, cell: str) -> pd.Series:
    chosen = frame[(frame.member == member) & (frame.cell == cell)]
    assert len(chosen) == 1, (member, cell, frame)
    return chosen.iloc[0]


def test_the_pooled_difference_recovers_the_sample_truth(
        network: LocalNetwork, ran: tuple[dict[str, Any], dict[str, float], dict[str, float]]
) -> None:
    sample = network.truth["network"]["sample"]
    truth = sample["intake_bridge_mean_followed"] - sample["intake_bridge_mean_not_followed"]
    assert truth == pytest.approx(SHIFT, abs=2.0)  # the data do carry selective attrition
    for analysis in ("change", "followed"):
        frame = _table(ran[0], analysis)
        diff = _row(frame, NETWORK, "difference")
        assert diff["status"] == "ok", diff.to_dict()
        assert abs(diff["estimate"] - truth) <= 4 * diff["se"], (analysis, diff.to_dict(), truth)
        for cell, key in (("present", "intake_bridge_mean_followed"),
                          ("absent", "intake_bridge_mean_not_followed")):
            row = _row(frame, NETWORK, cell)
            assert abs(row["estimate"] - sample[key]) <= 4 * row["se"], (cell, row.to_dict())
        present, absent = _row(frame, NETWORK, "present"), _row(frame, NETWORK, "absent")
        assert diff["estimate"] == pytest.approx(present["estimate"] - absent["estimate"])
        assert diff["se"] == pytest.approx(math.hypot(present["se"], absent["se"]))


def test_each_member_splits_exactly_its_completers(
        network: LocalNetwork, ran: tuple[dict[str, Any], dict[str, float], dict[str, float]]
) -> None:
    """The noisy cell counts are the exact numbers with / without the 12-month occasion,
    up to DP noise (the count's noise SD is its se_dp scaled back: read from the release)."""
    frame = _table(ran[0], "change")
    for member in network.truth["members"]:
        exact = {"present": member["sample"]["n_12m"],
                 "absent": member["n_participants"] - member["sample"]["n_12m"]}
        for cell, n in exact.items():
            row = _row(frame, member["name"], cell)
            assert row["status"] == "ok", row.to_dict()
            # count noise at the count's share (0.2) of 0.6: scale 1 / 0.12, SD sqrt(2) / 0.12
            assert abs(row["n"] - n) <= K * math.sqrt(2) / (0.2 * 0.6), (member["name"], cell)


def test_each_member_is_charged_the_losses_asked_once(
        ran: tuple[dict[str, Any], dict[str, float], dict[str, float]]) -> None:
    doc, before, after = ran
    for analysis, asked in (("change", 0.4 + 0.6), ("followed", 0.2 + 0.5)):
        found = next(a for a in doc["analyses"] if a["id"] == analysis)
        for member, loss in found["loss"].items():
            assert loss["epsilon"] == pytest.approx(asked), (analysis, member)
    for member, now in after.items():
        assert now - before[member] == pytest.approx(1.0 + 0.7), member


def test_the_report_says_whether_completers_differ(
        ran: tuple[dict[str, Any], dict[str, float], dict[str, float]]) -> None:
    english, dutch = report_html(ran[0], "en"), report_html(ran[0], "nl")
    assert english.count("Attrition: at baseline, those with the follow-up occasion") == 2
    assert dutch.count("Uitval: bij de start hadden deelnemers met de vervolgmeting") == 2


def test_a_bad_split_is_refused_and_spends_nothing(network: LocalNetwork) -> None:
    before = spent(network)
    bad = {"no occasions": Query("mean", "participant", "total_sessions", 0.5,
                                 split_by_presence=M12),
           "not a mean": Query("paired_change", "assessment", "bridge_total", 0.5,
                               occasion=M12, baseline=INTAKE, split_by_presence=M12),
           "the occasion measured": Query("mean", "assessment", "bridge_total", 0.5,
                                          occasion=INTAKE, split_by_presence=INTAKE)}
    with Network.from_file(network.network) as net:
        for i, (why, query) in enumerate(bad.items()):
            result = net.run(query, key=f"bad-split-{i}")
            assert not result.releases, why
            for failure in result.failures.values():
                assert failure.code == "INVALID_ARGUMENT", (why, failure)
                assert "query.split_by_presence" in failure.message, (why, failure)
    with pytest.raises(ValueError, match="attrition_epsilon"):
        parse_study(_doc({**CHANGE, "group_by": ["arm"]}), "attrition.yaml")
    assert spent(network) == before
