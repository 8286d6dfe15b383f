"""The Python API for researchers and coordinators: queries in, pandas DataFrames out.

    net = Network.from_file("network.yaml")
    net.paired_change("assessment", "bridge_total", occasion=Occasion.month(12, 3))

Every result has one row per member (estimate, se with sampling and DP variance, 95 % CI,
noisy n, loss charged, status) and a pooled row with member == "NETWORK". A member that is
down, slow or refuses keeps its row with the reason in `status`; the pooled row uses the rest.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from bridgestat.coordinator import pooling
from bridgestat.coordinator.fanout import Failure, Fanout, Success
from bridgestat.coordinator.network import Member, load_network
from bridgestat.coordinator.pooling import Estimate, Noisy, PoolingError
from bridgestat.coordinator.query import INTAKE, Occasion, Query
from bridgestat.coordinator.wire import CellRelease, MemberRelease, query_to_pb, release_from_pb
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

NETWORK = "NETWORK"
MISSING = "(missing)"
Group = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class QueryResult:
    """Raw outcome of one fanned-out query: releases and failures per member."""

    query: Query
    key: str
    members: tuple[str, ...]  # network order
    releases: dict[str, MemberRelease]
    failures: dict[str, Failure]


class Network:
    """A client of every member's node; not thread-safe (one event loop of its own)."""

    def __init__(self, members: Sequence[Member], timeout: float = 10.0) -> None:
        self.members = tuple(members)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._fanout = Fanout(self.members)

    @classmethod
    def from_file(cls, path: str | Path, timeout: float = 10.0) -> Network:
        return cls(load_network(Path(path)).members, timeout)

    def close(self) -> None:
        self._loop.run_until_complete(self._fanout.close())
        self._loop.close()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw calls -------------------------------------------------------------------------

    def info(self) -> pd.DataFrame:
        """Every member: reachable, schema version, budget spent and left."""
        async def call(stub: pb_grpc.NodeServiceStub, timeout: float) -> pb.GetNodeInfoResponse:
            return await stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=timeout)
        rows = []
        for outcome in self._loop.run_until_complete(self._fanout.call_all(call, self.timeout)):
            if isinstance(outcome, Failure):
                rows.append({"member": outcome.member, "reachable": False,
                             "status": f"{outcome.code}: {outcome.message}"})
                continue
            info = outcome.value
            rows.append({"member": outcome.member, "reachable": True, "node_id": info.node_id,
                         "schema": f"{info.schema.name} {info.schema.version}",
                         "dataset": info.budget.dataset,
                         "epsilon_spent": info.budget.spent.epsilon,
                         "epsilon_remaining": info.budget.remaining.epsilon,
                         "epsilon_total": info.budget.total.epsilon,
                         "max_epsilon_per_query": info.budget.max_per_query.epsilon,
                         "software": info.software_version, "status": "ok"})
        return pd.DataFrame(rows)

    def run(self, query: Query, key: str | None = None) -> QueryResult:
        """Send one query to every member; the same key makes a retry free on every node."""
        key = key or uuid.uuid4().hex
        request = pb.RunQueryRequest(idempotency_key=key, query=query_to_pb(query))

        async def call(stub: pb_grpc.NodeServiceStub, timeout: float) -> pb.RunQueryResponse:
            return await stub.RunQuery(request, timeout=timeout)
        outcomes = self._loop.run_until_complete(self._fanout.call_all(call, self.timeout))
        releases = {o.member: release_from_pb(o.value) for o in outcomes
                    if isinstance(o, Success)}
        failures = {o.member: o for o in outcomes if isinstance(o, Failure)}
        return QueryResult(query, key, tuple(m.name for m in self.members), releases, failures)

    # -- statistics ------------------------------------------------------------------------

    def count(self, table: str = "participant", *, epsilon: float = 0.5,
              where: dict[str, Sequence[str]] | None = None,
              group_by: Sequence[str] = (), occasion: Occasion | None = None,
              key: str | None = None) -> pd.DataFrame:
        query = Query("count", table, "", epsilon, _where(where), group_by=tuple(group_by),
                      occasion=occasion)
        result = self.run(query, key)
        return _table(result, lambda r, c: pooling.count_estimate(c.values["count"]),
                      lambda cs: pooling.pooled_count([c.values["count"] for _, c in cs]))

    def mean(self, table: str, column: str, *, epsilon: float = 0.5,
             where: dict[str, Sequence[str]] | None = None, group_by: Sequence[str] = (),
             occasion: Occasion | None = None, clip: tuple[float, float] | None = None,
             key: str | None = None) -> pd.DataFrame:
        """Mean of a numeric column; `clip` sets tighter public bounds (less noise)."""
        query = Query("mean", table, column, epsilon, _where(where), group_by=tuple(group_by),
                      occasion=occasion, clip=clip)
        return _table(self.run(query, key),
                      lambda r, c: pooling.member_mean(r.mean_stats(c)),
                      lambda cs: pooling.pooled_mean([r.mean_stats(c) for r, c in cs]))

    def paired_change(self, table: str, column: str, *, occasion: Occasion,
                      baseline: Occasion = INTAKE, epsilon: float = 0.5,
                      where: dict[str, Sequence[str]] | None = None,
                      group_by: Sequence[str] = (), clip: tuple[float, float] | None = None,
                      key: str | None = None) -> pd.DataFrame:
        """Mean change post - pre with CI, and Cohen's d_z with its SE (NaN when the noisy
        SD of the change is not estimable; `d_z_status` says why)."""
        query = Query("paired_change", table, column, epsilon, _where(where),
                      group_by=tuple(group_by), occasion=occasion, baseline=baseline, clip=clip)
        result = self.run(query, key)
        change = _table(result, lambda r, c: pooling.member_mean(r.mean_stats(c)),
                        lambda cs: pooling.pooled_mean([r.mean_stats(c) for r, c in cs]))
        d_z = _table(result, lambda r, c: pooling.member_change(r.mean_stats(c)).d_z,
                     lambda cs: pooling.pooled_change([r.mean_stats(c) for r, c in cs]).d_z)
        for name in ("estimate", "se", "ci_low", "ci_high"):
            change[f"d_z_{name}" if name != "estimate" else "d_z"] = d_z[name].to_numpy()
        change["d_z_status"] = d_z["status"].to_numpy()
        return change

    def histogram(self, table: str, column: str, *, epsilon: float = 0.5,
                  where: dict[str, Sequence[str]] | None = None, group_by: Sequence[str] = (),
                  occasion: Occasion | None = None, bin_edges: Sequence[float] = (),
                  key: str | None = None) -> pd.DataFrame:
        """Long form: one row per member (and NETWORK), group cell and category, with shares."""
        query = Query("histogram", table, column, epsilon, _where(where),
                      group_by=tuple(group_by), occasion=occasion, bin_edges=tuple(bin_edges))
        result = self.run(query, key)
        frames = []
        for category in _categories(result):
            frame = _table(result, _share(category), _pooled_share(category))
            frames.append(frame.assign(category=category))
        return pd.concat(frames, ignore_index=True) if frames else _failures_only(result)

    def proportion(self, table: str, column: str, categories: Sequence[str], *,
                   epsilon: float = 0.5, where: dict[str, Sequence[str]] | None = None,
                   group_by: Sequence[str] = (), occasion: Occasion | None = None,
                   bin_edges: Sequence[float] = (), key: str | None = None) -> pd.DataFrame:
        """Share of participants (with a known value) whose value is in `categories`."""
        query = Query("histogram", table, column, epsilon, _where(where),
                      group_by=tuple(group_by), occasion=occasion, bin_edges=tuple(bin_edges))
        wanted = tuple(categories)
        return _table(self.run(query, key), lambda r, c: pooling.proportion(*_split(c, wanted)),
                      lambda cs: pooling.pooled_proportion([_split(c, wanted) for _, c in cs]))


