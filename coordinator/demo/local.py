"""A local network on loopback: node configs for a synthetic network, and node processes.

Used by `bridgestat synth`, `make demo` and the end-to-end tests. It starts real
`bridgestat-node serve` processes; it never imports the node package. By default the
network runs over mutual TLS like a real one: `write_configs` makes a CA in <root>/ca, a
certificate per member (beside its node.yaml) and one for the coordinator
(<root>/coordinator); `tls=False` writes plain-text configs (nodes started with --insecure).

Mixed networks: the members named in `connect` run their nodes in connect mode (no `listen`;
`connect: {coordinator: <hub>}`) and are written `via: hub` in network.yaml; `start_hub`
starts `bridgestat coordinator serve` for them. Start the hub before the nodes:
`start_nodes` waits until every connect-mode node is reachable through it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridgestat.common.headers import MEMBER_HEADER
from bridgestat.coordinator import ca
from bridgestat.coordinator.client.network_file import HUB_NAME, TlsFiles, load_network
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class LocalMember:
    name: str
    config: Path
    address: str  # the node's, or the hub's for a connect-mode member
    client_tls: TlsFiles | None = None  # the coordinator's identity; None: plain text
    connect: bool = False  # the node dials the hub at `address`


PORTS_ENV = "BRIDGESTAT_LOCAL_PORTS"  # LOW-HIGH: hand out ports from this range instead
_turn = itertools.count(os.getpid())  # where in the range to look next (each process apart)


def free_port() -> int:
    """A loopback port nothing is bound to now: the kernel's choice, or with
    BRIDGESTAT_LOCAL_PORTS=LOW-HIGH the next free one in that range. A port is free only
    until a node binds it, so two processes that pick ports at once may pick the same one;
    the test suite's parallel workers therefore each get their own range below the kernel's
    ephemeral ports (tests/conftest.py)."""
    span = _port_range()
    if span is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    low, high = span
    for _ in range(high - low + 1):
        port = low + next(_turn) % (high - low + 1)
        if _bindable(port):
            return port
    raise OSError(f"{PORTS_ENV}={os.environ[PORTS_ENV]}: no free port in that range")


def _port_range() -> tuple[int, int] | None:
    value = os.environ.get(PORTS_ENV, "")
    if not value:
        return None
    low, sep, high = value.partition("-")
    if not (sep and low.isdigit() and high.isdigit() and 0 < int(low) <= int(high) < 65536):
        raise ValueError(f"{PORTS_ENV}={value!r}: expected a port range LOW-HIGH, "
                         "e.g. 20000-24999")
    return int(low), int(high)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: the kernel hands a released port out again, so
    one network's members would sometimes share one (seen at a thousand members)."""
    ports: dict[int, None] = {}
    while len(ports) < count:
        ports[free_port()] = None
    return list(ports)


def write_configs(root: Path, total_epsilon: float = 50.0, max_per_query: float = 2.5,
                  *, tls: bool = True, connect: Sequence[str] = (),
                  hub: str | None = None) -> list[LocalMember]:
    """Write node.yaml per member of a synthetic network in `root`, and network.yaml; with
    `tls`, also the network's CA and every certificate (see the module docstring). The
    members in `connect` dial the hub at `hub` (default: a free loopback port)."""
    truth = json.loads((root / "truth.json").read_text())
    names = [member["name"] for member in truth["members"]]
    unknown = sorted(set(connect) - set(names))
    if unknown:
        raise ValueError(f"connect: no member {unknown[0]!r} in {root / 'truth.json'}")
    *ports, spare = free_ports(len(names) + 1)
    hub = hub or (f"127.0.0.1:{spare}" if connect else None)
    client = _coordinator_identity(root) if tls else None
    members = []
    for member, port in zip(truth["members"], ports, strict=True):
        name = member["name"]
        outbound = name in connect
        address = hub if outbound and hub else f"127.0.0.1:{port}"
        config: dict[str, object] = {
            "node_id": name, "data": {"source": "csv", "path": "."}, "schema": "default",
            "categories": {"participant.team": member["teams"]}}
        config.update({"connect": {"coordinator": address, "server_name": HUB_NAME}}
                      if outbound else {"listen": address})
        config.update({"ledger": "ledger.sqlite",
                       "budget": {"dataset": f"{name}-synthetic",
                                  "total_epsilon": total_epsilon,
                                  "max_epsilon_per_query": max_per_query}})
        if client is not None:
            config["tls"] = _node_tls(root, name)
        path = root / name / "node.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        members.append(LocalMember(name, path, address, client, outbound))
    network: dict[str, object] = {}
    if client is not None:
        network["tls"] = {k: os.path.relpath(getattr(client, k), root)
                          for k in ("ca", "cert", "key")}
    if hub:
        network["hub"] = hub
    network["members"] = [{"name": m.name, "via": "hub"} if m.connect
                          else {"name": m.name, "address": m.address} for m in members]
    (root / "network.yaml").write_text(yaml.safe_dump(network, sort_keys=False))
    return members


