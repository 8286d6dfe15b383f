"""Secure aggregation over a mixed network (issue 13): connect-mode members take part
unchanged.

Real processes over mutual TLS: `bridgestat coordinator serve` (the hub) and five
`bridgestat-node serve` nodes, two of which (member-02, member-05) dial the hub and open no
port. The driver calls SecureAggregationService on the inbound nodes directly and on the hub
for the others, which relays each round on the member's stream. Tolerances as in
test_secure.py: Z = 4.7 DP standard errors with a 20 % margin (2.5e-6 per check).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridgestat.common import secagg as sa
from bridgestat.common.headers import MEMBER_HEADER
from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.network_file import load_network
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.demo.local import LocalMember
from bridgestat.coordinator.secure.aggregation import (
    NETWORK,
    SecureDriver,
    SecureResult,
    secure_rho,
)
from bridgestat.coordinator.secure.transport import SessionLinks
from bridgestat.node import cli as node_cli
from bridgestat.v1 import secure_aggregation_pb2 as spb
from bridgestat.v1 import secure_aggregation_pb2_grpc as spb_grpc
from tests.integration.test_secure import DropAtConsistency

Z = 4.7 * 1.2
VIA_HUB = ("member-02", "member-05")
COUNT = Query("count", "participant", "", 1.0)
SECURE_SERVICE = "bridgestat.v1.SecureAggregationService"


@dataclass
class Mixed:
    root: Path
    members: list[LocalMember]
    truth: dict[str, Any]
    nodes: list[Any]
    hub: Any

    @property
    def network(self) -> Path:
        return self.root / "network.yaml"

    def index(self, name: str) -> int:
        return next(i for i, m in enumerate(self.members) if m.name == name)

    def channel(self, identity: str | None = None) -> grpc.Channel:
        """A channel to the hub with a member's certificate (None: the network file's)."""
        tls = self.members[0].client_tls
        assert tls is not None
        cert, key = tls.cert, tls.key
        if identity is not None:
            cert, key = (self.root / identity / f"{identity}.pem",
                         self.root / identity / f"{identity}.key")
        credentials = grpc.ssl_channel_credentials(tls.ca.read_bytes(), key.read_bytes(),
                                                   cert.read_bytes())
        hub = next(m.address for m in self.members if m.connect)
        return grpc.secure_channel(hub, credentials,
                                   options=[("grpc.ssl_target_name_override", "coordinator")])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    root = tmp_path_factory.mktemp("secure-hub")
    synth.write_network(root, members=5, seed=17)
    members = local.write_configs(root, total_epsilon=20.0, max_per_query=2.0,
                                  connect=list(VIA_HUB))
    hub_address = next(m.address for m in members if m.connect)
    hub = local.start_hub(root, hub_address, root / "hub.log")
    try:
        nodes = local.start_nodes(members, root)
    except BaseException:
        local.stop_nodes([hub])
        raise
    running = Mixed(root, members, json.loads((root / "truth.json").read_text()), nodes, hub)
    try:
        yield running
    finally:
        local.stop_nodes([*running.nodes, running.hub])


def _rho_spent(net: Network) -> dict[str, float]:
    return {row.member: float(row.rho_spent) for row in net.info().itertuples()}


def _audit_verifies(mixed: Mixed) -> None:
    for member in mixed.members:
        assert node_cli.main(["audit", "verify", "--config", str(member.config)]) == 0, member


def _run(mixed: Mixed, key: str, hook: Callable[[str], None] | None = None) -> SecureResult:
    spec = load_network(mixed.network)
    driver = SecureDriver(spec.members, spec.tls, spec.secure_settings, 5.0)

    async def go() -> SecureResult:
        try:
            return await driver.run(COUNT, key, hook=hook)
        finally:
            await driver.close()
    return asyncio.run(go())


def test_the_network_mixes_both_modes(mixed: Mixed) -> None:
    spec = load_network(mixed.network)
    assert spec.connect_members == VIA_HUB
    with mixed.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SECURE_SERVICE), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_secure_mean_over_a_mixed_network_matches_the_truth_charged_once(mixed: Mixed
                                                                           ) -> None:
    with Network.from_file(mixed.network) as net:
        before = _rho_spent(net)
        frame = net.mean("assessment", "bridge_total", epsilon=1.0, secure=True, key="hub-1")
        after = _rho_spent(net)
    assert list(frame.member) == [NETWORK]
    row = frame.iloc[0]
    names = ", ".join(m.name for m in mixed.members)
    assert row["status"].startswith(f"ok; secure aggregation (t = 4, c = 1): took part: "
                                    f"{names}; dropped out: none"), row["status"]
    truth = mixed.truth["network"]["sample"]["intake_bridge_mean"]
    assert abs(row["estimate"] - truth) <= Z * row["se_dp"], (row.to_dict(), truth)
    rho = secure_rho(1.0)
    for member in before:  # inbound and via hub alike: one charge each
        assert math.isclose(after[member] - before[member], rho, rel_tol=1e-6), member
    for member in VIA_HUB:  # the relayed session is in the member's own audit log
        lines = (mixed.root / member / "audit.jsonl").read_text().splitlines()
        released = [json.loads(x) for x in lines if x.strip()]
        released = [e for e in released
                    if e["key"].startswith("hub-1#") and e["outcome"] == "released"]
        assert len(released) == 1, (member, released)
        measured = released[0]["measurement"][0]["secure_aggregation"]
        assert member in measured["survivors"] and measured["honest"] == 3, measured
    _audit_verifies(mixed)


def test_the_hub_refuses_a_caller_not_on_its_allow_list(mixed: Mixed) -> None:
    """A member's certificate may not drive a session through the hub; nothing is spent."""
    with Network.from_file(mixed.network) as net:
        before = _rho_spent(net)
    request = spb.AdvertiseRequest(session="s", idempotency_key="k",
                                   members=[m.name for m in mixed.members], threshold=4,
                                   colluding=1)
    with mixed.channel("member-01") as channel, pytest.raises(grpc.RpcError) as caught:
        spb_grpc.SecureAggregationServiceStub(channel).Advertise(
            request, metadata=((MEMBER_HEADER, "member-02"),), timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "caller 'member-01' may not query members through this coordinator" in error.details()
    with Network.from_file(mixed.network) as net:
        assert _rho_spent(net) == before


class LeaveOutViaHub(DropAtConsistency):
    """Leaves member-05 (connect mode) out of the consistency round: its Session stream to
    the hub is cancelled after its masked input. Remembers the session's id."""

    session = ""

    async def _advertise(self, links: SessionLinks, query: Query, key: str, session: str,
                         names: tuple[str, ...], dropped: dict[str, str], hook: Any) -> Any:
        self.session = session
        return await super()._advertise(links, query, key, session, names, dropped, hook)


def test_a_connect_mode_member_left_out_is_told_its_session_is_over(mixed: Mixed) -> None:
    """The driver cancels member-05's stream to the hub before the consistency round: the hub
    sends its node SecureClose, and the node forgets the session's keys and shares at once
    (its log says so) instead of holding them until the session expires; member-05's masked
    input is in the sum, as with an inbound member dropped there."""
    spec = load_network(mixed.network)
    driver = LeaveOutViaHub(spec.members, spec.tls, spec.secure_settings, 5.0)

    async def go() -> SecureResult:
        try:
            return await driver.run(COUNT, "hub-leave-out-1")
        finally:
            await driver.close()
    result = asyncio.run(go())
    assert not result.aborted, result.aborted
    assert "member-05" in result.survivors and "member-05" in result.dropped
    log = mixed.root / "member-05.log"
    said = f"secure session {driver.session} closed before its unmask round"
    deadline = time.monotonic() + 30  # the hub's close is on its way in the background
    while said not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert said in log.read_text()
    _audit_verifies(mixed)


@pytest.mark.parametrize(("at", "sent"), [
    pytest.param(sa.MASKED_INPUT, False, id="after-share-keys"),
    pytest.param(sa.UNMASK, True, id="after-consistency"),
])
def test_a_connect_mode_member_killed_mid_session(mixed: Mixed, at: str, sent: bool) -> None:
    """member-05 (via hub) SIGKILLed before round `at`: the hub ends its Session stream
    UNAVAILABLE and the session completes with the 4 others (>= t); killed after its
    masked vector left, its input is in the sum and its charge stays."""
    victim = mixed.index("member-05")

    def hook(round_name: str) -> None:
        if round_name == at:
            mixed.nodes[victim].kill()
            mixed.nodes[victim].wait()

    with Network.from_file(mixed.network, timeout=5.0) as net:
        before = _rho_spent(net)
    try:
        result = _run(mixed, f"hub-kill-{at}", hook)
    finally:
        mixed.nodes[victim] = local.start_nodes([mixed.members[victim]], mixed.root)[0]
    with Network.from_file(mixed.network, timeout=5.0) as net:
        after = _rho_spent(net)
    assert not result.aborted, result.aborted
    assert result.unary == ()  # every member on its Session stream, the hub's included
    assert result.dropped["member-05"].startswith(f"{at}: UNAVAILABLE"), result.dropped
    took_part = [m.name for m in mixed.members if sent or m.name != "member-05"]
    assert result.survivors == tuple(took_part)
    truth = sum(m["sample"]["n_participants"] for m in mixed.truth["members"]
                if m["name"] in took_part)
    value = result.cells()[()]["count"]
    assert abs(value.value - truth) <= Z * math.sqrt(value.variance), (value, truth)
    for member in before:
        expected = result.rho if member in took_part else 0.0
        assert math.isclose(after[member] - before[member], expected, rel_tol=1e-6,
                            abs_tol=1e-12), member
    _audit_verifies(mixed)
