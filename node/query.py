"""The node's planning form of a query (QuerySpec), made from the shared query value that
`bridgestat.common.wire` decodes. Statistic, Occasion, INTAKE and Term are the shared ones,
re-exported here for the node's modules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from bridgestat.common.query import INTAKE, Occasion, Query, Statistic, Term
from bridgestat.node.errors import QueryError

__all__ = ["INTAKE", "CategoryFilter", "Filter", "Occasion", "QuerySpec", "RangeFilter",
           "Statistic", "Term", "query_doc"]


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
    split: tuple[float, float, float] | None = None  # MEAN, PAIRED_CHANGE: loss shares
    clip_counts: bool = False  # MEAN, PAIRED_CHANGE: also release the clipped counts
    split_by_presence: Occasion | None = None  # MEAN: cells present / absent (attrition)

    @classmethod
    def of(cls, query: Query) -> QuerySpec:
        """The planning form of a shared query: its category filters, then its ranges."""
        try:
            statistic = Statistic(query.statistic)
        except ValueError:
            raise QueryError("query.statistic", f"unknown statistic {query.statistic!r}") from None
        filters: tuple[Filter, ...] = (
            *(CategoryFilter(column, tuple(values)) for column, values in query.where),
            *(RangeFilter(column, lower, upper) for column, lower, upper in query.ranges))
        return cls(statistic=statistic, table=query.table, column=query.column,
                   epsilon=query.epsilon, filters=filters, group_by=tuple(query.group_by),
                   occasion=query.occasion, baseline=query.baseline,
                   bin_edges=tuple(query.bin_edges), clip=query.clip, rho=query.rho,
                   quantile=query.quantile, terms=tuple(query.terms), split=query.split,
                   clip_counts=query.clip_counts,
                   split_by_presence=query.split_by_presence)

    def shared(self) -> Query:
        """The shared query value (what goes back on the wire with an answer)."""
        return Query(statistic=self.statistic.value, table=self.table, column=self.column,
                     epsilon=self.epsilon,
                     where=tuple((f.column, f.values) for f in self.filters
                                 if isinstance(f, CategoryFilter)),
                     ranges=tuple((f.column, f.lower, f.upper) for f in self.filters
                                  if isinstance(f, RangeFilter)),
                     group_by=self.group_by, occasion=self.occasion, baseline=self.baseline,
                     bin_edges=self.bin_edges, clip=self.clip, rho=self.rho,
                     quantile=self.quantile, terms=self.terms, split=self.split,
                     clip_counts=self.clip_counts,
                     split_by_presence=self.split_by_presence)

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
    # unset options stay out, so a query without them keeps the fingerprint it always had
    # (a retry across a node upgrade still replays)
    for name, unset in (("split", None), ("clip_counts", False),
                         ("split_by_presence", None)):
        if doc[name] == unset:
            del doc[name]
    return doc
