"""A local network on loopback: node configs for a synthetic network, and node processes.

Used by `bridgestat synth`, `make demo` and the end-to-end tests. It starts real
`bridgestat-node serve` processes; it never imports the node package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class LocalMember:
    name: str
    config: Path
    address: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_configs(root: Path, total_epsilon: float = 50.0, max_per_query: float = 2.5
                  ) -> list[LocalMember]:
    """Write node.yaml per member of a synthetic network in `root`, and network.yaml."""
    truth = json.loads((root / "truth.json").read_text())
    members = []
    for member in truth["members"]:
        name = member["name"]
        address = f"127.0.0.1:{free_port()}"
        config = {"node_id": name, "data": {"source": "csv", "path": "."},
                  "schema": "default", "categories": {"participant.team": member["teams"]},
                  "listen": address, "ledger": "ledger.sqlite",
                  "budget": {"dataset": f"{name}-synthetic", "total_epsilon": total_epsilon,
                             "max_epsilon_per_query": max_per_query}}
        path = root / name / "node.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        members.append(LocalMember(name, path, address))
    network = {"members": [{"name": m.name, "address": m.address} for m in members]}
    (root / "network.yaml").write_text(yaml.safe_dump(network, sort_keys=False))
    return members


def node_command() -> list[str]:
    exe = shutil.which("bridgestat-node", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "bridgestat.node.cli"]


def start_nodes(members: list[LocalMember], log_dir: Path) -> list[subprocess.Popen[bytes]]:
    """Start one node process per member and wait until each reports SERVING."""
    processes = []
    for member in members:
        log = (log_dir / f"{member.name}.log").open("wb")
        processes.append(subprocess.Popen(
            [*node_command(), "serve", "--config", str(member.config)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    try:
        for member, process in zip(members, processes, strict=True):
            wait_serving(member.address, process, log_dir / f"{member.name}.log")
    except BaseException:
        stop_nodes(processes)
        raise
    return processes


def wait_serving(address: str, process: subprocess.Popen[bytes], log: Path,
                 timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"node at {address} exited:\n{log.read_text()[-2000:]}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise TimeoutError(f"node at {address} not serving after {timeout:.0f} s")


def stop_nodes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
