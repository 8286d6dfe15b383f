"""The coordinator's one meeting point of protobuf and its own values."""

from __future__ import annotations

from dataclasses import dataclass

from bridgestat.coordinator.pooling import MeanStats, Noisy
from bridgestat.coordinator.query import Occasion, Query
from bridgestat.v1 import node_service_pb2 as pb

_STATISTICS = {"count": pb.STATISTIC_COUNT, "mean": pb.STATISTIC_MEAN,
               "histogram": pb.STATISTIC_HISTOGRAM, "paired_change": pb.STATISTIC_PAIRED_CHANGE}


@dataclass(frozen=True)
class CellRelease:
    group: tuple[tuple[str, str], ...]
    values: dict[str, Noisy]


@dataclass(frozen=True)
class MemberRelease:
    node_id: str
    cells: tuple[CellRelease, ...]
    center: float
    charged: float
    remaining: float
    replayed: bool
    mechanism: str

    def mean_stats(self, cell: CellRelease) -> MeanStats:
        v = cell.values
        return MeanStats(v["count"], v["sum"], v["sum_squares"], self.center)


def query_to_pb(query: Query) -> pb.Query:
    if query.statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(_STATISTICS)}, "
                         f"got {query.statistic!r}")
    msg = pb.Query(statistic=_STATISTICS[query.statistic], table=query.table,
                   column=query.column, group_by=query.group_by,
                   loss=pb.PrivacyLoss(epsilon=query.epsilon), bin_edges=query.bin_edges)
    for column, values in query.where:
        msg.filters.add(category=pb.CategoryFilter(column=column, values=values))
    for column, lower, upper in query.ranges:
        msg.filters.add(range=pb.RangeFilter(column=column, lower=lower, upper=upper))
    if query.clip is not None:
        msg.clip.CopyFrom(pb.Bounds(lower=query.clip[0], upper=query.clip[1]))
    for name, occ in (("occasion", query.occasion), ("baseline", query.baseline)):
        if occ is not None:
            getattr(msg, name).CopyFrom(_occasion(occ))
    return msg


def _occasion(occ: Occasion) -> pb.Occasion:
    return pb.Occasion(target_month=occ.target_month, window_lower=occ.window_lower,
                       window_upper=occ.window_upper)


def release_from_pb(msg: pb.RunQueryResponse) -> MemberRelease:
    cells = tuple(
        CellRelease(group=tuple((g.column, g.value) for g in cell.group),
                    values={v.name: Noisy(v.value, v.noise_variance) for v in cell.values})
        for cell in msg.release.cells)
    return MemberRelease(node_id=msg.node_id, cells=cells, center=msg.release.center,
                         charged=msg.charged.epsilon, remaining=msg.budget.remaining.epsilon,
                         replayed=msg.replayed, mechanism=msg.release.mechanism)
