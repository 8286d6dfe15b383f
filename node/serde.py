"""The node's one meeting point of protobuf and domain values (bridgestat.v1 <-> dataclasses)."""

from __future__ import annotations

from bridgestat.node.engine import Answer, NodeInfo
from bridgestat.node.errors import QueryError
from bridgestat.node.ledger import BudgetState
from bridgestat.node.loss import rho_to_epsilon
from bridgestat.node.query import (CategoryFilter, Filter, Occasion, QuerySpec, RangeFilter,
                                   Statistic, Term)
from bridgestat.node.release import Release
from bridgestat.node.schema import ColumnSpec, ColumnType, Schema, TableSpec
from bridgestat.v1 import node_service_pb2 as pb

_STATISTICS = {
    pb.STATISTIC_UNSPECIFIED: Statistic.UNSPECIFIED,
    pb.STATISTIC_COUNT: Statistic.COUNT,
    pb.STATISTIC_MEAN: Statistic.MEAN,
    pb.STATISTIC_HISTOGRAM: Statistic.HISTOGRAM,
    pb.STATISTIC_PAIRED_CHANGE: Statistic.PAIRED_CHANGE,
    pb.STATISTIC_QUANTILE: Statistic.QUANTILE,
    pb.STATISTIC_CROSS_PRODUCTS: Statistic.CROSS_PRODUCTS,
}
_STATISTICS_PB = {v: k for k, v in _STATISTICS.items()}
_COLUMN_TYPES = {
    ColumnType.KEY: pb.COLUMN_TYPE_KEY,
    ColumnType.INTEGER: pb.COLUMN_TYPE_INTEGER,
    ColumnType.REAL: pb.COLUMN_TYPE_REAL,
    ColumnType.BOOLEAN: pb.COLUMN_TYPE_BOOLEAN,
    ColumnType.CATEGORICAL: pb.COLUMN_TYPE_CATEGORICAL,
}


def query_from_pb(msg: pb.Query) -> QuerySpec:
    """Decode a wire query; unknown enum values are refused naming the field."""
    if msg.statistic not in _STATISTICS:
        raise QueryError("query.statistic", f"unknown statistic {msg.statistic}")
    return QuerySpec(
        statistic=_STATISTICS[msg.statistic],
        table=msg.table,
        column=msg.column,
        epsilon=msg.loss.epsilon,
        filters=tuple(_filter_from_pb(f, i) for i, f in enumerate(msg.filters)),
        group_by=tuple(msg.group_by),
        occasion=_occasion(msg.occasion) if msg.HasField("occasion") else None,
        baseline=_occasion(msg.baseline) if msg.HasField("baseline") else None,
        bin_edges=tuple(msg.bin_edges),
        clip=(msg.clip.lower, msg.clip.upper) if msg.HasField("clip") else None,
        rho=msg.loss.rho,
        quantile=msg.quantile,
        terms=tuple(_term_from_pb(t) for t in msg.terms),
    )


def _term_from_pb(msg: pb.Term) -> Term:
    return Term(column=msg.column,
                occasion=_occasion(msg.occasion) if msg.HasField("occasion") else None,
                baseline=_occasion(msg.baseline) if msg.HasField("baseline") else None,
                category=msg.category,
                clip=(msg.clip.lower, msg.clip.upper) if msg.HasField("clip") else None)


def _occasion(msg: pb.Occasion) -> Occasion:
    return Occasion(msg.target_month, msg.window_lower, msg.window_upper)


def _filter_from_pb(msg: pb.Filter, index: int) -> Filter:
    kind = msg.WhichOneof("kind")
    if kind == "category":
        return CategoryFilter(msg.category.column, tuple(msg.category.values))
    if kind == "range":
        rng = msg.range
        return RangeFilter(rng.column, rng.lower if rng.HasField("lower") else None,
                           rng.upper if rng.HasField("upper") else None)
    raise QueryError(f"query.filters[{index}]", "must be a category or a range filter")


