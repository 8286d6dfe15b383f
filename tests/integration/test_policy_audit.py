"""Members' policies and the audit log over real gRPC (mutual TLS, two in-process nodes).

member-01 has a policy file: few statistics, grouping and filter columns, a yearly cap,
answers for pooling only and suppression of groups under 25; member-02 allows fewer filter
columns and nothing else. Refusals name the rule, spend nothing and are audited; releases are
audited with the caller and OpenDP's serialized measurements; `audit verify` passes until the
log is edited; small cells are suppressed; the coordinator withholds pooled-only rows and
still pools them.
"""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import opendp.prelude as dp
import pandas as pd
import pytest

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.network_file import TlsFiles
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.statistics.tables import WITHHELD, WITHHELD_NETWORK
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.engine import Engine
from bridgestat.node.service import NodeServer, build_node_server
from bridgestat.node.tls import load_server_tls
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

POLICIES = {
    "member-01": """
budget: {total_epsilon: 8, per_period: {period: year, epsilon: 2.5}, max_epsilon_per_query: 1}
statistics: [count, mean, histogram, paired_change]
group_by: [arm, gender, household_type]
filter: [arm, gender, age_band]
comparison: false
min_group_size: 25
""",
    "member-02": "filter: [arm, gender]\n",
}


@dataclass
class TwoMembers:
    root: Path
    configs: dict[str, Path]
    engines: dict[str, Engine]
    addresses: dict[str, str]
    tls: TlsFiles

    def stub(self, name: str = "member-01") -> pb_grpc.NodeServiceStub:
        channel = grpc.secure_channel(self.addresses[name], self.tls.channel_credentials(),
                                      options=[("grpc.ssl_target_name_override", name)])
        return pb_grpc.NodeServiceStub(channel)

    def audit(self, name: str = "member-01") -> list[dict[str, Any]]:
        path = self.configs[name].parent / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def members(tmp_path: Path) -> Iterator[TwoMembers]:
    synth.write_network(tmp_path, members=2, seed=7, sizes=[300, 200])
    written = local.write_configs(tmp_path, total_epsilon=10.0, max_per_query=1.0)
    servers: list[NodeServer] = []
    engines = {}
    for member in written:
        (member.config.parent / "policy.yaml").write_text(POLICIES[member.name])
        member.config.write_text(member.config.read_text() + "policy: policy.yaml\n")
        config = load_config(member.config)
        engines[member.name] = open_engine(config)
        servers.append(build_node_server(engines[member.name], member.address,
                                         tls=load_server_tls(config)))
        servers[-1].server.start()
    assert written[0].client_tls is not None
    try:
        yield TwoMembers(tmp_path, {m.name: m.config for m in written}, engines,
                         {m.name: m.address for m in written}, written[0].client_tls)
    finally:
        for server in servers:
            server.stop(None)


def _request(key: str, **query: Any) -> pb.RunQueryRequest:
    base: dict[str, Any] = {"statistic": pb.STATISTIC_MEAN, "table": "assessment",
                               "column": "bridge_total", "loss": pb.PrivacyLoss(epsilon=0.5)}
    base.update(query)
    return pb.RunQueryRequest(idempotency_key=key, query=pb.Query(**base))


def _node_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgestat.node.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False)


POLICY_REFUSALS = [
    ("statistic", _request("r1", statistic=pb.STATISTIC_QUANTILE, bin_edges=[20.0, 50.0],
                           quantile=0.5), grpc.StatusCode.PERMISSION_DENIED,
     "query.statistic: policy rule statistics:"),
    ("group by", _request("r2", group_by=["team"]), grpc.StatusCode.PERMISSION_DENIED,
     "query.group_by[0]: policy rule group_by: 'team' may not be grouped by"),
    ("filter", _request("r3", filters=[pb.Filter(category=pb.CategoryFilter(
        column="household_type", values=["single"]))]), grpc.StatusCode.PERMISSION_DENIED,
     "query.filters[0].column: policy rule filter:"),
    ("per-query cap", _request("r4", loss=pb.PrivacyLoss(epsilon=1.5)),
     grpc.StatusCode.PERMISSION_DENIED,
     "query.loss.epsilon: policy rule budget.max_epsilon_per_query:"),
]


