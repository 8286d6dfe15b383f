"""Every call the node refuses is on the record: an audit entry naming the caller (its
certificate's name), the reason and, for a caller refused for who it is, the method; a
refusals metric by gRPC status and reason; and `audit show` lists refusals per caller and
reason. Real node over mutual TLS on loopback, real certificates, real ledger and audit log;
refused entries charge nothing and `audit verify` (chain and ledger) keeps passing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridgestat.coordinator import ca
from bridgestat.coordinator.client.network_file import TlsFiles
from bridgestat.coordinator.demo import local, synth
from bridgestat.node import audit, cli
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.connect import answer
from bridgestat.node.engine import MAX_KEY_LENGTH, Engine
from bridgestat.node.service import NodeServer, build_node_server
from bridgestat.node.tls import load_server_tls
from bridgestat.v1 import coordinator_service_pb2 as cpb
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

TOTAL = 1.0  # small, so that a budget refusal is one query away


@dataclass(frozen=True)
class Node:
    root: Path
    name: str
    config: Path
    address: str
    engine: Engine
    server: NodeServer
    coordinator: TlsFiles

    def channel(self, identity: ca.Identity | None = None) -> grpc.Channel:
        key, cert = (identity.key, identity.cert) if identity else \
            (self.coordinator.key, self.coordinator.cert)
        credentials = grpc.ssl_channel_credentials(
            self.coordinator.ca.read_bytes(), key.read_bytes(), cert.read_bytes())
        return grpc.secure_channel(self.address, credentials,
                                   options=[("grpc.ssl_target_name_override", self.name)])

    def entries(self) -> list[dict[str, Any]]:
        return list(audit.entries(audit.audit_path(load_config(self.config))))

    def refusals(self, code: str, reason: str) -> float:
        value = self.server.metrics.registry.get_sample_value(
            "bridgestat_node_refusals_total", {"code": code, "reason": reason})
        return value or 0.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    synth.write_network(tmp_path, members=1, seed=5, sizes=[150])
    member = local.write_configs(tmp_path, total_epsilon=TOTAL, max_per_query=1.0)[0]
    (member.config.parent / "policy.yaml").write_text(
        yaml.safe_dump({"statistics": ["count", "mean"]}), encoding="utf-8")
    doc = yaml.safe_load(member.config.read_text())
    doc["policy"] = "policy.yaml"
    member.config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    config = load_config(member.config)
    engine = open_engine(config)
    server = build_node_server(engine, "127.0.0.1:0", tls=load_server_tls(config))
    server.server.start()
    assert member.client_tls is not None
    yield Node(tmp_path, member.name, member.config, f"127.0.0.1:{server.port}", engine,
               server, member.client_tls)
    server.stop(None)


def _mean(key: str, column: str = "bridge_total", epsilon: float = 0.5,
          statistic: int = pb.STATISTIC_MEAN) -> pb.RunQueryRequest:
    return pb.RunQueryRequest(idempotency_key=key, query=pb.Query(
        statistic=statistic, table="assessment", column=column,
        loss=pb.PrivacyLoss(epsilon=epsilon)))


def _refused(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=10)
    return caught.value  # type: ignore[return-value]


def test_a_caller_not_on_the_allow_list_is_audited_and_counted(node: Node) -> None:
    stranger = ca.issue(node.root / "ca", "member-99", node.root / "member-99")
    with node.channel(stranger) as channel:
        error = _refused(pb_grpc.NodeServiceStub(channel).RunQuery, _mean("s-1"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        health = _refused(health_pb2_grpc.HealthStub(channel).Check,
                          health_pb2.HealthCheckRequest())
        assert health.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    first, second = node.entries()
    assert first["caller"] == "member-99" and first["outcome"] == "refused"
    assert first["key"] == "s-1" and first["query"] is None  # nothing was decoded
    assert first["error"]["code"] == "CallerRefused"
    assert first["error"]["reason"] == "allow-list"
    assert "/bridgestat.v1.NodeService/RunQuery" in first["error"]["message"]
    assert "tls.allow" in first["error"]["message"]
    assert first["charged"]["exact"] == "0;0" and first["release"] is None
    assert second["caller"] == "member-99" and second["key"] == ""
    assert "/grpc.health.v1.Health/Check" in second["error"]["message"]
    assert node.refusals("PERMISSION_DENIED", "allow-list") == 2
    assert node.engine.ledger.charges() == []


def test_every_kind_of_refusal_has_its_entry_reason_and_metric(node: Node) -> None:
    with node.channel() as channel:
        stub = pb_grpc.NodeServiceStub(channel)
        stub.RunQuery(_mean("ok-1", epsilon=0.8), timeout=10)
        schema = _refused(stub.RunQuery, _mean("q-schema", column="no_such_column"))
        policy = _refused(stub.RunQuery, _mean("q-policy", statistic=pb.STATISTIC_HISTOGRAM,
                                               column="work_status"))
        budget = _refused(stub.RunQuery, _mean("q-budget", epsilon=0.5))
    codes = [e.code() for e in (schema, policy, budget)]  # type: ignore[attr-defined]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                     grpc.StatusCode.RESOURCE_EXHAUSTED]
    refused = {e["key"]: e for e in node.entries() if e["outcome"] == "refused"}
    assert {k: e["error"]["reason"] for k, e in refused.items()} == {
        "q-schema": "schema", "q-policy": "policy", "q-budget": "budget"}
    assert all(e["caller"] == "coordinator" and e["charged"]["exact"] == "0;0"
               for e in refused.values())
    assert node.refusals("INVALID_ARGUMENT", "schema") == 1
    assert node.refusals("PERMISSION_DENIED", "policy") == 1
    assert node.refusals("RESOURCE_EXHAUSTED", "budget") == 1
    assert float(node.engine.ledger.state().spent) == pytest.approx(0.8)  # only the answer


def test_a_refused_relayed_caller_is_audited_too(node: Node) -> None:
    """Connect mode: the coordinator relays a researcher the node's allow-list refuses."""
    request = cpb.CoordinatorRequest(request_id="r", caller="researcher-x",
                                     run_query=_mean("relayed-1"))
    reply = answer(node.engine, request, node.server.metrics, allow=("coordinator",))
    assert reply.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    (entry,) = node.entries()
    assert entry["caller"] == "researcher-x" and entry["key"] == "relayed-1"
    assert entry["error"]["reason"] == "allow-list"
    assert node.refusals("PERMISSION_DENIED", "allow-list") == 1


