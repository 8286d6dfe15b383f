"""A node's side of secure aggregation: one query's session across the five rounds.

The query is checked like any other (schema, policy) and must be a sum: count, histogram,
mean, paired change or regression cross products (others are refused with
INVALID_ARGUMENT naming `query.statistic`). Its loss is `query.rho`, the zCDP loss of the
network sum, which the node converts to its (epsilon, delta) cap like any rho release.

Input vector. Per group-by cell, the engine's exact fixed-point sums (`Engine.exact_sums`),
scaled so that one participant moves every coordinate by at most one common unit: counts
and histogram cells by COUNT_SCALE = 2^10 when they stand alone, a mean's or change's count
by F = 2^20 beside its sum and sum of squares (already in F units), regression entries in F
units. The L2 sensitivity is then COUNT_SCALE (count, histogram: one participant is in one
cell), sqrt(3) F (mean, change) or sqrt(m) F (m entries of U'U). Each member adds a discrete
Gaussian share of scale sigma_share = `sigma_for_rho(Delta, rho, H)` from OpenDP, H = t - c.

Ledger. The charge is `account(...).rho_network` (<= the query's rho), reserved when U2 is
known and committed with the masked vector before that vector leaves the node. The ledger
row's key is (idempotency key, `masked_input_key(session, U2)`) and its fingerprint covers
the query, the session and U2: a retry of the same session and survivor set replays the
stored masked vector (nothing charged); another session or survivor set is a new charge with
fresh noise and masks. A session aborted after the charge keeps it (the vector left).

Audit. The released entry's measurement records t, c, H, the share scale, Delta, dim,
rho_network (charged) and rho_alone (what the member would bear if its share stood alone).

Sessions live in memory, one per session id, and expire after `SESSION_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridgestat.common import secagg as sa
from bridgestat.common.distributed_dp import (
    DistributedDpError,
    NoiseAccount,
    account,
    sigma_for_rho,
)
from bridgestat.common.secagg import SecAggError, SecAggParams
from bridgestat.node.audit import Record
from bridgestat.node.engine import MAX_KEY_LENGTH, Engine
from bridgestat.node.errors import NodeError, PolicyError, QueryError
from bridgestat.node.ledger import Replay
from bridgestat.node.loss import Loss, rho_to_epsilon
from bridgestat.node.planner import MIN_LOSS, Plan
from bridgestat.node.query import QuerySpec, Statistic
from bridgestat.node.secagg_member import SecAggMember, secure_input

log = logging.getLogger("bridgestat.node.secure")

SESSION_SECONDS = 300.0
_T = TypeVar("_T")
SUMS = (Statistic.COUNT, Statistic.HISTOGRAM, Statistic.MEAN, Statistic.PAIRED_CHANGE,
        Statistic.CROSS_PRODUCTS)


class SessionError(NodeError):
    """A secure-aggregation round that cannot go on (unknown or expired session, a protocol
    check that failed); the session is dropped."""


@dataclass(frozen=True)
class Identity:
    """The node's network-CA identity: the TLS key signs its keys and survivor sets."""

    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: bytes  # DER
    ca: x509.Certificate

    @classmethod
    def from_pem(cls, name: str, key: bytes, cert: bytes, ca: bytes) -> Identity:
        private = serialization.load_pem_private_key(key, password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise SessionError("secure aggregation needs an EC (P-256) node key")
        der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
        return cls(name, private, der, x509.load_pem_x509_certificate(ca))


@dataclass(frozen=True)
class Entry:
    """One coordinate of the input vector: its cell, name and units per integer."""

    group: tuple[tuple[str, str], ...]
    name: str
    unit: float


@dataclass(frozen=True)
class Layout:
    """The public description of the input vector and its noise (the same at every member)."""

    entries: tuple[Entry, ...]
    scales: tuple[int, ...]  # multiplier of each engine sum into the vector
    center: float
    lower: float
    upper: float
    noise: NoiseAccount
    term_bounds: tuple[tuple[float, float], ...] = ()  # cross products: public, per term


@dataclass
class Session:
    """One session at this node: its query, plan, layout and member state."""

    key: str
    query: QuerySpec
    plan: Plan
    layout: Layout
    member: SecAggMember
    caller: str
    started: float = field(default_factory=time.monotonic)
    sent: bytes | None = None  # the masked vector sent (or replayed) in round 2


def check_query(query: QuerySpec, engine: Engine, params: SecAggParams) -> tuple[Plan, Layout]:
    """Validate a secure query (schema, policy, a sum, its rho against the cap) and lay out
    its vector; raises QueryError or PolicyError naming the field."""
    if query.statistic not in SUMS:
        raise QueryError("query.statistic", f"a {query.statistic.value} is not a sum; secure "
                         "aggregation takes count, histogram, mean, paired_change and "
                         "cross_products")
    if query.clip_counts:
        raise QueryError("query.clip_counts", "a secure query releases no clip counts")
    if not math.isfinite(query.rho) or query.rho < MIN_LOSS:
        raise QueryError("query.loss.rho", f"a secure query spends rho (the network sum's "
                         f"zCDP loss): must be a finite number >= {MIN_LOSS:g}, got {query.rho}")
    gaussian = query.statistic is Statistic.CROSS_PRODUCTS
    if query.epsilon != 0:
        raise QueryError("query.loss.epsilon", "a secure query spends rho only; leave "
                         "epsilon unset")
    policy = engine.policy
    # The plan of the same query with a loss the node accepts: schema and policy checks,
    # cells, bounds. Its measurements are never run; the noise is the secure share's.
    proxy = query if gaussian else replace(query, epsilon=policy.max_epsilon_per_query, rho=0.0)
    plan = engine.plan(proxy)
    layout = _layout(plan, params, len(plan.cells) or 1, query.rho)
    charged = rho_to_epsilon(layout.noise.rho_network, policy.delta)
    if charged > policy.max_epsilon_per_query:
        raise PolicyError("query.loss.rho", f"policy rule budget.max_epsilon_per_query: rho "
                          f"{layout.noise.rho_network:g} (epsilon {charged:.4g} at delta "
                          f"{policy.delta:g}) exceeds this node's largest loss per query "
                          f"(epsilon {policy.max_epsilon_per_query:g})")
    return plan, layout


def _layout(plan: Plan, params: SecAggParams, n_cells: int, rho: float) -> Layout:
    stat = plan.query.statistic
    groups = plan.cells or ((),)
    half = (plan.upper - plan.lower) / 2
    if stat in (Statistic.MEAN, Statistic.PAIRED_CHANGE):
        names = [c.name for c in plan.components]
        units = [1.0 / sa.SUM_SCALE, half / sa.SUM_SCALE, half**2 / sa.SUM_SCALE]
        scales, delta = [sa.SUM_SCALE, 1, 1], math.sqrt(3.0) * sa.SUM_SCALE
    elif stat is Statistic.CROSS_PRODUCTS:
        names = [c.name for c in plan.components]
        units = [1.0 / sa.SUM_SCALE] * len(names)
        scales, delta = [1] * len(names), math.sqrt(len(names)) * sa.SUM_SCALE
    else:
        names = [plan.components[0].name] if stat is Statistic.COUNT else list(plan.labels)
        units = [1.0 / sa.COUNT_SCALE] * len(names)
        scales, delta = [sa.COUNT_SCALE] * len(names), float(sa.COUNT_SCALE)
    entries = tuple(Entry(g, n, u) for g in groups for n, u in zip(names, units, strict=True))
    dim = len(entries)
    if dim > sa.MAX_DIM:
        raise QueryError("query.group_by", f"the secure vector has {dim} values, more than "
                         f"{sa.MAX_DIM}")
    try:
        sigma = sigma_for_rho(delta, rho, params.honest, dim=dim)
        noise = account(params.threshold, params.colluding, delta, sigma, dim)
    except DistributedDpError as exc:
        raise QueryError("query.loss.rho", str(exc)) from None
    return Layout(entries, tuple(scales) * n_cells, plan.center, plan.lower, plan.upper, noise,
                  tuple((t.lower, t.upper) for t in plan.terms))


def _params(session: str, members: tuple[str, ...], threshold: int, colluding: int,
            dim: int) -> SecAggParams:
    try:
        return SecAggParams(session, members, threshold, colluding, dim)
    except SecAggError as exc:
        raise QueryError("secure", str(exc)) from None


def ledger_key(key: str, session: str, survivors: frozenset[str]) -> str:
    """The ledger row of a masked input: (idempotency key, masked_input_key(session, U2))."""
    return f"{key}#secagg:{sa.masked_input_key(session, survivors)}"


def fingerprint(query: QuerySpec, session: str, survivors: frozenset[str]) -> str:
    """The ledger fingerprint: the query, the session and the survivor set."""
    raw = "\n".join((query.fingerprint(), session, *sorted(survivors)))
    return hashlib.sha256(raw.encode()).hexdigest()


def measurement_doc(session: Session, survivors: frozenset[str]) -> list[dict[str, Any]]:
    """The audit entry's measurement: the distributed noise and its accounting."""
    n = session.layout.noise
    return [{"components": sorted({e.name for e in session.layout.entries}),
             "secure_aggregation": {
                 "session": session.member.params.session, "survivors": sorted(survivors),
                 "threshold": n.threshold, "colluding": n.colluding, "honest": n.honest,
                 "sigma_share": n.sigma_share, "delta_l2": n.delta_l2, "dim": n.dim,
                 "rho_network": n.rho_network, "rho_alone": n.rho_alone,
                 "noise": "discrete Gaussian share, OpenDP make_gaussian on integers",
                 "bound": "Kairouz, Liu, Steinke ICML 2021 Prop. 14, n = H"}}]


IdentitySource = Callable[[], "Identity | None"]


class SecureNode:
    """Every open session of one node (thread-safe), driven round by round.

    `identity` is the node's network-CA identity, or a function returning the current one
    (the TLS files as last reloaded on SIGHUP): each session signs with the identity read
    when it opens, so a renewed certificate is used from the next session on."""

    def __init__(self, engine: Engine, identity: Identity | IdentitySource | None,
                 session_seconds: float = SESSION_SECONDS) -> None:
        self.engine = engine
        if identity is None or isinstance(identity, Identity):
            fixed = identity
            self._identity: IdentitySource = lambda: fixed
        else:
            self._identity = identity
        self.session_seconds = session_seconds
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @property
    def identity(self) -> Identity | None:
        """The identity new sessions sign with (re-read after a certificate reload)."""
        return self._identity()

    # -- rounds ------------------------------------------------------------------------------

    def advertise(self, key: str, query: QuerySpec, session: str, members: tuple[str, ...],
                  threshold: int, colluding: int, caller: str
                  ) -> tuple[sa.Advertisement, Layout]:
        """Round 0: check the query and open the session (refusals are audited)."""
        try:
            identity = self.identity  # read once: the whole session signs with it
            if identity is None:
                raise SessionError("secure aggregation needs the node's network-CA identity "
                                   "(tls in node.yaml); this node serves plain text")
            if not key or len(key) > MAX_KEY_LENGTH:
                raise QueryError("idempotency_key", f"must be 1 to {MAX_KEY_LENGTH} characters")
            params = _params(session, members, threshold, colluding, 1)
            if identity.name not in members:
                raise QueryError("members", f"this node ({identity.name}) is not invited")
            plan, layout = check_query(query, self.engine, params)
            params = _params(session, members, threshold, colluding, len(layout.entries))
            member = SecAggMember(params, identity.name, identity.key, identity.certificate,
                                  identity.ca)
            with self._lock:
                self._expire()
                if session in self._sessions:
                    raise SessionError(f"session {session}: already open at this node")
                self._sessions[session] = Session(key, query, plan, layout, member, caller)
            return member.advertise(), layout
        except Exception as exc:
            self.engine.refused(key, query, exc, caller)
            raise

    def share_keys(self, session: str, adverts: list[sa.Advertisement]
                   ) -> list[sa.EncryptedShares]:
        """Round 1: check the advertisements; the encrypted shares for every peer."""
        s = self._session(session)
        return self._protocol(s, lambda: s.member.share_keys(adverts))

    def masked_input(self, session: str, shares: list[sa.EncryptedShares]
                     ) -> tuple[sa.MaskedInput, bool]:
        """Round 2: charge (or replay) and the masked vector; True when replayed."""
        s = self._session(session)
        if s.sent is not None:  # a retry of round 2 in the same session
            u2 = frozenset([e.sender for e in shares] + [s.member.name])
            if u2 != s.member.survivors:
                self._drop(session)
                raise SessionError(f"session {session}: the masked input was sent for "
                                   f"survivors {sorted(s.member.survivors)}; another set "
                                   "needs a new session")
            return self._charge(s, u2, replay_only=True)
        u2 = self._protocol(s, lambda: s.member.receive_shares(shares))
        return self._charge(s, u2, replay_only=False)

    def consistency(self, session: str, survivors: list[str]) -> sa.ConsistencySignature:
        """Round 3: sign the announced survivor set."""
        s = self._session(session)
        return self._protocol(s, lambda: s.member.consistency(survivors))

    def unmask(self, session: str, request: sa.UnmaskRequest) -> sa.UnmaskResponse:
        """Round 4: the shares; the session ends here."""
        s = self._session(session)
        try:
            return self._protocol(s, lambda: s.member.unmask(request))
        finally:
            self._drop(session)

    def close(self, session: str, caller: str | None = None) -> bool:
        """End a session before its unmask round (its Session stream ended, or the hub says
        the driver's did): its keys and received shares are forgotten; charges already made
        stay in the ledger. `caller`: close it only if this caller opened it (None: the
        stream that opened it). True when it was open (and is now closed)."""
        with self._lock:
            found = self._sessions.get(session)
            if found is None or (caller is not None and found.caller != caller):
                return False
            del self._sessions[session]
        log.info("secure session %s closed before its unmask round (the coordinator ended "
                 "it: this member was dropped or the session given up)", session)
        return True

    # -- the charge ----------------------------------------------------------------------------

    def _charge(self, s: Session, u2: frozenset[str], replay_only: bool
                ) -> tuple[sa.MaskedInput, bool]:
        """Reserve the charge under (key, session, U2), compute, mask and commit the masked
        vector before it leaves; or replay the stored one."""
        params = s.member.params
        row = ledger_key(s.key, params.session, u2)
        loss = Loss(Fraction(0), Fraction(s.layout.noise.rho_network))
        ledger, audit = self.engine.ledger, self.engine.audit
        outcome = ledger.reserve(row, fingerprint(s.query, params.session, u2), loss)
        if isinstance(outcome, Replay):
            stored = json.loads(outcome.release)
            if not outcome.logged:
                self._log(s, row, u2, "released", outcome.loss, outcome.charged_at)
            else:
                self._log(s, row, u2, "replayed", Loss(), "")
            s.sent = bytes.fromhex(stored["vector"])
            return sa.MaskedInput(s.member.name, s.sent), True
        if replay_only:  # round 2 was answered, but its charge is gone: never re-noise
            ledger.cancel(row)
            raise SessionError(f"session {params.session}: no stored masked input to replay")
        try:
            x = secure_input(self._values(s), s.layout.noise.sigma_share)
            masked = self._protocol(s, lambda: s.member.mask(x))
        except BaseException:
            ledger.cancel(row)  # nothing left the node: refund
            raise
        ledger.commit(row, json.dumps({"session": params.session, "survivors": sorted(u2),
                                       "vector": masked.vector.hex()}))
        self.engine._kill("after-commit")  # the engine's test hook (unset in production)
        if audit is not None:
            self._log(s, row, u2, "released", outcome.loss, outcome.charged_at)
        s.sent = masked.vector
        return masked, False

    def _log(self, s: Session, row: str, u2: frozenset[str], outcome: str, loss: Loss,
             charged_at: str) -> None:
        if self.engine.audit is None:
            return
        self.engine.audit.append(Record(s.caller, self.engine.ledger.dataset, row, s.query,
                                        outcome, measurement_doc(s, u2), loss,
                                        pooled_only=True, charged_at=charged_at))
        if outcome == "released":
            self.engine.ledger.mark_logged(row)

    def _values(self, s: Session) -> list[int]:
        sums = self.engine.exact_sums(s.plan)
        flat = [value for _, cell in sums for _, value in cell]
        if len(flat) != len(s.layout.scales):
            raise SessionError("the sums do not match the session's layout")
        return [v * k for v, k in zip(flat, s.layout.scales, strict=True)]

    # -- sessions ------------------------------------------------------------------------------

    def _protocol(self, s: Session, step: Callable[[], _T]) -> _T:
        """Run one round of the member state machine; an abort drops the session."""
        try:
            return step()
        except SecAggError as exc:
            self._drop(s.member.params.session)
            raise SessionError(str(exc)) from None

    def _session(self, session: str) -> Session:
        with self._lock:
            self._expire()
            found = self._sessions.get(session)
        if found is None:
            raise SessionError(f"session {session!r}: not open at this node (never started, "
                               f"ended, aborted or older than {self.session_seconds:g} s)")
        return found

    def _drop(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for name in [n for n, s in self._sessions.items()
                     if now - s.started > self.session_seconds]:
            del self._sessions[name]

    def open_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)
