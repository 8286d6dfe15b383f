"""End to end: synth -> node processes on loopback -> coordinator API -> pooled truth.

The synthetic truth is the exact sample quantity over each member's participants. A DP
estimate differs from it only by DP noise. That noise comes from OpenSSL through OpenDP and
cannot be seeded, so every run draws afresh: the tolerance is set from the Laplace tail,
P(|X| > k sd) = exp(-k sqrt 2) (sums and ratios of Laplace draws have lighter tails), at a
per-check false-alarm rate ALPHA small enough for the ~40 checks here (Bonferroni: the file
fails by chance with probability under 1e-4).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from bridgestat.coordinator.api import NETWORK, Network
from bridgestat.coordinator.client.query import Occasion
from bridgestat.coordinator.demo import local
from tests.integration.conftest import LocalNetwork, local_network

MONTH_12 = Occasion.month(12, 3)
CLIP = (-40.0, 40.0)  # public bounds of the 12-month Bridge change (the synthetic SD is 12)
ALPHA = 2.5e-6
K = math.log(1 / ALPHA) / math.sqrt(2)  # about 9.1 DP standard errors
PAID = ["paid_with_support", "paid_part_time", "paid_full_time", "self_employed"]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with local_network(tmp_path_factory.mktemp("network"), members=5, seed=7,
                       total_epsilon=20.0, max_per_query=2.0) as running:
        yield running


def _within(row: pd.Series, truth: float, what: str) -> None:
    assert row["status"] == "ok", row["status"]
    assert abs(row["estimate"] - truth) <= K * row["se_dp"], (what, row.to_dict(), truth)
    assert row["ci_low"] < row["estimate"] < row["ci_high"]


def _samples(net: LocalNetwork) -> dict[str, dict[str, Any]]:
    samples = {m["name"]: m["sample"] for m in net.truth["members"]}
    samples[NETWORK] = net.truth["network"]["sample"]
    return samples


def test_pooled_bridge_change_recovers_truth(network: LocalNetwork) -> None:
    with Network.from_file(network.root / "network.yaml") as net:
        frame = net.paired_change("assessment", "bridge_total", occasion=MONTH_12, epsilon=1.0,
                                  clip=CLIP)
    assert list(frame.member) == [m.name for m in network.members] + [NETWORK]
    for member, sample in _samples(network).items():
        row = frame[frame.member == member].iloc[0]
        _within(row, sample["bridge_change"]["all"]["mean"], f"change {member}")
        assert row["loss"] == pytest.approx(1.0)
    pooled = frame[frame.member == NETWORK].iloc[0]
    truth = network.truth["network"]["sample"]["bridge_change"]["all"]
    # five noisy counts, each Laplace with scale 1 / (0.2 * 1.0) = 5: variance 2 * 5^2
    assert abs(pooled["n"] - truth["n"]) <= K * (5 * 2 * 5.0**2) ** 0.5
    d_z_true = truth["mean"] / truth["sd"]
    assert abs(pooled["d_z"] - d_z_true) <= K * pooled["d_z_se"]


def test_group_by_arm_recovers_each_arm(network: LocalNetwork) -> None:
    with Network.from_file(network.root / "network.yaml") as net:
        frame = net.paired_change("assessment", "bridge_total", occasion=MONTH_12, epsilon=1.0,
                                  group_by=["arm"], clip=CLIP)
    pooled = frame[frame.member == NETWORK].set_index("arm")
    truth = network.truth["network"]["sample"]["bridge_change"]
    for arm in ("mobility_mentoring", "comparison"):
        _within(pooled.loc[arm], truth[arm]["mean"], f"arm {arm}")


def test_intake_mean_and_outcome_shares_recover_truth(network: LocalNetwork) -> None:
    # Epsilon 1, so the count gets 0.2 (discrete Laplace scale 5): the smallest member has 83
    # participants, and a mean is estimable only if its noisy count exceeds 1, which fails
    # with probability e^(-0.2 * 82) / (1 + e^-0.2) ~ 4e-8. At epsilon 0.5 (scale 10) that was
    # 1.4e-4, above this file's false-alarm budget, and CI once drew a count of -27.
    with Network.from_file(network.root / "network.yaml") as net:
        intake = net.mean("assessment", "bridge_total", epsilon=1.0)
        paid = net.proportion("assessment", "work_status", PAID, occasion=MONTH_12, epsilon=0.5)
        households = net.histogram("participant", "household_type", epsilon=0.5)
    samples = _samples(network)
    for member, sample in samples.items():
        _within(intake[intake.member == member].iloc[0], sample["intake_bridge_mean"], member)
        _within(paid[paid.member == member].iloc[0], sample["paid_work_share_12m"], member)
    pooled = households[households.member == NETWORK].set_index("category")
    for category, share in samples[NETWORK]["household_type_share"].items():
        _within(pooled.loc[category], share, f"household {category}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgestat.coordinator.cli.main", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_info_and_query(network: LocalNetwork) -> None:
    net_file = str(network.root / "network.yaml")
    info = _cli("info", "--network", net_file, "--json")
    assert info.returncode == 0, info.stderr
    records = json.loads(info.stdout)
    assert [r["member"] for r in records] == [m.name for m in network.members]
    assert all(r["reachable"] and r["schema"].endswith("1.0.0") for r in records)
    query = _cli("query", "--network", net_file, "paired_change", "assessment", "bridge_total",
                 "--occasion", "12:9-15", "--epsilon", "0.5", "--group-by", "arm", "--json")
    assert query.returncode == 0, query.stderr
    rows = json.loads(query.stdout)
    assert {(r["member"], r["arm"]) for r in rows} >= {(NETWORK, "mobility_mentoring"),
                                                       (NETWORK, "comparison")}
    table = _cli("query", "--network", net_file, "mean", "assessment", "bridge_total")
    assert table.returncode == 0 and "NETWORK" in table.stdout and "ci_low" in table.stdout
    bad = _cli("query", "--network", net_file, "mean", "assessment", "bridge_total",
               "--occasion", "soon")
    assert bad.returncode == 2 and "occasion" in bad.stderr


def test_a_stopped_member_is_named_and_the_rest_are_pooled(network: LocalNetwork) -> None:
    victim = network.members[2]
    local.stop_nodes([network.processes[2]])
    with Network.from_file(network.root / "network.yaml", timeout=5.0) as net:
        frame = net.mean("assessment", "bridge_total", epsilon=1.0)  # see the intake test
        info = net.info()
    assert list(frame.member) == [m.name for m in network.members] + [NETWORK]  # network order
    row = frame[frame.member == victim.name].iloc[0]
    assert row["status"].startswith("UNAVAILABLE")
    assert pd.isna(row["estimate"])
    pooled = frame[frame.member == NETWORK].iloc[0]
    assert pooled["status"] == "ok"
    others = [m for m in network.truth["members"] if m["name"] != victim.name]
    n_true = sum(m["n_participants"] for m in others)
    # four noisy counts, each Laplace with scale 1 / (0.2 * 1.0) = 5: variance 2 * 5^2
    assert abs(pooled["n"] - n_true) <= K * (4 * 2 * 5.0**2) ** 0.5
    truth = sum(m["sample"]["intake_bridge_mean"] * m["n_participants"] for m in others) / n_true
    _within(pooled, truth, "pooled without the stopped member")
    assert not bool(info.set_index("member").loc[victim.name, "reachable"])