def test_audit_verify_holds_and_show_summarises_refusals_per_caller_and_reason(
        node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    stranger = ca.issue(node.root / "ca", "member-99", node.root / "member-99")
    with node.channel(stranger) as channel:
        for key in ("s-1", "s-2"):
            _refused(pb_grpc.NodeServiceStub(channel).RunQuery, _mean(key))
    with node.channel() as channel:
        stub = pb_grpc.NodeServiceStub(channel)
        stub.RunQuery(_mean("ok-1"), timeout=10)
        _refused(stub.RunQuery, _mean("q-schema", column="no_such_column"))
    assert cli.main(["audit", "verify", "--config", str(node.config)]) == 0
    assert "chain intact" in capsys.readouterr().out
    assert cli.main(["audit", "show", "--config", str(node.config)]) == 0
    shown = capsys.readouterr().out
    table = shown.split("refused calls per caller and reason")[1].split("\ndataset ")[0]
    rows = {tuple(line.split()[:3]) for line in table.splitlines()[2:]}
    assert ("member-99", "allow-list", "2") in rows
    assert ("coordinator", "schema", "1") in rows
    assert len(rows) == 2


def test_summaries_read_entries_written_before_reasons_were_recorded() -> None:
    old = [{"outcome": "refused", "caller": "c", "time": "2026-01-01T00:00:00.000Z",
            "error": {"code": "BudgetExhausted", "message": "budget"}},
           {"outcome": "failed", "caller": "c", "time": "2026-01-02T00:00:00.000Z",
            "error": {"code": "ValueError", "message": "internal error"}},
           {"outcome": "released", "caller": "c", "time": "2026-01-03T00:00:00.000Z"}]
    rows = audit.summarize_refusals(old)
    assert [(r.caller, r.reason, r.count) for r in rows] == [("c", "budget", 1),
                                                             ("c", "internal", 1)]


def test_a_refused_callers_key_is_cut_to_the_longest_key_the_node_accepts(node: Node) -> None:
    stranger = ca.issue(node.root / "ca", "member-99", node.root / "member-99")
    with node.channel(stranger) as channel:
        _refused(pb_grpc.NodeServiceStub(channel).RunQuery, _mean("k" * 100_000))
    (entry,) = node.entries()
    assert entry["key"] == "k" * MAX_KEY_LENGTH
