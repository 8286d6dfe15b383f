"""SecureAggregationService over gRPC: a thin servicer over `node/secure.py`.

`answer` answers one round's request for a caller, whether it came to the node's own
server (the caller is the certificate's common name; the allow-list interceptor has already
refused others) or through the hub on the node's outbound stream (`node/connect.py`: the
caller the hub relays, checked against the same allow-list there). Errors map to statuses
as NodeService's do (`service.status_of`); a protocol abort
(`SessionError`: a bad signature, an inconsistent survivor set, a request for both shares of
one member, an unknown session) is FAILED_PRECONDITION, and malformed bytes from the
coordinator are INVALID_ARGUMENT. Nothing of the member's data is in any error.

Transport. A coordinator opens one `Session` stream per session and sends the five rounds
on it; each message goes to `answer`, exactly as the unary call of its round, and an error
ends the stream with that call's status. The stream owns the session its advertise opened:
when it ends before the unmask round (the coordinator dropped this member, timed out or
went away), the session is closed. A stream holds one of the server's worker threads for
the whole session, so at most `SESSION_STREAMS` are open at once; beyond that the node
answers RESOURCE_EXHAUSTED and the coordinator uses the unary calls (short calls always find
a worker: concurrent sessions cannot deadlock waiting for each other's threads).
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from bridgestat.common import secagg_wire as wire
from bridgestat.common.secagg import SecAggError
from bridgestat.node import serde
from bridgestat.node.engine import Engine
from bridgestat.node.secure import Identity, Layout, SecureNode
from bridgestat.node.service import Status, status_of
from bridgestat.node.tls import ServerTls, caller_identity
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import secure_aggregation_pb2 as spb
from bridgestat.v1 import secure_aggregation_pb2_grpc as spb_grpc

log = logging.getLogger("bridgestat.node.secure")
SERVICE_NAME = spb.DESCRIPTOR.services_by_name["SecureAggregationService"].full_name
R = TypeVar("R")
SESSION_STREAMS = 4  # of the node server's 8 workers (`node/service.py`)


def layout_to_pb(layout: Layout) -> spb.SecureLayout:
    n = layout.noise
    return spb.SecureLayout(
        values=[spb.SecureValue(group=[pb.GroupValue(column=c, value=v) for c, v in e.group],
                                name=e.name, unit=e.unit) for e in layout.entries],
        center=layout.center, lower=layout.lower, upper=layout.upper,
        sigma_share=n.sigma_share, delta_l2=n.delta_l2, rho_network=n.rho_network,
        rho_alone=n.rho_alone, honest=n.honest,
        term_bounds=[pb.Bounds(lower=lo, upper=hi) for lo, hi in layout.term_bounds])


Request = (spb.AdvertiseRequest | spb.ShareKeysRequest | spb.MaskedInputRequest
           | spb.ConsistencyRequest | spb.UnmaskRequest)
Response = (spb.AdvertiseResponse | spb.ShareKeysResponse | spb.MaskedInputResponse
            | spb.ConsistencyResponse | spb.UnmaskResponse)


def secure_node(engine: Engine, tls: ServerTls | None) -> SecureNode:
    """The node's secure-aggregation side (one per engine and TLS identity: the listening
    server and the connect-mode stream share it and its sessions). It signs with the TLS
    key and certificate as last reloaded (SIGHUP): a session opened after a reload uses the
    renewed certificate. Without TLS it refuses every session (no identity)."""
    with _NODES_LOCK:
        found = _NODES.get(engine)
        if found is not None and found[0] is tls:
            return found[1]
        source = None if tls is None else functools.partial(_current_identity,
                                                            engine.node_id, tls)
        node = SecureNode(engine, source)
        _NODES[engine] = (tls, node)
        return node


_NODES: weakref.WeakKeyDictionary[Engine, tuple[ServerTls | None, SecureNode]] = (
    weakref.WeakKeyDictionary())
_NODES_LOCK = threading.Lock()


def _current_identity(name: str, tls: ServerTls) -> Identity:
    pem = tls.pem
    return _identity(name, pem.key, pem.cert, pem.ca)


@functools.lru_cache(maxsize=1024)
def _identity(name: str, key: bytes, cert: bytes, ca: bytes) -> Identity:
    """Parsed once per set of TLS files (parsing the key per session would cost ~1 ms).
    Room for every node one process hosts (`benchmarks/node_host.py` hosts a dozen or more:
    with room for 8 the cache missed on most sessions)."""
    return Identity.from_pem(name, key, cert, ca)


def answer(secure: SecureNode, request: Request, caller: str) -> Response | Status:
    """One round's request to its response, or the status the gRPC server would abort
    with: the same for a direct call and one relayed by the hub (connect mode)."""
    try:
        return _ROUNDS[type(request)](secure, request, caller)
    except SecAggError as exc:
        return Status(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except Exception as exc:  # noqa: BLE001  # every error becomes a gRPC status, in one place
        return status_of(exc)


def _advertise(secure: SecureNode, request: spb.AdvertiseRequest,
               caller: str) -> spb.AdvertiseResponse:
    try:
        query = serde.query_from_pb(request.query)
    except Exception as exc:
        secure.engine.refused(request.idempotency_key, None, exc, caller)
        raise
    advert, layout = secure.advertise(
        request.idempotency_key, query, request.session, tuple(request.members),
        request.threshold, request.colluding, caller)
    log.info("secure session %s (%s) opened by %s", request.session, query.statistic.value,
             caller)
    return spb.AdvertiseResponse(advertisement=wire.advert_to_pb(advert),
                                 layout=layout_to_pb(layout))


def _share_keys(secure: SecureNode, request: spb.ShareKeysRequest,
                caller: str) -> spb.ShareKeysResponse:
    adverts = [wire.advert_from_pb(a) for a in request.advertisements]
    return spb.ShareKeysResponse(shares=wire.shares_to_pb(
        secure.share_keys(request.session, adverts)))


def _masked_input(secure: SecureNode, request: spb.MaskedInputRequest,
                  caller: str) -> spb.MaskedInputResponse:
    """The masked vector (charged and committed before it is returned). The response's
    `budget` field stays unset: the driver never reads it, and reading the ledger's state
    for it was a SQLite read per member per session (the budget is in GetNodeInfo)."""
    masked, replayed = secure.masked_input(request.session, wire.shares_from_pb(request.shares))
    return spb.MaskedInputResponse(member=masked.member, vector=masked.vector,
                                   replayed=replayed)


def _consistency(secure: SecureNode, request: spb.ConsistencyRequest,
                 caller: str) -> spb.ConsistencyResponse:
    signature = secure.consistency(request.session, list(request.survivors))
    return spb.ConsistencyResponse(signature=wire.signature_to_pb(signature))


def _unmask(secure: SecureNode, request: spb.UnmaskRequest, caller: str) -> spb.UnmaskResponse:
    response = secure.unmask(request.session, wire.unmask_request_from_pb(request))
    return wire.unmask_response_to_pb(response)


_ROUNDS: dict[type[Any], Callable[[SecureNode, Any, str], Response]] = {
    spb.AdvertiseRequest: _advertise, spb.ShareKeysRequest: _share_keys,
    spb.MaskedInputRequest: _masked_input, spb.ConsistencyRequest: _consistency,
    spb.UnmaskRequest: _unmask}


class SecureServicer(spb_grpc.SecureAggregationServiceServicer):
    """The five rounds, each one call or all on one Session stream (the caller is the
    certificate's common name)."""

    def __init__(self, secure: SecureNode, streams: int = SESSION_STREAMS) -> None:
        self.secure = secure
        self.streams = streams
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open_streams(self) -> int:
        """Session streams being served now (each holds a worker thread)."""
        with self._lock:
            return self._open

    def Session(self, request_iterator: Iterator[spb.SessionRequest],
                context: grpc.ServicerContext) -> Iterator[spb.SessionResponse]:
        with self._lock:
            full = self._open >= self.streams
            if not full:
                self._open += 1
        if full:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"all {self.streams} secure session streams of this node are in "
                          "use; send the rounds as unary calls")
        try:
            yield from _session(self.secure, request_iterator, context)
        finally:
            with self._lock:
                self._open -= 1

    def Advertise(self, request: spb.AdvertiseRequest,
                  context: grpc.ServicerContext) -> spb.AdvertiseResponse:
        return _respond(context, self.secure, request, spb.AdvertiseResponse)

    def ShareKeys(self, request: spb.ShareKeysRequest,
                  context: grpc.ServicerContext) -> spb.ShareKeysResponse:
        return _respond(context, self.secure, request, spb.ShareKeysResponse)

    def MaskedInput(self, request: spb.MaskedInputRequest,
                    context: grpc.ServicerContext) -> spb.MaskedInputResponse:
        return _respond(context, self.secure, request, spb.MaskedInputResponse)

    def Consistency(self, request: spb.ConsistencyRequest,
                    context: grpc.ServicerContext) -> spb.ConsistencyResponse:
        return _respond(context, self.secure, request, spb.ConsistencyResponse)

    def Unmask(self, request: spb.UnmaskRequest,
               context: grpc.ServicerContext) -> spb.UnmaskResponse:
        return _respond(context, self.secure, request, spb.UnmaskResponse)


