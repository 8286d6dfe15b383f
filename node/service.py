"""The node's gRPC service: a thin servicer over the engine, and the server around it.

The calls themselves are answered here once for both transports: `run_query` and `node_info`
for the NodeService server, and `connect.answer` for requests relayed by the coordinator in
connect mode. The transports differ only at the edges: how the caller's identity is
obtained (its certificate's common name, or the caller the coordinator names) and how a
`Status` goes back (an aborted call, or an error in the stream's reply).

The one table `STATUS` maps the node's exceptions to gRPC status codes; anything else is an
internal error, logged here and answered without details. Every query is recorded in the
metrics and the log (statistic, outcome, caller, duration; never data values), and one whose
query cannot even be decoded is audited as refused too.

The server also offers grpc.health.v1 and server reflection (v1 and v1alpha); with TLS it
requires a client certificate from the network CA and refuses callers not on the allow-list,
and probe identities outside health and reflection (`node/tls.py`). `refuse_caller` audits,
counts (by reason) and logs every such refusal, for both transports: every call the node
refuses, for who made it or for what it asked, has its audit entry and its metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridgestat.node import serde
from bridgestat.node.audit import refusal_reason
from bridgestat.node.engine import MAX_KEY_LENGTH, Answer, Engine
from bridgestat.node.errors import (
    BudgetExhausted,
    IdempotencyConflict,
    NodeError,
    PolicyError,
    QueryError,
    QueryInProgress,
)
from bridgestat.node.metrics import NodeMetrics
from bridgestat.node.query import QuerySpec
from bridgestat.node.reflection import enable_reflection
from bridgestat.node.tls import AllowList, CallerRefused, ServerTls, caller_identity

if TYPE_CHECKING:
    from bridgestat.node.tls import _Interceptor
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

R = TypeVar("R")  # a call's response message


@dataclass(frozen=True)
class Status:
    """A call's answer when it is not a response: the gRPC status code and its message."""

    code: grpc.StatusCode
    message: str


def software_version() -> str:
    try:
        return version("bridgestat")
    except PackageNotFoundError:
        return "unknown"


def status_of(exc: Exception) -> Status:
    """The gRPC status answering `exc`; unexpected errors are logged here."""
    if isinstance(exc, NodeError):
        code = next((c for t, c in STATUS.items() if isinstance(exc, t)),
                    grpc.StatusCode.FAILED_PRECONDITION)
        return Status(code, str(exc))
    log.error("internal error while answering a query", exc_info=exc)
    return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def statistic_label(value: int) -> str:
    """'mean' for STATISTIC_MEAN: a metrics label that never fails on unknown values."""
    try:
        name = str(pb.Statistic.Name(value))
    except ValueError:
        return "unknown"
    return name.removeprefix("STATISTIC_").lower()


# -- the calls, for both transports --------------------------------------------------------

def node_info(engine: Engine, software: str) -> pb.GetNodeInfoResponse | Status:
    """GetNodeInfo: the node's public description, or the status of its failure."""
    try:
        return serde.info_to_pb(engine.info(), software)
    except Exception as exc:  # noqa: BLE001  # every error becomes a gRPC status, in one place
        return status_of(exc)


def run_query(engine: Engine, metrics: NodeMetrics, request: pb.RunQueryRequest,
              caller: str) -> pb.RunQueryResponse | Status:
    """RunQuery for `caller`: decode the query, run it on the engine (which plans, charges
    and audits it), record it in the metrics and the log; a refusal or failure is returned
    as its Status, never raised."""
    started = time.perf_counter()
    statistic = statistic_label(request.query.statistic)
    try:
        answer = engine.run(request.idempotency_key, _decode_query(engine, request, caller),
                            caller)
        response = serde.answer_to_pb(answer, engine.policy.max_epsilon_per_query)
    except Exception as exc:  # noqa: BLE001  # every error becomes a gRPC status, in one place
        status = status_of(exc)
        _record_refused(metrics, request, statistic, caller, started, status,
                        refusal_reason(exc))
        return status
    _record_answered(metrics, answer, statistic, caller, started)
    return response


def refuse_caller(engine: Engine, metrics: NodeMetrics, refused: CallerRefused,
                  key: str = "", via: str = "") -> Status:
    """A call refused for who made it (not on tls.allow, or a probe identity beyond health
    and reflection), before anything ran: audited (caller, method, reason; nothing
    charged), counted by reason, logged (`via` says how the call came, if not directly),
    and answered PERMISSION_DENIED."""
    key = key[:MAX_KEY_LENGTH]  # the caller's text: an audit entry stays small
    metrics.caller_refused(refused.caller, refused.reason)
    log.warning("refused caller %s%s (%s): %s", refused.caller, via, refused.reason, refused,
                extra={"caller": refused.caller, "outcome": "PERMISSION_DENIED",
                       "reason": str(refused), "refusal": refused.reason,
                       "method": refused.method, "key": key})
    try:
        engine.refused(key, None, refused, refused.caller)
    except NodeError as exc:  # the call is refused anyway; the failed write must be seen
        log.error("cannot audit the refusal of caller %s: %s", refused.caller, exc,
                  extra={"caller": refused.caller, "refusal": refused.reason})
    return Status(grpc.StatusCode.PERMISSION_DENIED, refused.public)


