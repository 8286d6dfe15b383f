"""Secure aggregation end to end (issue 13): real node processes over mutual TLS, the
coordinator's driver (`coordinator/secure/aggregation.py`), the nodes' ledgers read through GetNodeInfo.

Tolerances: the secure mean's noise is the sum of |U3| discrete Gaussian shares (public
variance, in the table's `se_dp`) plus a ratio's error; a check fails by chance with
probability under 2 Phi(-Z) = 2.5e-6 per check at Z = 4.7 DP standard errors (Gaussian tail),
with a 20 % margin for the ratio's second-order terms.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pandas as pd
import pytest
import yaml
from cryptography import x509

from bridgestat.common import secagg as sa
from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.network_file import load_network
from bridgestat.coordinator.client.query import Query, Term
from bridgestat.coordinator.client.wire import query_to_pb
from bridgestat.coordinator.demo import local
from bridgestat.coordinator.secure.aggregation import (
    NETWORK,
    SecureDriver,
    SecureResult,
    secure_query,
    secure_rho,
)
from bridgestat.coordinator.secure.transport import RoundFailed, SessionLinks
from bridgestat.coordinator.statistics.meta import MetaError
from bridgestat.coordinator.statistics.regression import INTERCEPT, RegressionResult
from bridgestat.coordinator.statistics.tables import meta_from_table
from bridgestat.node import connect
from bridgestat.node.app import open_engine, server_tls
from bridgestat.node.config import load_config
from bridgestat.node.secure_service import SERVICE_NAME as SECURE_SERVICE_NAME
from bridgestat.node.secure_service import SESSION_STREAMS, SecureServicer, secure_node
from bridgestat.node.tls import AllowList
from bridgestat.v1 import coordinator_service_pb2 as cpb
from bridgestat.v1 import secure_aggregation_pb2 as spb
from bridgestat.v1 import secure_aggregation_pb2_grpc as spb_grpc
from tests.integration.conftest import LocalNetwork, local_network
from tests.integration.test_cert_lifetime import served_serial

Z = 4.7 * 1.2
T = TypeVar("T")
COUNT = Query("count", "participant", "", 1.0)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with local_network(tmp_path_factory.mktemp("secure"), members=5, seed=7,
                       total_epsilon=20.0, max_per_query=2.0) as running:
        yield running


def _rho_spent(net: Network) -> dict[str, float]:
    info = net.info()
    return {row.member: float(row.rho_spent) for row in info.itertuples()}


def _driver(network: LocalNetwork, cls: type[SecureDriver] = SecureDriver,
            timeout: float = 10.0) -> SecureDriver:
    spec = load_network(network.network)
    return cls(spec.members, spec.tls, spec.secure_settings, timeout)


def _run(driver: SecureDriver, query: Query, key: str,
         hook: Callable[[str], Awaitable[None] | None] | None = None) -> SecureResult:
    async def go() -> SecureResult:
        try:
            return await driver.run(query, key, hook=hook)
        finally:
            await driver.close()
    return asyncio.run(go())


def test_secure_mean_recovers_truth_and_charges_each_member_once(network: LocalNetwork
                                                                 ) -> None:
    with Network.from_file(network.network) as net:
        before = _rho_spent(net)
        frame = net.mean("assessment", "bridge_total", epsilon=1.0, secure=True, key="sm-1")
        middle = _rho_spent(net)
        again = net.mean("assessment", "bridge_total", epsilon=1.0, secure=True, key="sm-1")
        after = _rho_spent(net)
    assert list(frame.member) == [NETWORK]
    row = frame.iloc[0]
    assert row["status"].startswith("ok; secure aggregation (t = 4, c = 1): took part: "
                                    "member-01, member-02, member-03, member-04, member-05")
    truth = network.truth["network"]["sample"]["intake_bridge_mean"]
    assert abs(row["estimate"] - truth) <= Z * row["se_dp"] + 1e-9, (row.to_dict(), truth)
    assert row["ci_low"] < row["estimate"] < row["ci_high"]
    # theory: the sum's noise variance is |U3| sigma_share^2 (units^2), sigma_share from
    # the KLS bound for H = t - c = 3 at the rho of epsilon 1 at delta 1e-6
    rho = secure_rho(1.0)
    assert math.isclose(row["loss"], rho, rel_tol=1e-6)
    for member in before:
        charged = middle[member] - before[member]
        assert math.isclose(charged, rho, rel_tol=1e-6), (member, charged)
        # another session with the same key and the same members is a new charge (fresh
        # noise and masks): a session's masks cannot be reused
        assert math.isclose(after[member] - middle[member], rho, rel_tol=1e-6)
    assert again.iloc[0]["estimate"] != row["estimate"]


class RetryingDriver(SecureDriver):
    """Sends every masked-input request twice on the member's stream, as a coordinator that
    lost the first answers and retried within the same session."""

    async def _round(self, links: SessionLinks, name: str, members: Sequence[str],
                     dropped: dict[str, str], requests: Any) -> dict[str, Any]:
        first = await super()._round(links, name, members, dropped, requests)
        if name != sa.MASKED_INPUT:
            return first
        second = await super()._round(links, name, members, dropped, requests)
        assert all(r.replayed for r in second.values()), "the retry must replay"
        assert all(bytes(second[m].vector) == bytes(first[m].vector) for m in first)
        assert all(links.transport(m) == "stream" for m in members)
        return second


def test_retry_in_the_same_session_replays_without_a_new_charge(network: LocalNetwork) -> None:
    with Network.from_file(network.network) as net:
        before = _rho_spent(net)
        result = _run(_driver(network, RetryingDriver), COUNT, "retry-1")
        after = _rho_spent(net)
    assert not result.aborted, result.aborted
    assert len(result.survivors) == 5
    truth = network.truth["network"]["sample"]["n_participants"]
    value = result.cells()[()]["count"]
    assert abs(value.value - truth) <= Z * math.sqrt(value.variance)
    for member in before:  # charged once although round 2 was answered twice
        assert math.isclose(after[member] - before[member], result.rho, rel_tol=1e-6)


class ExcludingDriver(SecureDriver):
    """The replay attack: a coordinator that leaves one member's shares out of round 2, so
    the others' masked inputs are for a survivor set without it."""

    victim = "member-05"

    async def _round(self, links: SessionLinks, name: str, members: Sequence[str],
                     dropped: dict[str, str], requests: Any) -> dict[str, Any]:
        result = await super()._round(links, name, members, dropped, requests)
        if name == sa.SHARE_KEYS:
            result.pop(self.victim, None)
        return result


