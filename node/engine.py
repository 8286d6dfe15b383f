"""The node's query engine: plan, charge, release. Independent of any transport.

`Engine.run` is the only path from a query to a release: it compiles the query (refusals
depend only on the query, the public schema and the policy), charges the plan's loss to
the ledger in one transaction, computes the release with OpenDP, suppresses the cells whose
noisy count is under the policy's `min_group_size` (post-processing), stores it with the
idempotency key, writes the audit entry, and only then returns it. Every request that
reaches `run`, released, replayed, refused or failed, gets exactly one audit entry, written
before the answer or the refusal leaves the engine.

Every committed charge gets exactly one `released` entry, which records its loss as the
ledger holds it (epsilon, rho, and the ledger's timestamp `charged.at`). It is written after
the commit, so if the node is killed, or the audit write fails, between the two, the charge
has no entry yet and nothing has left the node. The ledger's `logged` mark tells: the first
answer for an unmarked key looks the key up in the log (a kill between the append and the
mark leaves the entry) and, when it is missing, logs that answer as the `released` entry
with the ledger's charge; only later answers are `replayed` (charged nothing). Within one
process a key being logged is claimed, so two concurrent retries write one entry.

Test hook: the environment variable BRIDGESTAT_NODE_TEST_KILL_AT, read when the engine is
built, names a point where the node SIGKILLs itself during its next release (`KILL_POINTS`),
so tests stop a real node process exactly between two steps. Unset in production.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import threading
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from bridgestat.node.audit import AuditLog, Head, Record, measurement
from bridgestat.node.errors import NodeError, QueryError, QueryInProgress
from bridgestat.node.frames import CellRows, FloatArray, Frames, IntArray
from bridgestat.node.ledger import BudgetState, Ledger, Replay
from bridgestat.node.loss import Loss
from bridgestat.node.mechanisms import (
    CLIP_LABELS,
    FIXED_POINT,
    Component,
    bounded_sum,
    clip_codes,
    fixed_point,
)
from bridgestat.node.planner import MISSING, Plan, compile_query
from bridgestat.node.policy import Policy
from bridgestat.node.query import QuerySpec, Statistic
from bridgestat.node.release import NoisyValue, Release, ReleasedCell
from bridgestat.node.schema import Schema

MAX_KEY_LENGTH = 200
KILL_AT = "BRIDGESTAT_NODE_TEST_KILL_AT"  # test hook, see the module docstring
KILL_POINTS = ("after-reserve", "after-commit", "after-audit-append")


@dataclass(frozen=True)
class Answer:
    node_id: str
    key: str
    query: QuerySpec
    release: Release
    budget: BudgetState
    replayed: bool
    pooled_only: bool = False  # the member's policy allows this answer only for pooling
    audit_head: Head | None = None  # this answer's own audit entry (None: no audit log)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    schema: Schema
    budget: BudgetState
    policy: Policy
    audit_head: Head | None = None  # the audit log's last entry (None: no audit log)


class Engine:
    """Answers typed queries about one member's data with DP releases."""

    def __init__(self, node_id: str, schema: Schema, frames: Frames, ledger: Ledger,
                 policy: Policy, audit: AuditLog | None = None) -> None:
        self.node_id, self.schema, self.frames = node_id, schema, frames
        self.ledger, self.policy, self.audit = ledger, policy, audit
        self._logging: set[str] = set()  # keys whose released entry this process is writing
        self._logging_lock = threading.Lock()
        self._kill_at = _kill_point()
        # Plans depend only on the query, schema and policy, and OpenDP measurements are
        # stateless, so a repeated query reuses its compiled measurements (and their
        # serialized form for the audit log).
        self._compile = lru_cache(maxsize=512)(self._compile_uncached)
        self._serialized = lru_cache(maxsize=512)(self._serialize_uncached)

    def info(self) -> NodeInfo:
        head = self.audit.head() if self.audit is not None else None
        return NodeInfo(self.node_id, self.schema, self.ledger.state(), self.policy, head)

    def plan(self, query: QuerySpec) -> Plan:
        return self._compile(query)

    def _compile_uncached(self, query: QuerySpec) -> Plan:
        return compile_query(query, self.schema, self.policy)

    def _serialize_uncached(self, query: QuerySpec) -> tuple[dict[str, Any], ...]:
        return tuple(measurement(self.plan(query).components))

    def run(self, key: str, query: QuerySpec, caller: str = "anonymous") -> Answer:
        """Charge and release `query` once per idempotency key. `caller` is the identity the
        transport authenticated (a certificate's common name), for the audit log."""
        plan: Plan | None = None
        try:
            if not key or len(key) > MAX_KEY_LENGTH:
                raise QueryError("idempotency_key", f"must be 1 to {MAX_KEY_LENGTH} characters")
            plan = self.plan(query)
            return self._run(key, query, plan, caller)
        except Exception as exc:
            self.refused(key, query, exc, caller, plan)
            raise

    def refused(self, key: str, query: QuerySpec | None, exc: BaseException,
                caller: str = "anonymous", plan: Plan | None = None) -> None:
        """Audit a request that is not answered: a NodeError is refused, anything else
        failed. Transports call this for a request they cannot even decode."""
        outcome = "refused" if isinstance(exc, NodeError) else "failed"
        shown = self._measurement(query) if plan is not None and query is not None else []
        self._record(Record(caller, self.ledger.dataset, key, query, outcome, shown,
                            error=exc))

    def _record(self, record: Record) -> Head | None:
        """Append `record`; its entry's (seq, hash) is the head the answer carries."""
        if self.audit is None:
            return None
        entry = self.audit.append(record)
        return Head(int(entry["seq"]), str(entry["hash"]))

    def _measurement(self, query: QuerySpec) -> list[dict[str, Any]]:
        """The audit entry's measurements (copies: the cached ones are shared)."""
        return [{**shown, "components": list(shown["components"])}
                for shown in self._serialized(query)]

    def _run(self, key: str, query: QuerySpec, plan: Plan, caller: str) -> Answer:
        outcome = self.ledger.reserve(key, query.fingerprint(), plan.loss)
        if isinstance(outcome, Replay):
            return self._replay(key, query, caller, outcome)
        self._kill("after-reserve")
        try:
            release = _suppress(self._release(plan), plan.query.statistic,
                                self.policy.min_group_size)
        except BaseException:
            self.ledger.cancel(key)  # nothing left the node: refund
            raise
        self._claim(key)  # before the commit: from then on a retry replays it
        try:
            self.ledger.commit(key, release.encode())
            self._kill("after-commit")
            head = self._log_release(key, query, caller, release, outcome.loss,
                                     outcome.charged_at)
        finally:
            self._unclaim(key)
        return self._answer(key, query, release, False, head)

    def _replay(self, key: str, query: QuerySpec, caller: str, stored: Replay) -> Answer:
        """Answer from the ledger; the first answer of a charge whose entry was never
        written is logged as its release, with the ledger's charge."""
        release = Release.decode(stored.release)
        if not stored.logged and self.audit is not None:
            self._claim(key)
            try:
                if not self._already_logged(self.audit, key):
                    head = self._log_release(key, query, caller, release, stored.loss,
                                             stored.charged_at)
                    return self._answer(key, query, release, True, head)
            finally:
                self._unclaim(key)
        head = self._record(Record(caller, self.ledger.dataset, key, query, "replayed",
                                   self._measurement(query), release=release,
                                   pooled_only=not self.policy.comparison))
        return self._answer(key, query, release, True, head)

    def _already_logged(self, audit: AuditLog, key: str) -> bool:
        """Whether the log holds `key`'s released entry (a kill between the append and the
        mark leaves it unmarked); marks it when found. Reads the whole log: only for keys
        whose entry was interrupted."""
        if self.ledger.is_logged(key) or \
                audit.find_released(self.ledger.dataset, key) is not None:
            self.ledger.mark_logged(key)
            return True
        return False

    def _log_release(self, key: str, query: QuerySpec, caller: str, release: Release,
                     loss: Loss, charged_at: str) -> Head | None:
        """The released entry, with the charge as the ledger holds it, then the mark;
        returns the entry's head."""
        head = self._record(Record(caller, self.ledger.dataset, key, query, "released",
                                   self._measurement(query), loss, release,
                                   pooled_only=not self.policy.comparison,
                                   charged_at=charged_at))
        if head is None:
            return None
        self._kill("after-audit-append")
        with suppress(sqlite3.Error):  # an unmarked entry is found in the log next time
            self.ledger.mark_logged(key)
        return head

    def _claim(self, key: str) -> None:
        """Only one request of this process writes a key's released entry."""
        with self._logging_lock:
            if key in self._logging:
                raise QueryInProgress(f"idempotency_key {key!r}: the same query is being "
                                      "answered")
            self._logging.add(key)

    def _unclaim(self, key: str) -> None:
        with self._logging_lock:
            self._logging.discard(key)

    def _kill(self, point: str) -> None:
        if self._kill_at == point:  # test hook only (BRIDGESTAT_NODE_TEST_KILL_AT)
            os.kill(os.getpid(), signal.SIGKILL)

    def _answer(self, key: str, query: QuerySpec, release: Release, replayed: bool,
                head: Head | None) -> Answer:
        return Answer(self.node_id, key, query, release, self.ledger.state(), replayed,
                      pooled_only=not self.policy.comparison, audit_head=head)

    def _release(self, plan: Plan) -> Release:
        cells = tuple(self._cell(plan, rows) for rows in self.frames.cells(plan))
        loss = plan.loss
        return Release(cells=cells, center=plan.center, lower=plan.lower, upper=plan.upper,
                       mechanism=_describe(plan), charged=float(loss.epsilon),
                       charged_rho=float(loss.rho),
                       term_bounds=tuple((t.lower, t.upper) for t in plan.terms))

    def exact_sums(self, plan: Plan) -> tuple[tuple[tuple[tuple[str, str], ...],
                                                     tuple[tuple[str, int], ...]], ...]:
        """The exact fixed-point integer sums of every cell, before any noise, for secure
        aggregation (`node/secure.py`): per cell its group and (name, sum) pairs with the
        integers the releases above noise: count (rows), histogram cells (MISSING last),
        count/sum/sum_squares of a mean or change (F = FIXED_POINT units, clamped to
        [-F, F] and [0, F]) and the entries of U'U. Never leaves the node unnoised."""
        return tuple((rows.group, exact_cell_sums(plan, rows))
                     for rows in self.frames.cells(plan))

    def _cell(self, plan: Plan, rows: CellRows) -> ReleasedCell:
        stat = plan.query.statistic
        if stat is Statistic.COUNT:
            return ReleasedCell(rows.group, (_scalar(plan.components[0], rows.values),))
        if stat is Statistic.HISTOGRAM:
            return ReleasedCell(rows.group, _histogram(plan, rows.values))
        if stat is Statistic.CROSS_PRODUCTS:
            return ReleasedCell(rows.group, _cross_products(plan, rows.values))
        values: FloatArray = rows.values[~np.isnan(rows.values)].astype(np.float64, copy=False)
        if stat is Statistic.QUANTILE:
            return ReleasedCell(rows.group, (_quantile(plan.components[0], values),))
        z, w = fixed_point(values, plan.lower, plan.upper)
        count, total, squares, *clipped = plan.components
        return ReleasedCell(rows.group, (_scalar(count, z), _scalar(total, z),
                                         _scalar(squares, w),
                                         *_clip_counts(clipped, values, plan)))


