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

from bridgestat.common.headers import MEMBER_HEADER
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.hub import start_hub
from bridgestat.node import audit
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.connect import Backoff, Connector, answer
from bridgestat.node.engine import Engine
from bridgestat.node.metrics import NodeMetrics
from bridgestat.v1 import coordinator_service_pb2 as cpb
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc
from tests.integration.conftest import RunningNode

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
    assert connector.connected.wait(10)  # and the node has seen the hub accept it
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
    assert node.connector.metrics.registry.get_sample_value("bridgestat_node_connected") == 1
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
        assert node.connector.connected.wait(10)  # the node has seen the hub accept it
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


# -- the same treatment as inbound queries: allow-list, metrics, audit --------------------------

def _entries(engine: Engine) -> list[dict[str, object]]:
    assert engine.audit is not None
    return list(audit.entries(engine.audit.path))


def test_the_node_applies_its_allow_list_to_the_caller_the_coordinator_relays(
        node: RunningNode) -> None:
    metrics = NodeMetrics()
    request = cpb.CoordinatorRequest(request_id="r", caller="researcher-x",
                                     run_query=pb.RunQueryRequest(idempotency_key="a1",
                                                                  query=COUNT))
    reply = answer(node.engine, request, metrics, allow=("coordinator",))
    assert reply.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "'researcher-x'" in reply.error.message and "tls.allow" in reply.error.message
    assert node.engine.ledger.charges() == []
    assert metrics.registry.get_sample_value(
        "bridgestat_node_refusals_total",
        {"code": "PERMISSION_DENIED", "reason": "allow-list"}) == 1
    request.caller = "coordinator"
    reply = answer(node.engine, request, metrics, allow=("coordinator",))
    assert reply.WhichOneof("kind") == "run_query"
    assert metrics.registry.get_sample_value(
        "bridgestat_node_queries_total", {"statistic": "count", "outcome": "ok"}) == 1
    assert _entries(node.engine)[-1]["caller"] == "coordinator"


def test_an_undecodable_query_is_audited_as_refused_in_both_modes(node: RunningNode) -> None:
    bad = pb.Query(statistic=99, table="participant", loss=pb.PrivacyLoss(epsilon=0.5))
    with pytest.raises(grpc.RpcError) as inbound:
        node.stub.RunQuery(pb.RunQueryRequest(idempotency_key="bad-in", query=bad), timeout=10)
    assert inbound.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    metrics = NodeMetrics()
    reply = answer(node.engine, cpb.CoordinatorRequest(
        request_id="r", caller="coordinator",
        run_query=pb.RunQueryRequest(idempotency_key="bad-out", query=bad)), metrics)
    assert reply.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.error.message.startswith("query.statistic")
    assert metrics.registry.get_sample_value(
        "bridgestat_node_queries_total", {"statistic": "unknown",
                                          "outcome": "INVALID_ARGUMENT"}) == 1
    refused = {e["key"]: e for e in _entries(node.engine) if e["outcome"] == "refused"}
    assert set(refused) == {"bad-in", "bad-out"}
    assert refused["bad-out"]["caller"] == "coordinator" and refused["bad-in"]["query"] is None
    assert node.engine.ledger.charges() == []


def test_both_transports_answer_alike(node: RunningNode) -> None:
    """The server and connect mode share one implementation of the calls: the same node
    info, and the same status code and message for a refused query."""
    relayed = answer(node.engine, cpb.CoordinatorRequest(
        request_id="i", caller="coordinator", get_node_info=pb.GetNodeInfoRequest()))
    assert relayed.node_info == node.stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10)
    bad = pb.Query(statistic=pb.STATISTIC_MEAN, table="participant", column="nope",
                   loss=pb.PrivacyLoss(epsilon=0.5))
    with pytest.raises(grpc.RpcError) as inbound:
        node.stub.RunQuery(pb.RunQueryRequest(idempotency_key="same-in", query=bad), timeout=10)
    reply = answer(node.engine, cpb.CoordinatorRequest(
        request_id="q", caller="coordinator",
        run_query=pb.RunQueryRequest(idempotency_key="same-out", query=bad)))
    assert (reply.error.code, reply.error.message) == (inbound.value.code().value[0],
                                                       inbound.value.details())


def test_stopping_the_connector_delivers_the_reply_under_way(
        member: tuple[HubThread, Member], monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM's path in connect mode: new requests are refused, the query under way is
    answered on the stream, then the node closes the stream cleanly."""
    hub, node = member
    entered, release = threading.Event(), threading.Event()
    run = node.engine.run

    def held(key: str, query: object, caller: str = "anonymous") -> object:
        entered.set()
        release.wait(30)
        return run(key, query, caller)  # type: ignore[arg-type]
    monkeypatch.setattr(node.engine, "run", held)
    channel, stub = _stub(hub.port)
    metadata = ((MEMBER_HEADER, node.engine.node_id),)
    with channel:
        in_flight = stub.RunQuery.future(pb.RunQueryRequest(idempotency_key="g1", query=COUNT),
                                         metadata=metadata, timeout=20)
        assert entered.wait(10)
        node.connector.stop(grace=10)
        time.sleep(0.3)  # the connector has seen the stop
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetNodeInfo(pb.GetNodeInfoRequest(), metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        release.set()
        answered = in_flight.result()
    assert answered.idempotency_key == "g1" and not answered.replayed
    node.thread.join(timeout=10)
    assert not node.thread.is_alive()
    assert node.connector.metrics.registry.get_sample_value("bridgestat_node_connected") == 0
