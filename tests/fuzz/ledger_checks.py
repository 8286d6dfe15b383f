"""The properties every answer to a fuzzed query must have: a refusal is one of the node's
named refusals, says which field is wrong and spends nothing; an answer spends exactly the
loss of its plan (nothing when replayed)."""

from __future__ import annotations

import itertools

import grpc

from bridgestat.node import serde
from bridgestat.node.engine import Engine
from bridgestat.node.errors import (
    BudgetExhausted,
    IdempotencyConflict,
    NodeError,
    PolicyError,
    QueryError,
)
from bridgestat.node.loss import Loss
from bridgestat.v1 import node_service_pb2 as pb

REFUSALS = (QueryError, PolicyError, BudgetExhausted, IdempotencyConflict)
REFUSAL_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ALREADY_EXISTS,
                           grpc.StatusCode.FAILED_PRECONDITION})
# What a refusal's message starts with: the query field or the idempotency key, or, for an
# exhausted budget, the budget (the dataset's, or the policy's per-period cap).
FIELD_PREFIXES = ("query.", "idempotency_key", "budget of dataset ",
                  "policy rule budget.per_period")
_counter = itertools.count()
def key_for(kind: str) -> str:
    """An idempotency key of the given kind (see strategies.KEY_KINDS)."""
    return f"fuzz-{next(_counter)}" if kind == "fresh" else kind


def spent(engine: Engine) -> Loss:
    return engine.ledger.state().spent_loss


def run_on_engine(engine: Engine, key: str, msg: pb.Query) -> str:
    """Decode and run `msg` on the engine directly; check the properties; return the outcome
    ('released', 'replayed' or the refusal's class name)."""
    before = spent(engine)
    try:
        spec = serde.query_from_pb(msg)
        answer = engine.run(key, spec, "fuzz")
    except NodeError as exc:
        assert isinstance(exc, REFUSALS), f"unexpected node error {exc!r} for {msg}"
        assert str(exc).startswith(FIELD_PREFIXES), f"refusal names no field: {exc}"
        assert spent(engine) == before, f"refused query spent budget: {exc}"
        return type(exc).__name__
    if answer.replayed:
        assert spent(engine) == before, "a replay spent budget"
        return "replayed"
    assert spent(engine) == before + engine.plan(spec).loss
    return "released"


def run_over_grpc(engine: Engine, stub: object, key: str, msg: pb.Query) -> str:
    """Send `msg` over gRPC to the node serving `engine`; check the properties; return the
    outcome ('released', 'replayed' or the status code's name)."""
    before = spent(engine)
    request = pb.RunQueryRequest(idempotency_key=key, query=msg)
    try:
        response = stub.RunQuery(request, timeout=60)  # type: ignore[attr-defined]
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        assert code in REFUSAL_CODES, f"{code.name}: {details!r} for {msg}"
        assert details.startswith(FIELD_PREFIXES), f"refusal names no field: {details!r}"
        assert spent(engine) == before, f"refused query spent budget: {details}"
        return str(code.name)
    if response.replayed:
        assert spent(engine) == before, "a replay spent budget"
        return "replayed"
    loss = engine.plan(serde.query_from_pb(response.query)).loss
    assert spent(engine) == before + loss
    assert abs(response.charged.rho - float(loss.rho)) <= 1e-12 * max(1.0, float(loss.rho))
    if loss.rho == 0:
        assert abs(response.charged.epsilon - float(loss.epsilon)) <= 1e-12
    return "released"
