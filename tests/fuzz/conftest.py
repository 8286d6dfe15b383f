"""Fixtures for the fuzz tests: one synthetic member's folder and config (plain text), the
engine opened on it, and that engine served over gRPC on a loopback port.

The fixtures are session-scoped so that hypothesis can draw thousands of examples against
one node; each example uses fresh idempotency keys and compares the ledger before and after.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bridgestat.coordinator.demo import local, synth
from bridgestat.node.app import open_engine
from bridgestat.node.config import NodeConfig, load_config
from bridgestat.node.engine import Engine
from bridgestat.node.service import build_server
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

RICH_TOTAL = 1.0e6  # enough budget for every valid query hypothesis draws
POOR_TOTAL = 1.0  # exhausted after a few answers: RESOURCE_EXHAUSTED is exercised
MAX_PER_QUERY = 1.0


@dataclass(frozen=True)
class Member:
    """A synthetic member on disk: its folder (CSV tables) and its node config."""

    root: Path
    folder: Path
    config_path: Path
    config: NodeConfig


@dataclass(frozen=True)
class ServedNode:
    """An engine served over plain-text gRPC on a loopback port."""

    engine: Engine
    address: str
    channel: grpc.Channel
    stub: pb_grpc.NodeServiceStub


def make_member(root: Path, total_epsilon: float, size: int = 120) -> Member:
    """Write a one-member synthetic network in `root` and its plain-text node config."""
    synth.write_network(root, members=1, seed=23, sizes=(size,))
    written = local.write_configs(root, total_epsilon, MAX_PER_QUERY, tls=False)[0]
    return Member(root, written.config.parent, written.config, load_config(written.config))


@pytest.fixture(scope="session")
def member(tmp_path_factory: pytest.TempPathFactory) -> Member:
    """A member whose budget never runs out during the fuzz run."""
    return make_member(tmp_path_factory.mktemp("fuzz-rich"), RICH_TOTAL)


@pytest.fixture(scope="session")
def engine(member: Member) -> Engine:
    return open_engine(member.config)


@pytest.fixture(scope="session")
def poor_engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """A member whose small budget is soon exhausted."""
    return open_engine(make_member(tmp_path_factory.mktemp("fuzz-poor"), POOR_TOTAL).config)


@pytest.fixture(scope="session")
def served(engine: Engine) -> Iterator[ServedNode]:
    """The rich member's engine behind a real gRPC server (plain text, loopback)."""
    server, port = build_server(engine, "127.0.0.1:0", workers=4)
    server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    try:
        yield ServedNode(engine, address, channel, pb_grpc.NodeServiceStub(channel))
    finally:
        channel.close()
        server.stop(grace=None).wait()
