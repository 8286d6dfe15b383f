"""Secure aggregation from the coordinator's side: drive one session, decode the network sum,
build NETWORK-only tables (issue 13; protocol in `common/secagg.py`, node side in
`node/secure.py`).

One query = one session of five rounds over the members' SecureAggregationService, on one
`Session` stream per member (the unary calls for older nodes: `transport.py`), each round
with its own deadline; a member that fails or times out in a round drops out of the
session (and is named, its stream cancelled), and below t survivors the session aborts
(each member that already sent its masked input keeps its charge: the vector left the
node). The coordinator learns
only the sum of the survivors' noisy vectors; `SecAggServer` relays and unmasks.

Loss. A secure query spends rho, the zCDP loss of the network sum. The API keeps the kinds'
`epsilon`: the rho whose (epsilon, delta) conversion at delta = 1e-6 (the nodes' default) is
that epsilon (`secure_rho`), so a node with the default delta is charged that epsilon.

Tables. The network's noisy count, sums and sums of squares go through the pooling formulas
(`pooling.py`) with the distributed noise's variance, per coordinate |U3| sigma_share^2
unit^2 (= |U3|/H times the central Gaussian variance of the guarantee). Only the NETWORK
row exists; its `status` names who took part and who dropped out.

Connect-mode members (`via: hub`) take part unchanged: their rounds go to the hub
(`coordinator serve`), which relays each on the member's outbound stream, named in the
`bridgestat-member` metadata as for NodeService (the hub serves the Session stream too,
relaying each of its messages as one round). Every message already goes through the
coordinator, so the hub learns nothing the driver does not.
"""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import pandas as pd
from cryptography import x509

from bridgestat.common import secagg as sa
from bridgestat.common import secagg_wire as wire
from bridgestat.common.headers import MEMBER_HEADER
from bridgestat.common.labels import MISSING
from bridgestat.common.loss import rho_to_epsilon
from bridgestat.common.secagg import SecAggError, SecAggParams
from bridgestat.coordinator.client.fanout import MemberHeader
from bridgestat.coordinator.client.network_file import Member, SecureSettings, TlsFiles
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.client.wire import query_to_pb
from bridgestat.coordinator.secure.secagg_server import SecAggServer, SessionOutcome
from bridgestat.coordinator.secure.transport import Request, RoundFailed, SessionLinks
from bridgestat.coordinator.statistics import pooling
from bridgestat.coordinator.statistics.pooling import Estimate, MeanStats, Noisy, PoolingError
from bridgestat.coordinator.statistics.regression import CrossProducts, RegressionResult, fit
from bridgestat.v1 import secure_aggregation_pb2 as spb
from bridgestat.v1 import secure_aggregation_pb2_grpc as spb_grpc

NETWORK = "NETWORK"
DEFAULT_DELTA = 1e-6
Hook = Callable[[str], Awaitable[None] | None]
SESSION_METHOD = (f"/{spb.DESCRIPTOR.services_by_name['SecureAggregationService'].full_name}"
                  "/Session")
ROUNDS = (sa.ADVERTISE, sa.SHARE_KEYS, sa.MASKED_INPUT, sa.CONSISTENCY, sa.UNMASK)


class SecureError(ValueError):
    """Secure mode cannot run here (no TLS, too few members)."""


@functools.lru_cache(maxsize=256)
def secure_rho(epsilon: float, delta: float = DEFAULT_DELTA) -> float:
    """The largest rho (to 1e-9 relative) whose (epsilon, delta) conversion is <= epsilon."""
    low, high = 0.0, epsilon
    while rho_to_epsilon(high, delta) <= epsilon:
        low, high = high, 2 * high
    while high - low > 1e-9 * high:
        mid = (low + high) / 2
        if rho_to_epsilon(mid, delta) <= epsilon:
            low = mid
        else:
            high = mid
    return low


def secure_query(query: Query) -> Query:
    """The query as a secure session asks it: its epsilon turned into rho (cross products
    keep their rho)."""
    if query.rho > 0:
        return query
    return replace(query, epsilon=0.0, rho=secure_rho(query.epsilon))


