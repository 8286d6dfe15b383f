"""`bridgestat coordinator serve`: holds connect-mode nodes and proxies NodeService to them.

Nodes behind firewalls dial in on `CoordinatorService.Connect` and keep one stream open.
Researchers' clients keep calling `NodeService` (GetNodeInfo, RunQuery) on the coordinator,
naming the member in the `bridgestat-member` metadata; the hub forwards the request on that
member's stream and returns its reply, or the node's own status code. So the API and CLI work
the same whichever mode a member uses. Over mTLS a node's Hello must name the identity of its
certificate, so one member cannot take another's place.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridgestat.v1 import coordinator_service_pb2 as cpb
from bridgestat.v1 import coordinator_service_pb2_grpc as cpb_grpc
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

log = logging.getLogger("bridgestat.coordinator.hub")
MEMBER_HEADER = "bridgestat-member"
HELLO_TIMEOUT = 10.0
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class Session:
    """One connected node: its outgoing requests and the replies it still owes."""

    member: str
    outgoing: asyncio.Queue[cpb.CoordinatorRequest] = field(default_factory=asyncio.Queue)
    pending: dict[str, asyncio.Future[cpb.NodeReply]] = field(default_factory=dict)

    def fail_pending(self, reason: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(reason))
        self.pending.clear()


class Hub:
    """The registry of connected members, shared by both services."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.changed = asyncio.Condition()

    async def ask(self, member: str, request: cpb.CoordinatorRequest,
                  timeout: float | None) -> cpb.NodeReply:
        session = self.sessions.get(member)
        if session is None:
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


def _peer_identity(context: grpc.aio.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name", [])
    return names[0].decode() if names else ""


class CoordinatorServicer(cpb_grpc.CoordinatorServiceServicer):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def Connect(self, request_iterator: AsyncIterator[cpb.NodeMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[cpb.CoordinatorRequest]:
        incoming = request_iterator.__aiter__()
        try:
            first = await asyncio.wait_for(incoming.__anext__(), HELLO_TIMEOUT)
        except (StopAsyncIteration, TimeoutError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a node must say Hello first")
        member = first.hello.node_id
        if first.WhichOneof("kind") != "hello" or not member:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a node must say Hello first")
        identity = _peer_identity(context)
        if identity and identity != member:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"certificate identity {identity!r} cannot connect as {member!r}")
        session = await self._register(member)
        reader = asyncio.create_task(self._read(session, incoming))
        get: asyncio.Task[cpb.CoordinatorRequest] | None = None
        try:
            while not reader.done():
                get = asyncio.create_task(session.outgoing.get())
                await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                    get = None
        finally:
            for task in (get, reader):
                if task is not None:
                    task.cancel()
            await self._unregister(session)

    async def _register(self, member: str) -> Session:
        session = Session(member)
        async with self.hub.changed:
            old = self.hub.sessions.get(member)
            if old is not None:  # a reconnect replaces a stale stream
                old.fail_pending("the node reconnected")
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


class ProxyServicer(pb_grpc.NodeServiceServicer):
    """NodeService for connect-mode members, chosen by the `bridgestat-member` metadata."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def GetNodeInfo(self, request: pb.GetNodeInfoRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetNodeInfoResponse:
        reply = await self._forward(context, cpb.CoordinatorRequest(get_node_info=request))
        return reply.node_info

    async def RunQuery(self, request: pb.RunQueryRequest,
                       context: grpc.aio.ServicerContext) -> pb.RunQueryResponse:
        reply = await self._forward(context, cpb.CoordinatorRequest(run_query=request))
        return reply.run_query

    async def _forward(self, context: grpc.aio.ServicerContext,
                       request: cpb.CoordinatorRequest) -> cpb.NodeReply:
        member = dict(context.invocation_metadata()).get(MEMBER_HEADER, "")
        if not member:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"name the member in the {MEMBER_HEADER!r} metadata")
        request.request_id = uuid.uuid4().hex
        request.caller = _peer_identity(context)
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


async def start_hub(address: str, credentials: grpc.ServerCredentials | None
                    ) -> tuple[grpc.aio.Server, Hub, int]:
    """Start the coordinator's server: CoordinatorService, the NodeService proxy and
    grpc.health.v1 (SERVING once listening); returns (server, hub, port)."""
    hub = Hub()
    server = grpc.aio.server()
    cpb_grpc.add_CoordinatorServiceServicer_to_server(CoordinatorServicer(hub), server)
    pb_grpc.add_NodeServiceServicer_to_server(ProxyServicer(hub), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = (server.add_insecure_port(address) if credentials is None
            else server.add_secure_port(address, credentials))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", cpb.DESCRIPTOR.services_by_name["CoordinatorService"].full_name,
                 pb.DESCRIPTOR.services_by_name["NodeService"].full_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, hub, port