def test_replay_attack_with_another_survivor_set_is_a_new_charge(network: LocalNetwork
                                                                 ) -> None:
    with Network.from_file(network.network) as net:
        before = _rho_spent(net)
        full = _run(_driver(network), COUNT, "attack-1")
        middle = _rho_spent(net)
        without = _run(_driver(network, ExcludingDriver), COUNT, "attack-1")
        after = _rho_spent(net)
    assert not full.aborted and not without.aborted, (full.aborted, without.aborted)
    assert "member-05" not in without.survivors and len(without.survivors) == 4
    for member in before:
        assert math.isclose(middle[member] - before[member], full.rho, rel_tol=1e-6)
        extra = after[member] - middle[member]
        if member == ExcludingDriver.victim:
            assert extra == 0.0  # never charged: it never sent a masked input
        else:  # the same key, another survivor set: a new charge, fresh noise and masks
            assert math.isclose(extra, full.rho, rel_tol=1e-6), (member, extra)
    # The difference of the two sums is the victim's count plus fresh noise from every
    # survivor (two independent draws), not the victim's count under its own share alone.
    victim = next(m for m in network.truth["members"] if m["name"] == "member-05")
    diff = full.cells()[()]["count"].value - without.cells()[()]["count"].value
    noise_sd = math.sqrt(full.cells()[()]["count"].variance
                         + without.cells()[()]["count"].variance)
    assert abs(diff - victim["sample"]["n_participants"]) <= Z * noise_sd


def test_a_member_that_sends_garbage_fails_cleanly(network: LocalNetwork,
                                                   tmp_path: Path) -> None:
    """A fake member-05 (its real certificate, garbage answers) is dropped at advertise;
    the session completes with the four others."""
    spec = load_network(network.network)
    real = next(m for m in spec.members if m.name == "member-05")
    port = local.free_port()
    server = _garbage_server(network.root, f"127.0.0.1:{port}")
    members = [m if m.name != "member-05" else type(m)(m.name, f"127.0.0.1:{port}")
               for m in spec.members]
    try:
        driver = SecureDriver(members, spec.tls, spec.secure_settings, 10.0)
        result = _run(driver, COUNT, "garbage-1")
    finally:
        server.stop(None)
    assert real.address != members[-1].address
    assert _Garbage.streams == 1  # it was asked on its Session stream
    assert not result.aborted, result.aborted
    assert result.survivors == ("member-01", "member-02", "member-03", "member-04")
    assert result.dropped["member-05"].startswith("advertise: "), result.dropped
    others = sum(m["sample"]["n_participants"] for m in network.truth["members"]
                 if m["name"] != "member-05")
    value = result.cells()[()]["count"]
    assert abs(value.value - others) <= Z * math.sqrt(value.variance)


class _Garbage(spb_grpc.SecureAggregationServiceServicer):
    """Answers the Session stream's advertise with random keys, signature, certificate and
    an absurd layout (and the unary Advertise alike)."""

    streams = 0

    def Advertise(self, request: spb.AdvertiseRequest, context: grpc.ServicerContext
                  ) -> spb.AdvertiseResponse:
        return spb.AdvertiseResponse(advertisement=spb.Advertisement(
            member="member-05", c_pk=os.urandom(32), s_pk=os.urandom(31),
            signature=os.urandom(70), certificate=os.urandom(300)),
            layout=spb.SecureLayout(values=[spb.SecureValue(name="count", unit=1e300)]))

    def Session(self, request_iterator: Iterator[spb.SessionRequest],
                context: grpc.ServicerContext) -> Iterator[spb.SessionResponse]:
        type(self).streams += 1
        for message in request_iterator:
            yield spb.SessionResponse(advertise=self.Advertise(message.advertise, context))


class _Silent(spb_grpc.SecureAggregationServiceServicer):
    """Reads the Session stream's messages and never answers (a hung member)."""

    def Session(self, request_iterator: Iterator[spb.SessionRequest],
                context: grpc.ServicerContext) -> Iterator[spb.SessionResponse]:
        for _ in request_iterator:  # ends when the driver cancels the stream
            pass
        yield from ()


