"""Concurrent fan-out of one request to every member, each call with its own deadline.

A member that is down, slow or refuses yields a `Failure` naming it and why; the others'
answers are kept, so pooling can go on with the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from bridgestat.coordinator.network import Member
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

T = TypeVar("T")


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


class Fanout:
    """Holds one channel per member (created lazily, reused) and fans calls out over them."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = tuple(members)
        self._stubs: dict[str, tuple[grpc.aio.Channel, pb_grpc.NodeServiceStub]] = {}

    def _stub(self, member: Member) -> pb_grpc.NodeServiceStub:
        if member.name not in self._stubs:
            channel = grpc.aio.insecure_channel(member.address)
            self._stubs[member.name] = (channel, pb_grpc.NodeServiceStub(channel))
        return self._stubs[member.name][1]

    async def _one(self, member: Member, call: Call[T], timeout: float) -> Success[T] | Failure:
        try:
            return Success(member.name, await call(self._stub(member), timeout))
        except grpc.aio.AioRpcError as exc:
            return Failure(member.name, exc.code().name, exc.details() or "")

    async def call_all(self, call: Call[T], timeout: float = 10.0) -> list[Success[T] | Failure]:
        """Run `call` against every member concurrently; results in member order."""
        return list(await asyncio.gather(*(self._one(m, call, timeout) for m in self.members)))

    async def close(self) -> None:
        for channel, _ in self._stubs.values():
            await channel.close()
        self._stubs.clear()
