"""Connect mode: the node dials out to the coordinator and answers requests on one stream.

Members' firewalls usually allow no inbound connections. In connect mode the node opens a
long-lived bidirectional `CoordinatorService.Connect` stream (mTLS like every other call:
the node presents its own certificate and checks that the coordinator's is for
`connect.server_name`), says Hello with its node id, and answers each `CoordinatorRequest`
exactly as the NodeService server would: the same allow-list (applied to the researcher the
coordinator relays), the same decoding, engine and audit log, the same metrics and log
lines, the same status codes. SecureAggregationService's rounds come the same way (one
request kind per round) and go to the same `secure_service.answer` as the node's own server,
so a connect-mode member takes part in secure sessions unchanged; a `secure_close` (the
driver's stream to the hub ended before unmask) closes the caller's session as the end of a
Session stream does at the node's own server. A dropped stream is
re-opened with exponential backoff and jitter; a request whose answer could not be sent is simply asked again by the coordinator,
and its idempotency key makes the retry free. Each (re)connection asks for the node's
credentials afresh, so a certificate reloaded on SIGHUP is used from the next reconnect on.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from bridgestat.common.headers import SESSION_HEADER
from bridgestat.node.engine import Engine
from bridgestat.node.metrics import NodeMetrics
from bridgestat.node.secure import SecureNode
from bridgestat.node.secure_service import Response as SecureResponse
from bridgestat.node.secure_service import answer as secure_answer
from bridgestat.node.service import (
    SERVICE_NAME,
    Status,
    node_info,
    refuse_caller,
    run_query,
    software_version,
    status_of,
)
from bridgestat.node.tls import ANONYMOUS, CallerRefused
from bridgestat.v1 import coordinator_service_pb2 as cpb
from bridgestat.v1 import coordinator_service_pb2_grpc as cpb_grpc
from bridgestat.v1 import node_service_pb2 as pb

log = logging.getLogger("bridgestat.node.connect")
_CLOSE = object()
_VIA = " (via the coordinator)"  # in the log line of a refused caller
SECURE_KINDS = ("secure_advertise", "secure_share_keys", "secure_masked_input",
                "secure_consistency", "secure_unmask")  # request and reply field names
_CHANNEL_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.keepalive_time_ms", 20_000),  # notice a dead coordinator or NAT within ~30 s
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),  # the stream is mostly idle: keep pinging
]
# The node's client identity: fixed credentials, or a function giving the current ones (the
# certificate as last reloaded), called for each new connection; None: plain text.
Credentials = grpc.ChannelCredentials | Callable[[], grpc.ChannelCredentials] | None


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: initial, doubled per failure up to `maximum`, with +-20 % jitter."""

    initial: float = 0.5
    maximum: float = 30.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * random.uniform(0.8, 1.2)
            delay = min(self.maximum, delay * 2)


def answer(engine: Engine, request: cpb.CoordinatorRequest, metrics: NodeMetrics | None = None,
           allow: tuple[str, ...] | None = None,
           secure: SecureNode | None = None) -> cpb.NodeReply:
    """One request to one reply, answered as the node's gRPC server answers it (service.py,
    secure_service.py): a caller not in `allow` (None: no allow-list, plain text) is refused
    before anything runs; refusals become an ErrorStatus with the server's code and message.
    `secure` answers the secure rounds (None: a node without one refuses them). Every
    request gets its reply, even when answering it fails unexpectedly (INTERNAL)."""
    reply = cpb.NodeReply(request_id=request.request_id)
    try:
        result = _result(engine, request, metrics or NodeMetrics(), allow, secure)
    except Exception as exc:  # noqa: BLE001 - every request gets its reply (INTERNAL, logged)
        result = status_of(exc)
    if isinstance(result, Status):
        reply.error.CopyFrom(_error(result))
    elif isinstance(result, pb.GetNodeInfoResponse):
        reply.node_info.CopyFrom(result)
    elif isinstance(result, pb.RunQueryResponse):
        reply.run_query.CopyFrom(result)
    else:  # a secure round or close: the reply's field has the request's name
        getattr(reply, str(request.WhichOneof("kind"))).CopyFrom(result)
    return reply


def _result(engine: Engine, request: cpb.CoordinatorRequest, metrics: NodeMetrics,
            allow: tuple[str, ...] | None, secure: SecureNode | None
            ) -> (pb.GetNodeInfoResponse | pb.RunQueryResponse | SecureResponse
                  | cpb.SecureClosed | Status):
    """The relayed caller checked against `allow`, then the call it asks for."""
    caller = request.caller or ANONYMOUS
    kind = request.WhichOneof("kind")
    if allow is not None and caller not in allow:
        method = f"/{SERVICE_NAME}/{'GetNodeInfo' if kind == 'get_node_info' else 'RunQuery'}"
        return refuse_caller(engine, metrics, CallerRefused(caller, method),
                             request.run_query.idempotency_key, _VIA)
    if kind == "get_node_info":
        return node_info(engine, software_version())
    if kind == "run_query":
        return run_query(engine, metrics, request.run_query, caller)
    if kind in SECURE_KINDS or kind == "secure_close":
        if secure is None:
            return Status(grpc.StatusCode.UNIMPLEMENTED,
                          "this node does not take part in secure aggregation")
        if kind == "secure_close":  # the driver's stream to the hub ended early
            return cpb.SecureClosed(was_open=secure.close(request.secure_close.session, caller))
        return secure_answer(secure, getattr(request, kind), caller)
    return Status(grpc.StatusCode.UNIMPLEMENTED, f"unknown request kind {kind!r}")


def _error(status: Status) -> cpb.ErrorStatus:
    return cpb.ErrorStatus(code=status.code.value[0], message=status.message)


