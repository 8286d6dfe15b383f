"""Malformed protobuf bytes sent straight to the node's RunQuery method.

Bytes that do not parse are refused by grpc's own deserializer (INTERNAL, "Exception
deserializing request!") before the node sees them; bytes that happen to parse are a query
like any other. Either way nothing unaccounted is spent and the node keeps answering.
"""

from __future__ import annotations

import grpc
from hypothesis import given
from hypothesis import strategies as st

from bridgestat.node import serde
from bridgestat.v1 import node_service_pb2 as pb

from .conftest import ServedNode
from .ledger_checks import REFUSAL_CODES, key_for, run_over_grpc, spent
from .strategies import fuzz_settings

METHOD = "/bridgestat.v1.NodeService/RunQuery"
GRPC_DESERIALIZE_FAILURE = "Exception deserializing request!"
EXAMPLES = 1000
VALID = pb.RunQueryRequest(idempotency_key="bytes-template", query=pb.Query(
    statistic=pb.STATISTIC_MEAN, table="assessment", column="bridge_total",
    loss=pb.PrivacyLoss(epsilon=0.1), group_by=["arm"],
    filters=[pb.Filter(range=pb.RangeFilter(column="months_since_intake", lower=0))])
).SerializeToString()


@st.composite
def mutated_request(draw: st.DrawFn) -> bytes:
    """A valid request's bytes with a few bytes flipped, cut, inserted or deleted."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at]
    return bytes(data)


def test_malformed_bytes_are_refused_without_harm(served: ServedNode) -> None:
    call = served.channel.unary_unary(METHOD, request_serializer=None,
                                      response_deserializer=None)
    engine = served.engine
    codes: set[str] = set()

    @fuzz_settings(EXAMPLES)
    @given(st.one_of(st.binary(max_size=300), mutated_request()))
    def check(data: bytes) -> None:
        before = spent(engine)
        try:
            raw = call(data, timeout=30)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            codes.add(code.name)
            if code is grpc.StatusCode.INTERNAL:
                assert details == GRPC_DESERIALIZE_FAILURE, details
            else:
                assert code in REFUSAL_CODES, (code, details)
            assert spent(engine) == before, (code, details)
            return
        response = pb.RunQueryResponse.FromString(raw)
        codes.add("OK")
        if not response.replayed:
            loss = engine.plan(serde.query_from_pb(response.query)).loss
            assert spent(engine) == before + loss

    check()
    assert "INTERNAL" in codes and "INVALID_ARGUMENT" in codes, codes
    # The node survived: a valid query is still answered, and spends its loss.
    query = pb.RunQueryRequest.FromString(VALID).query
    assert run_over_grpc(engine, served.stub, key_for("fresh"), query) == "released"
