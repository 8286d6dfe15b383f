"""`bridgestat coordinator serve`: holds connect-mode nodes and proxies NodeService and
SecureAggregationService to them.

Nodes behind firewalls dial in on `CoordinatorService.Connect` and keep one stream open.
Researchers' clients keep calling `NodeService` (GetNodeInfo, RunQuery) on the coordinator,
naming the member in the `bridgestat-member` metadata; the hub forwards the request on that
member's stream and returns its reply, or the node's own status code. So the API and CLI work
the same whichever mode a member uses. The secure-aggregation driver (`coordinator/secure/aggregation.py`)
calls SecureAggregationService on the hub the same way, one relayed request per round (a
Session stream's messages are relayed one by one, like the unary rounds), so connect-mode
members take part in secure sessions unchanged; when such a stream ends before unmask, the
hub tells the member to close the session (`SecureClose`), as a node closes it when its own
stream ends.

Who may do what, over mutual TLS (every caller needs a certificate from the network CA):

- `Connect`: a node whose certificate is for the name in its Hello (one member cannot take
  another's place), and that the network file lists `via: hub`;
- the NodeService and SecureAggregationService proxies: the identities on the `allow` list (`coordinator serve --allow`,
  default `coordinator`, the identity researchers use from the network file). The hub relays
  the caller's identity, and the node applies its own `tls.allow` to it as if called
  directly, so a member's allow-list means the same in both modes;
- health and reflection: any certificate from the network CA.

Stopping (SIGTERM/SIGINT) reports NOT_SERVING, refuses new calls, waits (up to the grace) for
the replies still owed, then ends every node's stream cleanly; the nodes reconnect with
backoff to the coordinator's next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import _async as health_aio  # what `health.aio` names at run time
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bridgestat.common.certs import CertificateError, load_certificate, name_problem
from bridgestat.common.headers import MEMBER_HEADER, SESSION_ACCEPTED, SESSION_HEADER
from bridgestat.coordinator.client.network_file import (
    HUB_NAME,
    NetworkFileError,
    NetworkSpec,
    load_network,
    require_tls,
)
from bridgestat.v1 import coordinator_service_pb2 as cpb
from bridgestat.v1 import coordinator_service_pb2_grpc as cpb_grpc
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc
from bridgestat.v1 import secure_aggregation_pb2 as spb
from bridgestat.v1 import secure_aggregation_pb2_grpc as spb_grpc

if TYPE_CHECKING:  # grpc-stubs' generic; at run time the class takes no parameters
    AioContext = grpc.aio.ServicerContext[Any, Any]

__all__ = ["MEMBER_HEADER", "Hub", "serve", "start_hub"]
log = logging.getLogger("bridgestat.coordinator.hub")
HELLO_TIMEOUT = 10.0
GRACE_SECONDS = 30.0
DEFAULT_ALLOW = (HUB_NAME,)
_CODES = {code.value[0]: code for code in grpc.StatusCode}
CLOSE_TIMEOUT = 10.0  # s: telling a member its secure session is over
_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),  # notice a node that vanished (half-open TCP)
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),  # nodes ping every 20 s
]
COORDINATOR_SERVICE = cpb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
NODE_SERVICE = pb.DESCRIPTOR.services_by_name["NodeService"].full_name
SECURE_SERVICE = spb.DESCRIPTOR.services_by_name["SecureAggregationService"].full_name


@dataclass
class Session:
    """One connected node: its outgoing requests and the replies it still owes."""

    member: str
    outgoing: asyncio.Queue[cpb.CoordinatorRequest] = field(default_factory=asyncio.Queue)
    pending: dict[str, asyncio.Future[cpb.NodeReply]] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # set: end the stream

    def fail_pending(self, reason: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))
        self.pending.clear()


class Hub:
    """The registry of connected members, shared by both services.

    `members`: the names that may connect (None: any, for in-process tests)."""

    def __init__(self, members: Sequence[str] | None = None) -> None:
        self.members = None if members is None else frozenset(members)
        self.sessions: dict[str, Session] = {}
        self.changed = asyncio.Condition()
        self.closing = False
        self.health: health_aio.HealthServicer | None = None

    async def ask(self, member: str, request: cpb.CoordinatorRequest,
                  timeout: float | None) -> cpb.NodeReply:
        session = self.sessions.get(member)
        if session is None or session.ended.is_set():
            raise LookupError(f"member {member!r} is not connected to this coordinator")
        future: asyncio.Future[cpb.NodeReply] = asyncio.get_running_loop().create_future()
        session.pending[request.request_id] = future
        await session.outgoing.put(request)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            session.pending.pop(request.request_id, None)

    async def wait_connected(self, member: str, timeout: float) -> None:
        """For callers that start nodes and the coordinator together (tests, demo)."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: member in self.sessions),
                                   timeout)

    async def shutdown(self, server: grpc.aio.Server, grace: float) -> None:
        """NOT_SERVING; refuse new calls; wait up to `grace` for the replies still owed;
        end every node's stream cleanly (so the nodes reconnect later); stop."""
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        self.closing = True
        stopping = asyncio.create_task(server.stop(grace))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(s.pending for s in self.sessions.values()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            session.ended.set()
        await stopping


def _member_named(context: AioContext) -> str:
    """The member a proxied call is for (its `bridgestat-member` metadata; "" if none)."""
    return str(dict(context.invocation_metadata() or ()).get(MEMBER_HEADER, ""))


def _peer_identity(context: AioContext) -> str:
    found = context.auth_context().get("x509_common_name")
    names = [found] if isinstance(found, bytes) else list(found or [])
    return names[0].decode() if names else ""


class CoordinatorServicer(cpb_grpc.CoordinatorServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def Connect(self, request_iterator: AsyncIterator[cpb.NodeMessage],
                      context: AioContext) -> AsyncIterator[cpb.CoordinatorRequest]:
        incoming = request_iterator.__aiter__()
        member = await self._hello(incoming, context)
        if self.hub.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the coordinator is stopping")
        session = await self._register(member)
        reader = asyncio.create_task(self._read(session, incoming))
        ended = asyncio.create_task(session.ended.wait())
        get: asyncio.Task[cpb.CoordinatorRequest] | None = None
        try:
            await context.send_initial_metadata(((SESSION_HEADER, SESSION_ACCEPTED),))
            while not reader.done() and not ended.done():
                get = asyncio.create_task(session.outgoing.get())
                await asyncio.wait({get, reader, ended}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                    get = None
        finally:
            for task in (get, reader, ended):
                if task is not None:
                    task.cancel()
            await self._unregister(session)

    async def _hello(self, incoming: AsyncIterator[cpb.NodeMessage],
                     context: AioContext) -> str:
        """The member a new stream is for: its Hello, checked against the certificate and
        the network file; aborts the stream otherwise."""
        try:
            first = await asyncio.wait_for(incoming.__anext__(), HELLO_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a node must say Hello first")
        member = first.hello.node_id
        if first.WhichOneof("kind") != "hello" or not member:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a node must say Hello first")
        identity = _peer_identity(context)
        if identity and identity != member:
            log.warning("refused a node: certificate identity %r cannot connect as %r",
                        identity, member)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"certificate identity {identity!r} cannot connect as {member!r}")
        if self.hub.members is not None and member not in self.hub.members:
            log.warning("refused a node: %r is not a member via hub in the network file", member)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"{member!r} is not a member via hub in this coordinator's "
                                "network file")
        return member

    async def _register(self, member: str) -> Session:
        session = Session(member)
        async with self.hub.changed:
            old = self.hub.sessions.get(member)
            if old is not None:  # a reconnect replaces a stale stream
                old.fail_pending("the node reconnected")
                old.ended.set()
            self.hub.sessions[member] = session
            self.hub.changed.notify_all()
        log.info("member %s connected", member)
        return session

    async def _unregister(self, session: Session) -> None:
        async with self.hub.changed:
            if self.hub.sessions.get(session.member) is session:
                del self.hub.sessions[session.member]
            self.hub.changed.notify_all()
        session.fail_pending(f"member {session.member!r} disconnected")
        log.info("member %s disconnected", session.member)

    async def _read(self, session: Session, incoming: AsyncIterator[cpb.NodeMessage]) -> None:
        async for message in incoming:
            if message.WhichOneof("kind") != "reply":
                continue
            future = session.pending.get(message.reply.request_id)
            if future is not None and not future.done():
                future.set_result(message.reply)


class Relay:
    """Forwards one call to the member named in its metadata, for callers on `allow` (None:
    no check, plain text); the member's own status code comes back as the call's."""

    def __init__(self, hub: Hub, allow: Sequence[str] | None = None) -> None:
        self.hub = hub
        self.allow = None if allow is None else frozenset(allow)
        self._closing: set[asyncio.Task[None]] = set()  # secure closes still on their way

    def close_later(self, member: str, caller: str, session: str) -> None:
        """Tell `member` that `caller`'s secure `session` is over (the driver's Session stream
        ended before unmask), in the background: the stream's handler may be cancelled, and
        its call context must not be touched then (read `member` and `caller` from it while
        the call is live). The node closes it only for the caller that opened it; an older
        node ignores it."""
        request = cpb.CoordinatorRequest(request_id=uuid.uuid4().hex, caller=caller,
                                         secure_close=cpb.SecureClose(session=session))
        task = asyncio.get_running_loop().create_task(self._close(member, request))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, member: str, request: cpb.CoordinatorRequest) -> None:
        try:
            reply = await self.hub.ask(member, request, CLOSE_TIMEOUT)
        except (LookupError, ConnectionError, TimeoutError) as exc:  # it is gone anyway
            log.info("secure session %s: %s not told it is over (%s)",
                     request.secure_close.session, member, exc or type(exc).__name__)
            return
        if reply.WhichOneof("kind") == "error":
            log.info("secure session %s: %s did not close it (%s); it expires at the node",
                     request.secure_close.session, member, reply.error.message)

    async def forward(self, context: AioContext,
                      request: cpb.CoordinatorRequest) -> cpb.NodeReply:
        caller = _peer_identity(context)
        if self.allow is not None and caller not in self.allow:
            log.warning("refused caller %r: not on the coordinator's allow list", caller)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"caller {caller!r} may not query members through this "
                                "coordinator (coordinator serve --allow)")
        member = _member_named(context)
        if not member:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"name the member in the {MEMBER_HEADER!r} metadata")
        request.request_id = uuid.uuid4().hex
        request.caller = caller
        try:
            reply = await self.hub.ask(member, request, context.time_remaining())
        except LookupError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except ConnectionError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{member}: {exc}")
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"{member} did not answer in time")
        if reply.WhichOneof("kind") == "error":
            await context.abort(_CODES.get(reply.error.code, grpc.StatusCode.UNKNOWN),
                                reply.error.message)
        return reply


