"""Connect mode: a node dials out to `bridgestat coordinator serve`, which proxies NodeService.

Real parts: the node's engine over a synthetic member and its SQLite ledger, the Connector on
a real gRPC stream, the coordinator's hub on a loopback port, and a plain NodeService client
that names the member in metadata, as the researcher's API does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bridgestat.coordinator import local, synth
from bridgestat.coordinator.hub import MEMBER_HEADER, start_hub
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.connect import Backoff, Connector
from bridgestat.node.engine import Engine
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

COUNT = pb.Query(statistic=pb.STATISTIC_COUNT, table="participant",
                 loss=pb.PrivacyLoss(epsilon=0.5))


class HubThread:
    """The coordinator's hub on its own event loop, startable and stoppable from tests."""

    def __init__(self, port: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.hub, self.port = self._call(start_hub(f"127.0.0.1:{port}", None))

    def _call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def wait_connected(self, member: str, timeout: float = 20.0) -> None:
        self._call(self.hub.wait_connected(member, timeout))

    def stop(self) -> None:
        self._call(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Member:
    engine: Engine
    connector: Connector
    thread: threading.Thread


@pytest.fixture
def member(tmp_path: Path) -> Iterator[tuple[HubThread, Member]]:
    synth.write_network(tmp_path, members=1, seed=5, sizes=[300])
    config = local.write_configs(tmp_path, total_epsilon=10.0, max_per_query=1.0)[0].config
    engine = open_engine(load_config(config))
    hub = HubThread()
    connector = Connector(engine, f"127.0.0.1:{hub.port}", None,
                          backoff=Backoff(initial=0.05, maximum=0.5))
    thread = threading.Thread(target=connector.run, daemon=True)
    thread.start()
    hub.wait_connected(engine.node_id)
    yield hub, Member(engine, connector, thread)
    connector.stop()
    thread.join(timeout=10)
    hub.stop()


def _stub(port: int) -> tuple[grpc.Channel, pb_grpc.NodeServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.NodeServiceStub(channel)


def test_queries_reach_a_connected_node_through_the_coordinator(
        member: tuple[HubThread, Member]) -> None:
    hub, node = member
    channel, stub = _stub(hub.port)
    metadata = ((MEMBER_HEADER, node.engine.node_id),)
    with channel:
        info = stub.GetNodeInfo(pb.GetNodeInfoRequest(), metadata=metadata, timeout=10)
        assert info.node_id == node.engine.node_id
        first = stub.RunQuery(pb.RunQueryRequest(idempotency_key="k1", query=COUNT),
                              metadata=metadata, timeout=10)
        again = stub.RunQuery(pb.RunQueryRequest(idempotency_key="k1", query=COUNT),
                              metadata=metadata, timeout=10)
        assert not first.replayed and again.replayed
        assert again.release == first.release
        assert float(node.engine.ledger.state().spent) == pytest.approx(first.charged.epsilon)
        # a refusal keeps the node's own status code and message
        bad = pb.Query(statistic=pb.STATISTIC_MEAN, table="participant", column="nope",
                       loss=pb.PrivacyLoss(epsilon=0.5))
        with pytest.raises(grpc.RpcError) as refused:
            stub.RunQuery(pb.RunQueryRequest(idempotency_key="k2", query=bad),
                          metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details().startswith("query.column")


def test_an_unknown_or_unconnected_member_is_unavailable_by_name(
        member: tuple[HubThread, Member]) -> None:
    hub, _ = member
    channel, stub = _stub(hub.port)
    with channel, pytest.raises(grpc.RpcError) as missing:
        stub.GetNodeInfo(pb.GetNodeInfoRequest(), metadata=((MEMBER_HEADER, "member-99"),),
                         timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "member-99" in missing.value.details()


def test_the_node_reconnects_after_the_coordinator_restarts_and_a_retry_is_free(
        member: tuple[HubThread, Member]) -> None:
    hub, node = member
    port = hub.port
    channel, stub = _stub(port)
    metadata = ((MEMBER_HEADER, node.engine.node_id),)
    first = stub.RunQuery(pb.RunQueryRequest(idempotency_key="r1", query=COUNT),
                          metadata=metadata, timeout=10)
    channel.close()
    hub.stop()  # the stream drops
    deadline = time.monotonic() + 10
    while node.connector.connected.is_set() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not node.connector.connected.is_set()
    restarted = HubThread(port)  # same address: the node's backoff finds it again
    try:
        restarted.wait_connected(node.engine.node_id)
        assert node.connector.sessions >= 2
        channel, stub = _stub(port)
        with channel:
            retry = stub.RunQuery(pb.RunQueryRequest(idempotency_key="r1", query=COUNT),
                                  metadata=metadata, timeout=10)
        assert retry.replayed and retry.release == first.release
        assert float(node.engine.ledger.state().spent) == pytest.approx(first.charged.epsilon)
    finally:
        restarted.stop()
        hub.stop = lambda: None  # type: ignore[method-assign]  # already stopped


def test_a_stream_dropped_during_a_query_never_charges_twice(
        member: tuple[HubThread, Member]) -> None:
    """Whether the reply made it or not, the retry after reconnecting answers the same
    release and the ledger holds one charge."""
    hub, node = member
    port = hub.port
    channel, stub = _stub(port)
    metadata = ((MEMBER_HEADER, node.engine.node_id),)
    in_flight = stub.RunQuery.future(pb.RunQueryRequest(idempotency_key="d1", query=COUNT),
                                     metadata=metadata, timeout=10)
    hub.stop()  # the stream drops while the query is under way
    try:
        first: pb.RunQueryResponse | None = in_flight.result()
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        first = None
    channel.close()
    restarted = HubThread(port)
    try:
        restarted.wait_connected(node.engine.node_id)
        channel, stub = _stub(port)
        with channel:
            retry = stub.RunQuery(pb.RunQueryRequest(idempotency_key="d1", query=COUNT),
                                  metadata=metadata, timeout=10)
        if first is not None:
            assert retry.release == first.release
        charges = node.engine.ledger.charges()
        assert [key for key, _, _ in charges] == ["d1"]
        assert float(node.engine.ledger.state().spent) == pytest.approx(retry.charged.epsilon)
    finally:
        restarted.stop()
        hub.stop = lambda: None  # type: ignore[method-assign]  # already stopped