def _coordinator_identity(root: Path) -> TlsFiles:
    """A fresh CA in <root>/ca (or the one there) and the coordinator's certificate."""
    if not (root / "ca" / ca.CA_KEY).exists():
        ca.init_ca(root / "ca")
    issued = ca.issue(root / "ca", ca.COORDINATOR, root / "coordinator")
    return TlsFiles(root / "ca" / ca.CA_CERT, issued.cert, issued.key)


def _node_tls(root: Path, name: str) -> dict[str, object]:
    """The member's certificate beside its node.yaml; only the coordinator may call."""
    issued = ca.issue(root / "ca", name, root / name)
    return {"ca": f"../ca/{ca.CA_CERT}", "cert": issued.cert.name, "key": issued.key.name,
            "allow": [ca.COORDINATOR]}


def node_command() -> list[str]:
    exe = shutil.which("bridgestat-node", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "bridgestat.node.cli"]


def coordinator_command() -> list[str]:
    exe = shutil.which("bridgestat", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "bridgestat.coordinator.cli.main"]


def start_hub(root: Path, address: str, log: Path, *, tls: bool = True,
              timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Start `bridgestat coordinator serve` for <root>/network.yaml on `address` (appending
    to the `log` file) and wait until it reports SERVING."""
    network = root / "network.yaml"
    client = load_network(network).tls if tls else None  # the identity the hub serves with
    plain = [] if tls else ["--insecure"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*coordinator_command(), "coordinator", "serve", "--network", str(network),
             "--listen", address, *plain],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_serving(address, process, log, timeout, tls=client, name=HUB_NAME)
    except BaseException:
        stop_nodes([process])
        raise
    return process


def start_nodes(members: list[LocalMember], log_dir: Path, timeout: float = 60.0
                ) -> list[subprocess.Popen[bytes]]:
    """Start one node process per member (logging to <log_dir>/<name>.log) and wait up to
    `timeout` s for each to report SERVING (a connect-mode node: reachable through the hub).
    A large member needs longer: one of a million participants loads in about two minutes."""
    processes = []
    for member in members:
        plain = [] if member.client_tls else ["--insecure"]
        with (log_dir / f"{member.name}.log").open("wb") as out:
            processes.append(subprocess.Popen(
                [*node_command(), "serve", "--config", str(member.config), *plain],
                stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    try:
        for member, process in zip(members, processes, strict=True):
            log = log_dir / f"{member.name}.log"
            if member.connect:
                wait_connected(member, process, log, timeout)
            else:
                wait_serving(member.address, process, log, timeout, tls=member.client_tls,
                             name=member.name)
    except BaseException:
        stop_nodes(processes)
        raise
    return processes


def wait_serving(address: str, process: subprocess.Popen[bytes], log: Path,
                 timeout: float = 60.0, *, tls: TlsFiles | None = None, name: str = "") -> None:
    """Wait until the node answers grpc.health.v1 with SERVING (over mTLS with `tls`,
    checking that its certificate is for `name`)."""
    with _channel(address, tls, name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        _poll(serving, process, log, timeout, f"node at {address}", "not serving", pause=0.2)


def wait_connected(member: LocalMember, process: subprocess.Popen[bytes], log: Path,
                   timeout: float = 60.0) -> None:
    """Wait until a connect-mode node answers GetNodeInfo through the hub."""
    with _channel(member.address, member.client_tls, HUB_NAME) as channel:
        stub = pb_grpc.NodeServiceStub(channel)

        def answers() -> bool:
            stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=2,
                             metadata=((MEMBER_HEADER, member.name),))
            return True
        _poll(answers, process, log, timeout, f"node {member.name}",
              f"not connected to the hub at {member.address}", pause=0.1)


def _poll(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path,
          timeout: float, node: str, waiting: str, *, pause: float) -> None:
    """Call `ready` until it returns True, pausing `pause` s after a False or a gRPC error
    (the node is still starting); raise with the log's tail if the process exits first, or
    TimeoutError ("<node> <waiting> after <timeout> s") when time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{node} exited:\n{log.read_text()[-2000:]}")
        with contextlib.suppress(grpc.RpcError):
            if ready():
                return
        time.sleep(pause)
    raise TimeoutError(f"{node} {waiting} after {timeout:.0f} s")


def _channel(address: str, tls: TlsFiles | None, name: str) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials(),
                               options=[("grpc.ssl_target_name_override", name)])


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