def _where(where: dict[str, Sequence[str]] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((k, tuple(v)) for k, v in (where or {}).items())


def _split(cell: CellRelease, wanted: tuple[str, ...]) -> tuple[Noisy, Noisy]:
    """(Y1, Y0): noisy counts in and out of `wanted`, the missing cell left out."""
    unknown = [w for w in wanted if w not in cell.values]
    if unknown:
        raise PoolingError(f"no category {unknown[0]!r} in the release")
    inside = [v for k, v in cell.values.items() if k in wanted]
    outside = [v for k, v in cell.values.items() if k not in wanted and k != MISSING]
    return _total(inside), _total(outside)


def _total(values: Sequence[Noisy]) -> Noisy:
    return Noisy(sum(v.value for v in values), sum(v.variance for v in values))


def _share(category: str) -> Callable[[MemberRelease, CellRelease], Estimate]:
    return lambda r, c: pooling.proportion(*_split(c, (category,)))


def _pooled_share(category: str) -> Callable[[list[tuple[MemberRelease, CellRelease]]], Estimate]:
    return lambda cs: pooling.pooled_proportion([_split(c, (category,)) for _, c in cs])


def _categories(result: QueryResult) -> list[str]:
    for release in result.releases.values():
        return [k for k in release.cells[0].values if k != MISSING]
    return []


MemberFn = Callable[[MemberRelease, CellRelease], Estimate]
PooledFn = Callable[[list[tuple[MemberRelease, CellRelease]]], Estimate]


def _table(result: QueryResult, member_fn: MemberFn, pooled_fn: PooledFn) -> pd.DataFrame:
    """Per-member rows and a NETWORK row per group cell, failures named in `status`."""
    rows: list[dict[str, Any]] = []
    for group in _groups(result):
        pairs = []
        for member in result.members:
            if member in result.failures:
                fail = result.failures[member]
                rows.append(_row(member, group, None, None, f"{fail.code}: {fail.message}"))
                continue
            release = result.releases[member]
            cell = next(c for c in release.cells if c.group == group)
            pairs.append((release, cell))
            rows.append(_estimate_row(member, group, release.charged,
                                      partial(member_fn, release, cell)))
        if pairs:
            loss = max(r.charged for r, _ in pairs)
            rows.append(_estimate_row(NETWORK, group, loss, partial(pooled_fn, pairs)))
        else:
            rows.append(_row(NETWORK, group, None, None, "no member answered"))
    return pd.DataFrame(rows)


def _groups(result: QueryResult) -> list[Group]:
    for release in result.releases.values():
        return [c.group for c in release.cells]
    return [()]


def _estimate_row(member: str, group: Group, loss: float,
                  compute: Callable[[], Estimate]) -> dict[str, Any]:
    try:
        return _row(member, group, compute(), loss, "ok")
    except PoolingError as exc:
        return _row(member, group, None, loss, f"not estimable: {exc}")


def _row(member: str, group: Group, est: Estimate | None, loss: float | None,
         status: str) -> dict[str, Any]:
    row: dict[str, Any] = {"member": member, **dict(group)}
    fields = ("estimate", "se", "ci_low", "ci_high", "n", "sd", "se_sampling", "se_dp")
    values = asdict(est) if est is not None else {}
    row.update({f: values.get(f) for f in fields})
    row["loss"] = loss
    row["status"] = status
    return row


def _failures_only(result: QueryResult) -> pd.DataFrame:
    return pd.DataFrame([_row(m, (), None, None, f"{f.code}: {f.message}")
                         for m, f in result.failures.items()])