class Connector:
    """Keeps one stream to the coordinator open until `stop` is called.

    `secure` answers the secure-aggregation rounds the coordinator relays (default: one
    without an identity, which refuses every session). `run` blocks (give it a thread). `connected` is set while the coordinator has accepted
    this node's Hello; `last_error` is the status that ended the last stream (e.g. the
    coordinator's refusal of a certificate that does not match the node id).
    """

    def __init__(self, engine: Engine, target: str, credentials: Credentials,
                 server_name: str = "", workers: int = 4,
                 backoff: Backoff = Backoff(), *, metrics: NodeMetrics | None = None,
                 allow: tuple[str, ...] | None = None,
                 secure: SecureNode | None = None) -> None:
        self.engine, self.target, self.credentials = engine, target, credentials
        self.server_name, self.backoff = server_name, backoff
        self.metrics = metrics or NodeMetrics(engine.ledger.state)
        self.allow = allow
        # secure rounds; without TLS its sessions are refused (no identity to sign with)
        self.secure = secure if secure is not None else SecureNode(engine, None)
        self._pool = futures.ThreadPoolExecutor(max_workers=workers)
        self._stop = threading.Event()
        self._grace = 0.0
        self._idle = threading.Condition()
        self._in_flight = 0
        self.connected = threading.Event()  # set while a stream is open (for tests, health)
        self.sessions = 0  # streams the coordinator accepted so far
        self.last_error = ""

    def stop(self, grace: float = 0.0) -> None:
        """Stop: answer new requests UNAVAILABLE, let those under way finish and send their
        replies for up to `grace` seconds, then close the stream (0: cancel it now)."""
        self._grace = grace
        self._stop.set()

    def run(self) -> None:
        """Connect, serve, and reconnect with backoff until stopped."""
        delays = self.backoff.delays()
        while not self._stop.is_set():
            try:
                self._session()
                if not self._stop.is_set():
                    log.info("the coordinator %s closed the stream; reconnecting", self.target)
                delays = self.backoff.delays()  # a clean end: start the backoff afresh
            except grpc.RpcError as exc:
                self._ended(exc)
            finally:
                self.connected.clear()
                self.metrics.connected.set(0)
            self._stop.wait(next(delays))
        self._pool.shutdown(wait=True)

    def _ended(self, exc: grpc.RpcError) -> None:
        if self._stop.is_set():
            return
        code: grpc.StatusCode = exc.code()
        details = exc.details() or ""
        self.last_error = f"{code.name}: {details}"
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT):
            log.error("the coordinator %s refused this node: %s (check node_id, the "
                      "certificate and the network file); retrying", self.target,
                      self.last_error, extra={"event": "refused", "outcome": code.name})
        else:
            log.warning("stream to %s ended: %s", self.target, self.last_error,
                        extra={"event": "disconnected", "outcome": code.name})

    def _channel(self) -> grpc.Channel:
        options = list(_CHANNEL_OPTIONS)
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=options)
        credentials = (self.credentials() if callable(self.credentials)
                       else self.credentials)
        return grpc.secure_channel(self.target, credentials, options=options)

    def _session(self) -> None:
        outgoing: queue.Queue[object] = queue.Queue()
        outgoing.put(cpb.NodeMessage(hello=cpb.Hello(node_id=self.engine.node_id,
                                                     software_version=software_version())))
        with self._channel() as channel:
            stream = cpb_grpc.CoordinatorServiceStub(channel).Connect(_drain(outgoing))
            done = threading.Event()
            watcher = threading.Thread(target=self._close_on_stop,
                                       args=(stream, outgoing, done), daemon=True)
            watcher.start()
            try:
                # blocks until the coordinator accepts the Hello (it then sends SESSION_HEADER),
                # or the call ends
                if SESSION_HEADER in dict(stream.initial_metadata() or ()):
                    self._accepted()
                for request in stream:
                    if self._stop.is_set():
                        outgoing.put(cpb.NodeMessage(reply=_stopping(request)))
                        continue
                    with self._idle:
                        self._in_flight += 1
                    self._pool.submit(self._reply, request, outgoing)
            finally:
                done.set()
                outgoing.put(_CLOSE)

    def _accepted(self) -> None:
        self.sessions += 1
        self.last_error = ""
        self.connected.set()
        self.metrics.connected.set(1)
        log.info("connected to coordinator %s as %s", self.target, self.engine.node_id,
                 extra={"event": "connected", "coordinator": self.target})

    def _close_on_stop(self, stream: grpc.Future[Any], outgoing: queue.Queue[object],
                       done: threading.Event) -> None:
        """When the connector stops: wait for the replies under way (up to the grace),
        half-close so the coordinator ends the stream cleanly, and cancel it if it does not.
        Ends with the session otherwise."""
        while not done.is_set():
            if self._stop.wait(0.2):
                if self._grace > 0:
                    with self._idle:
                        self._idle.wait_for(lambda: self._in_flight == 0, self._grace)
                    outgoing.put(_CLOSE)
                    done.wait(2.0)
                stream.cancel()
                return

    def _reply(self, request: cpb.CoordinatorRequest, outgoing: queue.Queue[object]) -> None:
        try:
            outgoing.put(cpb.NodeMessage(reply=answer(self.engine, request, self.metrics,
                                                      self.allow, self.secure)))
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()


def _stopping(request: cpb.CoordinatorRequest) -> cpb.NodeReply:
    return cpb.NodeReply(request_id=request.request_id, error=_error(
        Status(grpc.StatusCode.UNAVAILABLE, "the node is stopping; retry later")))


def _drain(outgoing: queue.Queue[object]) -> Iterator[cpb.NodeMessage]:
    while True:
        item = outgoing.get()
        if item is _CLOSE:
            return
        assert isinstance(item, cpb.NodeMessage)
        yield item
