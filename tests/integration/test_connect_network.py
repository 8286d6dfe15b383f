"""A mixed network over mutual TLS: two members inbound, one in connect mode.

Real processes: `bridgestat coordinator serve` (the hub) and three `bridgestat-node serve
--config` nodes, one of whose configs has `connect` and no `listen`. The researcher's API and
CLI use the network file alone and see three members alike. The hub refuses a node whose
certificate is for another name, and researchers not on its allow-list; killed (SIGKILL)
while a query is under way and restarted on the same port, it is found again by the node's
backoff, and the retry with the same idempotency key is replayed, charged once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from bridgestat.common.headers import MEMBER_HEADER
from bridgestat.coordinator import ca
from bridgestat.coordinator.api import NETWORK, Network, QueryResult
from bridgestat.coordinator.cli import main as cli
from bridgestat.coordinator.client.network_file import NetworkFileError, TlsFiles, load_network
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.demo.local import LocalMember
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.connect import Backoff, Connector
from bridgestat.node.errors import ConfigError
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

MEMBERS = ("member-01", "member-02", "member-03")
OUTBOUND = "member-03"
MEAN = Query("mean", "assessment", "bridge_total", 0.5, ())


@dataclass
class Mixed:
    """The running network; tests that stop a process start it again before they end."""

    root: Path
    members: list[LocalMember]
    nodes: list[subprocess.Popen[bytes]]
    hub: subprocess.Popen[bytes]

    @property
    def network(self) -> Path:
        return self.root / "network.yaml"

    @property
    def outbound(self) -> LocalMember:
        return next(m for m in self.members if m.connect)

    @property
    def outbound_node(self) -> subprocess.Popen[bytes]:
        return self.nodes[self.members.index(self.outbound)]

    @property
    def tls(self) -> TlsFiles:
        assert self.outbound.client_tls is not None
        return self.outbound.client_tls

    def start_hub(self) -> None:
        self.hub = local.start_hub(self.root, self.outbound.address, self.root / "hub.log")

    def start_outbound(self) -> None:
        index = self.members.index(self.outbound)
        self.nodes[index] = local.start_nodes([self.outbound], self.root)[0]

    def audit(self, member: str) -> list[dict[str, Any]]:
        path = self.root / member / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def hub_channel(self, identity: ca.Identity | None = None) -> grpc.Channel:
        key, cert = (identity.key, identity.cert) if identity else (self.tls.key, self.tls.cert)
        credentials = grpc.ssl_channel_credentials(self.tls.ca.read_bytes(), key.read_bytes(),
                                                   cert.read_bytes())
        return grpc.secure_channel(self.outbound.address, credentials,
                                   options=[("grpc.ssl_target_name_override", "coordinator")])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    root = tmp_path_factory.mktemp("mixed")
    synth.write_network(root, members=len(MEMBERS), seed=13, sizes=[150, 150, 150])
    members = local.write_configs(root, total_epsilon=10.0, max_per_query=1.0,
                                  connect=[OUTBOUND])
    hub_address = next(m.address for m in members if m.connect)
    hub = local.start_hub(root, hub_address, root / "hub.log")  # before the nodes
    try:
        nodes = local.start_nodes(members, root)
    except BaseException:
        local.stop_nodes([hub])
        raise
    running = Mixed(root, members, nodes, hub)
    try:
        yield running
    finally:
        local.stop_nodes([*running.nodes, running.hub])


def _rows_ok(frame: Any) -> None:
    assert list(frame.member) == [*MEMBERS, NETWORK], frame.to_dict("records")
    assert (frame.status == "ok").all(), frame[["member", "status"]].to_dict("records")


# -- the researcher sees one kind of member ----------------------------------------------------

def test_the_network_file_and_the_configs_describe_both_modes(mixed: Mixed) -> None:
    spec = load_network(mixed.network)
    assert spec.hub is not None and spec.connect_members == (OUTBOUND,)
    assert [m.address == spec.hub.address for m in spec.members] == [False, False, True]
    config = load_config(mixed.outbound.config)
    assert config.listen is None and config.connect is not None
    assert config.connect.coordinator == spec.hub.address
    assert config.connect.server_name == "coordinator"


def test_info_and_pooled_queries_reach_every_member(mixed: Mixed) -> None:
    with Network.from_file(mixed.network) as net:
        info = net.info()
        count = net.count(epsilon=0.5, key="mixed-count")
        mean = net.mean("assessment", "bridge_total", epsilon=0.5, key="mixed-mean")
    assert list(info.member) == list(MEMBERS)
    assert bool(info.reachable.all()), info.to_dict("records")
    assert list(info.node_id) == list(MEMBERS)
    _rows_ok(count)
    _rows_ok(mean)
    released = [e for e in mixed.audit(OUTBOUND) if e["key"] == "mixed-mean"]
    assert [(e["outcome"], e["caller"]) for e in released] == [("released", "coordinator")]


def test_the_cli_works_the_same(mixed: Mixed) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridgestat.coordinator.cli.main", "query", "--network",
         str(mixed.network), "count", "participant", "--epsilon", "0.5", "--json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["member"] for r in rows] == [*MEMBERS, NETWORK]
    assert all(r["status"] == "ok" for r in rows), rows


# -- config and network files name file and key ------------------------------------------------

NODE_CONFIG_PROBLEMS = [
    ({"coordinator": "localhost"}, "connect.coordinator", "must be host:port"),
    ({"server_name": "coordinator"}, "connect.coordinator", "missing (required)"),
    ({"coordinator": "h:1", "server_name": "no spaces"}, "connect.server_name", "certificate"),
    ({"coordinator": "h:1", "retry": 3}, "connect.retry", "unknown key"),
    ("h:1", "connect", "must be a mapping"),
]


@pytest.mark.parametrize(("connect", "key", "problem"), NODE_CONFIG_PROBLEMS,
                         ids=[p[1] + "-" + p[2] for p in NODE_CONFIG_PROBLEMS])
def test_a_bad_connect_section_names_file_and_key(mixed: Mixed, connect: Any, key: str,
                                                  problem: str) -> None:
    doc = yaml.safe_load(mixed.outbound.config.read_text())
    path = mixed.outbound.config.with_name("bad-connect.yaml")
    path.write_text(yaml.safe_dump({**doc, "connect": connect}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {key}: ") and problem in str(caught.value)


def test_listen_is_optional_only_in_connect_mode(mixed: Mixed) -> None:
    doc = yaml.safe_load(mixed.outbound.config.read_text())
    path = mixed.outbound.config.with_name("modes.yaml")
    path.write_text(yaml.safe_dump({**doc, "listen": "127.0.0.1:0"}))
    both = load_config(path)
    assert both.listen == "127.0.0.1:0" and both.connect is not None
    path.write_text(yaml.safe_dump({k: v for k, v in doc.items() if k != "connect"}))
    inbound = load_config(path)
    assert inbound.listen == "127.0.0.1:50051" and inbound.connect is None


NETWORK_PROBLEMS = [
    ({"members": [{"name": "m", "via": "hub"}]}, "members[0].via", "top-level key hub"),
    ({"hub": "h:1", "members": [{"name": "m", "via": "relay"}]}, "members[0].via",
     "must be 'hub'"),
    ({"hub": "h:1", "members": [{"name": "m", "via": "hub", "address": "h:2"}]},
     "members[0].address", "no address of its own"),
    ({"hub": "nohost", "members": [{"name": "m", "via": "hub"}]}, "hub", "host:port"),
    ({"hub": {"address": "h:1", "name": ""}, "members": [{"name": "m", "via": "hub"}]},
     "hub.name", "certificate"),
    ({"hub": "h:70000", "members": [{"name": "m", "via": "hub"}]}, "hub", "host:port"),
    ({"members": [{"name": "m", "address": "10.0.0.11:"}]}, "members[0].address",
     "must be host:port"),
    ({"members": [{"name": "m", "address": ":50051"}]}, "members[0].address",
     "must be host:port"),
    ({"members": [{"name": "m", "address": "node.example.org:5o051"}]}, "members[0].address",
     "port 1-65535"),
    ({"members": [{"name": "m", "address": "10.0.0.11:0"}]}, "members[0].address",
     "port 1-65535"),
    ({"members": [{"name": "m", "address": "h:1"}, {"name": "m", "address": "h:2"}]},
     "members[1].name", "'m' is listed twice"),
    ({"members": [{"name": "m b", "address": "h:1"}]}, "members[0].name", "must be a name"),
    ({"members": [{"name": "m"}]}, "members[0].address", "missing"),
    ({"members": []}, "members", "must not be empty"),
    ({"members": [{"name": "m", "address": "h:1"}], "hubs": "h:2"}, "hubs",
     "unknown key (allowed: hub, members, secure, tls)"),
    ({"members": [{"name": "m", "address": "h:1", "port": 1}]}, "members[0].port",
     "unknown key (allowed: address, name, via)"),
    ({"hub": {"address": "h:1", "port": 2}, "members": [{"name": "m", "via": "hub"}]},
     "hub.port", "unknown key (allowed: address, name)"),
    ({"members": [{"name": "m", "address": "h:1"}], "tls": {"ca": "ca.pem", "cert": "c.pem"}},
     "tls.key", "missing"),
    ({"members": [{"name": "m", "address": "h:1"}], "tls": None}, "tls", "has no value"),
]


@pytest.mark.parametrize(("doc", "key", "problem"), NETWORK_PROBLEMS,
                         ids=[p[1] + "-" + p[2] for p in NETWORK_PROBLEMS])
def test_a_bad_network_entry_names_file_and_key(tmp_path: Path, doc: dict[str, Any], key: str,
                                             problem: str) -> None:
    path = tmp_path / "network.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(NetworkFileError) as caught:
        load_network(path)
    assert str(caught.value).startswith(f"{path}: {key}: ") and problem in str(caught.value)


def test_coordinator_serve_refuses_a_file_it_cannot_serve(
        mixed: Mixed, capsys: pytest.CaptureFixture[str]) -> None:
    doc = yaml.safe_load(mixed.network.read_text())
    no_hub = mixed.root / "no-hub.yaml"
    inbound_only = {k: v for k, v in doc.items() if k != "hub"}
    no_hub.write_text(yaml.safe_dump({**inbound_only, "members": doc["members"][:2]}))
    assert cli.main(["coordinator", "serve", "--network", str(no_hub)]) == 2
    assert "no-hub.yaml: hub: missing" in capsys.readouterr().err
    wrong = mixed.root / "wrong-cert.yaml"
    wrong.write_text(yaml.safe_dump({**doc, "tls": {**doc["tls"],
                                                    "cert": "member-01/member-01.pem",
                                                    "key": "member-01/member-01.key"}}))
    assert cli.main(["coordinator", "serve", "--network", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "wrong-cert.yaml: tls.cert:" in err and "is for member-01" in err, err


# -- the hub: health, reflection, who may call ----------------------------------------------

def test_the_hub_offers_health_and_reflection(mixed: Mixed) -> None:
    with mixed.hub_channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "bridgestat.v1.CoordinatorService", "bridgestat.v1.NodeService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"bridgestat.v1.CoordinatorService", "bridgestat.v1.NodeService",
            "grpc.health.v1.Health"} <= services


def test_the_hub_refuses_a_researcher_not_on_its_allow_list(mixed: Mixed) -> None:
    member = ca.Identity("member-01", mixed.root / "member-01" / "member-01.pem",
                         mixed.root / "member-01" / "member-01.key")
    with mixed.hub_channel(member) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.NodeServiceStub(channel).GetNodeInfo(
            pb.GetNodeInfoRequest(), metadata=((MEMBER_HEADER, OUTBOUND),), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "'member-01'" in caught.value.details()  # type: ignore[attr-defined]


def test_a_node_with_a_certificate_for_another_name_is_refused(mixed: Mixed) -> None:
    """member-03's engine dialling with member-02's certificate: the hub refuses the Hello,
    and member-03 shows UNAVAILABLE by name."""
    local.stop_nodes([mixed.outbound_node])
    other = mixed.root / "member-02"
    credentials = grpc.ssl_channel_credentials(mixed.tls.ca.read_bytes(),
                                               (other / "member-02.key").read_bytes(),
                                               (other / "member-02.pem").read_bytes())
    engine = open_engine(load_config(mixed.outbound.config))
    impostor = Connector(engine, mixed.outbound.address, credentials, "coordinator",
                         backoff=Backoff(initial=0.05, maximum=0.2))
    thread = threading.Thread(target=impostor.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not impostor.last_error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert impostor.last_error.startswith("PERMISSION_DENIED"), impostor.last_error
        assert "'member-02' cannot connect as 'member-03'" in impostor.last_error
        assert not impostor.connected.is_set() and impostor.sessions == 0
        with Network.from_file(mixed.network) as net:
            info = net.info()
        row = info[info.member == OUTBOUND].iloc[0]
        assert not bool(row.reachable)
        assert row.status.startswith("UNAVAILABLE") and OUTBOUND in row.status, row.status
        assert bool(info[info.member != OUTBOUND].reachable.all())
    finally:
        impostor.stop()
        thread.join(timeout=10)
        mixed.start_outbound()


# -- a dropped connection during a query, reconnection -----------------------------------------

def test_a_hub_killed_during_a_query_is_found_again_and_the_retry_is_free(mixed: Mixed
                                                                          ) -> None:
    """The node is paused (SIGSTOP) so that the query is surely under way at the hub when
    the hub is killed; resumed, the node answers it (charging) into a dead stream, reconnects
    with backoff to the restarted hub, and the retry replays the same release."""
    with Network.from_file(mixed.network, timeout=15) as net:
        mixed.outbound_node.send_signal(signal.SIGSTOP)
        results: dict[str, QueryResult] = {}
        try:
            asking = threading.Thread(target=lambda: results.update(first=net.run(MEAN, "kill-1")))
            asking.start()
            time.sleep(0.5)  # the hub has forwarded the request on the node's stream
            mixed.hub.kill()
            mixed.hub.wait(10)
            asking.join(30)
        finally:
            mixed.outbound_node.send_signal(signal.SIGCONT)
        first = results["first"]
        assert sorted(first.releases) == ["member-01", "member-02"]
        failure = first.failures[OUTBOUND]
        assert failure.code == "UNAVAILABLE" and OUTBOUND in failure.message, failure
        mixed.start_hub()  # the same port
        local.wait_connected(mixed.outbound, mixed.outbound_node,
                             mixed.root / f"{OUTBOUND}.log", timeout=30)
        # the resumed node answered the request it had received before the hub died
        assert _wait_for(lambda: [e for e in mixed.audit(OUTBOUND)
                                  if e["key"] == "kill-1" and e["outcome"] == "released"])
        retry = net.run(MEAN, "kill-1")
    assert not retry.failures, retry.failures
    assert all(release.replayed for release in retry.releases.values())
    entries = [(e["outcome"], e["charged"]["epsilon"]) for e in mixed.audit(OUTBOUND)
               if e["key"] == "kill-1"]
    assert entries == [("released", 0.5), ("replayed", 0.0)], entries  # charged once
    log = (mixed.root / f"{OUTBOUND}.log").read_text()
    assert "stream to" in log  # the dropped stream was noticed and logged
    assert log.count(f"connected to coordinator {mixed.outbound.address}") >= 2


def test_a_stopped_hub_ends_the_stream_cleanly_and_the_node_comes_back(mixed: Mixed) -> None:
    mixed.hub.send_signal(signal.SIGTERM)
    assert mixed.hub.wait(15) == 0
    assert "stopped" in (mixed.root / "hub.log").read_text()
    mixed.start_hub()
    local.wait_connected(mixed.outbound, mixed.outbound_node, mixed.root / f"{OUTBOUND}.log",
                         timeout=30)
    assert "closed the stream; reconnecting" in (mixed.root / f"{OUTBOUND}.log").read_text()
    with Network.from_file(mixed.network) as net:
        assert bool(net.info().reachable.all())


def _wait_for(probe: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    return probe()