def _decode_query(engine: Engine, request: pb.RunQueryRequest, caller: str) -> QuerySpec:
    """The request's query as a QuerySpec. One that cannot be decoded (an unknown statistic
    or filter kind) never reaches `Engine.run`, so it is audited as refused here: every
    request the node receives has its audit entry, whatever the transport."""
    try:
        return serde.query_from_pb(request.query)
    except Exception as exc:
        engine.refused(request.idempotency_key, None, exc, caller)
        raise


def _record_answered(metrics: NodeMetrics, answer: Answer, statistic: str, caller: str,
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


def _record_refused(metrics: NodeMetrics, request: pb.RunQueryRequest, statistic: str,
                    caller: str, started: float, status: Status, reason: str) -> None:
    """Metrics and one log line for a refused (or failed) query."""
    seconds = time.perf_counter() - started
    code = status.code.name
    metrics.refused(statistic, code, seconds, reason)
    log.info("query %s (%s) by %s refused: %s: %s", request.idempotency_key, statistic,
             caller, code, status.message,
             extra={"key": request.idempotency_key, "statistic": statistic,
                    "table": request.query.table, "outcome": code, "caller": caller,
                    "duration_ms": round(seconds * 1000, 3), "reason": status.message,
                    "refusal": reason})


# -- the NodeService server ----------------------------------------------------------------

class NodeServicer(pb_grpc.NodeServiceServicer):
    """NodeService over gRPC: the caller is the certificate's common name, and a Status
    aborts the call."""

    def __init__(self, engine: Engine, metrics: NodeMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or NodeMetrics()
        self.version = software_version()

    def GetNodeInfo(self, request: pb.GetNodeInfoRequest,
                    context: grpc.ServicerContext) -> pb.GetNodeInfoResponse:
        return _respond(context, node_info(self.engine, self.version))

    def RunQuery(self, request: pb.RunQueryRequest,
                 context: grpc.ServicerContext) -> pb.RunQueryResponse:
        return _respond(context, run_query(self.engine, self.metrics, request,
                                           caller_identity(context)))


def _respond(context: grpc.ServicerContext, result: R | Status) -> R:
    """The response, or abort the call with the status (abort raises)."""
    if not isinstance(result, Status):
        return result
    context.abort(result.code, result.message)
    raise AssertionError("unreachable")  # context.abort always raises


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
    """A node's gRPC server (not started): NodeService, grpc.health.v1 and reflection (v1
    and v1alpha), over mutual TLS when `tls` is given, else plain text. Raises OSError if
    it cannot listen."""
    metrics = metrics or NodeMetrics(engine.ledger.state)
    interceptors: list[_Interceptor] = (
        [] if tls is None else [AllowList(tls.allow, _on_refusal(engine, metrics), tls.probe)])
    # No SO_REUSEPORT: a second node on an address in use must fail to start, not silently
    # split the coordinator's connections with the first.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_NodeServiceServicer_to_server(NodeServicer(engine, metrics), server)
    secure_name = _add_secure_service(engine, tls, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(tuple(n for n in (SERVICE_NAME, secure_name, health.SERVICE_NAME) if n),
                      server)
    port = (server.add_insecure_port(address) if tls is None
            else server.add_secure_port(address, tls.credentials()))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    for name in ("", SERVICE_NAME, secure_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return NodeServer(server, port, health_servicer, metrics)


def _add_secure_service(engine: Engine, tls: ServerTls | None, server: grpc.Server) -> str:
    """Register SecureAggregationService (issue 13); its name. The same secure side as the
    connect-mode stream's (`secure_node`): it signs with the node's TLS key as last
    reloaded (SIGHUP); without TLS it refuses every session (no identity)."""
    from bridgestat.node.secure_service import SERVICE_NAME as SECURE_NAME
    from bridgestat.node.secure_service import SecureServicer, secure_node
    from bridgestat.v1 import secure_aggregation_pb2_grpc as spb_grpc

    spb_grpc.add_SecureAggregationServiceServicer_to_server(
        SecureServicer(secure_node(engine, tls)), server)
    return SECURE_NAME


def build_server(engine: Engine, address: str, workers: int = 8, *,
                 tls: ServerTls | None = None) -> tuple[grpc.Server, int]:
    """A gRPC server with the node service, health and reflection; returns (server, port)."""
    node = build_node_server(engine, address, tls=tls, workers=workers)
    return node.server, node.port


def _on_refusal(engine: Engine, metrics: NodeMetrics) -> Callable[[CallerRefused, str], None]:
    """The allow-list's callback: the interceptor aborts the call itself."""
    def refused(refusal: CallerRefused, key: str) -> None:
        refuse_caller(engine, metrics, refusal, key)
    return refused
