"""SecureAggregationService over gRPC: a thin servicer over `node/secure.py`.

The caller is the certificate's common name (the allow-list interceptor has already refused
others). Errors map to statuses as NodeService's do (`service.status_of`); a protocol abort
(`SessionError`: a bad signature, an inconsistent survivor set, a request for both shares of
one member, an unknown session) is FAILED_PRECONDITION, and malformed bytes from the
coordinator are INVALID_ARGUMENT. Nothing of the member's data is in any error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import grpc

from bridgestat.common import secagg_wire as wire
from bridgestat.common.secagg import SecAggError
from bridgestat.node import serde
from bridgestat.node.secure import Layout, SecureNode
from bridgestat.node.service import Status, status_of
from bridgestat.node.tls import caller_identity
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import secure_aggregation_pb2 as spb
from bridgestat.v1 import secure_aggregation_pb2_grpc as spb_grpc

log = logging.getLogger("bridgestat.node.secure")
SERVICE_NAME = spb.DESCRIPTOR.services_by_name["SecureAggregationService"].full_name
R = TypeVar("R")


def layout_to_pb(layout: Layout) -> spb.SecureLayout:
    n = layout.noise
    return spb.SecureLayout(
        values=[spb.SecureValue(group=[pb.GroupValue(column=c, value=v) for c, v in e.group],
                                name=e.name, unit=e.unit) for e in layout.entries],
        center=layout.center, lower=layout.lower, upper=layout.upper,
        sigma_share=n.sigma_share, delta_l2=n.delta_l2, rho_network=n.rho_network,
        rho_alone=n.rho_alone, honest=n.honest)


class SecureServicer(spb_grpc.SecureAggregationServiceServicer):
    """The five rounds, each one call."""

    def __init__(self, secure: SecureNode) -> None:
        self.secure = secure

    def Advertise(self, request: spb.AdvertiseRequest,
                  context: grpc.ServicerContext) -> spb.AdvertiseResponse:
        caller = caller_identity(context)

        def run() -> spb.AdvertiseResponse:
            try:
                query = serde.query_from_pb(request.query)
            except Exception as exc:
                self.secure.engine.refused(request.idempotency_key, None, exc, caller)
                raise
            advert, layout = self.secure.advertise(
                request.idempotency_key, query, request.session, tuple(request.members),
                request.threshold, request.colluding, caller)
            log.info("secure session %s (%s) opened by %s", request.session,
                     query.statistic.value, caller)
            return spb.AdvertiseResponse(advertisement=wire.advert_to_pb(advert),
                                         layout=layout_to_pb(layout))
        return _answer(context, run)

    def ShareKeys(self, request: spb.ShareKeysRequest,
                  context: grpc.ServicerContext) -> spb.ShareKeysResponse:
        def run() -> spb.ShareKeysResponse:
            adverts = [wire.advert_from_pb(a) for a in request.advertisements]
            shares = self.secure.share_keys(request.session, adverts)
            return spb.ShareKeysResponse(shares=wire.shares_to_pb(shares))
        return _answer(context, run)

    def MaskedInput(self, request: spb.MaskedInputRequest,
                    context: grpc.ServicerContext) -> spb.MaskedInputResponse:
        def run() -> spb.MaskedInputResponse:
            masked, replayed = self.secure.masked_input(request.session,
                                                        wire.shares_from_pb(request.shares))
            engine = self.secure.engine
            return spb.MaskedInputResponse(
                member=masked.member, vector=masked.vector, replayed=replayed,
                budget=serde.budget_to_pb(engine.ledger.state(),
                                          engine.policy.max_epsilon_per_query))
        return _answer(context, run)

    def Consistency(self, request: spb.ConsistencyRequest,
                    context: grpc.ServicerContext) -> spb.ConsistencyResponse:
        def run() -> spb.ConsistencyResponse:
            signature = self.secure.consistency(request.session, list(request.survivors))
            return spb.ConsistencyResponse(signature=wire.signature_to_pb(signature))
        return _answer(context, run)

    def Unmask(self, request: spb.UnmaskRequest,
               context: grpc.ServicerContext) -> spb.UnmaskResponse:
        def run() -> spb.UnmaskResponse:
            response = self.secure.unmask(request.session, wire.unmask_request_from_pb(request))
            return wire.unmask_response_to_pb(response)
        return _answer(context, run)


def _answer(context: grpc.ServicerContext, run: Callable[[], R]) -> R:
    """The response, or abort with the status: protocol aborts FAILED_PRECONDITION,
    malformed messages INVALID_ARGUMENT, the node's errors as NodeService maps them."""
    try:
        return run()
    except SecAggError as exc:
        status = Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except Exception as exc:  # noqa: BLE001  # every error becomes a gRPC status, in one place
        status = status_of(exc)
    context.abort(status.code, status.message)
    raise AssertionError("unreachable")  # context.abort always raises