def exact_cell_sums(plan: Plan, rows: CellRows) -> tuple[tuple[str, int], ...]:
    """One cell's exact integer sums (see `Engine.exact_sums`), computed as `_cell` does."""
    stat = plan.query.statistic
    if stat is Statistic.COUNT:
        return ((plan.components[0].name, len(rows.values)),)
    if stat is Statistic.HISTOGRAM:
        codes = np.asarray(rows.values, dtype=np.int64)
        k = len(plan.labels) - 1
        inside = codes[(codes >= 0) & (codes < k)]
        counts = np.bincount(inside, minlength=k)
        return (*((label, int(n)) for label, n in zip(plan.labels[:-1], counts, strict=True)),
                (plan.labels[-1], int(len(codes) - len(inside))))
    if stat is Statistic.CROSS_PRODUCTS:
        matrix = rows.values
        complete = matrix[~np.isnan(matrix).any(axis=1)]
        u: list[FloatArray | None] = [None]
        for t, term in enumerate(plan.terms):
            centred = np.clip(complete[:, t], term.lower, term.upper) - (term.lower + term.upper) / 2
            u.append(np.asarray(centred / ((term.upper - term.lower) / 2), dtype=np.float64))
        out = []
        for component in plan.components:
            i, j = (int(k) for k in component.name[3:-1].split(","))
            out.append((component.name, bounded_sum(_fixed_product(u[i], u[j], len(complete)),
                                                    FIXED_POINT)))
        return tuple(out)
    if stat in (Statistic.MEAN, Statistic.PAIRED_CHANGE):
        values = rows.values[~np.isnan(rows.values)].astype(np.float64, copy=False)
        z, w = fixed_point(values, plan.lower, plan.upper)
        count, total, squares = plan.components[:3]  # secure queries take no clip counts
        return ((count.name, len(z)), (total.name, bounded_sum(z, FIXED_POINT)),
                (squares.name, bounded_sum(w, FIXED_POINT)))
    raise QueryError("query.statistic", f"a {stat.value} is not a sum; secure aggregation "
                     "takes count, histogram, mean, paired_change and cross_products")