@dataclass(frozen=True)
class SecureResult:
    """A secure query's outcome: the decoded network sums per coordinate (noisy, in the
    statistic's units, with their noise variance), who took part, who dropped out and why."""

    query: Query
    key: str
    session: str
    members: tuple[str, ...]
    values: tuple[tuple[tuple[tuple[str, str], ...], str, Noisy], ...]  # (group, name, value)
    survivors: tuple[str, ...]
    dropped: Mapping[str, str]  # member -> why (round and reason)
    layout: spb.SecureLayout | None = None
    threshold: int = 0
    colluding: int = 0
    aborted: str = ""  # why the session aborted (then values is empty)
    replayed: tuple[str, ...] = ()  # members that replayed a stored masked input
    unary: tuple[str, ...] = ()  # members asked with the five unary calls, not a stream
    budgets: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rho(self) -> float:
        return self.layout.rho_network if self.layout is not None else 0.0

    def cells(self) -> dict[tuple[tuple[str, str], ...], dict[str, Noisy]]:
        out: dict[tuple[tuple[str, str], ...], dict[str, Noisy]] = {}
        for group, name, value in self.values:
            out.setdefault(group, {})[name] = value
        return out

    def note(self) -> str:
        took = ", ".join(self.survivors) or "none"
        gone = "; ".join(f"{m}: {why}" for m, why in sorted(self.dropped.items())) or "none"
        return (f"secure aggregation (t = {self.threshold}, c = {self.colluding}): took part: "
                f"{took}; dropped out: {gone}")