class ProxyServicer(pb_grpc.NodeServiceServicer):
    """NodeService for connect-mode members, chosen by the `bridgestat-member` metadata."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def GetNodeInfo(self, request: pb.GetNodeInfoRequest,
                          context: AioContext) -> pb.GetNodeInfoResponse:
        reply = await self.relay.forward(context, cpb.CoordinatorRequest(get_node_info=request))
        return reply.node_info

    async def RunQuery(self, request: pb.RunQueryRequest,
                       context: AioContext) -> pb.RunQueryResponse:
        reply = await self.relay.forward(context, cpb.CoordinatorRequest(run_query=request))
        return reply.run_query


class SecureProxyServicer(spb_grpc.SecureAggregationServiceServicer):
    """SecureAggregationService for connect-mode members: each round (a unary call or one
    message of a Session stream) is one request kind on the member's stream, its reply
    under the same field name. The hub only relays: what it
    sees is what the coordinator's driver sees (the protocol's messages, no member's input)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def Advertise(self, request: spb.AdvertiseRequest,
                        context: AioContext) -> spb.AdvertiseResponse:
        reply = await self._round(context, cpb.CoordinatorRequest(secure_advertise=request))
        return reply.secure_advertise

    async def ShareKeys(self, request: spb.ShareKeysRequest,
                        context: AioContext) -> spb.ShareKeysResponse:
        reply = await self._round(context, cpb.CoordinatorRequest(secure_share_keys=request))
        return reply.secure_share_keys

    async def MaskedInput(self, request: spb.MaskedInputRequest,
                          context: AioContext) -> spb.MaskedInputResponse:
        reply = await self._round(context,
                                  cpb.CoordinatorRequest(secure_masked_input=request))
        return reply.secure_masked_input

    async def Consistency(self, request: spb.ConsistencyRequest,
                          context: AioContext) -> spb.ConsistencyResponse:
        reply = await self._round(context, cpb.CoordinatorRequest(secure_consistency=request))
        return reply.secure_consistency

    async def Unmask(self, request: spb.UnmaskRequest,
                     context: AioContext) -> spb.UnmaskResponse:
        reply = await self._round(context, cpb.CoordinatorRequest(secure_unmask=request))
        return reply.secure_unmask

    async def Session(self, request_iterator: AsyncIterator[spb.SessionRequest],
                      context: AioContext) -> AsyncIterator[spb.SessionResponse]:
        """A driver's Session stream: each message relayed as one round on the member's
        stream (as the unary proxies do), its reply sent back in the field of the same
        name; an error ends the stream with the status the unary proxy would return. When
        the stream ends before unmask, the member is told to close the session (as a node's
        own server closes it when its stream ends), instead of holding it until it expires."""
        # read now: after a cancel the context is gone
        member, caller = _member_named(context), _peer_identity(context)
        opened = ""
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("round")
                if kind is None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "session: a "
                                        "message must carry one round's request")
                relayed = cpb.CoordinatorRequest(
                    **{f"secure_{kind}": getattr(message, str(kind))})
                reply = await self._round(context, relayed)
                if kind == "advertise":  # it opened the session at the member
                    opened = message.advertise.session
                elif kind == "unmask":  # it ended the session there
                    opened = ""
                yield spb.SessionResponse(**{str(kind): getattr(reply, f"secure_{kind}")})
                if kind == "unmask":  # the last round, as at a node: the stream ends here
                    return
        finally:
            if opened:
                self.relay.close_later(member, caller, opened)

    async def _round(self, context: AioContext,
                     request: cpb.CoordinatorRequest) -> cpb.NodeReply:
        """The reply, which must answer the round asked (an older node answers
        UNIMPLEMENTED, passed on as it is)."""
        reply = await self.relay.forward(context, request)
        asked = request.WhichOneof("kind")
        if reply.WhichOneof("kind") != asked:
            await context.abort(grpc.StatusCode.INTERNAL, f"the member answered "
                                f"{reply.WhichOneof('kind')!r} to {asked!r}")
        return reply


