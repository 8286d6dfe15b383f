"""Connect mode: the node dials out to the coordinator and answers requests on one stream.

Members' firewalls usually allow no inbound connections. In connect mode the node opens a
long-lived bidirectional `CoordinatorService.Connect` stream (mTLS like every other call),
says Hello with its node id, and answers each `CoordinatorRequest` with the same engine, the
same serialisation and the same status codes as the NodeService server. A dropped stream is
re-opened with exponential backoff and jitter; a request whose answer could not be sent is
simply asked again by the coordinator, and its idempotency key makes the retry free.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc

from bridgestat.node import serde
from bridgestat.node.engine import Engine
from bridgestat.node.errors import NodeError
from bridgestat.node.service import STATUS, software_version
from bridgestat.v1 import coordinator_service_pb2 as cpb
from bridgestat.v1 import coordinator_service_pb2_grpc as cpb_grpc

log = logging.getLogger("bridgestat.node.connect")
_CLOSE = object()


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


def answer(engine: Engine, request: cpb.CoordinatorRequest) -> cpb.NodeReply:
    """One request to one reply; refusals become an ErrorStatus with the server's code."""
    reply = cpb.NodeReply(request_id=request.request_id)
    try:
        kind = request.WhichOneof("kind")
        if kind == "get_node_info":
            reply.node_info.CopyFrom(serde.info_to_pb(engine.info(), software_version()))
        elif kind == "run_query":
            run = request.run_query
            caller = f"coordinator (for {request.caller})" if request.caller else "coordinator"
            result = engine.run(run.idempotency_key, serde.query_from_pb(run.query), caller)
            reply.run_query.CopyFrom(
                serde.answer_to_pb(result, engine.policy.max_epsilon_per_query))
        else:
            _error(reply, grpc.StatusCode.UNIMPLEMENTED, f"unknown request kind {kind!r}")
    except NodeError as exc:
        code = next((c for t, c in STATUS.items() if isinstance(exc, t)),
                    grpc.StatusCode.FAILED_PRECONDITION)
        _error(reply, code, str(exc))
    except Exception:
        log.exception("internal error while answering request %s", request.request_id)
        _error(reply, grpc.StatusCode.INTERNAL, "internal error in the node; see its log")
    return reply


def _error(reply: cpb.NodeReply, code: grpc.StatusCode, message: str) -> None:
    reply.error.CopyFrom(cpb.ErrorStatus(code=code.value[0], message=message))


class Connector:
    """Keeps one stream to the coordinator open until `stop` is called."""

    def __init__(self, engine: Engine, target: str,
                 credentials: grpc.ChannelCredentials | None,
                 server_name: str = "", workers: int = 4,
                 backoff: Backoff = Backoff()) -> None:
        self.engine, self.target, self.credentials = engine, target, credentials
        self.server_name, self.backoff = server_name, backoff
        self._pool = futures.ThreadPoolExecutor(max_workers=workers)
        self._stop = threading.Event()
        self.connected = threading.Event()  # set while a stream is open (for tests, health)
        self.sessions = 0  # streams opened so far

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Connect, serve, and reconnect with backoff until stopped."""
        delays = self.backoff.delays()
        while not self._stop.is_set():
            try:
                self._session()
                delays = self.backoff.delays()  # a clean end: start the backoff afresh
            except grpc.RpcError as exc:
                log.warning("stream to %s ended: %s %s", self.target, exc.code(),
                            exc.details())
            finally:
                self.connected.clear()
            self._stop.wait(next(delays))
        self._pool.shutdown(wait=True)

    def _channel(self) -> grpc.Channel:
        options = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000)]
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=options)
        return grpc.secure_channel(self.target, self.credentials, options=options)

    def _session(self) -> None:
        outgoing: queue.Queue[object] = queue.Queue()
        outgoing.put(cpb.NodeMessage(hello=cpb.Hello(node_id=self.engine.node_id,
                                                     software_version=software_version())))
        with self._channel() as channel:
            stream = cpb_grpc.CoordinatorServiceStub(channel).Connect(_drain(outgoing))
            done = threading.Event()
            watcher = threading.Thread(target=self._cancel_on_stop, args=(stream, done),
                                       daemon=True)
            watcher.start()
            self.sessions += 1
            self.connected.set()
            log.info("connected to coordinator %s as %s", self.target, self.engine.node_id)
            try:
                for request in stream:
                    self._pool.submit(self._reply, request, outgoing)
            finally:
                done.set()
                outgoing.put(_CLOSE)

    def _cancel_on_stop(self, stream: grpc.Future, done: threading.Event) -> None:
        """Cancel the stream when the connector stops; end with the session otherwise."""
        while not done.is_set():
            if self._stop.wait(0.2):
                stream.cancel()
                return

    def _reply(self, request: cpb.CoordinatorRequest, outgoing: queue.Queue[object]) -> None:
        outgoing.put(cpb.NodeMessage(reply=answer(self.engine, request)))


def _drain(outgoing: queue.Queue[object]) -> Iterator[cpb.NodeMessage]:
    while True:
        item = outgoing.get()
        if item is _CLOSE:
            return
        assert isinstance(item, cpb.NodeMessage)
        yield item
