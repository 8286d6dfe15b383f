"""Concurrent fan-out of one request to every member, each call with its own deadline.

A member that is down, slow or refuses yields a `Failure` naming it and why; the others'
answers are kept, so pooling can go on with the rest. A connect-mode member's calls go to the
coordinator's hub, which forwards them on the member's own stream: its channel adds the
`bridgestat-member` metadata to every call and checks the hub's certificate name, so the
callers above see one kind of member.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from bridgestat.common.headers import MEMBER_HEADER
from bridgestat.coordinator.client.network_file import Member
from bridgestat.coordinator.client.witness import Witness
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

T = TypeVar("T")
ABORTED_PAUSE = 0.05  # first pause before retrying a key the node is still answering


@dataclass(frozen=True)
class Failure:
    member: str
    code: str  # gRPC status name, e.g. UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
    message: str


@dataclass(frozen=True)
class Success(Generic[T]):
    member: str
    value: T


Outcome = Success[T] | Failure
Call = Callable[[pb_grpc.NodeServiceStub, float], Awaitable[T]]


if TYPE_CHECKING:  # grpc-stubs makes the interceptor generic; at runtime it is a plain ABC
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor


class MemberHeader(_Interceptor):
    """Names the member in every call's metadata, for the hub to route it."""

    def __init__(self, member: str) -> None:
        self.member = member

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        metadata.add(MEMBER_HEADER, self.member)
        details = grpc.aio.ClientCallDetails(  # the same call, with the member's header
            method=client_call_details.method, timeout=client_call_details.timeout,
            metadata=metadata, credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready)
        return await continuation(details, request)


class Fanout:
    """Holds one channel per member (created lazily, reused) and fans calls out over them.

    With `credentials` every channel is mutual TLS and the node's certificate must be issued
    to the member's name in the network file (hostname verification against that name, not
    the address), so a node answering at a member's address as someone else is refused.
    Without, channels are plain text (the caller has checked that this is allowed).
    """

    def __init__(self, members: Sequence[Member],
                 credentials: grpc.ChannelCredentials | None = None,
                 witness: Witness | None = None) -> None:
        self.members = tuple(members)
        self.credentials = credentials
        self.witness = witness  # records the audit heads the answers carry
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.NodeServiceStub]] = {}

    def _stub(self, member: Member) -> pb_grpc.NodeServiceStub:
        if member.name not in self._stubs:
            channel = self._channel(member)
            self._stubs[member.name] = (channel, pb_grpc.NodeServiceStub(channel))
        return self._stubs[member.name][1]

    def _channel(self, member: Member) -> grpc.aio.Channel:
        """The node's own channel, or (connect mode) one to the hub naming the member."""
        name = member.hub.name if member.hub else member.name
        # grpc-stubs leaves the interceptors' element type for the caller to choose (Any)
        interceptors: list[Any] | None = [MemberHeader(member.name)] if member.hub else None
        if self.credentials is None:
            return grpc.aio.insecure_channel(member.address, interceptors=interceptors)
        return grpc.aio.secure_channel(member.address, self.credentials,
                                       options=[("grpc.ssl_target_name_override", name)],
                                       interceptors=interceptors)

    async def _one(self, member: Member, call: Call[T], timeout: float) -> Success[T] | Failure:
        """One member's outcome. ABORTED (the node is still answering the same key, e.g. for
        a coordinator that crashed and was restarted) is retried until the deadline: the
        node then replays what it released, so the retry costs nothing."""
        deadline = time.monotonic() + timeout
        pause = ABORTED_PAUSE
        while True:
            try:
                left = max(deadline - time.monotonic(), 0.001)
                return Success(member.name, await call(self._stub(member), left))
            except grpc.aio.AioRpcError as exc:
                if (exc.code() is not grpc.StatusCode.ABORTED
                        or time.monotonic() + pause >= deadline):
                    return Failure(member.name, exc.code().name, self._explain(member, exc))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _explain(self, member: Member, exc: grpc.aio.AioRpcError) -> str:
        """The status details, with the identity problem spelled out for a TLS failure."""
        details = exc.details() or ""
        peer, identity = (("the coordinator", member.hub.name) if member.hub is not None
                          else ("the node", member.name))
        if self.credentials is not None and "Hostname Verification" in details:
            return (f"{peer} at {member.address} does not have a certificate for {identity} "
                    f"(refused: identity mismatch); {details}")
        if member.hub is not None and member.name not in details:
            return f"{member.name} is reached through the coordinator at {member.address}: " \
                f"{details}"
        return details

    async def call_all(self, call: Call[T], timeout: float = 10.0) -> list[Success[T] | Failure]:
        """Run `call` against every member concurrently; results in member order. The
        answers' audit heads go to the witness file (one write for the fan-out)."""
        outcomes = list(await asyncio.gather(*(self._one(m, call, timeout)
                                               for m in self.members)))
        if self.witness is not None:
            self.witness.observe([(o.member, o.value) for o in outcomes
                                  if isinstance(o, Success)])
        return outcomes

    async def close(self) -> None:
        for channel, _ in self._stubs.values():
            await channel.close(grace=None)
        self._stubs.clear()