async def start_hub(address: str, credentials: grpc.ServerCredentials | None, *,
                    members: Sequence[str] | None = None,
                    allow: Sequence[str] | None = None) -> tuple[grpc.aio.Server, Hub, int]:
    """Start the coordinator's server: CoordinatorService, the NodeService and
    SecureAggregationService proxies, grpc.health.v1 (SERVING once listening) and server reflection; returns (server, hub,
    port). `members` may connect (None: any); `allow` may use the proxy (None: anyone)."""
    hub = Hub(members)
    server = grpc.aio.server(options=_SERVER_OPTIONS)
    cpb_grpc.add_CoordinatorServiceServicer_to_server(CoordinatorServicer(hub), server)
    relay = Relay(hub, allow)
    pb_grpc.add_NodeServiceServicer_to_server(ProxyServicer(relay), server)
    spb_grpc.add_SecureAggregationServiceServicer_to_server(SecureProxyServicer(relay), server)
    hub.health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hub.health, server)
    reflection.enable_server_reflection(
        (COORDINATOR_SERVICE, NODE_SERVICE, SECURE_SERVICE, health.SERVICE_NAME,
         reflection.SERVICE_NAME), server)
    port = (server.add_insecure_port(address) if credentials is None
            else server.add_secure_port(address, credentials))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", COORDINATOR_SERVICE, NODE_SERVICE, SECURE_SERVICE):
        await hub.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, hub, port


