"""Clip counts and a mean's split through the Python API and a study file, against real node
processes: the table's clipped columns per member and pooled, the loss charged, the split sent.

The true clipped counts are read from each member's CSV (synthetic data, seed 11); a noisy
count is within K DP standard errors of its truth (Laplace tail at ALPHA, as in test_kinds).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from bridgestat.coordinator.api import NETWORK, Network
from bridgestat.coordinator.client.network_file import load_network
from bridgestat.coordinator.studies import runner as study
from bridgestat.coordinator.studies.studyfile import Study, parse_study
from bridgestat.coordinator.web.app import Workspace, plan_study
from tests.integration.conftest import LocalNetwork, local_network

ALPHA = 2.5e-6
K = math.log(1 / ALPHA) / math.sqrt(2)  # about 9.1 DP standard errors
CLIP = (6.0, 30.0)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with local_network(tmp_path_factory.mktemp("clip-network"), members=3, seed=11,
                       total_epsilon=20.0, max_per_query=2.5) as running:
        yield running


def _truth(network: LocalNetwork) -> dict[str, tuple[int, int]]:
    out = {}
    for member in network.members:
        months = pd.read_csv(network.root / member.name / "participant.csv")[
            "months_in_program"].dropna()
        out[member.name] = (int((months < CLIP[0]).sum()), int((months > CLIP[1]).sum()))
    return out


def _spent(network: LocalNetwork) -> dict[str, float]:
    with Network.from_file(network.network) as net:
        info = net.info()
    return dict(zip(info.member, info.epsilon_spent, strict=True))


def test_the_mean_table_shows_clipped_counts_per_member_and_pooled(network: LocalNetwork
                                                                   ) -> None:
    before = _spent(network)
    with Network.from_file(network.network) as net:
        frame = net.mean("participant", "months_in_program", clip=CLIP, clip_counts=True,
                         epsilon=1.0)
    after = _spent(network)
    assert all(after[m] - before[m] == pytest.approx(1.0, rel=1e-9) for m in before)
    truth = _truth(network)
    rows = frame.set_index("member")
    for member, (below, above) in truth.items():
        row = rows.loc[member]
        assert abs(row.clipped_below - below) <= K * row.clipped_below_se
        assert abs(row.clipped_above - above) <= K * row.clipped_above_se
        assert row.clipped_share == pytest.approx(
            (row.clipped_below + row.clipped_above) / row.n)
    pooled = rows.loc[NETWORK]
    members = rows.drop(index=NETWORK)
    assert pooled.clipped_below == pytest.approx(members.clipped_below.sum())
    assert pooled.clipped_above_se == pytest.approx(math.sqrt((members.clipped_above_se ** 2).sum()))
    assert abs(pooled.clipped_below - sum(b for b, _ in truth.values())) <= \
        K * pooled.clipped_below_se


def test_a_mean_without_clip_counts_has_no_clipped_columns(network: LocalNetwork) -> None:
    with Network.from_file(network.network) as net:
        frame = net.mean("participant", "months_in_program", clip=CLIP, epsilon=0.2)
    assert "clipped_below" not in frame


def test_a_study_sends_the_split_and_clip_counts_of_a_paired_change(
        network: LocalNetwork, tmp_path: pytest.TempPathFactory) -> None:
    doc = {"name": "clip", "occasions": {"month_12": {"month": 12, "window": 3}}, "analyses": [
        {"id": "c1", "statistic": "paired_change", "table": "assessment",
         "column": "bridge_total", "occasion": "month_12", "clip": [-20, 20], "epsilon": 1.0,
         "split": {"count": 0.1, "sum": 0.5, "sum_squares": 0.4}, "clip_counts": True}]}
    checked = parse_study(doc, "clip.yaml")
    with Network.from_file(network.network) as net:
        ran = study.run(checked, net, tmp_path, run_id="clip", echo=lambda _: None)
    [analysis] = ran["analyses"]
    rows = analysis["tables"][0]["rows"]
    assert all("clipped_below" in row for row in rows)
    [query] = analysis["queries"]
    assert query["query"]["split"] == [0.1, 0.5, 0.4] and query["query"]["clip_counts"] is True


def test_the_workspace_plan_resolves_targets_and_auto_like_study_plan(
        network: LocalNetwork, tmp_path: Path) -> None:
    """The web workspace's plan (plan_study) turns target_se and epsilon: auto into the same
    losses and splits as `bridgestat study plan`, and keeps the study's other settings."""
    doc = {"name": "auto", "auto_budget": 1.0, "expected_size": 150,
           "occasions": {"month_12": {"month": 12, "window": 3}}, "analyses": [
               {"id": "m1", "statistic": "mean", "table": "assessment",
                "column": "bridge_total", "target_se": 1.5},
               {"id": "c1", "statistic": "paired_change", "table": "assessment",
                "column": "bridge_total", "occasion": "month_12", "clip": [-20, 20],
                "epsilon": "auto"},
               {"id": "c2", "statistic": "mean", "table": "participant",
                "column": "months_in_program", "epsilon": "auto", "weight": 2}]}
    checked = parse_study(doc, "auto.yaml")
    with Network.from_file(network.network) as net:
        cli = study.plan(checked, net).study
    spec = load_network(network.network)
    workspace = Workspace.open(network.network, tmp_path / "web", "en",
                               insecure=spec.tls is None)

    async def web_plan() -> Study:
        try:
            return (await plan_study(workspace, checked))[3]
        finally:
            await workspace.client().aclose()

    web = asyncio.run(web_plan())
    assert web.auto_budget == 1.0 and web.expected_size == 150
    for a, b in zip(cli.analyses, web.analyses, strict=True):
        assert a.params.epsilon == b.params.epsilon
        assert getattr(a.params, "split", None) == getattr(b.params, "split", None)
    assert all(isinstance(a.params.epsilon, float) for a in web.analyses)
    assert web.analyses[1].params.split is not None  # auto chose the change's split
