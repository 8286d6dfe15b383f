"""Compile a query into a plan of OpenDP measurements, refusing what does not fit.

Everything here depends only on the query, the public schema and the node's policy,
never on the data: a refusal reveals nothing about any participant. A query is first checked
against the per-query loss cap, then against the schema (QueryError), and only a well-formed
query against the member's other policy rules (PolicyError naming the rule, see `policy`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

from bridgestat.common.labels import MISSING, PRESENCE, PRESENCE_CELLS, SIGN_LABELS, transition
from bridgestat.node import mechanisms
from bridgestat.node.errors import PolicyError, QueryError
from bridgestat.node.loss import Loss, rho_to_epsilon
from bridgestat.node.mechanisms import Component
from bridgestat.node.policy import Policy
from bridgestat.node.query import (
    INTAKE,
    CategoryFilter,
    Occasion,
    QuerySpec,
    RangeFilter,
    Statistic,
    Term,
)
from bridgestat.node.schema import ColumnSpec, ColumnType, Schema, TableSpec

# MISSING (the shared label) and Policy are re-exported: callers import them here.
__all__ = ["MAX_CANDIDATES", "MAX_CELLS", "MAX_TERMS", "MIN_LOSS", "MISSING",
           "PARTICIPANT_TABLE", "Plan", "Policy", "ResolvedTerm", "compile_query"]

PARTICIPANT_TABLE = "participant"
MAX_CELLS = 1000
MAX_TERMS = 10  # regressors + response of a cross-products query
MAX_CANDIDATES = 10_000  # quantile candidates
MIN_LOSS = 1e-6  # below this the noise is astronomically large and its variance overflows


@dataclass(frozen=True)
class ResolvedTerm:
    """A regression term checked against the schema, with its public bounds."""

    term: Term
    column: ColumnSpec
    table: str  # the table the column belongs to
    lower: float
    upper: float


@dataclass(frozen=True)
class Plan:
    query: QuerySpec
    table: TableSpec
    column: ColumnSpec | None
    components: tuple[Component, ...]
    labels: tuple[str, ...]  # histogram cell labels, MISSING last
    cells: tuple[tuple[tuple[str, str], ...], ...]  # group-by cells: ((column, value), ...)
    occasion: Occasion | None
    baseline: Occasion | None
    lower: float = 0.0  # public bounds of the measured value (a change: [-(U-L), U-L])
    upper: float = 0.0
    terms: tuple[ResolvedTerm, ...] = ()  # cross products: regressors, then the response

    @cached_property
    def loss(self) -> Loss:
        """Loss of one cell; cells are disjoint, so by parallel composition of the query.
        Cached: exact Fraction sums, asked for several times per query of a cached plan."""
        return Loss(sum((Fraction(c.epsilon) for c in self.components), Fraction(0)),
                    sum((Fraction(c.rho) for c in self.components), Fraction(0)))

    @property
    def transition(self) -> bool:
        """A histogram of the change between two occasions."""
        return self.query.statistic is Statistic.HISTOGRAM and self.baseline is not None

    @property
    def center(self) -> float:
        return (self.lower + self.upper) / 2


def compile_query(query: QuerySpec, schema: Schema, policy: Policy) -> Plan:
    """Validate `query` against the schema and policy; build its measurements."""
    _check_loss(query, policy)
    table = _check_table(query, schema)
    occasion, baseline = _check_occasions(query, table)
    _check_split(query, table, occasion)
    column = _check_column(query, table)
    split = _check_mean_options(query)
    terms = _check_terms(query, schema, table)
    for i, flt in enumerate(query.filters):
        _check_filter(flt, schema, table, f"query.filters[{i}]")
    cells = _cells(query, schema, table)
    policy.check(query)  # well formed; now the member's rules (statistics, columns)
    return _build(query, table, column, cells, occasion, baseline, terms, split)


def _check_loss(query: QuerySpec, policy: Policy) -> None:
    """Gaussian releases (cross products) spend rho, all others epsilon; never both."""
    gaussian = query.statistic is Statistic.CROSS_PRODUCTS
    used, unused = ("rho", "epsilon") if gaussian else ("epsilon", "rho")
    value, other = (query.rho, query.epsilon) if gaussian else (query.epsilon, query.rho)
    if not math.isfinite(value) or value < MIN_LOSS:
        raise QueryError(f"query.loss.{used}", f"must be a finite number >= {MIN_LOSS:g} "
                         f"(smaller losses drown every answer in noise), got {value}")
    if other != 0:
        raise QueryError(f"query.loss.{unused}", f"a {query.statistic.value} spends {used} "
                         f"only; leave {unused} unset")
    # the query's own (epsilon, delta) guarantee; inf for a rho too large for OpenDP to bound
    guarantee = rho_to_epsilon(value, policy.delta) if gaussian else value
    if guarantee > policy.max_epsilon_per_query:
        shown = f"rho {value:g} (epsilon {guarantee:.4g} at delta {policy.delta:g})" \
            if gaussian else f"{value:g}"
        raise PolicyError(f"query.loss.{used}",
                          f"policy rule budget.max_epsilon_per_query: {shown} exceeds this "
                          f"node's largest loss per query (epsilon "
                          f"{policy.max_epsilon_per_query:g})")


def _check_table(query: QuerySpec, schema: Schema) -> TableSpec:
    if query.statistic is Statistic.UNSPECIFIED:  # the wire's unset value
        raise QueryError("query.statistic", "must be set (count, mean, histogram, "
                         "paired_change, quantile, cross_products)")
    if not query.table:
        raise QueryError("query.table", "must be set")
    table = schema.table(query.table)
    if table.max_rows_per_participant > 1 and not table.has_occasions:
        derived = [c.name for t in schema.tables for c in t.columns
                   if c.derived is not None and c.derived.table == table.name]
        raise QueryError("query.table",
                         f"table {table.name!r} has up to {table.max_rows_per_participant} rows "
                         f"per participant; query its per-participant columns on "
                         f"{PARTICIPANT_TABLE!r} instead ({', '.join(derived) or 'none'})")
    return table


def _check_occasions(query: QuerySpec, table: TableSpec
                     ) -> tuple[Occasion | None, Occasion | None]:
    if not table.has_occasions:
        for name, occ in (("query.occasion", query.occasion), ("query.baseline", query.baseline)):
            if occ is not None:
                raise QueryError(name, f"table {table.name!r} has no occasions")
        if query.statistic is Statistic.PAIRED_CHANGE:
            raise QueryError("query.table", "a paired change needs a table with occasions "
                             "(e.g. assessment)")
        return None, None
    month = table.column(table.month_column or "", "query.table")
    occasion = _check_occasion(query.occasion or INTAKE, month, "query.occasion")
    paired = query.statistic is Statistic.PAIRED_CHANGE or (
        query.statistic is Statistic.HISTOGRAM and query.baseline is not None)
    if not paired:
        if query.baseline is not None:
            raise QueryError("query.baseline", "only a paired change or a transition "
                             "histogram has a baseline")
        return occasion, None
    if query.occasion is None:
        raise QueryError("query.occasion", f"a {query.statistic.value} with a baseline needs "
                         "the follow-up occasion")
    baseline = _check_occasion(query.baseline or INTAKE, month, "query.baseline")
    if baseline == occasion:
        raise QueryError("query.occasion", "follow-up and baseline occasions are the same")
    return occasion, baseline


def _check_split(query: QuerySpec, table: TableSpec, occasion: Occasion | None) -> None:
    """A presence split (attrition): a mean on a table with occasions, split by whether each
    participant has a value at another occasion. Public facts only, like every check here."""
    split, name = query.split_by_presence, "query.split_by_presence"
    if split is None:
        return
    if query.statistic is not Statistic.MEAN:
        raise QueryError(name, f"only a mean takes a presence split, not a "
                         f"{query.statistic.value}")
    if not table.has_occasions:
        raise QueryError(name, f"table {table.name!r} has no occasions")
    _check_occasion(split, table.column(table.month_column or "", "query.table"), name)
    if split == occasion:
        raise QueryError(name, "is the occasion measured (every participant measured there "
                         "would be present); name the follow-up occasion")


def _check_occasion(occ: Occasion, month: ColumnSpec, name: str) -> Occasion:
    lo, hi = month.lower or 0, month.upper or 0
    if not occ.window_lower <= occ.target_month <= occ.window_upper:
        raise QueryError(name, f"needs window_lower <= target_month <= window_upper, got "
                         f"{occ.window_lower} <= {occ.target_month} <= {occ.window_upper}")
    if occ.window_lower < lo or occ.window_upper > hi:
        raise QueryError(name, f"window must lie within {month.name} bounds [{lo:g}, {hi:g}]")
    return occ


def _check_column(query: QuerySpec, table: TableSpec) -> ColumnSpec | None:
    stat = query.statistic
    if stat is not Statistic.CROSS_PRODUCTS and query.terms:
        raise QueryError("query.terms", "only cross_products takes terms")
    if stat is not Statistic.QUANTILE and query.quantile != 0:
        raise QueryError("query.quantile", "only a quantile query takes a quantile")
    if stat in (Statistic.COUNT, Statistic.CROSS_PRODUCTS):
        if query.column:
            raise QueryError("query.column", f"a {stat.value} takes no column "
                             f"({'use filters' if stat is Statistic.COUNT else 'use terms'})")
        if query.clip is not None:
            raise QueryError("query.clip", f"a {stat.value} takes no query-level clipping "
                             "bounds")
        if query.bin_edges:
            raise QueryError("query.bin_edges", f"a {stat.value} takes no bin edges")
        return None
    if not query.column:
        raise QueryError("query.column", f"a {stat.value} needs a column")
    column = table.column(query.column)
    if column.type is ColumnType.KEY:
        raise QueryError("query.column", f"{column.name!r} is a local key and cannot be queried")
    numeric_stats = (Statistic.MEAN, Statistic.PAIRED_CHANGE, Statistic.QUANTILE)
    if stat in numeric_stats and not column.type.numeric:
        raise QueryError("query.column", f"a {stat.value} needs a numeric column; "
                         f"{column.name!r} is {column.type.value}")
    if stat is Statistic.HISTOGRAM:
        _check_histogram_column(query, column)
    elif stat is Statistic.QUANTILE:
        _check_quantile(query, column)
    elif query.bin_edges:
        raise QueryError("query.bin_edges", "only a histogram takes bin edges")
    if query.clip is not None and stat not in (Statistic.MEAN, Statistic.PAIRED_CHANGE):
        raise QueryError("query.clip", f"a {stat.value} takes no clipping bounds")
    return column


def _check_mean_options(query: QuerySpec) -> mechanisms.MeanSplit:
    """A mean's or change's own split of its loss and clip counts; other statistics take
    neither. Unset split: the default."""
    mean_like = query.statistic in (Statistic.MEAN, Statistic.PAIRED_CHANGE)
    for name, given in (("split", query.split is not None), ("clip_counts", query.clip_counts)):
        if given and not mean_like:
            raise QueryError(f"query.{name}", f"only a mean or paired_change takes {name}, "
                             f"not a {query.statistic.value}")
    if query.split is None:
        return mechanisms.MEAN_SPLIT
    split = mechanisms.MeanSplit(*query.split)
    problem = split.problem()
    if problem:
        raise QueryError("query.split", problem)
    return split


def _check_histogram_column(query: QuerySpec, column: ColumnSpec) -> None:
    if column.type.categorical:
        if query.bin_edges:
            raise QueryError("query.bin_edges", f"{column.name!r} is categorical; bins are for "
                             "numeric columns")
        if not column.categories:
            raise QueryError("query.column", f"{column.name!r} has no declared categories")
        return
    edges = query.bin_edges
    lower, upper = column.lower or 0.0, column.upper or 0.0
    if query.baseline is not None:  # the change's direction, or bins of the change
        if not edges:
            return
        lower, upper = -(upper - lower), upper - lower
    if not edges:
        raise QueryError("query.bin_edges", f"a histogram of numeric {column.name!r} needs "
                         "public bin edges")
    if any(not math.isfinite(e) for e in edges) or list(edges) != sorted(set(edges)):
        raise QueryError("query.bin_edges", "must be finite and strictly increasing")
    if edges[0] <= lower or edges[-1] > upper:
        raise QueryError("query.bin_edges",
                         f"must lie in ({lower:g}, {upper:g}] for {column.name!r}")


def _check_quantile(query: QuerySpec, column: ColumnSpec) -> None:
    if not 0 < query.quantile < 1:
        raise QueryError("query.quantile", f"must lie in (0, 1), got {query.quantile:g}")
    edges = query.bin_edges
    if not edges:
        raise QueryError("query.bin_edges", "a quantile needs public candidates (bin_edges)")
    if len(edges) > MAX_CANDIDATES:
        raise QueryError("query.bin_edges", f"{len(edges)} candidates exceed the limit of "
                         f"{MAX_CANDIDATES}")
    lower, upper = column.lower or 0.0, column.upper or 0.0
    if any(not math.isfinite(e) for e in edges) or list(edges) != sorted(set(edges)):
        raise QueryError("query.bin_edges", "candidates must be finite and strictly increasing")
    if edges[0] < lower or edges[-1] > upper:
        raise QueryError("query.bin_edges",
                         f"candidates must lie in [{lower:g}, {upper:g}] for {column.name!r}")


def _check_terms(query: QuerySpec, schema: Schema, table: TableSpec
                 ) -> tuple[ResolvedTerm, ...]:
    if query.statistic is not Statistic.CROSS_PRODUCTS:
        return ()
    if not 2 <= len(query.terms) <= MAX_TERMS:
        raise QueryError("query.terms", f"needs 2 to {MAX_TERMS} terms (regressors, then the "
                         f"response), got {len(query.terms)}")
    return tuple(_check_term(term, schema, table, f"query.terms[{i}]")
                 for i, term in enumerate(query.terms))


def _check_term(term: Term, schema: Schema, table: TableSpec, where: str) -> ResolvedTerm:
    column = _resolve(term.column, schema, table, f"{where}.column")
    owner = table if table.find(column.name) is column else schema.table(PARTICIPANT_TABLE)
    if owner.has_occasions:
        month = owner.column(owner.month_column or "", "query.table")
        if term.occasion is not None:
            _check_occasion(term.occasion, month, f"{where}.occasion")
        if term.baseline is not None:
            if term.occasion is None:
                raise QueryError(f"{where}.occasion", "a change needs the follow-up occasion")
            _check_occasion(term.baseline, month, f"{where}.baseline")
    elif term.occasion is not None or term.baseline is not None:
        raise QueryError(f"{where}.occasion", f"{column.name!r} is a column of {owner.name!r}, "
                         "which has no occasions")
    if term.category:
        return _indicator_term(term, column, owner.name, where)
    if not column.type.numeric or column.lower is None or column.upper is None:
        raise QueryError(f"{where}.column", f"{column.name!r} is {column.type.value}; "
                         "name a category for an indicator term")
    lower, upper = column.lower, column.upper
    if term.baseline is not None:
        lower, upper = -(upper - lower), upper - lower
    lower, upper = _bounds_inside(term.clip, lower, upper, f"{where}.clip")
    return ResolvedTerm(term, column, owner.name, lower, upper)


def _indicator_term(term: Term, column: ColumnSpec, owner: str, where: str) -> ResolvedTerm:
    if not column.type.categorical:
        raise QueryError(f"{where}.category", f"{column.name!r} is {column.type.value}; only "
                         "categorical or boolean columns have indicator terms")
    if term.category not in column.categories:
        raise QueryError(f"{where}.category", f"{term.category!r} is not a category of "
                         f"{column.name!r} ({', '.join(column.categories)})")
    if term.baseline is not None:
        raise QueryError(f"{where}.baseline", "an indicator term has no change")
    if term.clip is not None:
        raise QueryError(f"{where}.clip", "an indicator term is always in [0, 1]")
    return ResolvedTerm(term, column, owner, 0.0, 1.0)


def _resolve(name: str, schema: Schema, table: TableSpec, field_name: str) -> ColumnSpec:
    """Filter and group-by columns: the participant table, then the queried table."""
    for candidate in (schema.find(PARTICIPANT_TABLE), table):
        found = candidate.find(name) if candidate is not None else None
        if found is not None:
            if found.type is ColumnType.KEY:
                raise QueryError(field_name, f"{name!r} is a local key")
            return found
    raise QueryError(field_name, f"unknown column {name!r} (neither in {PARTICIPANT_TABLE!r} "
                     f"nor in {table.name!r})")


def _check_filter(flt: CategoryFilter | RangeFilter, schema: Schema, table: TableSpec,
                  where: str) -> None:
    column = _resolve(flt.column, schema, table, f"{where}.column")
    if isinstance(flt, CategoryFilter):
        if not column.type.categorical:
            raise QueryError(f"{where}.column", f"{column.name!r} is {column.type.value}; "
                             "use a range filter")
        if not flt.values:
            raise QueryError(f"{where}.values", "must list at least one category")
        for value in flt.values:
            if value not in column.categories:
                raise QueryError(f"{where}.values", f"{value!r} is not a category of "
                                 f"{column.name!r} ({', '.join(column.categories)})")
        return
    if not column.type.numeric:
        raise QueryError(f"{where}.column", f"{column.name!r} is {column.type.value}; "
                         "use a category filter")
    bounds = [b for b in (flt.lower, flt.upper) if b is not None]
    if not bounds or any(not math.isfinite(b) for b in bounds):
        raise QueryError(f"{where}", "a range filter needs a finite lower and/or upper")
    if flt.lower is not None and flt.upper is not None and flt.lower > flt.upper:
        raise QueryError(f"{where}", f"lower {flt.lower:g} is above upper {flt.upper:g}")


def _cells(query: QuerySpec, schema: Schema, table: TableSpec
           ) -> tuple[tuple[tuple[str, str], ...], ...]:
    if len(set(query.group_by)) != len(query.group_by):
        raise QueryError("query.group_by", "lists a column twice")
    axes = []
    for i, name in enumerate(query.group_by):
        column = _resolve(name, schema, table, f"query.group_by[{i}]")
        if not column.type.categorical or not column.categories:
            raise QueryError(f"query.group_by[{i}]", f"{name!r} is not a categorical column "
                             "with public categories")
        axes.append([(name, value) for value in column.categories])
    if query.split_by_presence is not None:  # last: frames.py keys the presence cell last
        axes.append([(PRESENCE, value) for value in PRESENCE_CELLS])
    cells = tuple(tuple(cell) for cell in itertools.product(*axes))
    if len(cells) > MAX_CELLS:
        raise QueryError("query.group_by", f"{len(cells)} cells exceed the limit of {MAX_CELLS}")
    return cells


def _build(query: QuerySpec, table: TableSpec, column: ColumnSpec | None,
           cells: tuple[tuple[tuple[str, str], ...], ...], occasion: Occasion | None,
           baseline: Occasion | None, terms: tuple[ResolvedTerm, ...],
           split: mechanisms.MeanSplit = mechanisms.MEAN_SPLIT) -> Plan:
    eps = query.epsilon
    labels: tuple[str, ...] = ()
    lower = upper = 0.0
    if query.statistic is Statistic.COUNT:
        components: tuple[Component, ...] = (mechanisms.count_component(eps),)
    elif query.statistic is Statistic.CROSS_PRODUCTS:
        components = mechanisms.cross_product_components(len(terms), query.rho)
    elif query.statistic is Statistic.HISTOGRAM:
        assert column is not None  # guaranteed by _check_column
        labels = _labels(column, query.bin_edges, paired=baseline is not None) + (MISSING,)
        components = (mechanisms.histogram_component(len(labels) - 1, eps),)
    elif query.statistic is Statistic.QUANTILE:
        assert column is not None and column.lower is not None and column.upper is not None
        lower, upper = column.lower, column.upper
        components = (mechanisms.quantile_component(query.bin_edges, query.quantile, eps),)
    else:
        assert column is not None and column.lower is not None and column.upper is not None
        lower, upper = column.lower, column.upper
        if query.statistic is Statistic.PAIRED_CHANGE:
            lower, upper = -(upper - lower), upper - lower
        lower, upper = _clip(query, lower, upper)
        components = _mean_components(query, (upper - lower) / 2, split)
    return Plan(query, table, column, components, labels, cells, occasion, baseline,
                lower, upper, terms)


def _mean_components(query: QuerySpec, half_width: float, split: mechanisms.MeanSplit
                     ) -> tuple[Component, ...]:
    """Count, sum and sum of squares by the split; with clip counts, those take CLIP_SHARE of
    the loss and the three share the rest, so the query's total stays what was asked."""
    if not query.clip_counts:
        return mechanisms.mean_components(half_width, query.epsilon, split)
    clip_eps = query.epsilon * mechanisms.CLIP_SHARE
    return (*mechanisms.mean_components(half_width, query.epsilon - clip_eps, split),
            mechanisms.clip_count_component(clip_eps))


