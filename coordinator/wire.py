"""The coordinator's one meeting point of protobuf and its own values."""

from __future__ import annotations

from dataclasses import dataclass

from bridgestat.coordinator.pooling import MeanStats, Noisy, PoolingError
import math

from bridgestat.coordinator.query import Occasion, Query
from bridgestat.v1 import node_service_pb2 as pb

_STATISTICS = {"count": pb.STATISTIC_COUNT, "mean": pb.STATISTIC_MEAN,
               "histogram": pb.STATISTIC_HISTOGRAM, "paired_change": pb.STATISTIC_PAIRED_CHANGE,
               "quantile": pb.STATISTIC_QUANTILE, "cross_products": pb.STATISTIC_CROSS_PRODUCTS}


@dataclass(frozen=True)
class CellRelease:
    group: tuple[tuple[str, str], ...]
    values: dict[str, Noisy]  # a quantile (no closed-form noise variance) is in `points`
    points: dict[str, float] | None = None
    suppressed: bool = False  # under the member's min_group_size: no values


@dataclass(frozen=True)
class MemberRelease:
    node_id: str
    cells: tuple[CellRelease, ...]
    center: float
    charged: float  # epsilon (for a rho release its (epsilon, delta) equivalent)
    remaining: float
    replayed: bool
    mechanism: str
    charged_rho: float = 0.0
    delta: float = 0.0  # the delta of `charged` when charged_rho > 0
    term_bounds: tuple[tuple[float, float], ...] = ()
    pooled_only: bool = False  # the member's policy: pool it, never show it beside others
    min_group_size: float = 0.0  # the member's suppression threshold (0: none)

    def mean_stats(self, cell: CellRelease) -> MeanStats:
        v = cell.values
        return MeanStats(v["count"], v["sum"], v["sum_squares"], self.center)


def query_to_pb(query: Query) -> pb.Query:
    if query.statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {', '.join(_STATISTICS)}, "
                         f"got {query.statistic!r}")
    msg = pb.Query(statistic=_STATISTICS[query.statistic], table=query.table,
                   column=query.column, group_by=query.group_by,
                   loss=pb.PrivacyLoss(epsilon=query.epsilon, rho=query.rho),
                   bin_edges=query.bin_edges, quantile=query.quantile)
    for term in query.terms:
        added = msg.terms.add(column=term.column, category=term.category)
        if term.clip is not None:
            added.clip.CopyFrom(pb.Bounds(lower=term.clip[0], upper=term.clip[1]))
        for name, occ in (("occasion", term.occasion), ("baseline", term.baseline)):
            if occ is not None:
                getattr(added, name).CopyFrom(_occasion(occ))
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
    cells = tuple(_cell(cell) for cell in msg.release.cells)
    return MemberRelease(node_id=msg.node_id, cells=cells, center=msg.release.center,
                         charged=msg.charged.epsilon, remaining=msg.budget.remaining.epsilon,
                         replayed=msg.replayed, mechanism=msg.release.mechanism,
                         charged_rho=msg.charged.rho, delta=msg.charged.delta,
                         term_bounds=tuple((b.lower, b.upper) for b in msg.release.term_bounds),
                         pooled_only=msg.pooled_only,
                         min_group_size=msg.release.min_group_size)


def _cell(cell: pb.Cell) -> CellRelease:
    group = tuple((g.column, g.value) for g in cell.group)
    noisy = {v.name: Noisy(v.value, v.noise_variance) for v in cell.values
             if not math.isnan(v.noise_variance)}
    points = {v.name: v.value for v in cell.values if math.isnan(v.noise_variance)}
    return CellRelease(group, noisy, points or None, suppressed=cell.suppressed)


_REQUIRED = {"count": ("count",), "mean": ("count", "sum", "sum_squares"),
             "paired_change": ("count", "sum", "sum_squares")}


def check_release(query: Query, release: MemberRelease) -> None:
    """Refuse a release that does not have the shape its query asks for (a member answering
    garbage): no cells, a non-quantile value without a finite noise variance, or a missing
    statistic. Raises PoolingError naming what is wrong."""
    if not release.cells:
        raise PoolingError("the release has no cells")
    for cell in release.cells:
        if cell.suppressed:
            continue
        if cell.points and query.statistic != "quantile":
            raise PoolingError(f"values {sorted(cell.points)} have no finite noise variance")
        missing = [n for n in _REQUIRED.get(query.statistic, ()) if n not in cell.values]
        if missing:
            raise PoolingError(f"cell {dict(cell.group)} lacks {', '.join(missing)}")
        if not cell.values and not cell.points:
            raise PoolingError(f"cell {dict(cell.group)} has no values")
