"""Probes without query rights: a `tls.probe` identity (a certificate from `bridgestat ca
issue --name monitor`) may call health and reflection (v1 and v1alpha) and nothing else;
`bridgestat-node health` checks a running node as the node's own certificate or a probe's.
A real node over mutual TLS on loopback, real certificates, the real CLIs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from bridgestat.coordinator import ca
from bridgestat.coordinator.cli import main as coordinator_cli
from bridgestat.coordinator.client.network_file import TlsFiles
from bridgestat.coordinator.demo import local, synth
from bridgestat.node import audit, cli
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.errors import ConfigError
from bridgestat.node.service import NodeServer, build_node_server
from bridgestat.node.tls import load_server_tls
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class ProbedNode:
    root: Path
    name: str
    config: Path
    address: str
    server: NodeServer
    coordinator: TlsFiles
    monitor: ca.Identity

    def channel(self, identity: ca.Identity) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            self.coordinator.ca.read_bytes(), identity.key.read_bytes(),
            identity.cert.read_bytes())
        return grpc.secure_channel(self.address, credentials,
                                   options=[("grpc.ssl_target_name_override", self.name)])


def _with_probe(config: Path, probe: list[str], **more: object) -> None:
    doc = yaml.safe_load(config.read_text())
    doc["tls"]["probe"] = probe
    doc.update(more)
    config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


@pytest.fixture
def probed(tmp_path: Path) -> Iterator[ProbedNode]:
    synth.write_network(tmp_path, members=1, seed=5, sizes=[120])
    member = local.write_configs(tmp_path, total_epsilon=5.0, max_per_query=1.0)[0]
    # The certificate as member IT gets it: the coordinator's `bridgestat ca issue`.
    assert coordinator_cli.main(["ca", "issue", "--name", "monitor", "--dir",
                                 str(tmp_path / "ca"), "--out", str(tmp_path / "mon")]) == 0
    monitor = ca.Identity("monitor", tmp_path / "mon" / "monitor.pem",
                          tmp_path / "mon" / "monitor.key")
    _with_probe(member.config, ["monitor"])
    config = load_config(member.config)
    engine = open_engine(config)
    server = build_node_server(engine, config.listen or "127.0.0.1:0",
                               tls=load_server_tls(config))
    server.server.start()
    assert member.client_tls is not None
    yield ProbedNode(tmp_path, member.name, member.config, f"127.0.0.1:{server.port}", server,
                     member.client_tls, monitor)
    server.stop(None)


def test_a_probe_identity_may_check_health_and_list_services(probed: ProbedNode) -> None:
    with probed.channel(probed.monitor) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert {"bridgestat.v1.NodeService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_a_probe_identity_may_not_query_nor_read_node_info(probed: ProbedNode) -> None:
    with probed.channel(probed.monitor) as channel:
        stub = pb_grpc.NodeServiceStub(channel)
        calls = ((stub.RunQuery, pb.RunQueryRequest(idempotency_key="p-1", query=pb.Query(
                     statistic=pb.STATISTIC_COUNT, table="participant",
                     loss=pb.PrivacyLoss(epsilon=0.5)))),
                 (stub.GetNodeInfo, pb.GetNodeInfoRequest()))
        for call, request in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=10)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
            assert "probe" in (caught.value.details() or "")  # type: ignore[attr-defined]
    entries = list(audit.entries(audit.audit_path(load_config(probed.config))))
    assert [(e["caller"], e["outcome"], e["error"]["reason"]) for e in entries] == \
        [("monitor", "refused", "probe")] * 2
    assert "GetNodeInfo" in entries[1]["error"]["message"]
    assert probed.server.metrics.registry.get_sample_value(
        "bridgestat_node_refusals_total", {"code": "PERMISSION_DENIED", "reason": "probe"}) == 2


def _v1_reflection_messages() -> tuple[type, type]:
    """A grpc.reflection.v1 client's messages, built here apart from the node's code: the v1
    proto is v1alpha's with the package renamed (no v1 stubs ship with grpcio-reflection)."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = "test/reflection_v1.proto", "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for item in message.field:
            if item.HasField("type_name"):
                item.type_name = item.type_name.replace(".v1alpha.", ".v1.")
    proto.ClearField("service")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    request, response = (message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))
        for name in ("ServerReflectionRequest", "ServerReflectionResponse"))
    return request, response