def test_a_member_that_never_answers_drops_out_at_the_rounds_deadline(
        network: LocalNetwork) -> None:
    """A fake member-05 whose stream swallows the advertise: at the round's deadline the
    driver cancels its stream and names it (DEADLINE_EXCEEDED); the four others complete."""
    spec = load_network(network.network)
    port = local.free_port()
    server = _garbage_server(network.root, f"127.0.0.1:{port}", _Silent())
    members = [m if m.name != "member-05" else type(m)(m.name, f"127.0.0.1:{port}")
               for m in spec.members]
    try:
        result = _run(SecureDriver(members, spec.tls, spec.secure_settings, 3.0), COUNT,
                      "silent-1")
    finally:
        server.stop(None)
    assert not result.aborted, result.aborted
    assert result.survivors == ("member-01", "member-02", "member-03", "member-04")
    assert result.dropped == {"member-05": "advertise: DEADLINE_EXCEEDED: no answer within "
                                            "3 s"}, result.dropped


def _garbage_server(root: Path, address: str,
                    servicer: spb_grpc.SecureAggregationServiceServicer | None = None
                    ) -> grpc.Server:
    folder = next(p.parent for p in root.rglob("member-05.pem"))
    key = (folder / "member-05.key").read_bytes()
    cert = (folder / "member-05.pem").read_bytes()
    ca = next(root.rglob("ca.pem")).read_bytes()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    spb_grpc.add_SecureAggregationServiceServicer_to_server(servicer or _Garbage(), server)
    creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                        require_client_auth=True)
    server.add_secure_port(address, creds)
    server.start()
    return server


def _in_process_node(config: Path, stream: bool) -> tuple[grpc.Server, SecureServicer]:
    """A real node's SecureAggregationService (its engine, ledger, audit log, TLS identity
    and allow-list) served in this process at the member's address; without `stream` it has
    only the five unary rounds: a node from before the Session stream."""
    node_config = load_config(config)
    engine = open_engine(node_config)
    tls = server_tls(node_config, insecure=False)
    assert tls is not None and node_config.listen is not None
    servicer = SecureServicer(secure_node(engine, tls))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         interceptors=[AllowList(tls.allow)])
    if stream:
        spb_grpc.add_SecureAggregationServiceServicer_to_server(servicer, server)
    else:
        handlers = {name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=getattr(spb, f"{name}Request").FromString,
            response_serializer=getattr(spb, f"{name}Response").SerializeToString)
            for name in ("Advertise", "ShareKeys", "MaskedInput", "Consistency", "Unmask")}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SECURE_SERVICE_NAME, handlers),))
    assert server.add_secure_port(node_config.listen, tls.credentials()) != 0
    server.start()
    return server, servicer


def test_a_node_holds_no_stream_after_a_session_ends(network: LocalNetwork) -> None:
    """member-05's SecureAggregationService in this process: after a completed session, and
    after one whose driver dropped it before the consistency round (its masked input is in
    the sum, its stream cancelled), none of its Session streams is still open, so no worker
    thread stays held."""
    local.stop_nodes([network.processes[4]])
    try:
        server, servicer = _in_process_node(network.members[4].config, stream=True)
        try:
            result = _run(_driver(network), COUNT, "no-held-stream-1")
            dropped = _run(_driver(network, DropAtConsistency), COUNT, "no-held-stream-2")
            deadline = time.monotonic() + 30  # the handler returns after its last answer
            while servicer.open_streams and time.monotonic() < deadline:
                time.sleep(0.05)
            assert servicer.open_streams == 0
        finally:
            server.stop(None)
    finally:
        _restart(network, [4])
    assert not result.aborted and len(result.survivors) == 5 and not result.unary
    assert not dropped.aborted, dropped.aborted
    assert "member-05" in dropped.dropped and "member-05" in dropped.survivors


def test_a_relayed_close_ends_only_its_callers_open_session(network: LocalNetwork) -> None:
    """What a connect-mode node does with the hub's SecureClose (the driver's stream to the
    hub ended before unmask), through `node.connect.answer` on member-05's real engine: a
    close from another caller leaves the session open; the opener's closes it (its keys and
    shares forgotten, a later round finds no session); a second close finds nothing."""
    local.stop_nodes([network.processes[4]])
    try:
        node_config = load_config(network.members[4].config)
        engine = open_engine(node_config)
        secure = secure_node(engine, server_tls(node_config, insecure=False))
        names = [m.name for m in network.members]
        opened = connect.answer(engine, cpb.CoordinatorRequest(
            request_id="1", caller="coordinator", secure_advertise=spb.AdvertiseRequest(
                session="close-session-1", idempotency_key="close-1",
                query=query_to_pb(secure_query(COUNT)), members=names,
                threshold=sa.default_threshold(5),
                colluding=1)), secure=secure)
        assert opened.WhichOneof("kind") == "secure_advertise", opened

        def close(caller: str) -> cpb.NodeReply:
            return connect.answer(engine, cpb.CoordinatorRequest(
                request_id="2", caller=caller,
                secure_close=cpb.SecureClose(session="close-session-1")), secure=secure)
        assert close("someone-else").secure_close.was_open is False
        assert secure.open_sessions() == 1
        assert close("coordinator").secure_close.was_open is True
        assert secure.open_sessions() == 0
        assert close("coordinator").secure_close.was_open is False
        later = connect.answer(engine, cpb.CoordinatorRequest(
            request_id="3", caller="coordinator", secure_consistency=spb.ConsistencyRequest(
                session="close-session-1", survivors=names)), secure=secure)
        assert later.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        assert "'close-session-1': not open at this node" in later.error.message
    finally:
        _restart(network, [4])


