"""The query both sides describe: statistic names, occasions, regression terms and the query
value that travels as a `bridgestat.v1.Query` (see `bridgestat.common.wire`).

The coordinator builds `Query` values; a node decodes them from the wire and turns them into
its own planning form (`node/query.py` QuerySpec), which it checks against its schema.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Statistic(enum.StrEnum):
    """The statistics a node can release. UNSPECIFIED is the wire's unset value: a node
    refuses it, and no sender may send it."""

    UNSPECIFIED = "unspecified"
    COUNT = "count"
    MEAN = "mean"
    HISTOGRAM = "histogram"
    PAIRED_CHANGE = "paired_change"
    QUANTILE = "quantile"
    CROSS_PRODUCTS = "cross_products"


STATISTICS: tuple[str, ...] = tuple(s.value for s in Statistic if s is not Statistic.UNSPECIFIED)


@dataclass(frozen=True)
class Occasion:
    """The assessment with months in [window_lower, window_upper] nearest to target_month
    (the earlier one on a tie)."""

    target_month: int
    window_lower: int
    window_upper: int

    @classmethod
    def month(cls, target: int, window: int) -> Occasion:
        """`target` months +- `window` (never before intake): Occasion.month(12, 3) is 12 in
        9-15."""
        return cls(target, max(0, target - window), target + window)


INTAKE = Occasion(0, 0, 0)


@dataclass(frozen=True)
class Term:
    """A regression coordinate: a column's value at an occasion, its change, or an indicator."""

    column: str
    occasion: Occasion | None = None
    baseline: Occasion | None = None  # set: the change from baseline to occasion
    category: str = ""  # set: 1 when column == category, else 0
    clip: tuple[float, float] | None = None


@dataclass(frozen=True)
class Query:
    """One typed aggregate query. On the wire the category filters (`where`) come first,
    then the range filters (`ranges`), each in the order given."""

    statistic: str  # one of STATISTICS
    table: str
    column: str = ""
    epsilon: float = 0.5
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()  # category filters
    ranges: tuple[tuple[str, float | None, float | None], ...] = ()  # numeric range filters
    group_by: tuple[str, ...] = ()
    occasion: Occasion | None = None
    baseline: Occasion | None = None
    bin_edges: tuple[float, ...] = ()
    clip: tuple[float, float] | None = None  # public clipping bounds inside the schema's
    rho: float = 0.0  # zCDP loss of a cross_products query (its epsilon is then 0)
    quantile: float = 0.0  # for quantile: in (0, 1); candidates are bin_edges
    terms: tuple[Term, ...] = ()  # for cross_products: regressors, then the response
    # for mean and paired_change: shares of the loss for (count, sum, sum_squares); None is
    # the node's default split
    split: tuple[float, float, float] | None = None
    clip_counts: bool = False  # mean, paired_change: also release the clipped counts
    # for a mean: cells of those with / without a value at this occasion (attrition)
    split_by_presence: Occasion | None = None
