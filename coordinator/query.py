"""Queries as the coordinator describes them: immutable values, compiled on the nodes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Occasion:
    """The assessment nearest target_month within [window_lower, window_upper]."""

    target_month: int
    window_lower: int
    window_upper: int

    @classmethod
    def month(cls, target: int, window: int) -> Occasion:
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
    statistic: str  # count | mean | histogram | paired_change | quantile | cross_products
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