def _channel(member: Member, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    """The node's own channel, or (via: hub) one to the hub naming the member in every
    call, the hub's certificate checked against its name."""
    name = member.hub.name if member.hub is not None else member.name
    interceptors: list[Any] | None = [MemberHeader(member.name)] if member.hub else None
    if credentials is None:
        return grpc.aio.insecure_channel(member.address, interceptors=interceptors)
    return grpc.aio.secure_channel(member.address, credentials,
                                   options=[("grpc.ssl_target_name_override", name)],
                                   interceptors=interceptors)


class SecureDriver:
    """Runs secure sessions over the members' nodes (inbound, or via the hub), mutual TLS."""

    def __init__(self, members: Sequence[Member], tls: TlsFiles | None,
                 settings: SecureSettings, timeout: float = 10.0, *,
                 insecure: bool = False) -> None:
        if tls is None and not insecure:
            raise SecureError("secure mode needs the network's CA (tls in the network file)")
        if len(members) < 2:
            raise SecureError("secure mode needs at least 2 members")
        self.members = tuple(sorted(members, key=lambda m: m.name))
        self._by_name = {m.name: m for m in self.members}
        self.settings, self.timeout = settings, timeout
        self.ca = x509.load_pem_x509_certificate(tls.ca.read_bytes()) if tls else None
        self._credentials = tls.channel_credentials() if tls else None
        self._channels: dict[str, grpc.aio.Channel] = {}  # opened on the loop of the first call
        self._stubs: dict[str, spb_grpc.SecureAggregationServiceStub] = {}
        self._sessions: dict[str, Any] = {}  # member -> its Session method (bytes in)
        self._unary_only: set[str] = set()  # members whose node answered the stream
        # UNIMPLEMENTED (older nodes): asked with the unary calls from then on

    @property
    def unary_only(self) -> frozenset[str]:
        """The members whose node answered the Session stream UNIMPLEMENTED (older nodes):
        asked with the five unary calls."""
        return frozenset(self._unary_only)

    @property
    def warning(self) -> str:
        """Why secure mode gains little here ('' when it does)."""
        k, s = len(self.members), self.settings
        if s.threshold - s.colluding <= 1:
            return (f"secure mode with K = {k} members, t = {s.threshold}, c = {s.colluding} "
                    "relies on H = t - c = 1 honest share: it gains nothing over each member "
                    "adding its own noise")
        return ""

    async def run(self, query: Query, key: str | None = None, *,
                  hook: Hook | None = None) -> SecureResult:
        """One secure session for `query` (its loss as rho, see `secure_query`)."""
        links = SessionLinks(self.stub, self.session_stream, self.timeout, self._unary_only)
        try:
            return await self._session(links, query, key or uuid.uuid4().hex, hook)
        finally:
            links.close()

    async def _session(self, links: SessionLinks, query: Query, key: str,
                       hook: Hook | None) -> SecureResult:
        query = secure_query(query)
        session = uuid.uuid4().hex
        names = tuple(m.name for m in self.members)
        dropped: dict[str, str] = {}
        result = functools.partial(SecureResult, query, key, session, names,
                                   threshold=self.settings.threshold,
                                   colluding=self.settings.colluding)
        layout: spb.SecureLayout | None = None
        try:
            adverts, layout = await self._advertise(links, query, key, session, names,
                                                    dropped, hook)
            params = SecAggParams(session, names, self.settings.threshold,
                                  self.settings.colluding, len(layout.values))
            if self.ca is None:
                raise SecureError("secure mode needs the network's CA")
            server = SecAggServer(params, self.ca)
            u1 = server.collect_advertisements(adverts)
            await _fire(hook, sa.SHARE_KEYS)
            request = spb.ShareKeysRequest(session=session,
                                           advertisements=[wire.advert_to_pb(a) for a in u1])
            shares = await self._round(links, sa.SHARE_KEYS, [a.member for a in u1], dropped,
                                       request)
            # the ciphertexts are relayed as they came (only their addresses are read)
            forward = server.collect_shares({m: r.shares for m, r in shares.items()})
            await _fire(hook, sa.MASKED_INPUT)
            masked = await self._round(
                links, sa.MASKED_INPUT, list(forward), dropped,
                {m: spb.MaskedInputRequest(session=session, shares=batch)
                 for m, batch in forward.items()})
            u3 = server.collect_masked([sa.MaskedInput(m, bytes(r.vector))
                                        for m, r in masked.items()])
            replayed = tuple(sorted(m for m, r in masked.items() if r.replayed))
            await _fire(hook, sa.CONSISTENCY)
            consistency = spb.ConsistencyRequest(session=session, survivors=list(u3))
            signed = await self._round(links, sa.CONSISTENCY, list(u3), dropped, consistency)
            unmask = server.collect_consistency([wire.signature_from_pb(r.signature)
                                                 for r in signed.values()])
            await _fire(hook, sa.UNMASK)
            answers = await self._round(
                links, sa.UNMASK, sorted(signed), dropped,
                {m: wire.unmask_request_to_pb(session, server.unmask_request_for(m, unmask))
                 for m in signed})
            outcome = server.collect_unmask([wire.unmask_response_from_pb(r)
                                             for r in answers.values()])
        except (SecAggError, SecureError) as exc:
            return result((), (), dropped, layout=layout, aborted=str(exc),
                          unary=links.unary())
        for member, why in outcome.refused.items():
            dropped.setdefault(member, why)
        return result(_decode(outcome, layout), outcome.survivors, dropped, layout=layout,
                      replayed=replayed, unary=links.unary())

    async def _advertise(self, links: SessionLinks, query: Query, key: str, session: str,
                         names: tuple[str, ...], dropped: dict[str, str], hook: Hook | None
                         ) -> tuple[list[sa.Advertisement], spb.SecureLayout]:
        """Round 0; the members whose layout is not the majority's are dropped."""
        await _fire(hook, sa.ADVERTISE)
        request = spb.AdvertiseRequest(session=session, idempotency_key=key,
                                       query=query_to_pb(query), members=list(names),
                                       threshold=self.settings.threshold,
                                       colluding=self.settings.colluding)
        answers = await self._round(links, sa.ADVERTISE, list(names), dropped, request)
        if not answers:
            raise SecureError(f"advertise: no member answered ({_why(dropped)})")
        layouts: dict[bytes, list[str]] = {}
        for member, answer in answers.items():
            layouts.setdefault(answer.layout.SerializeToString(deterministic=True),
                               []).append(member)
        common = max(layouts, key=lambda raw: len(layouts[raw]))
        for raw, members in layouts.items():
            if raw != common:
                for member in members:
                    dropped[member] = "advertise: its vector layout differs from the others'"
                    links.drop(member)
        layout = spb.SecureLayout.FromString(common)
        adverts = [wire.advert_from_pb(a.advertisement) for m, a in answers.items()
                   if m in layouts[common]]
        return adverts, layout

    async def _round(self, links: SessionLinks, name: str, members: Sequence[str],
                     dropped: dict[str, str], requests: Request | Mapping[str, Request]
                     ) -> dict[str, Any]:
        """One round, concurrently, each member's answer within the round's deadline; a
        member that fails drops out (named, with why) and its link is closed. `requests`:
        one request for all, or each member's own."""
        async def one(member: str) -> tuple[str, Any]:
            request = requests[member] if isinstance(requests, Mapping) else requests
            try:
                return member, await links.ask(member, name, request)
            except RoundFailed as exc:
                dropped.setdefault(member, f"{name}: {exc}")
            except (SecAggError, ValueError) as exc:
                dropped.setdefault(member, f"{name}: malformed answer: {exc}")
            links.drop(member)
            return member, None
        outcomes = await asyncio.gather(*(one(m) for m in members))
        return {m: v for m, v in outcomes if v is not None}

    def session_stream(self, member: str, deadline: float) -> Any:
        """Open the member's Session stream (written with SessionRequest bytes, see
        `transport.session_bytes`); via the hub it names the member in its metadata, which
        the channel's interceptor adds to unary calls only."""
        self.stub(member)  # opens the channel
        method = self._sessions.get(member)
        if method is None:
            method = self._sessions[member] = self._channels[member].stream_stream(
                SESSION_METHOD, request_serializer=None,
                response_deserializer=spb.SessionResponse.FromString)
        metadata = ((MEMBER_HEADER, member),) if self._by_name[member].hub is not None else None
        return method(None, timeout=deadline, metadata=metadata)

    def stub(self, member: str) -> spb_grpc.SecureAggregationServiceStub:
        """The member's stub; its channel opens on the running loop at first use."""
        stub = self._stubs.get(member)
        if stub is None:
            self._channels[member] = _channel(self._by_name[member], self._credentials)
            stub = self._stubs[member] = spb_grpc.SecureAggregationServiceStub(
                self._channels[member])
        return stub

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._stubs.clear()
        self._sessions.clear()


def _why(dropped: Mapping[str, str]) -> str:
    return "; ".join(f"{m}: {why}" for m, why in sorted(dropped.items())) or "none"


async def _fire(hook: Hook | None, round_name: str) -> None:
    if hook is None:
        return
    waited = hook(round_name)
    if waited is not None:
        await waited


def _decode(outcome: SessionOutcome, layout: spb.SecureLayout | None
            ) -> tuple[tuple[tuple[tuple[str, str], ...], str, Noisy], ...]:
    """The network sums in the statistic's units with the distributed noise's variance:
    |U3| shares of sigma_share each."""
    if layout is None:
        return ()
    shares = len(outcome.survivors)
    out = []
    for value, total in zip(layout.values, outcome.total, strict=True):
        group = tuple((g.column, g.value) for g in value.group)
        variance = shares * layout.sigma_share**2 * value.unit**2
        out.append((group, value.name, Noisy(total * value.unit, variance)))
    return tuple(out)


# -- NETWORK-only tables ----------------------------------------------------------------------


def _row(group: tuple[tuple[str, str], ...], est: Estimate | None, result: SecureResult,
         status: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"member": NETWORK, **dict(group), **extra}
    for name in ("estimate", "se", "ci_low", "ci_high", "n", "sd", "se_sampling", "se_dp"):
        row[name] = getattr(est, name) if est is not None else None
    row["loss"] = result.rho
    row["status"] = f"{status}; {result.note()}"
    return row


def _frame(rows: list[dict[str, Any]], result: SecureResult) -> pd.DataFrame:
    """The NETWORK-only table, marked secure (`attrs["secure"]`, which `meta_from_table`
    refuses: there are no member estimates to meta-analyse)."""
    frame = pd.DataFrame(rows)
    frame.attrs["secure"] = f"{result.query.statistic}, session {result.session}"
    return frame


def _table(result: SecureResult, estimate: Callable[[dict[str, Noisy]], Estimate]
           ) -> pd.DataFrame:
    if result.aborted:
        return _frame([_row((), None, result, f"aborted: {result.aborted}")], result)
    rows = []
    for group, values in result.cells().items():
        try:
            rows.append(_row(group, estimate(values), result, "ok"))
        except PoolingError as exc:
            rows.append(_row(group, None, result, f"not estimable: {exc}"))
    return _frame(rows, result)


def mean_stats(values: Mapping[str, Noisy], center: float) -> MeanStats:
    return MeanStats(values["count"], values["sum"], values["sum_squares"], center)


def count_table(result: SecureResult) -> pd.DataFrame:
    return _table(result, lambda v: pooling.count_estimate(v["count"]))


def mean_table(result: SecureResult) -> pd.DataFrame:
    center = result.layout.center if result.layout is not None else 0.0
    return _table(result, lambda v: pooling.member_mean(mean_stats(v, center)))


def paired_change_table(result: SecureResult) -> pd.DataFrame:
    """The network's mean change (d_z is in the `d_z` and `d_z_se` columns)."""
    center = result.layout.center if result.layout is not None else 0.0
    frame = _table(result, lambda v: pooling.member_change(mean_stats(v, center)).change)
    d_z = []
    for values in result.cells().values():
        try:
            d = pooling.member_change(mean_stats(values, center)).d_z
            d_z.append((d.estimate, d.se))
        except PoolingError:
            d_z.append((math.nan, math.nan))
    if not result.aborted and len(d_z) == len(frame):
        frame["d_z"] = [d for d, _ in d_z]
        frame["d_z_se"] = [s for _, s in d_z]
    return frame


def proportion_table(result: SecureResult, wanted: Sequence[str]) -> pd.DataFrame:
    def share(values: Mapping[str, Noisy]) -> Estimate:
        inside = [v for k, v in values.items() if k in wanted]
        outside = [v for k, v in values.items() if k not in wanted and k != MISSING]
        return pooling.proportion(pooling.sum_noisy(inside), pooling.sum_noisy(outside))
    return _table(result, share)


def histogram_table(result: SecureResult) -> pd.DataFrame:
    """One row per group cell and category: the network's noisy count and share of the
    non-missing."""
    if result.aborted:
        return _frame([_row((), None, result, f"aborted: {result.aborted}")], result)
    rows = []
    for group, values in result.cells().items():
        for category in values:
            try:
                est = pooling.proportion(values[category], pooling.sum_noisy(
                    [v for k, v in values.items() if k not in (category, MISSING)])) \
                    if category != MISSING else None
                status = "ok"
            except PoolingError as exc:
                est, status = None, f"not estimable: {exc}"
            rows.append(_row(group, est, result, status, category=category,
                             count=values[category].value))
    return _frame(rows, result)


def regression_fits(result: SecureResult, names: tuple[str, ...], *, replicates: int = 2000,
                    seed: int = 0) -> dict[str, RegressionResult | str]:
    """The NETWORK fit from the network's noisy cross products U'U (entries `uu[i,j]` in
    u-units, each with |U3| shares' variance); its reason instead when the session aborted
    or the fit is not estimable. No member fits: the coordinator never sees them."""
    if result.aborted:
        return {NETWORK: f"aborted: {result.aborted}; {result.note()}"}
    layout = result.layout
    if layout is None:
        return {NETWORK: f"not estimable: no layout; {result.note()}"}
    try:
        entries = {}
        for name, value in result.cells().get((), {}).items():
            i, j = (int(k) for k in name[3:-1].split(","))
            entries[(i, j)] = value
        bounds = tuple((b.lower, b.upper) for b in layout.term_bounds)
        cp = CrossProducts(names, bounds, entries)
        return {NETWORK: fit(cp, replicates=replicates, seed=seed)}
    except (PoolingError, ValueError) as exc:
        return {NETWORK: f"not estimable: {exc}; {result.note()}"}


def secure_regression_table(frame: pd.DataFrame, result: SecureResult) -> pd.DataFrame:
    """The regression table's NETWORK rows with who took part in the status, marked secure."""
    out = frame.assign(status=[s if "secure aggregation" in str(s) else f"{s}; {result.note()}"
                               for s in frame["status"]], loss=result.rho)
    out.attrs["secure"] = f"{result.query.statistic}, session {result.session}"
    return out