class DropAtConsistency(SecureDriver):
    """Leaves member-05 out of the consistency round (its stream is then closed)."""

    async def _round(self, links: SessionLinks, name: str, members: Sequence[str],
                     dropped: dict[str, str], requests: Any) -> dict[str, Any]:
        if name == sa.CONSISTENCY:
            links.drop("member-05")
            dropped["member-05"] = "consistency: left out by the test"
            members = [m for m in members if m != "member-05"]
        return await super()._round(links, name, members, dropped, requests)


def test_an_older_node_without_the_stream_takes_part_over_unary_calls(network: LocalNetwork
                                                                      ) -> None:
    """member-05's node replaced by one without Session (UNIMPLEMENTED): the driver sends
    its rounds as unary calls, the others' on their streams; each session completes with
    all five, each member charged once per session. Once the driver has seen the node's
    UNIMPLEMENTED it skips member-05's stream; the first write of a new stream can race that
    answer (gRPC then reports only that the write failed), and the driver falls back to
    unary without remembering, so the test requires the fallback, not the memory."""
    with Network.from_file(network.network) as net:
        before = _rho_spent(net)
    local.stop_nodes([network.processes[4]])
    try:
        server, _ = _in_process_node(network.members[4].config, stream=False)
        try:
            driver = _driver(network)
            first = _run(driver, COUNT, "older-1")
            second = _run(driver, COUNT, "older-2")
        finally:
            server.stop(None)
    finally:
        _restart(network, [4])
    with Network.from_file(network.network) as net:
        after = _rho_spent(net)
    assert driver.unary_only <= {"member-05"}
    truth = network.truth["network"]["sample"]["n_participants"]
    for result in (first, second):
        assert result.unary == ("member-05",)
        assert not result.aborted, result.aborted
        assert len(result.survivors) == 5 and not result.dropped, result.dropped
        value = result.cells()[()]["count"]
        assert abs(value.value - truth) <= Z * math.sqrt(value.variance)
    for member in before:
        assert math.isclose(after[member] - before[member], 2 * first.rho, rel_tol=1e-6), member


def _advertise_request(session: str, names: Sequence[str]) -> spb.AdvertiseRequest:
    return spb.AdvertiseRequest(session=session, idempotency_key=session,
                                query=query_to_pb(secure_query(COUNT)), members=list(names),
                                threshold=4, colluding=1)


def test_a_node_with_every_session_stream_in_use_is_asked_with_unary_calls(
        network: LocalNetwork) -> None:
    """member-05's SESSION_STREAMS streams are held open (each with an open session): its
    node answers a further stream RESOURCE_EXHAUSTED and the driver asks it with unary
    calls in that session only (not remembered); the session completes with all five,
    each charged once; the held sessions, never masked, charge nothing."""
    driver = _driver(network)
    names = [m.name for m in network.members]

    async def go() -> SecureResult:
        stub = driver.stub("member-05")
        held = []
        try:
            for i in range(SESSION_STREAMS):
                call = stub.Session(timeout=60)
                await call.write(spb.SessionRequest(
                    advertise=_advertise_request(f"held-session-{i}", names)))
                assert (await call.read()).WhichOneof("round") == "advertise"
                held.append(call)
            return await driver.run(COUNT, "busy-1")
        finally:
            for call in held:
                call.cancel()
            await driver.close()

    with Network.from_file(network.network) as net:
        before = _rho_spent(net)
        result = asyncio.run(go())
        after = _rho_spent(net)
    assert not result.aborted, result.aborted
    assert len(result.survivors) == 5 and not result.dropped, result.dropped
    assert result.unary == ("member-05",) and driver.unary_only == frozenset()
    for member in before:
        assert math.isclose(after[member] - before[member], result.rho, rel_tol=1e-6), member


