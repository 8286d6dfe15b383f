"""The node's domain form of a query: immutable values decoded from the wire by `serde`."""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any


class Statistic(enum.Enum):
    UNSPECIFIED = "unspecified"
    COUNT = "count"
    MEAN = "mean"
    HISTOGRAM = "histogram"
    PAIRED_CHANGE = "paired_change"
    QUANTILE = "quantile"
    CROSS_PRODUCTS = "cross_products"


@dataclass(frozen=True)
class Occasion:
    """The assessment with months in [lower, upper] nearest to target (earlier on a tie)."""

    target_month: int
    window_lower: int
    window_upper: int


INTAKE = Occasion(0, 0, 0)


@dataclass(frozen=True)
class CategoryFilter:
    column: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class RangeFilter:
    column: str
    lower: float | None
    upper: float | None


Filter = CategoryFilter | RangeFilter


@dataclass(frozen=True)
class Term:
    """One coordinate of a regression's Z: a value, a change, or an indicator."""

    column: str
    occasion: Occasion | None = None
    baseline: Occasion | None = None  # set: the change from baseline to occasion
    category: str = ""  # set: indicator column == category
    clip: tuple[float, float] | None = None


@dataclass(frozen=True)
class QuerySpec:
    statistic: Statistic
    table: str
    column: str
    epsilon: float
    filters: tuple[Filter, ...] = ()
    group_by: tuple[str, ...] = ()
    occasion: Occasion | None = None
    baseline: Occasion | None = None
    bin_edges: tuple[float, ...] = ()
    clip: tuple[float, float] | None = None  # analyst's public bounds inside the schema's
    rho: float = 0.0  # zCDP loss, for Gaussian releases (cross products) instead of epsilon
    quantile: float = 0.0  # for QUANTILE: in (0, 1)
    terms: tuple[Term, ...] = ()  # for CROSS_PRODUCTS: regressors, then the response

    def fingerprint(self) -> str:
        """sha256 of a canonical form; the ledger ties an idempotency key to it."""
        canonical = json.dumps(query_doc(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@lru_cache(maxsize=1024)
def query_doc(query: QuerySpec) -> dict[str, Any]:
    """The query as plain JSON values, for its fingerprint and the audit log. Cached (a
    coordinator repeats its queries, and `asdict` deep-copies): callers must not mutate it."""
    doc = asdict(query)
    doc["statistic"] = query.statistic.value
    doc["filters"] = [{"kind": type(f).__name__, **asdict(f)} for f in query.filters]
    return doc
