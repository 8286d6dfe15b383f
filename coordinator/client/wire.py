"""The coordinator's one meeting point of protobuf and its own values.

Queries are encoded by the shared encoder (`bridgestat.common.wire.query_to_pb`, re-exported
here), the one the node decodes with; releases are decoded here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bridgestat.common.labels import COUNT, SUM, SUM_SQUARES
from bridgestat.common.wire import query_to_pb
from bridgestat.coordinator.client.query import Query, Statistic
from bridgestat.coordinator.statistics.pooling import MeanStats, Noisy, PoolingError
from bridgestat.v1 import node_service_pb2 as pb

__all__ = ["CellRelease", "MemberRelease", "check_release", "query_to_pb", "release_from_pb"]


@dataclass(frozen=True)
class CellRelease:
    group: tuple[tuple[str, str], ...]
    values: dict[str, Noisy]  # a quantile (no closed-form noise variance) is in `points`
    points: dict[str, float] | None = None
    suppressed: bool = False  # under the member's min_group_size: no values
    # each value's own pure-DP loss as the node spent it (its noise was calibrated to it);
    # empty where the node sent none (Gaussian values, which carry rho instead)
    epsilons: dict[str, float] = field(default_factory=dict)


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
        return MeanStats(v[COUNT], v[SUM], v[SUM_SQUARES], self.center)


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
    epsilons = {v.name: v.epsilon for v in cell.values if v.epsilon > 0}
    return CellRelease(group, noisy, points or None, suppressed=cell.suppressed,
                       epsilons=epsilons)


_REQUIRED: dict[str, tuple[str, ...]] = {Statistic.COUNT: (COUNT,), Statistic.MEAN: (COUNT, SUM, SUM_SQUARES),
                                          Statistic.PAIRED_CHANGE: (COUNT, SUM, SUM_SQUARES)}


def check_release(query: Query, release: MemberRelease) -> None:
    """Refuse a release that does not have the shape its query asks for (a member answering
    garbage): no cells, a non-quantile value without a finite noise variance, or a missing
    statistic. Raises PoolingError naming what is wrong."""
    if not release.cells:
        raise PoolingError("the release has no cells")
    for cell in release.cells:
        if cell.suppressed:
            continue
        if cell.points and query.statistic != Statistic.QUANTILE:
            raise PoolingError(f"values {sorted(cell.points)} have no finite noise variance")
        missing = [n for n in _REQUIRED.get(query.statistic, ()) if n not in cell.values]
        if missing:
            raise PoolingError(f"cell {dict(cell.group)} lacks {', '.join(missing)}")
        if not cell.values and not cell.points:
            raise PoolingError(f"cell {dict(cell.group)} has no values")