# -- `bridgestat coordinator serve` -------------------------------------------------------------

def serve(network: Path, listen: str | None = None, allow: Sequence[str] = DEFAULT_ALLOW, *,
          insecure: bool = False, grace: float = GRACE_SECONDS) -> None:
    """Serve the hub for the network file's `via: hub` members until SIGTERM/SIGINT, over
    mutual TLS with the file's `tls` identity (plain text only with `insecure`). Listens on
    `listen`, by default on every interface at the port of the file's `hub`."""
    spec = load_network(network)
    require_tls(spec.tls, insecure, str(network))
    address = listen or _default_listen(spec, network)
    if spec.tls is not None:
        _check_hub_certificate(spec, network)
    asyncio.run(_serve(spec, address, tuple(allow), grace))


def _default_listen(spec: NetworkSpec, network: Path) -> str:
    if spec.hub is None:
        raise NetworkFileError(f"{network}: hub: missing; add hub: host:port (where nodes in "
                               "connect mode dial) or pass --listen")
    return f"0.0.0.0:{spec.hub.address.rpartition(':')[2]}"


def _check_hub_certificate(spec: NetworkSpec, network: Path) -> None:
    """The nodes check the hub's certificate against the hub's name: refuse to start with a
    certificate they would refuse."""
    assert spec.tls is not None
    name = spec.hub.name if spec.hub is not None else HUB_NAME
    try:
        problem = name_problem(load_certificate(spec.tls.cert), spec.tls.cert, name,
                               "the hub's name (hub.name)")
    except CertificateError as exc:
        problem = str(exc)
    if problem:
        raise NetworkFileError(f"{network}: tls.cert: {problem}")


async def _serve(spec: NetworkSpec, address: str, allow: tuple[str, ...], grace: float) -> None:
    secure = spec.tls is not None
    credentials = spec.tls.server_credentials() if spec.tls is not None else None
    server, hub, port = await start_hub(address, credentials, members=spec.connect_members,
                                        allow=allow if secure else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    mode = "mutual TLS" if secure else "plain text (--insecure)"
    who = f"; researchers allowed: {', '.join(allow)}" if secure else ""
    log.info("coordinator serving on %s (port %d, %s) for %d members via hub", address, port,
             mode, len(spec.connect_members))
    print(f"bridgestat coordinator: serving on {address} (port {port}, {mode}) for "
          f"{', '.join(spec.connect_members) or 'no members via hub'}{who}", flush=True)
    try:
        await stop.wait()
        log.info("stopping: refusing new calls, finishing the replies still owed (grace %g s)",
                 grace)
        await hub.shutdown(server, grace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