def query_to_pb(query: QuerySpec) -> pb.Query:
    msg = pb.Query(statistic=_STATISTICS_PB[query.statistic], table=query.table,
                   column=query.column, group_by=query.group_by,
                   loss=pb.PrivacyLoss(epsilon=query.epsilon, rho=query.rho),
                   bin_edges=query.bin_edges, quantile=query.quantile)
    for term in query.terms:
        msg.terms.add(column=term.column, category=term.category)
        _set_occasions(msg.terms[-1], term.occasion, term.baseline)
        if term.clip is not None:
            msg.terms[-1].clip.CopyFrom(pb.Bounds(lower=term.clip[0], upper=term.clip[1]))
    for flt in query.filters:
        if isinstance(flt, CategoryFilter):
            msg.filters.add(category=pb.CategoryFilter(column=flt.column, values=flt.values))
        else:
            msg.filters.add(range=pb.RangeFilter(column=flt.column, lower=flt.lower,
                                                 upper=flt.upper))
    if query.clip is not None:
        msg.clip.CopyFrom(pb.Bounds(lower=query.clip[0], upper=query.clip[1]))
    _set_occasions(msg, query.occasion, query.baseline)
    return msg


def _set_occasions(msg: pb.Query | pb.Term, occasion: Occasion | None,
                   baseline: Occasion | None) -> None:
    for name, occ in (("occasion", occasion), ("baseline", baseline)):
        if occ is not None:
            getattr(msg, name).CopyFrom(pb.Occasion(target_month=occ.target_month,
                                                    window_lower=occ.window_lower,
                                                    window_upper=occ.window_upper))


def budget_to_pb(state: BudgetState, max_per_query: float) -> pb.Budget:
    """Spent and remaining as the (epsilon, delta) guarantee; spent.rho is the zCDP part."""
    delta = state.delta
    return pb.Budget(dataset=state.dataset,
                     total=pb.PrivacyLoss(epsilon=float(state.total), delta=delta),
                     spent=pb.PrivacyLoss(epsilon=float(state.spent),
                                          rho=float(state.spent_loss.rho), delta=delta),
                     remaining=pb.PrivacyLoss(epsilon=float(state.remaining), delta=delta),
                     max_per_query=pb.PrivacyLoss(epsilon=max_per_query, delta=delta))


def charged_to_pb(release: Release, delta: float) -> pb.PrivacyLoss:
    """A release's loss: its epsilon, or for rho its (epsilon, delta) equivalent too."""
    if not release.charged_rho:
        return pb.PrivacyLoss(epsilon=release.charged)
    epsilon = release.charged + rho_to_epsilon(release.charged_rho, delta)
    return pb.PrivacyLoss(epsilon=epsilon, rho=release.charged_rho, delta=delta)


def info_to_pb(info: NodeInfo, software_version: str) -> pb.GetNodeInfoResponse:
    return pb.GetNodeInfoResponse(
        node_id=info.node_id, schema=schema_to_pb(info.schema),
        budget=budget_to_pb(info.budget, info.policy.max_epsilon_per_query),
        software_version=software_version)


def schema_to_pb(schema: Schema) -> pb.Schema:
    return pb.Schema(name=schema.name, version=schema.version,
                     tables=[_table_to_pb(t) for t in schema.tables])


def _table_to_pb(table: TableSpec) -> pb.Table:
    return pb.Table(name=table.name, columns=[_column_to_pb(c) for c in table.columns],
                    max_rows_per_participant=table.max_rows_per_participant,
                    has_occasions=table.has_occasions,
                    month_column=table.month_column or "")


def _column_to_pb(column: ColumnSpec) -> pb.Column:
    return pb.Column(name=column.name, type=_COLUMN_TYPES[column.type],
                     lower=column.lower or 0.0, upper=column.upper or 0.0,
                     categories=column.categories, description=column.description,
                     derived=column.derived is not None)


def answer_to_pb(answer: Answer, max_per_query: float) -> pb.RunQueryResponse:
    return pb.RunQueryResponse(
        idempotency_key=answer.key, query=query_to_pb(answer.query),
        release=release_to_pb(answer.release),
        charged=charged_to_pb(answer.release, answer.budget.delta),
        budget=budget_to_pb(answer.budget, max_per_query),
        replayed=answer.replayed, node_id=answer.node_id, pooled_only=answer.pooled_only)


def release_to_pb(release: Release) -> pb.Release:
    return pb.Release(
        cells=[pb.Cell(group=[pb.GroupValue(column=c, value=v) for c, v in cell.group],
                       values=[pb.NoisyValue(name=v.name, value=v.value,
                                             noise_scale=v.noise_scale,
                                             noise_variance=v.noise_variance,
                                             epsilon=v.epsilon, rho=v.rho)
                               for v in cell.values],
                       suppressed=cell.suppressed)
               for cell in release.cells],
        center=release.center, lower=release.lower, upper=release.upper,
        mechanism=release.mechanism,
        term_bounds=[pb.Bounds(lower=lo, upper=hi) for lo, hi in release.term_bounds],
        min_group_size=release.min_group_size)
