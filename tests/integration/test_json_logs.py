"""Logs a pipeline can parse: a real `bridgestat-node serve` process with `log_format: json`
writes nothing but JSON objects, one per line, on stdout and stderr, even when gRPC's core
logs failed handshakes (plain text against TLS, a certificate from another CA) and a caller
is refused; and `bridgestat-node` output piped into a reader that stops early ends quietly.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridgestat.coordinator import ca
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.demo.local import LocalMember
from bridgestat.node import cli


@dataclass(frozen=True)
class JsonNode:
    root: Path
    member: LocalMember
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path


def _json_member(root: Path) -> LocalMember:
    synth.write_network(root, members=1, seed=9, sizes=[100])
    member = local.write_configs(root, total_epsilon=5.0, max_per_query=1.0)[0]
    doc = yaml.safe_load(member.config.read_text())
    doc["log_format"] = "json"
    member.config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return member


@pytest.fixture
def json_node(tmp_path: Path) -> Iterator[JsonNode]:
    member = _json_member(tmp_path)
    out, err = tmp_path / "node.stdout", tmp_path / "node.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [*local.node_command(), "serve", "--config", str(member.config)],
            stdout=stdout, stderr=stderr,
            # gRPC's default; pinned so that its handshake lines are there to be routed
            env={**os.environ, "PYTHONUNBUFFERED": "1", "GRPC_VERBOSITY": "INFO"})
    try:
        local.wait_serving(member.address, process, err, tls=member.client_tls,
                           name=member.name)
        yield JsonNode(tmp_path, member, process, out, err)
    finally:
        local.stop_nodes([process])


def _check(address: str, credentials: grpc.ChannelCredentials | None,
           name: str) -> grpc.StatusCode:
    """A health Check with `credentials` (None: plain text); its status code."""
    channel = grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(
        address, credentials, options=[("grpc.ssl_target_name_override", name)])
    with channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                      timeout=5)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def _identity_credentials(ca_pem: Path, identity: ca.Identity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(ca_pem.read_bytes(), identity.key.read_bytes(),
                                        identity.cert.read_bytes())


def _lines(path: Path) -> list[dict[str, Any]]:
    """Every line of `path` parsed as one JSON object (json.loads raises on any other)."""
    parsed = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(entry, dict) for entry in parsed)
    return parsed


def test_every_line_is_json_with_handshake_failures_and_refused_callers(
        json_node: JsonNode) -> None:
    member, root = json_node.member, json_node.root
    assert member.client_tls is not None
    ca_pem = member.client_tls.ca
    assert _check(member.address, None, member.name) == grpc.StatusCode.UNAVAILABLE
    ca.init_ca(root / "rogue")
    impostor = ca.issue(root / "rogue", "coordinator", root / "impostor")
    assert _check(member.address, _identity_credentials(ca_pem, impostor),
                  member.name) == grpc.StatusCode.UNAVAILABLE
    stranger = ca.issue(root / "ca", "member-99", root / "member-99")
    assert _check(member.address, _identity_credentials(ca_pem, stranger),
                  member.name) == grpc.StatusCode.PERMISSION_DENIED
    json_node.process.send_signal(signal.SIGTERM)
    assert json_node.process.wait(timeout=60) == 0
    stdout, stderr = _lines(json_node.stdout), _lines(json_node.stderr)
    entries = stdout + stderr
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    core = [e for e in entries if e["logger"] == "grpc-core"]
    assert sum("Handshake failed" in e["message"] for e in core) >= 2, core
    assert all(e["source"] and e["node_id"] == member.name for e in core)
    refused = [e for e in entries if e.get("caller") == "member-99"]
    assert refused and refused[0]["refusal"] == "allow-list"
    assert refused[0]["method"] == "/grpc.health.v1.Health/Check"
    assert entries[-1]["message"] == "stopped"


def test_a_start_up_error_is_json_too(tmp_path: Path) -> None:
    """An error that stops the node after its logging is set up (a policy file with an
    unknown key) reaches stderr as a JSON object, and the exit code is still 2."""
    member = _json_member(tmp_path)
    doc = yaml.safe_load(member.config.read_text())
    doc["policy"] = "policy.yaml"
    (member.config.parent / "policy.yaml").write_text("no_such_rule: 1\n", encoding="utf-8")
    member.config.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    done = subprocess.run([*local.node_command(), "serve", "--config", str(member.config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert any("no_such_rule" in e["message"] for e in lines), done.stderr
    assert done.stdout == ""


def _budget_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "bridgestat.node.cli", "budget", "--config", str(config)]


def test_output_into_a_closed_pipe_ends_quietly_with_the_sigpipe_code(tmp_path: Path) -> None:
    member = _json_member(tmp_path)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes a line
    try:
        done = subprocess.run(_budget_command(member.config), stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write)
    assert done.returncode == cli.EXIT_BROKEN_PIPE == 141
    assert done.stderr == ""  # no BrokenPipeError traceback, nothing at all


def test_budget_piped_into_head_exits_without_a_traceback(tmp_path: Path) -> None:
    member = _json_member(tmp_path)
    command = shlex.join(_budget_command(member.config)) + " | head -1"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.startswith("dataset ")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
