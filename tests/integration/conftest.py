"""Shared fixtures: a synthetic member, its node in-process on a loopback port; a synthetic
network of node processes."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridgestat.coordinator.demo import local, synth
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.engine import Engine
from bridgestat.node.service import build_server
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class RunningNode:
    engine: Engine
    stub: pb_grpc.NodeServiceStub
    address: str
    root: Path


def start_node(root: Path, total_epsilon: float = 5.0, max_per_query: float = 1.0,
               sizes: tuple[int, ...] = (400,)) -> tuple[RunningNode, grpc.Server, grpc.Channel]:
    synth.write_network(root, members=len(sizes), seed=11, sizes=sizes)
    member = local.write_configs(root, total_epsilon, max_per_query)[0]
    engine = open_engine(load_config(member.config))
    server, port = build_server(engine, "127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    return RunningNode(engine, pb_grpc.NodeServiceStub(channel), address, root), server, channel


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    running, server, channel = start_node(tmp_path)
    yield running
    channel.close()
    server.stop(grace=None).wait()


@dataclass
class LocalNetwork:
    """A synthetic network whose nodes run as processes on loopback ports."""

    root: Path
    truth: dict[str, Any]
    members: list[local.LocalMember]
    processes: list[subprocess.Popen[bytes]]

    @property
    def network(self) -> Path:
        return self.root / "network.yaml"


@contextmanager
def local_network(root: Path, members: int, seed: int, total_epsilon: float,
                  max_per_query: float, sizes: Sequence[int] | None = None,
                  network: synth.NetworkParams | None = None) -> Iterator[LocalNetwork]:
    """Write the network (synth's default parameters unless `network`), start its nodes,
    stop them afterwards whatever happens."""
    synth.write_network(root, members=members, seed=seed, sizes=sizes,
                        network=network or synth.DEFAULT_NETWORK)
    configs = local.write_configs(root, total_epsilon=total_epsilon, max_per_query=max_per_query)
    processes = local.start_nodes(configs, root)
    try:
        yield LocalNetwork(root, json.loads((root / "truth.json").read_text()), configs,
                           processes)
    finally:
        local.stop_nodes(processes)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """`serve` configures the root logger; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def spent(network: LocalNetwork) -> dict[str, float]:
    """Each member's epsilon spent, as its node reports it."""
    from bridgestat.coordinator.api import Network

    with Network.from_file(network.network) as net:
        info = net.info()
    return dict(zip(info.member, info.epsilon_spent, strict=True))
