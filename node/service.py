"""The node's gRPC service: a thin servicer over the engine, and the server around it.

The one table `STATUS` maps the node's exceptions to gRPC status codes; anything else is an
internal error, logged here and answered without details.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridgestat.node import serde
from bridgestat.node.engine import Engine
from bridgestat.node.errors import (BudgetExhausted, IdempotencyConflict, NodeError,
                                    PolicyError, QueryError, QueryInProgress)
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

log = logging.getLogger("bridgestat.node")

STATUS: dict[type[NodeError], grpc.StatusCode] = {
    QueryError: grpc.StatusCode.INVALID_ARGUMENT,
    PolicyError: grpc.StatusCode.PERMISSION_DENIED,
    BudgetExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    IdempotencyConflict: grpc.StatusCode.ALREADY_EXISTS,
    QueryInProgress: grpc.StatusCode.ABORTED,
}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NodeService"].full_name

T = TypeVar("T")


def software_version() -> str:
    try:
        return version("bridgestat")
    except PackageNotFoundError:
        return "unknown"


def _guard(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    """Run `call`, turning node errors into gRPC statuses (abort raises)."""
    try:
        return call()
    except NodeError as exc:
        code = next((c for t, c in STATUS.items() if isinstance(exc, t)),
                    grpc.StatusCode.FAILED_PRECONDITION)
        context.abort(code, str(exc))
    except Exception:
        log.exception("internal error while answering a query")
        context.abort(grpc.StatusCode.INTERNAL, "internal error in the node; see its log")
    raise AssertionError("unreachable")  # context.abort always raises


class NodeServicer(pb_grpc.NodeServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.version = software_version()

    def GetNodeInfo(self, request: pb.GetNodeInfoRequest,
                    context: grpc.ServicerContext) -> pb.GetNodeInfoResponse:
        return _guard(context, lambda: serde.info_to_pb(self.engine.info(), self.version))

    def RunQuery(self, request: pb.RunQueryRequest,
                 context: grpc.ServicerContext) -> pb.RunQueryResponse:
        def run() -> pb.RunQueryResponse:
            query = serde.query_from_pb(request.query)
            answer = self.engine.run(request.idempotency_key, query)
            log.info("query %s on %s: charged %.6g%s", request.idempotency_key, query.table,
                     answer.release.charged, " (replayed)" if answer.replayed else "")
            return serde.answer_to_pb(answer, self.engine.policy.max_epsilon_per_query)
        return _guard(context, run)


def build_server(engine: Engine, address: str, workers: int = 8) -> tuple[grpc.Server, int]:
    """A gRPC server with the node service and grpc.health.v1; returns (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pb_grpc.add_NodeServiceServicer_to_server(NodeServicer(engine), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port