def test_a_session_stream_refuses_malformed_messages_and_closes_its_session(
        network: LocalNetwork) -> None:
    """On a Session stream the node refuses, INVALID_ARGUMENT naming the problem: a message
    without a round, a first message other than advertise, a message of another session;
    the stream then ends and the session its advertise opened is closed at the node."""
    driver = _driver(network)
    names = [m.name for m in network.members]

    async def refusal(*messages: spb.SessionRequest) -> grpc.aio.AioRpcError:
        call = driver.stub("member-01").Session(timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            for message in messages:
                await call.write(message)
                await call.read()
        return caught.value

    async def go() -> tuple[list[grpc.aio.AioRpcError], grpc.aio.AioRpcError]:
        try:
            refused = [
                await refusal(spb.SessionRequest()),
                await refusal(spb.SessionRequest(consistency=spb.ConsistencyRequest(
                    session="session-1", survivors=names))),
                await refusal(
                    spb.SessionRequest(advertise=_advertise_request("session-2", names)),
                    spb.SessionRequest(consistency=spb.ConsistencyRequest(
                        session="session-3", survivors=names)))]
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                await driver.stub("member-01").ShareKeys(
                    spb.ShareKeysRequest(session="session-2"), timeout=30)
            return refused, closed.value
        finally:
            await driver.close()

    refused, closed = asyncio.run(go())
    assert [r.code() for r in refused] == [grpc.StatusCode.INVALID_ARGUMENT] * 3
    assert "a message must carry one round's request" in (refused[0].details() or "")
    assert "first message must be advertise (it opens the session), not consistency" in (
        refused[1].details() or "")
    assert ("this stream belongs to session session-2; session 'session-3' needs its own "
            "stream") in (refused[2].details() or "")
    assert closed.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "session 'session-2': not open at this node" in (closed.details() or "")


class LyingDriver(SecureDriver):
    """Announces to member-01 a survivor set without member-05 (the others get the true
    one), then asks member-01, on its Session stream, for member-05's mask-key share: with
    the others' self-mask shares of member-05 that would unmask member-05's input."""

    refusal: RoundFailed | None = None
    transport = ""

    async def _round(self, links: SessionLinks, name: str, members: Sequence[str],
                     dropped: dict[str, str], requests: Any) -> dict[str, Any]:
        if name != sa.CONSISTENCY:
            return await super()._round(links, name, members, dropped, requests)
        honest = await super()._round(
            links, name, [m for m in members if m != "member-01"], dropped, requests)
        fake_u3 = [m for m in members if m != "member-05"]
        self.transport = links.transport("member-01")
        mine = await links.ask("member-01", sa.CONSISTENCY, spb.ConsistencyRequest(
            session=self.session, survivors=fake_u3))
        lie = spb.UnmaskRequest(session=self.session, survivors=fake_u3, dropped=["member-05"],
                                signatures=[mine.signature,
                                            *(r.signature for m, r in honest.items()
                                              if m != "member-05")])
        try:
            await links.ask("member-01", sa.UNMASK, lie)
        except RoundFailed as exc:
            self.refusal = exc
        return honest

    async def _advertise(self, links: SessionLinks, query: Query, key: str, session: str,
                         names: tuple[str, ...], dropped: dict[str, str], hook: Any) -> Any:
        self.session = session
        return await super()._advertise(links, query, key, session, names, dropped, hook)


def test_inconsistent_survivor_sets_make_the_member_refuse(network: LocalNetwork) -> None:
    driver = _driver(network, LyingDriver)
    result = _run(driver, COUNT, "liar-1")
    # the session goes on without member-01's unmask answer; its input is still in the sum
    _assert_refused_and_summed(network, driver, result, "signature over the survivor set")


def _assert_refused_and_summed(network: LocalNetwork, driver: LyingDriver | BothSharesDriver,
                               result: SecureResult, why: str) -> None:
    """member-01 refused the lie on its Session stream (FAILED_PRECONDITION, saying `why`),
    and the session still completed with every member's input in the sum."""
    refusal = driver.refusal
    assert driver.transport == "stream"
    assert refusal is not None, "member-01 revealed the shares it was asked for"
    assert refusal.code is grpc.StatusCode.FAILED_PRECONDITION
    assert why in refusal.details, refusal.details
    assert not result.aborted, result.aborted
    assert len(result.survivors) == 5
    truth = network.truth["network"]["sample"]["n_participants"]
    value = result.cells()[()]["count"]
    assert abs(value.value - truth) <= Z * math.sqrt(value.variance)


class BothSharesDriver(SecureDriver):
    """In the unmask round asks member-01, on its Session stream, for both shares of
    member-05 (its self-mask share as a survivor and its mask-key share as if dropped):
    with the others' answers that would unmask member-05's input."""

    refusal: RoundFailed | None = None
    transport = ""

    async def _round(self, links: SessionLinks, name: str, members: Sequence[str],
                     dropped: dict[str, str], requests: Any) -> dict[str, Any]:
        if name == sa.UNMASK:
            greedy = spb.UnmaskRequest()
            greedy.CopyFrom(requests["member-01"])
            greedy.dropped.append("member-05")
            self.transport = links.transport("member-01")
            try:
                await links.ask("member-01", sa.UNMASK, greedy)
            except RoundFailed as exc:
                self.refusal = exc
            members = [m for m in members if m != "member-01"]
        return await super()._round(links, name, members, dropped, requests)


def test_a_request_for_both_shares_of_one_member_is_refused(network: LocalNetwork) -> None:
    """member-01 refuses to reveal both the self-mask share and the key share of member-05
    (FAILED_PRECONDITION, naming the member); the session completes from the other four
    members' unmask answers, with every input in the sum."""
    driver = _driver(network, BothSharesDriver)
    result = _run(driver, COUNT, "both-shares-1")
    _assert_refused_and_summed(
        network, driver, result,
        "refused: both the self-mask share and the key share of ['member-05']")


@pytest.fixture(scope="module")
def killable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """A network of its own for the kill tests: each test restarts the nodes it killed."""
    with local_network(tmp_path_factory.mktemp("killable"), members=5, seed=3,
                       total_epsilon=20.0, max_per_query=2.0) as running:
        yield running


def _killer(net: LocalNetwork, at: str, victims: Sequence[int]) -> Callable[[str], None]:
    """The driver's hook: SIGKILL the victims' nodes just before round `at`."""
    def hook(round_name: str) -> None:
        if round_name == at:
            for i in victims:
                net.processes[i].kill()
                net.processes[i].wait()
    return hook


def _restart(net: LocalNetwork, victims: Sequence[int]) -> None:
    for i in victims:
        net.processes[i] = local.start_nodes([net.members[i]], net.root)[0]


def _audit_verifies(net: LocalNetwork) -> None:
    """`bridgestat-node audit verify` for every member: the chain holds and every committed
    charge of its ledger is logged once as released with its loss."""
    from bridgestat.node import cli as node_cli

    for member in net.members:
        assert node_cli.main(["audit", "verify", "--config", str(member.config)]) == 0, member


# (the round the victims are killed before, how many of the 5 are killed; t = 4)
KILLS = [
    pytest.param(sa.SHARE_KEYS, 1, id="after-advertise-completes"),
    pytest.param(sa.SHARE_KEYS, 2, id="after-advertise-aborts"),
    pytest.param(sa.MASKED_INPUT, 1, id="after-share-keys-completes"),
    pytest.param(sa.MASKED_INPUT, 2, id="after-share-keys-aborts"),
    pytest.param(sa.CONSISTENCY, 1, id="after-masked-input-completes"),
    pytest.param(sa.CONSISTENCY, 2, id="after-masked-input-aborts"),
    pytest.param(sa.UNMASK, 1, id="after-consistency-completes"),
    pytest.param(sa.UNMASK, 2, id="after-consistency-aborts"),
]


@pytest.mark.parametrize(("at", "killed"), KILLS)
def test_members_killed_in_each_round(killable: LocalNetwork, at: str, killed: int) -> None:
    """SIGKILL before round `at`. With >= t survivors the session completes: killed before
    their masked vector left, the victims are recovered as dropped (their pairwise masks
    from the others' shares of their keys) and not in the sum; killed after, their input is
    in the sum (their self-masks from the others' shares). Below t it aborts, and the charge
    stays exactly where a masked vector left a node. Restarted, every node's ledger shows
    that and `audit verify` passes."""
    net = killable
    names = [m.name for m in net.members]
    victims = list(range(5 - killed, 5))
    sent_before_kill = at in (sa.CONSISTENCY, sa.UNMASK)  # the victims' vectors had left
    key = f"kill-{at}-{killed}"
    try:
        with Network.from_file(net.network, timeout=5.0) as client:
            before = _rho_spent(client)
        result = _run(_driver(net, timeout=5.0), COUNT, key, hook=_killer(net, at, victims))
    finally:
        _restart(net, victims)
    with Network.from_file(net.network, timeout=5.0) as client:
        after = _rho_spent(client)
    rho = secure_rho(COUNT.epsilon)
    if killed == 1:  # 4 >= t members go on
        assert not result.aborted, result.aborted
        took_part = names if sent_before_kill else names[:4]
        assert result.survivors == tuple(took_part)
        assert result.dropped["member-05"].startswith(f"{at}: UNAVAILABLE"), result.dropped
        truth = sum(m["sample"]["n_participants"] for m in net.truth["members"]
                    if m["name"] in took_part)
        value = result.cells()[()]["count"]
        assert abs(value.value - truth) <= Z * math.sqrt(value.variance), (value, truth)
    else:  # 3 < t = 4: the round after the kill aborts
        assert result.aborted.startswith(f"{at}: 3 members took part, fewer than t = 4"), \
            result.aborted
        assert not result.values
    if sent_before_kill:
        sent = names
    elif at == sa.SHARE_KEYS and killed == 2:  # aborted before any masked vector
        sent = []
    else:  # the members still running when round 2 came
        sent = names[:5 - killed]
    for member in names:
        charged = after[member] - before[member]
        expected = rho if member in sent else 0.0
        assert math.isclose(charged, expected, rel_tol=1e-6, abs_tol=1e-12), (member, charged)
    _audit_verifies(net)


def test_refused_queries_name_the_field_and_spend_nothing(network: LocalNetwork) -> None:
    quantile = Query("quantile", "assessment", "bridge_total", 0.5, quantile=0.5,
                     bin_edges=(10.0, 20.0, 30.0))
    with Network.from_file(network.network) as net:
        before = _rho_spent(net)
        result = _run(_driver(network), quantile, "refused-1")
        too_much = _run(_driver(network), Query("count", "participant", "", 50.0), "refused-2")
        after = _rho_spent(net)
    assert result.aborted.startswith("advertise: no member answered")
    assert all("INVALID_ARGUMENT: query.statistic: a quantile is not a sum"
               in why for why in result.dropped.values()), result.dropped
    assert all("PERMISSION_DENIED: query.loss.rho: policy rule budget.max_epsilon_per_query"
               in why for why in too_much.dropped.values()), too_much.dropped
    assert after == before


def test_network_file_secure_section(tmp_path: Path, network: LocalNetwork) -> None:
    from bridgestat.coordinator.client.network_file import NetworkFileError, SecureSettings

    text = network.network.read_text()
    path = network.root / "network-secure.yaml"
    path.write_text(text + "secure: {threshold: 5, colluding: 2}\n")
    assert load_network(path).secure_settings == SecureSettings(5, 2)
    assert load_network(network.network).secure_settings == SecureSettings(4, 1)  # defaults
    path.write_text(text + "secure: {threshold: 2}\n")
    with pytest.raises(NetworkFileError, match=r"secure\.threshold: t = 2 must satisfy K/2 < t"):
        load_network(path)
    path.write_text(text + "secure: {threshold: 4, colluding: 4}\n")
    with pytest.raises(NetworkFileError, match=r"secure\.colluding: c = 4 must be below t = 4"):
        load_network(path)


# -- secure regression ------------------------------------------------------------------------

REGRESSION_TERMS = (Term("bridge_total", clip=(0.0, 100.0)),
                    Term("stress_score", clip=(0.0, 10.0)),
                    Term("life_satisfaction", clip=(0.0, 10.0)))


def _exact_ols(network: LocalNetwork) -> dict[str, float]:
    """The non-private OLS of life_satisfaction on bridge_total and stress_score at intake
    over every member's rows (complete cases, each term clipped to its bounds), read
    straight from the members' CSV files."""
    rows = []
    for member in network.members:
        folder = member.config.parent / yaml.safe_load(member.config.read_text())["data"]["path"]
        people = pd.read_csv(folder / "participant.csv", dtype=str, keep_default_na=False)
        frame = pd.read_csv(folder / "assessment.csv", dtype=str, keep_default_na=False)
        frame = frame[(frame.months_since_intake.astype(int) == 0)
                      & frame.participant_id.isin(people.participant_id)]
        rows.append(frame[[t.column for t in REGRESSION_TERMS]].replace("", np.nan)
                    .astype(float))
    data = pd.concat(rows).dropna().to_numpy()
    for k, term in enumerate(REGRESSION_TERMS):
        assert term.clip is not None
        data[:, k] = np.clip(data[:, k], *term.clip)
    x = np.column_stack([np.ones(len(data)), data[:, :-1]])
    beta = np.linalg.lstsq(x, data[:, -1], rcond=None)[0]
    return dict(zip((INTERCEPT, "bridge_total", "stress_score"), beta.tolist(), strict=True))


def test_secure_regression_recovers_the_non_private_fit(network: LocalNetwork) -> None:
    """Each member adds a distributed discrete-Gaussian share to its fixed-point U'U; the
    NETWORK fit from the network sum lies within Z bootstrap SEs (the SE of the DP noise
    alone, `fit`'s parametric bootstrap at the public variances) of the non-private OLS on
    the same rows: the data are the same, only the noise differs."""
    rho = 0.05
    with Network.from_file(network.network) as net:
        before = _rho_spent(net)
        fits = net.regression(REGRESSION_TERMS, rho=rho, secure=True, replicates=1000,
                              seed=3, key="sreg-1")
        after = _rho_spent(net)
    assert list(fits) == [NETWORK], fits  # no member's fit exists at the coordinator
    fitted = fits[NETWORK]
    assert isinstance(fitted, RegressionResult), fitted
    exact = _exact_ols(network)
    for coef in fitted.coefficients:
        assert abs(coef.estimate - exact[coef.name]) <= Z * coef.se, (coef, exact)
    for member in before:  # each member charged the network sum's rho once
        assert math.isclose(after[member] - before[member], rho, rel_tol=1e-6), member


def test_secure_regression_table_names_who_took_part(network: LocalNetwork) -> None:
    from bridgestat.coordinator.analyses import REGISTRY

    kind = REGISTRY["regression"]
    params = kind.parse(terms=REGRESSION_TERMS, rho=0.02, secure=True, replicates=200)
    with Network.from_file(network.network) as net:
        result = net.run_secure(kind.plan(params)[0].query, "sreg-table-1")
    out = kind.output(params, [result], "Linear regression")
    frame = out.tables[0][2]
    assert set(frame.member) == {NETWORK}
    assert list(frame.term) == [INTERCEPT, "bridge_total", "stress_score"]
    assert all(s.startswith(("ok; secure aggregation (t = 4, c = 1): took part: member-01",
                             "unstable"))
               for s in frame.status), list(frame.status)
    assert frame.attrs["secure"].startswith("cross_products")
    assert "(secure aggregation, NETWORK only)" in out.tables[0][1]
    with pytest.raises(MetaError, match="secure aggregation"):
        meta_from_table(frame)


# -- certificates reloaded on SIGHUP ------------------------------------------------------------


class AdvertCapture(SecureDriver):
    """Keeps the advertisements the members sent in round 0."""

    adverts: list[sa.Advertisement]

    async def _advertise(self, links: SessionLinks, query: Query, key: str, session: str,
                         names: tuple[str, ...], dropped: dict[str, str], hook: Any) -> Any:
        adverts, layout = await super()._advertise(links, query, key, session, names,
                                                   dropped, hook)
        self.adverts = list(adverts)
        return adverts, layout


def test_a_renewed_certificate_signs_secure_sessions_after_sighup(network: LocalNetwork
                                                                  ) -> None:
    """Renew member-01's certificate (`bridgestat ca renew`), SIGHUP its node: the next
    secure session completes and member-01's keys are signed with the new key under the
    new certificate (checked against the network CA, as every member checks it)."""
    member = network.members[0]
    cert_path = member.config.parent / f"{member.name}.pem"
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    from bridgestat.coordinator.cli import main as cli
    assert cli.main(["ca", "renew", "--cert", str(cert_path), "--dir",
                     str(network.root / "ca")]) == 0  # `bridgestat ca renew`, in place
    new = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert new.serial_number != old.serial_number
    assert member.client_tls is not None
    network.processes[0].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while served_serial(member.address, member.client_tls, member.name) != new.serial_number:
        assert time.monotonic() < deadline, "the node did not reload its certificate"
        time.sleep(0.2)
    driver = _driver(network, AdvertCapture)
    assert isinstance(driver, AdvertCapture)
    result = _run(driver, COUNT, "after-sighup-1")
    assert not result.aborted, result.aborted
    assert len(result.survivors) == 5
    advert = next(a for a in driver.adverts if a.member == member.name)
    signed = x509.load_der_x509_certificate(advert.certificate)
    assert signed.serial_number == new.serial_number
    assert driver.ca is not None
    public = sa.member_key(driver.ca, advert.certificate, member.name)
    sa.verify(public, advert.signature,
              sa.advertise_payload(result.session, member.name, advert.c_pk, advert.s_pk),
              "advertisement")  # raises unless signed by the renewed certificate's key
    with pytest.raises(sa.SecAggError, match="signature is invalid"):  # not the old key's
        sa.verify(old.public_key(), advert.signature,  # type: ignore[arg-type]
                  sa.advertise_payload(result.session, member.name, advert.c_pk,
                                       advert.s_pk), "advertisement")


# -- study file, reports ----------------------------------------------------------------------


def test_a_secure_study_runs_and_its_reports_say_which_analyses_were_secure(
        network: LocalNetwork, tmp_path: Path) -> None:
    from bridgestat.coordinator.cli import main as cli
    from bridgestat.coordinator.report.member_report import member_report_html
    from bridgestat.coordinator.report.study_report import report_html
    from bridgestat.coordinator.studies.runner import STANDARD_STUDY

    doc = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
    chosen = {a["id"]: a for a in doc["analyses"]}
    doc["analyses"] = [
        {**chosen["a02_bridge_intake"], "secure": True, "epsilon": 0.5},
        {**chosen["a11_dose_response"], "secure": True, "rho": 0.03, "replicates": 200,
         "audience": "coordinator"},
        {**chosen["a02_debt_step_low"], "epsilon": 0.2}]  # per member, for contrast
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    code = cli.main(["study", "run", str(study), "--network", str(network.network),
                     "--out", str(tmp_path / "out"), "--run-id", "secure-study"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    mean, regression, plain = results["analyses"]
    for analysis in (mean, regression):
        rows = analysis["tables"][0]["rows"]
        assert {r["member"] for r in rows} == {NETWORK}, analysis["id"]
        assert all("secure aggregation (t = 4, c = 1)" in r["status"] for r in rows)
    assert NETWORK in regression["regression"] and len(regression["regression"]) == 1
    assert {r["member"] for r in plain["tables"][0]["rows"]} > {NETWORK}

    english, dutch = report_html(results, "en"), report_html(results, "nl")
    assert english.count("secure aggregation: network figure only") == 2
    assert "2 with secure aggregation" in english
    assert english.count("This analysis ran with secure aggregation") == 2
    assert dutch.count("beveiligde aggregatie: alleen het netwerkcijfer") == 2
    assert "2 met beveiligde aggregatie" in dutch

    for lang, says, network_part in (
            ("en", "This analysis ran with secure aggregation: your organisation added",
             "In the network: "),
            ("nl", "Deze analyse liep met beveiligde aggregatie: uw organisatie voegde",
             "In het netwerk: ")):
        member = member_report_html(results, "member-02", lang)
        assert member.count(says) == 2, lang  # the mean and the regression
        assert network_part in member
        assert "did not answer" not in member and "niet beantwoord" not in member


def test_cli_secure_regression_prints_the_network_fit_only(
        network: LocalNetwork, capsys: pytest.CaptureFixture[str]) -> None:
    """`bridgestat query regression ... --secure true` runs the secure session (each member
    charged the network sum's rho once) and prints NETWORK coefficients only."""
    from bridgestat.coordinator.cli import main as cli

    with Network.from_file(network.network) as net:
        before = _rho_spent(net)
    code = cli.main(["query", "--network", str(network.network), "regression",
                     "bridge_total:0,100", "stress_score:0,10", "life_satisfaction:0,10",
                     "--rho", "0.02", "--replicates", "200", "--secure", "true", "--json",
                     "--key", "cli-sreg-1"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = json.loads(out)
    assert {r["member"] for r in rows} == {NETWORK}
    assert [r["term"] for r in rows] == [INTERCEPT, "bridge_total", "stress_score"]
    assert all("secure aggregation (t = 4, c = 1): took part: member-01" in r["status"]
               for r in rows), rows
    with Network.from_file(network.network) as net:
        after = _rho_spent(net)
    for member in before:
        assert math.isclose(after[member] - before[member], 0.02, rel_tol=1e-6), member
