"""How the coordinator reaches each member in one secure session: one `Session` stream per
member carrying the five rounds, or the five unary calls for a node that has no stream.

`SessionLinks` holds one session's link per member. A member is first asked on a stream;
when its node (or an older hub) answers the stream UNIMPLEMENTED, or RESOURCE_EXHAUSTED
(all its session streams in use), or the advertise could not be written at all, the
advertise is sent again as a unary call and the member's later rounds follow as unary
calls (UNIMPLEMENTED is remembered for the driver's lifetime). Nothing was read by the node
in any of these cases, so nothing is asked twice; a dead node then fails the unary call.

Every round has its own deadline (`asyncio.timeout` around the stream's write and read, the
call's timeout for a unary call); a failure is a `RoundFailed` with the status code, and a
failed or timed-out stream is cancelled (its node then closes the session). A stream's
whole call also has a deadline (`STREAM_ROUNDS` rounds' worth), so a node never holds a
worker thread for a coordinator that hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

from bridgestat.common import secagg as sa
from bridgestat.common.secagg import SecAggError
from bridgestat.v1 import secure_aggregation_pb2 as spb
from bridgestat.v1 import secure_aggregation_pb2_grpc as spb_grpc

Request = (spb.AdvertiseRequest | spb.ShareKeysRequest | spb.MaskedInputRequest
           | spb.ConsistencyRequest | spb.UnmaskRequest)
Stub = spb_grpc.SecureAggregationServiceStub
STREAM_ROUNDS = 10  # a stream's whole deadline: twice the five rounds' deadlines
FIELDS = {sa.ADVERTISE: "advertise", sa.SHARE_KEYS: "share_keys",
          sa.MASKED_INPUT: "masked_input", sa.CONSISTENCY: "consistency",
          sa.UNMASK: "unmask"}  # round -> the oneof field of SessionRequest/SessionResponse
METHODS = {sa.ADVERTISE: "Advertise", sa.SHARE_KEYS: "ShareKeys",
           sa.MASKED_INPUT: "MaskedInput", sa.CONSISTENCY: "Consistency",
           sa.UNMASK: "Unmask"}  # round -> its unary method
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # a stream's end (not in grpc-stubs)
FALL_BACK = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class RoundFailed(Exception):
    """A member's round failed: its status code and details (the node's own message);
    `unsent`: the request never left (the stream's write failed)."""

    def __init__(self, code: grpc.StatusCode, details: str, unsent: bool = False) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.unsent = code, details, unsent


def session_bytes(round_name: str, request: Request) -> bytes:
    """The SessionRequest carrying `request`, serialized."""
    message: dict[str, Any] = {FIELDS[round_name]: request}
    return spb.SessionRequest(**message).SerializeToString()


class UnaryLink:
    """Each round one unary call (a node without the Session stream)."""

    def __init__(self, stub: Stub) -> None:
        self.stub = stub

    async def ask(self, round_name: str, request: Request, timeout: float) -> Any:
        method = getattr(self.stub, METHODS[round_name])
        try:
            return await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise RoundFailed(exc.code(), exc.details() or "") from None

    def close(self) -> None:
        """Nothing stays open between unary calls."""


class StreamLink:
    """The rounds as messages on one Session stream, opened at the first round. It writes
    SessionRequest bytes (`session_bytes`): a request shared by every member is serialized
    once per round, not once per member."""

    def __init__(self, open_call: Callable[[], Any]) -> None:
        self._open_call = open_call
        self._call: Any = None

    async def ask(self, round_name: str, raw: bytes, timeout: float) -> Any:
        if self._call is None:
            self._call = self._open_call()
        try:
            async with asyncio.timeout(timeout):  # cheaper than wait_for: no extra task
                return await self._exchange(round_name, raw)
        except TimeoutError:
            self.close()
            raise RoundFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"no answer within {timeout:g} s") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            raise await self._failure(exc) from None
        except SecAggError:
            self.close()
            raise

    async def _exchange(self, round_name: str, raw: bytes) -> Any:
        try:
            await self._call.write(raw)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.INTERNAL:
                raise
            # grpc.aio's status for a write that gRPC core could not start because the call
            # had ended there: the connection broke (a node killed just before the round),
            # or, on a new stream, the node's own answer (UNIMPLEMENTED) had not reached
            # Python yet; either way the node read nothing
            raise RoundFailed(grpc.StatusCode.UNAVAILABLE, "the connection broke before the "
                              f"request was sent ({exc.details()})", unsent=True) from None
        response = await self._call.read()
        if response is EOF:
            code = await self._call.code()
            details = await self._call.details()
            raise RoundFailed(code if code is not grpc.StatusCode.OK
                              else grpc.StatusCode.UNAVAILABLE,
                              details or "the node ended the session stream")
        field = FIELDS[round_name]
        answered = response.WhichOneof("round")
        if answered != field:
            raise SecAggError(f"the member answered {answered!r} to {field!r}")
        return getattr(response, field)

    async def _failure(self, exc: Exception) -> RoundFailed:
        """The stream's own final status when it had ended before a write ('already
        finished'), else the error's."""
        if self._call.done():
            code = await self._call.code()
            if code is not grpc.StatusCode.OK:
                return RoundFailed(code, await self._call.details() or "")
        if isinstance(exc, grpc.aio.AioRpcError):
            return RoundFailed(exc.code(), exc.details() or "")
        return RoundFailed(grpc.StatusCode.UNAVAILABLE, "the node had ended the session stream")

    def close(self) -> None:
        """Cancel the stream unless it already ended (its node closes the session)."""
        if self._call is not None and not self._call.done():
            self._call.cancel()


