"""The node's one meeting point of protobuf and domain values (bridgestat.v1 <-> dataclasses).

Queries go through the shared encoding (`bridgestat.common.wire`), the one the coordinator
uses; budgets, releases and the schema only the node encodes.
"""

from __future__ import annotations

from bridgestat.common import wire
from bridgestat.common.loss import rho_to_epsilon
from bridgestat.node.audit import Head
from bridgestat.node.engine import Answer, NodeInfo
from bridgestat.node.errors import QueryError
from bridgestat.node.ledger import BudgetState
from bridgestat.node.query import QuerySpec
from bridgestat.node.release import Release
from bridgestat.node.schema import ColumnSpec, ColumnType, Schema, TableSpec
from bridgestat.v1 import node_service_pb2 as pb

_COLUMN_TYPES = {
    ColumnType.KEY: pb.COLUMN_TYPE_KEY,
    ColumnType.INTEGER: pb.COLUMN_TYPE_INTEGER,
    ColumnType.REAL: pb.COLUMN_TYPE_REAL,
    ColumnType.BOOLEAN: pb.COLUMN_TYPE_BOOLEAN,
    ColumnType.CATEGORICAL: pb.COLUMN_TYPE_CATEGORICAL,
}


def query_from_pb(msg: pb.Query) -> QuerySpec:
    """Decode a wire query (the shared decoder) into the node's planning form; what has no
    shared value (an unknown statistic or filter kind) is refused naming the field."""
    try:
        return QuerySpec.of(wire.query_from_pb(msg))
    except wire.WireError as exc:
        raise QueryError(exc.field, exc.problem) from exc


def query_to_pb(query: QuerySpec) -> pb.Query:
    """The wire form of a planned query (echoed with its answer), by the shared encoder."""
    return wire.query_to_pb(query.shared())


def budget_to_pb(state: BudgetState, max_per_query: float) -> pb.Budget:
    """Spent and remaining as the (epsilon, delta) guarantee; spent.rho is the zCDP part."""
    delta = state.delta
    budget = pb.Budget(dataset=state.dataset,
                       total=pb.PrivacyLoss(epsilon=float(state.total), delta=delta),
                       spent=pb.PrivacyLoss(epsilon=float(state.spent),
                                            rho=float(state.spent_loss.rho), delta=delta),
                       remaining=pb.PrivacyLoss(epsilon=float(state.remaining), delta=delta),
                       max_per_query=pb.PrivacyLoss(epsilon=max_per_query, delta=delta))
    period_left = state.period_remaining
    if state.period is not None and period_left is not None:
        budget.period.CopyFrom(pb.BudgetPeriod(
            period=state.period.period, name=state.period_name,
            total=pb.PrivacyLoss(epsilon=float(state.period.epsilon), delta=delta),
            spent=pb.PrivacyLoss(epsilon=float(state.period_spent),
                                 rho=float(state.period_spent_loss.rho), delta=delta),
            remaining=pb.PrivacyLoss(epsilon=float(period_left), delta=delta)))
    return budget


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
        software_version=software_version, audit_head=head_to_pb(info.audit_head))


def head_to_pb(head: Head | None) -> pb.AuditHead | None:
    """The audit chain head for the coordinator's witness (None: the field stays unset)."""
    return None if head is None else pb.AuditHead(seq=head.seq, hash=head.hash)


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
        replayed=answer.replayed, node_id=answer.node_id, pooled_only=answer.pooled_only,
        audit_head=head_to_pb(answer.audit_head))


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