def _clip(query: QuerySpec, lower: float, upper: float) -> tuple[float, float]:
    return _bounds_inside(query.clip, lower, upper, "query.clip")


def _bounds_inside(clip: tuple[float, float] | None, lower: float, upper: float,
                   field_name: str) -> tuple[float, float]:
    """The analyst's public clipping bounds, which must lie inside [lower, upper]."""
    if clip is None:
        return lower, upper
    lo, hi = clip
    if not (math.isfinite(lo) and math.isfinite(hi) and lower <= lo < hi <= upper
            and (hi - lo) / 2 > 0):
        raise QueryError(field_name, f"must satisfy {lower:g} <= lower < upper <= {upper:g}, "
                         f"got [{lo:g}, {hi:g}]")
    return lo, hi


def _labels(column: ColumnSpec, edges: tuple[float, ...], paired: bool = False
            ) -> tuple[str, ...]:
    """Cell labels: categories, bins, or (paired) transitions, signs or bins of the change."""
    if column.type.categorical:
        if paired:
            return tuple(transition(a, b) for a in column.categories for b in column.categories)
        return column.categories
    lower, upper = column.lower or 0.0, column.upper or 0.0
    if paired:
        if not edges:
            return SIGN_LABELS
        lower, upper = -(upper - lower), upper - lower
    points = [lower, *edges, upper]
    labels = [f"[{a:g}, {b:g})" for a, b in itertools.pairwise(points[:-1])]
    return (*labels, f"[{points[-2]:g}, {points[-1]:g}]")