class SessionLinks:
    """One session's links, one per member, opened at the member's first round.

    `stub(member)` is its unary stub; `session(member)` opens its Session stream, written
    with SessionRequest bytes, with the stream's whole deadline and the member's metadata."""

    def __init__(self, stub: Callable[[str], Stub], session: Callable[[str, float], Any],
                 timeout: float, unary_only: set[str]) -> None:
        self._stub, self._session, self.timeout = stub, session, timeout
        self._unary_only = unary_only  # the driver's: members whose node has no stream
        self._links: dict[str, StreamLink | UnaryLink] = {}
        self._unary: set[str] = set()  # members asked with unary calls in this session
        self._last: tuple[Request | None, bytes] = (None, b"")  # the last request serialized

    def transport(self, member: str) -> str:
        """'stream' or 'unary': how the member is reached in this session."""
        return "stream" if isinstance(self._links.get(member), StreamLink) else "unary"

    def unary(self) -> tuple[str, ...]:
        """The members asked with unary calls in this session (so far), sorted."""
        return tuple(sorted(self._unary))

    async def ask(self, member: str, round_name: str, request: Request) -> Any:
        """The member's answer to one round, within the round's deadline; raises
        RoundFailed (or SecAggError for an answer of the wrong kind)."""
        link = self._links.get(member)
        if link is None:
            link = self._links[member] = self._open(member)
        if isinstance(link, UnaryLink):
            return await link.ask(round_name, request, self.timeout)
        try:
            return await link.ask(round_name, self._bytes(round_name, request), self.timeout)
        except RoundFailed as exc:
            if round_name != sa.ADVERTISE or not (exc.code in FALL_BACK or exc.unsent):
                raise
            if exc.code is grpc.StatusCode.UNIMPLEMENTED:
                self._unary_only.add(member)
            unary = self._links[member] = UnaryLink(self._stub(member))
            self._unary.add(member)
            return await unary.ask(round_name, request, self.timeout)

    def drop(self, member: str) -> None:
        """Close a member's link (it dropped out, or the session ended)."""
        link = self._links.pop(member, None)
        if link is not None:
            link.close()

    def close(self) -> None:
        for member in list(self._links):
            self.drop(member)

    def _bytes(self, round_name: str, request: Request) -> bytes:
        """The request's SessionRequest bytes, serialized once for all members it goes to
        (a round's shared request is asked of every member in turn)."""
        last, raw = self._last
        if last is not request:
            raw = session_bytes(round_name, request)
            self._last = (request, raw)
        return raw

    def _open(self, member: str) -> StreamLink | UnaryLink:
        if member in self._unary_only:
            self._unary.add(member)
            return UnaryLink(self._stub(member))
        deadline = STREAM_ROUNDS * self.timeout
        return StreamLink(lambda: self._session(member, deadline))