def test_refusals_name_the_rule_spend_nothing_and_are_audited(members: TwoMembers) -> None:
    stub = members.stub()
    for case, request, code, start in POLICY_REFUSALS:
        with pytest.raises(grpc.RpcError) as caught:
            stub.RunQuery(request, timeout=10)
        assert caught.value.code() == code, case
        assert caught.value.details().startswith(start), caught.value.details()
    assert members.engines["member-01"].ledger.charges() == []
    entries = members.audit()
    assert [e["outcome"] for e in entries] == ["refused"] * len(POLICY_REFUSALS)
    assert all(e["caller"] == "coordinator" for e in entries)  # the certificate's name
    assert all(e["charged"]["exact"] == "0;0" and e["release"] is None for e in entries)
    error = entries[1]["error"]
    assert error["code"] == "PolicyError"
    assert error["message"].startswith("query.group_by[0]: policy rule group_by")


def test_the_yearly_cap_refuses_naming_its_rule(members: TwoMembers) -> None:
    stub = members.stub()
    for key in ("y1", "y2"):
        stub.RunQuery(_request(key, loss=pb.PrivacyLoss(epsilon=1.0)), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RunQuery(_request("y3", loss=pb.PrivacyLoss(epsilon=1.0)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "policy rule budget.per_period" in caught.value.details()
    info = stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10)
    assert info.budget.spent.epsilon == pytest.approx(2.0)
    assert info.budget.remaining.epsilon == pytest.approx(0.5)  # the year's rest binds
    assert info.budget.total.epsilon == 8.0  # the policy's total, tighter than the config's
    period = info.budget.period  # the current year's cap, for the coordinator's workspace
    assert (period.period, period.total.epsilon) == ("year", 2.5)
    assert period.name == str(datetime.datetime.now(datetime.UTC).year)
    assert (period.spent.epsilon, period.remaining.epsilon) == pytest.approx((2.0, 0.5))
    result = _node_cli("budget", "--config", str(members.configs["member-01"]))
    assert result.returncode == 0, result.stderr
    assert "spent epsilon 2 of 8, remaining 6" in result.stdout
    assert "(UTC): spent epsilon 2 of 2.5, remaining 0.5" in result.stdout


def test_release_is_audited_and_audit_verify_catches_an_edit(members: TwoMembers) -> None:
    stub = members.stub()
    reply = stub.RunQuery(_request("m1"), timeout=10)
    assert reply.pooled_only
    stub.RunQuery(_request("m1"), timeout=10)  # a retry: replayed, charged nothing
    released, replayed = members.audit()
    assert (released["outcome"], replayed["outcome"]) == ("released", "replayed")
    assert released["caller"] == "coordinator" and released["pooled_only"] is True
    assert released["query"]["column"] == "bridge_total"
    measured = released["measurement"]
    assert [m["components"] for m in measured] == [["count"], ["sum"], ["sum_squares"]]
    loss = sum(dp.deserialize(m["opendp"]).map(1)  # type: ignore[no-untyped-call]
               for m in measured)
    assert loss == pytest.approx(reply.charged.epsilon)
    cells = released["release"]["cells"]
    assert [v["value"] for v in cells[0]["values"]] == \
        [v.value for v in reply.release.cells[0].values]
    assert replayed["charged"]["exact"] == "0;0"
    config = str(members.configs["member-01"])
    ok = _node_cli("audit", "verify", "--config", config)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "2 entries, chain intact" in ok.stdout and "every committed charge" in ok.stdout
    shown = _node_cli("audit", "show", "--config", config, "--period", "year")
    assert shown.returncode == 0 and "coordinator" in shown.stdout
    path = members.configs["member-01"].parent / "audit.jsonl"
    path.write_text(path.read_text().replace('"caller":"coordinator"', '"caller":"someone"', 1))
    broken = _node_cli("audit", "verify", "--config", config)
    assert broken.returncode == 1
    assert "line 1: hash mismatch: the entry was edited" in broken.stdout


def test_small_cells_are_suppressed_on_the_noisy_count(members: TwoMembers) -> None:
    """member-01 has 176 female, 113 male, 7 'other' and 4 'unknown' participants."""
    reply = members.stub().RunQuery(_request(
        "h1", statistic=pb.STATISTIC_HISTOGRAM, table="participant", column="household_type",
        group_by=["gender"], loss=pb.PrivacyLoss(epsilon=1.0)), timeout=10)
    cells = {c.group[0].value: c for c in reply.release.cells}
    assert reply.release.min_group_size == 25
    assert {g for g, c in cells.items() if c.suppressed} == {"other", "unknown"}
    assert all(not cells[g].values for g in ("other", "unknown"))
    assert len(cells["female"].values) == 7  # six household types and (missing)
    assert reply.charged.epsilon == pytest.approx(1.0)  # post-processing: the loss stands
    stored = members.audit()[-1]["release"]
    assert [c["suppressed"] for c in stored["cells"]] == [False, False, True, True]


def _rows(frame: pd.DataFrame, member: str, **group: str) -> pd.DataFrame:
    keep = frame.member == member
    for column, value in group.items():
        keep &= frame[column] == value
    return frame[keep]


def test_coordinator_withholds_pooled_only_rows_and_still_pools_them(
        members: TwoMembers) -> None:
    with Network.from_file(members.root / "network.yaml") as net:
        means = net.mean("assessment", "bridge_total", epsilon=0.5)
        hist = net.histogram("participant", "household_type", epsilon=1.0, group_by=["gender"])
        one_member = net.count(epsilon=0.5, where={"age_band": ["28-35"]})
    by_member = means.set_index("member")
    assert by_member.loc["member-01", "status"] == WITHHELD
    assert math.isnan(float(by_member.loc["member-01", "estimate"]))
    assert by_member.loc["member-02", "status"] == "ok"
    assert by_member.loc["NETWORK", "status"] == "ok"  # member-01 (about 300) is pooled
    assert by_member.loc["NETWORK", "n"] > by_member.loc["member-02", "n"] + 200

    other = _rows(hist, "member-01", gender="other", category="single")
    assert other.status.iloc[0] == "suppressed by member policy (noisy n < 25; not pooled)"
    assert _rows(hist, "member-01", gender="female").status.eq(WITHHELD).all()
    pooled = _rows(hist, "NETWORK", gender="female", category="single")
    assert pooled.status.iloc[0] == "ok"  # member-01's cell is pooled though not shown
    assert pooled.n.iloc[0] > _rows(hist, "member-02", gender="female", category="single").n \
        .iloc[0] + 100
    # member-01's 'other' cell is left out; NETWORK has member-02's alone (tiny, noisy)
    assert not _rows(hist, "NETWORK", gender="other").status.str.startswith("nothing").any()

    assert "policy rule filter" in _rows(one_member, "member-02").status.iloc[0]
    assert _rows(one_member, "NETWORK").status.iloc[0] == WITHHELD_NETWORK
    assert verify_ok(members.configs["member-01"])


def verify_ok(config: Path) -> bool:
    result = _node_cli("audit", "verify", "--config", str(config))
    return result.returncode == 0


@pytest.mark.parametrize(("problem", "expected"), [
    ("policy", "policy.yaml: budget.per_period.period: must be one of year, quarter, month"),
    ("audit", ": audit: cannot use audit log"),
])
def test_bad_policy_or_torn_audit_log_stops_start_up(tmp_path: Path, problem: str,
                                                      expected: str) -> None:
    synth.write_network(tmp_path, members=1, seed=3, sizes=[60])
    config = local.write_configs(tmp_path, total_epsilon=3.0, max_per_query=1.0)[0].config
    if problem == "policy":
        (config.parent / "policy.yaml").write_text("budget: {per_period: {period: decade, "
                                                   "epsilon: 1}}\n")
        config.write_text(config.read_text() + "policy: policy.yaml\n")
    else:
        (config.parent / "audit.jsonl").write_text('{"seq": 1, "hash": "ab')  # no newline
    result = _node_cli("serve", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