def _kill_point() -> str | None:
    """The test hook's kill point, checked once when the engine is built."""
    point = os.environ.get(KILL_AT) or None
    if point is not None and point not in KILL_POINTS:
        raise ValueError(f"{KILL_AT}={point!r}: must be one of {', '.join(KILL_POINTS)}")
    return point


def _suppress(release: Release, statistic: Statistic, min_group_size: float) -> Release:
    """Suppress the cells whose noisy count is under `min_group_size`: post-processing of
    the noisy release, so the privacy guarantee (and the loss charged) are unchanged."""
    if min_group_size <= 0:
        return release
    cells = tuple(ReleasedCell(cell.group, (), suppressed=True)
                  if noisy_size(cell, statistic) < min_group_size else cell
                  for cell in release.cells)
    return replace(release, cells=cells, min_group_size=min_group_size)


def noisy_size(cell: ReleasedCell, statistic: Statistic) -> float:
    """A cell's noisy number of participants: its count (count, mean, paired change), the
    sum of its histogram's non-missing cells, or a regression's complete cases (zz[0,0]).
    A quantile has none (inf: never suppressed; policies with a min_group_size refuse it)."""
    values = {v.name: v.value for v in cell.values}
    if statistic is Statistic.HISTOGRAM:
        return sum(value for name, value in values.items() if name != MISSING)
    if statistic is Statistic.CROSS_PRODUCTS:
        return values["zz[0,0]"]
    if statistic is Statistic.QUANTILE:
        return math.inf
    return values["count"]


