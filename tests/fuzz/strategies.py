"""Hypothesis strategies shared by the fuzz tests: junk values, and wire queries that are
mostly well formed (drawn from the default schema's names) with a few fields broken."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from bridgestat.node.schema import ColumnSpec, ColumnType, load_schema
from bridgestat.v1 import node_service_pb2 as pb


def fuzz_settings(max_examples: int) -> settings:
    """Reproducible settings: derandomized, no example database, no deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much],
                    print_blob=False)


SCHEMA = load_schema()
TABLES = [t.name for t in SCHEMA.tables]
COLUMNS = sorted({c.name for t in SCHEMA.tables for c in t.columns})
CATEGORIES = sorted({v for t in SCHEMA.tables for c in t.columns for v in c.categories})
JUNK_NAMES = ["", " ", "participant ", "ASSESSMENT", "nope", "query.table", "participant.arm",
              "bridge_total\x00", "é", "💥", "a" * 300, "../etc/passwd", "(missing)", "true",
              "-1", "NaN"]

SPECIAL_FLOATS = [0.0, -0.0, -1.0, 1e-300, 5e-324, 1e-7, 1e-6, 0.01, 0.1, 0.5, 0.999999, 1.0,
                  1.0000001, 2.0, 1e6, 1e308, -1e308, math.nan, math.inf, -math.inf]
floats_any = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats())
int32 = st.one_of(st.integers(-3, 40), st.integers(-(2**31), 2**31 - 1))
names = st.one_of(st.sampled_from(TABLES + COLUMNS + JUNK_NAMES), st.text(max_size=12))
category_values = st.one_of(st.sampled_from(CATEGORIES + JUNK_NAMES), st.text(max_size=8))

# Junk YAML values of every type, for config, network and study files.
junk_values: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([10**400, -(10**400), 2**63]),
    floats_any, st.text(max_size=20), st.sampled_from(JUNK_NAMES),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _columns(kind: Callable[[ColumnSpec], bool], table: str) -> list[ColumnSpec]:
    return [c for c in SCHEMA.table(table).columns if c.derived is None and kind(c)
            and c.type is not ColumnType.KEY]


def _numeric(c: ColumnSpec) -> bool:
    return c.type.numeric and c.lower is not None and c.upper is not None


def _categorical(c: ColumnSpec) -> bool:
    return c.type.categorical and bool(c.categories)


GROUPS = [c.name for c in _columns(_categorical, "participant") if len(c.categories) <= 6]
INTAKE = pb.Occasion()
MONTH_12 = pb.Occasion(target_month=12, window_lower=9, window_upper=15)


@st.composite
def valid_queries(draw: st.DrawFn) -> pb.Query:
    """A query the default schema accepts (its loss may still exceed a budget)."""
    kind = draw(st.sampled_from(["count", "mean", "histogram", "quantile", "paired_change",
                                 "cross_products"]))
    eps = pb.PrivacyLoss(epsilon=draw(st.sampled_from([1e-6, 0.01, 0.1, 0.5, 1.0])))
    group_by = draw(st.lists(st.sampled_from(GROUPS), max_size=2, unique=True))
    if kind == "count":
        return pb.Query(statistic=pb.STATISTIC_COUNT, table="participant", group_by=group_by,
                        loss=eps)
    if kind == "histogram":
        col = draw(st.sampled_from(_columns(_categorical, "participant")))
        return pb.Query(statistic=pb.STATISTIC_HISTOGRAM, table="participant", column=col.name,
                        loss=eps, group_by=[g for g in group_by if g != col.name])
    if kind == "cross_products":
        cols = draw(st.lists(st.sampled_from(_columns(_numeric, "participant")), min_size=2,
                             max_size=3, unique=True))
        return pb.Query(statistic=pb.STATISTIC_CROSS_PRODUCTS, table="participant",
                        terms=[pb.Term(column=c.name) for c in cols],
                        loss=pb.PrivacyLoss(rho=draw(st.sampled_from([1e-5, 1e-3]))))
    table = "participant" if kind in ("mean", "quantile") and draw(st.booleans()) \
        else "assessment"
    col = draw(st.sampled_from(_columns(_numeric, table)))
    query = pb.Query(table=table, column=col.name, loss=eps)
    if kind == "paired_change":
        query = pb.Query(statistic=pb.STATISTIC_PAIRED_CHANGE, table="assessment",
                         column=draw(st.sampled_from(_columns(_numeric, "assessment"))).name,
                         loss=eps, occasion=MONTH_12, baseline=INTAKE)
    elif kind == "mean":
        query.statistic = pb.STATISTIC_MEAN
        query.group_by.extend(group_by)
    else:
        assert col.lower is not None and col.upper is not None
        query.statistic = pb.STATISTIC_QUANTILE
        query.quantile = draw(st.sampled_from([0.1, 0.5, 0.9]))
        step = (col.upper - col.lower) / 8
        query.bin_edges.extend(col.lower + step * i for i in range(9))
    return query


