"""Fuzzed query messages: straight to the engine (most examples) and over real gRPC.

Every query is answered or refused with a named refusal whose message starts with the field
at fault; a refused query spends nothing, an answered one exactly its plan's loss.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from bridgestat.node.engine import Engine
from bridgestat.v1 import node_service_pb2 as pb

from .conftest import ServedNode
from .ledger_checks import key_for, run_on_engine, run_over_grpc
from .strategies import KEY_KINDS, fuzz_settings, queries

ENGINE_EXAMPLES = 1500
POOR_EXAMPLES = 200
GRPC_EXAMPLES = 300


def test_engine_refuses_or_answers_every_query(engine: Engine) -> None:
    outcomes: Counter[str] = Counter()

    @fuzz_settings(ENGINE_EXAMPLES)
    @given(queries(), st.sampled_from(KEY_KINDS))
    def check(msg: pb.Query, key_kind: str) -> None:
        outcomes[run_on_engine(engine, key_for(key_kind), msg)] += 1

    check()
    assert outcomes["released"] > ENGINE_EXAMPLES // 20, outcomes  # the success path is hit
    assert outcomes["QueryError"] > ENGINE_EXAMPLES // 10, outcomes


def test_exhausted_budget_refuses_and_spends_nothing(poor_engine: Engine) -> None:
    outcomes: Counter[str] = Counter()

    @fuzz_settings(POOR_EXAMPLES)
    @given(queries(), st.sampled_from(KEY_KINDS))
    def check(msg: pb.Query, key_kind: str) -> None:
        outcomes[run_on_engine(poor_engine, key_for(key_kind), msg)] += 1

    check()
    assert outcomes["BudgetExhausted"] > 0, outcomes
    assert poor_engine.ledger.state().spent <= poor_engine.ledger.total


def test_node_over_grpc_refuses_or_answers_every_query(served: ServedNode) -> None:
    outcomes: Counter[str] = Counter()

    @fuzz_settings(GRPC_EXAMPLES)
    @given(queries(), st.sampled_from(KEY_KINDS))
    def check(msg: pb.Query, key_kind: str) -> None:
        outcomes[run_over_grpc(served.engine, served.stub, key_for(key_kind), msg)] += 1

    check()
    assert outcomes["released"] > 0 and outcomes["INVALID_ARGUMENT"] > 0, outcomes
