"""The node's gRPC service: a thin servicer over the engine, and the server around it.

The one table `STATUS` maps the node's exceptions to gRPC status codes; anything else is an
internal error, logged here and answered without details. The servicer passes the caller's
authenticated identity (its certificate's common name) to the engine, and records every
query in the metrics and the log (statistic, outcome, caller, duration; never data values).
A request whose query cannot even be decoded is audited as refused too (`decode_query`).
Connect mode (`node/connect.py`) uses the same decoding and recording.

The server also offers grpc.health.v1 and server reflection; with TLS it requires a client
certificate from the network CA and refuses callers not on the allow-list (`node/tls.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bridgestat.node import serde
from bridgestat.node.engine import Answer, Engine
from bridgestat.node.errors import (BudgetExhausted, IdempotencyConflict, NodeError,
                                    PolicyError, QueryError, QueryInProgress)
from bridgestat.node.metrics import NodeMetrics
from bridgestat.node.query import QuerySpec
from bridgestat.node.tls import AllowList, ServerTls, caller_identity
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
INTERNAL_MESSAGE = "internal error in the node; see its log"

T = TypeVar("T")


def software_version() -> str:
    try:
        return version("bridgestat")
    except PackageNotFoundError:
        return "unknown"


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message answering `exc`; unexpected errors are logged here."""
    if isinstance(exc, NodeError):
        code = next((c for t, c in STATUS.items() if isinstance(exc, t)),
                    grpc.StatusCode.FAILED_PRECONDITION)
        return code, str(exc)
    log.error("internal error while answering a query", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def _guard(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    """Run `call`, turning node errors into gRPC statuses (abort raises)."""
    try:
        return call()
    except Exception as exc:
        context.abort(*status_of(exc))
    raise AssertionError("unreachable")  # context.abort always raises


def statistic_label(value: int) -> str:
    """'mean' for STATISTIC_MEAN: a metrics label that never fails on unknown values."""
    try:
        name = str(pb.Statistic.Name(value))
    except ValueError:
        return "unknown"
    return name.removeprefix("STATISTIC_").lower()


def decode_query(engine: Engine, request: pb.RunQueryRequest, caller: str) -> QuerySpec:
    """The request's query as a QuerySpec. One that cannot be decoded (an unknown statistic
    or filter kind) never reaches `Engine.run`, so it is audited as refused here: every
    request the node receives has its audit entry, whatever the transport."""
    try:
        return serde.query_from_pb(request.query)
    except Exception as exc:
        engine.refused(request.idempotency_key, None, exc, caller)
        raise


def record_answered(metrics: NodeMetrics, answer: Answer, statistic: str, caller: str,
                    started: float) -> None:
    """Metrics and one log line for an answered query (released or replayed)."""
    seconds = time.perf_counter() - started
    release = answer.release
    metrics.answered(statistic, seconds, release.charged, release.charged_rho, answer.replayed)
    outcome = "replayed" if answer.replayed else "ok"
    log.info("query %s (%s on %s) by %s: %s, charged epsilon %.6g rho %.6g",
             answer.key, statistic, answer.query.table, caller, outcome, release.charged,
             release.charged_rho,
             extra={"key": answer.key, "statistic": statistic, "table": answer.query.table,
                    "outcome": outcome, "caller": caller,
                    "duration_ms": round(seconds * 1000, 3),
                    "epsilon": 0.0 if answer.replayed else release.charged,
                    "rho": 0.0 if answer.replayed else release.charged_rho})


def record_refused(metrics: NodeMetrics, request: pb.RunQueryRequest, statistic: str,
                   caller: str, started: float, code: grpc.StatusCode, message: str) -> None:
    """Metrics and one log line for a refused (or failed) query."""
    seconds = time.perf_counter() - started
    metrics.refused(statistic, code.name, seconds)
    log.info("query %s (%s) by %s refused: %s: %s", request.idempotency_key, statistic,
             caller, code.name, message,
             extra={"key": request.idempotency_key, "statistic": statistic,
                    "table": request.query.table, "outcome": code.name, "caller": caller,
                    "duration_ms": round(seconds * 1000, 3), "reason": message})


class NodeServicer(pb_grpc.NodeServiceServicer):
    def __init__(self, engine: Engine, metrics: NodeMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or NodeMetrics()
        self.version = software_version()

    def GetNodeInfo(self, request: pb.GetNodeInfoRequest,
                    context: grpc.ServicerContext) -> pb.GetNodeInfoResponse:
        return _guard(context, lambda: serde.info_to_pb(self.engine.info(), self.version))

    def RunQuery(self, request: pb.RunQueryRequest,
                 context: grpc.ServicerContext) -> pb.RunQueryResponse:
        started = time.perf_counter()
        caller = caller_identity(context)
        statistic = statistic_label(request.query.statistic)
        try:
            answer = self.engine.run(request.idempotency_key,
                                     decode_query(self.engine, request, caller), caller)
            response = serde.answer_to_pb(answer, self.engine.policy.max_epsilon_per_query)
        except Exception as exc:
            code, message = status_of(exc)
            record_refused(self.metrics, request, statistic, caller, started, code, message)
            context.abort(code, message)
        record_answered(self.metrics, answer, statistic, caller, started)
        return response


@dataclass
class NodeServer:
    """The running parts of a node's server: gRPC server, health service, metrics."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    metrics: NodeMetrics

    def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, refuse new calls, and let in-flight calls finish for up to
        `grace` seconds (None: cancel them now)."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def build_node_server(engine: Engine, address: str, *, tls: ServerTls | None = None,
                      metrics: NodeMetrics | None = None, workers: int = 8) -> NodeServer:
    """A node's gRPC server (not started): NodeService, grpc.health.v1 and reflection, over
    mutual TLS when `tls` is given, else plain text. Raises OSError if it cannot listen."""
    metrics = metrics or NodeMetrics(engine.ledger.state)
    interceptors = [] if tls is None else [AllowList(tls.allow, _refused_caller(metrics))]
    # No SO_REUSEPORT: a second node on an address in use must fail to start, not silently
    # split the coordinator's connections with the first.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_NodeServiceServicer_to_server(NodeServicer(engine, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = (server.add_insecure_port(address) if tls is None
            else server.add_secure_port(address, tls.credentials()))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return NodeServer(server, port, health_servicer, metrics)


def build_server(engine: Engine, address: str, workers: int = 8, *,
                 tls: ServerTls | None = None) -> tuple[grpc.Server, int]:
    """A gRPC server with the node service, health and reflection; returns (server, port)."""
    node = build_node_server(engine, address, tls=tls, workers=workers)
    return node.server, node.port


def _refused_caller(metrics: NodeMetrics) -> Callable[[str], None]:
    def refused(caller: str) -> None:
        metrics.caller_refused(caller)
        log.warning("refused caller %s: not on the allow-list (tls.allow)", caller,
                    extra={"caller": caller, "outcome": "PERMISSION_DENIED"})
    return refused