def _occasion(draw: st.DrawFn) -> pb.Occasion:
    return pb.Occasion(target_month=draw(int32), window_lower=draw(int32),
                       window_upper=draw(int32))


def _bounds(draw: st.DrawFn) -> pb.Bounds:
    return pb.Bounds(lower=draw(floats_any), upper=draw(floats_any))


def _filter(draw: st.DrawFn) -> pb.Filter:
    kind = draw(st.sampled_from(["category", "range", "unset"]))
    if kind == "category":
        return pb.Filter(category=pb.CategoryFilter(
            column=draw(names), values=draw(st.lists(category_values, max_size=3))))
    if kind == "range":
        rng = pb.RangeFilter(column=draw(names))
        if draw(st.booleans()):
            rng.lower = draw(floats_any)
        if draw(st.booleans()):
            rng.upper = draw(floats_any)
        return pb.Filter(range=rng)
    return pb.Filter()


def _term(draw: st.DrawFn) -> pb.Term:
    term = pb.Term(column=draw(names), category=draw(st.one_of(st.just(""), category_values)))
    for field in ("occasion", "baseline"):
        if draw(st.booleans()):
            getattr(term, field).CopyFrom(_occasion(draw))
    if draw(st.booleans()):
        term.clip.CopyFrom(_bounds(draw))
    return term


def _mutate(draw: st.DrawFn, query: pb.Query) -> None:
    """Break (or merely change) one field of `query` in place."""
    field = draw(st.sampled_from([
        "statistic", "table", "column", "filter", "group_by", "occasion", "baseline",
        "bin_edges", "clip", "quantile", "term", "epsilon", "rho", "clear", "split",
        "clip_counts"]))
    if field == "statistic":
        query.statistic = draw(st.one_of(st.sampled_from(list(pb.Statistic.values())), int32))
    elif field in ("table", "column"):
        setattr(query, field, draw(names))
    elif field == "filter":
        query.filters.append(_filter(draw))
    elif field == "group_by":
        query.group_by.extend(draw(st.lists(names, min_size=1, max_size=3)))
    elif field in ("occasion", "baseline"):
        getattr(query, field).CopyFrom(_occasion(draw))
    elif field == "bin_edges":
        del query.bin_edges[:]
        query.bin_edges.extend(draw(st.lists(floats_any, max_size=12)))
    elif field == "clip":
        query.clip.CopyFrom(_bounds(draw))
    elif field == "quantile":
        query.quantile = draw(floats_any)
    elif field == "term":
        query.terms.append(_term(draw))
    elif field in ("epsilon", "rho"):
        setattr(query.loss, field, draw(floats_any))
    elif field == "split":
        query.split.CopyFrom(pb.MeanSplit(count=draw(floats_any), sum=draw(floats_any),
                                          sum_squares=draw(floats_any)))
    elif field == "clip_counts":
        query.clip_counts = not query.clip_counts
    else:
        query.ClearField(draw(st.sampled_from(["occasion", "baseline", "clip", "loss",
                                               "terms", "filters", "group_by"])))


@st.composite
def queries(draw: st.DrawFn) -> pb.Query:
    """A valid query with 0 to 3 of its fields broken or changed."""
    query = draw(valid_queries())
    for _ in range(draw(st.integers(0, 3))):
        _mutate(draw, query)
    return query


# How a query's idempotency key is chosen: mostly fresh; sometimes empty, too long, or one
# reused across examples (a replay when the query is the same, a conflict when not).
KEY_KINDS = ["fresh"] * 6 + ["", "x" * 201, "reused-1", "reused-2"]