def _scalar(component: Component, data: np.ndarray[Any, Any]) -> NoisyValue:
    raw = component.release(_writable(data))
    return NoisyValue(component.name, float(raw) * component.unit, component.noise_scale,
                      component.noise_variance, component.epsilon, component.rho)


def _writable(data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Contiguous, writable int64 (OpenDP's ctypes bridge refuses read-only views, which
    pandas' copy-on-write hands out); copies only when needed."""
    return np.require(data, dtype=np.int64, requirements=["C", "W"])


def _quantile(component: Component, values: np.ndarray[Any, Any]) -> NoisyValue:
    chosen = component.release(np.require(values, dtype=np.float64, requirements=["C", "W"]))
    return NoisyValue(component.name, float(chosen), component.noise_scale,
                      component.noise_variance, component.epsilon)


def _clip_counts(components: list[Component], values: FloatArray, plan: Plan
                 ) -> tuple[NoisyValue, ...]:
    """The clipped counts below and above (none without the query's clip_counts)."""
    if not components:
        return ()
    released = components[0].release(clip_codes(values, plan.lower, plan.upper))
    return tuple(NoisyValue(label, float(count), components[0].noise_scale,
                            components[0].noise_variance, components[0].epsilon)
                 for label, count in zip(CLIP_LABELS, released, strict=False))


def _cross_products(plan: Plan, matrix: np.ndarray[Any, Any]) -> tuple[NoisyValue, ...]:
    """Noisy sum of u_i u_j per entry over complete cases, u_t in [-1, 1] (public bounds)."""
    complete = matrix[~np.isnan(matrix).any(axis=1)]
    # One contiguous column per term (u_0 = 1 is implicit): strided columns of a row-major
    # matrix made the products the slowest numpy step at a million rows.
    u = [None, *((np.clip(complete[:, t], term.lower, term.upper) - (term.lower + term.upper) / 2)
                 / ((term.upper - term.lower) / 2) for t, term in enumerate(plan.terms))]
    values = []
    for component in plan.components:
        i, j = (int(k) for k in component.name[3:-1].split(","))
        values.append(_scalar(component, _fixed_product(u[i], u[j], len(complete))))
    return tuple(values)


def _fixed_product(a: FloatArray | None, b: FloatArray | None, n: int) -> IntArray:
    """rint(a * b * FIXED_POINT) as int64, where None stands for the constant 1."""
    if a is None and b is None:
        return np.full(n, FIXED_POINT, dtype=np.int64)
    if a is not None and b is not None:
        product: FloatArray = a * b
        product *= FIXED_POINT
    else:
        factor = a if a is not None else b
        assert factor is not None  # narrowed above: both None returned early
        product = factor * FIXED_POINT
    return np.rint(product, out=product).astype(np.int64)


def _histogram(plan: Plan, codes: np.ndarray[Any, Any]) -> tuple[NoisyValue, ...]:
    component = plan.components[0]
    counts = component.release(_writable(codes))
    return tuple(NoisyValue(label, float(count), component.noise_scale,
                            component.noise_variance, component.epsilon)
                 for label, count in zip(plan.labels, counts, strict=True))


def _describe(plan: Plan) -> str:
    if plan.query.statistic is Statistic.CROSS_PRODUCTS:
        first = plan.components[0]
        parts = [(f"{len(plan.components)} entries of U'U, each rho={first.rho:.6g}, "
                 f"scale={first.noise_scale:.6g}")]
        kind = "discrete Gaussian, zCDP (OpenDP)"
    elif plan.query.statistic is Statistic.QUANTILE:
        first = plan.components[0]
        parts = [(f"quantile {plan.query.quantile:g} over {len(plan.query.bin_edges)} public "
                 f"candidates: eps={first.epsilon:.6g}, scale={first.scale:.6g}")]
        kind = "exponential mechanism (OpenDP make_private_quantile)"
    else:
        parts = [f"{c.name}: eps={c.epsilon:.6g}, scale={c.noise_scale:.6g}"
                 for c in plan.components]
        kind = "discrete Laplace (OpenDP)"
    cells = f"{len(plan.cells)} disjoint cells (parallel composition)" if plan.cells else "1 cell"
    return f"{kind}; {'; '.join(parts)}; {cells}"