def _session(secure: SecureNode, requests: Iterator[spb.SessionRequest],
             context: grpc.ServicerContext) -> Iterator[spb.SessionResponse]:
    """One session's rounds on one stream: each answered as its unary call; the stream
    ends after unmask, and closes the session if it ends (or fails) before."""
    caller = caller_identity(context)
    opened = ""
    try:
        for message in requests:
            kind = message.WhichOneof("round")
            request = _stream_request(message, kind, opened, context)
            result = answer(secure, request, caller)
            if isinstance(result, Status):
                context.abort(result.code, result.message)
            opened = opened or request.session
            response: dict[str, Any] = {str(kind): result}
            yield spb.SessionResponse(**response)
            if kind == "unmask":  # the last round: the session is over at this node
                opened = ""
                return
    finally:
        if opened:
            secure.close(opened)


def _stream_request(message: spb.SessionRequest, kind: str | None, opened: str,
                    context: grpc.ServicerContext) -> Request:
    """The round's request in a stream message; aborts INVALID_ARGUMENT for an empty
    message, a first message that is not advertise, or a message of another session."""
    if kind is None:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session: a message must carry one "
                      "round's request (advertise, share_keys, masked_input, consistency "
                      "or unmask)")
    request: Request = getattr(message, str(kind))
    if not opened and kind != "advertise":
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"session: a stream's first message "
                      f"must be advertise (it opens the session), not {kind}")
    if opened and request.session != opened:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"session: this stream belongs to "
                      f"session {opened}; session {request.session!r} needs its own stream")
    return request


def _respond(context: grpc.ServicerContext, secure: SecureNode, request: Request,
             kind: type[R]) -> R:
    """The response, or abort the call with the status (abort raises)."""
    result = answer(secure, request, caller_identity(context))
    if isinstance(result, kind):
        return result
    assert isinstance(result, Status)
    context.abort(result.code, result.message)
    raise AssertionError("unreachable")  # context.abort always raises