def test_reflection_v1_lists_the_services_and_resolves_a_symbol(probed: ProbedNode) -> None:
    request_type, response_type = _v1_reflection_messages()
    with probed.channel(probed.monitor) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString)
        replies = list(call(iter([request_type(list_services=""),
                                  request_type(file_containing_symbol="grpc.reflection.v1."
                                                                      "ServerReflection")]),
                            timeout=10))
    listed = {s.name for s in replies[0].list_services_response.service}
    assert {"bridgestat.v1.NodeService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection"} <= listed
    found = descriptor_pb2.FileDescriptorProto.FromString(
        replies[1].file_descriptor_response.file_descriptor_proto[0])
    assert found.package == "grpc.reflection.v1"
    assert [s.name for s in found.service] == ["ServerReflection"]


def _health_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgestat.node.cli", "health", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_health_command_exits_0_when_serving_and_1_otherwise(probed: ProbedNode) -> None:
    config = str(probed.config)
    own = _health_cli("--config", config, "--address", probed.address)
    assert own.returncode == 0 and "SERVING" in own.stdout, own.stdout + own.stderr
    as_monitor = _health_cli("--config", config, "--address", probed.address,
                             "--cert", str(probed.monitor.cert), "--key", str(probed.monitor.key))
    assert as_monitor.returncode == 0, as_monitor.stdout + as_monitor.stderr
    stranger = ca.issue(probed.root / "ca", "member-99", probed.root / "member-99")
    refused = _health_cli("--config", config, "--address", probed.address,
                          "--cert", str(stranger.cert), "--key", str(stranger.key))
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stdout
    probed.server.stop(None)
    down = _health_cli("--config", config, "--address", probed.address, "--timeout", "2")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stdout, down.stdout + down.stderr


def test_health_command_dials_the_configs_listen_address(tmp_path: Path) -> None:
    synth.write_network(tmp_path, members=1, seed=5, sizes=[100])
    member = local.write_configs(tmp_path, total_epsilon=5.0, max_per_query=1.0)[0]
    port = local.free_port()
    _with_probe(member.config, [], listen=f"0.0.0.0:{port}")  # a wildcard: probed on loopback
    config = load_config(member.config)
    server = build_node_server(open_engine(config), f"0.0.0.0:{port}",
                               tls=load_server_tls(config))
    server.server.start()
    try:
        result = _health_cli("--config", str(member.config))
    finally:
        server.stop(None)
    assert result.returncode == 0 and f"127.0.0.1:{port}: SERVING" in result.stdout, \
        result.stdout + result.stderr


def test_a_name_on_both_allow_and_probe_is_a_config_error(tmp_path: Path) -> None:
    synth.write_network(tmp_path, members=1, seed=5, sizes=[50])
    member = local.write_configs(tmp_path, total_epsilon=5.0, max_per_query=1.0)[0]
    _with_probe(member.config, ["monitor", "coordinator"])
    with pytest.raises(ConfigError, match=r"tls\.probe: coordinator also on tls\.allow"):
        load_config(member.config)


ROOT = Path(__file__).resolve().parents[2]


def test_the_image_and_compose_health_checks_run_the_health_command() -> None:
    """The node image's HEALTHCHECK and compose's healthchecks are `bridgestat-node health`
    with a config (run for real inside the image by tests/integration/test_container.py)."""
    dockerfile = (ROOT / "deploy" / "node.Dockerfile").read_text(encoding="utf-8")
    found = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", dockerfile.replace("\\\n", " "),
                      re.MULTILINE)
    assert found is not None
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
    nodes = [s for s in compose["services"].values() if s.get("image") == "bridgestat-node"]
    commands = [json.loads(found[1])] + [s["healthcheck"]["test"][1:] for s in nodes]
    assert len(commands) == 4
    for command in commands:
        assert command[:2] == ["bridgestat-node", "health"]
        args = cli.build_parser().parse_args(command[1:])
        assert args.func.__name__ == "_health" and str(args.config).endswith("node.yaml")
