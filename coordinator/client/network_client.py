"""The network client: one call to every member's node, asyncio-native or blocking.

    async with AsyncNetwork.from_file("network.yaml") as net:      # in asyncio code
        result = await net.run(query)

    with Network.from_file("network.yaml") as net:                 # anywhere else
        result = net.run(query)

`AsyncNetwork` is the one implementation: it fans calls out over grpc.aio (`fanout`) and checks
every release. `Network` is its blocking twin and works wherever Python runs (a script, a
Jupyter kernel whose loop is already running, code inside an asyncio loop, several worker
threads at once): it owns a private event loop in a daemon thread, submits each coroutine to it
and waits, so its grpc.aio channels always live on that one loop. `synced` turns an
`AsyncNetwork` coroutine method into the matching `Network` method; every raw call here is made
that way, and so can any method added to both later.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Concatenate, ParamSpec, Self, TypeVar

import pandas as pd

from bridgestat.coordinator.client.fanout import Failure, Fanout, Success
from bridgestat.coordinator.client.network_file import (
    Member,
    SecureSettings,
    TlsFiles,
    load_network,
    require_tls,
)
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.client.wire import (
    MemberRelease,
    check_release,
    query_to_pb,
    release_from_pb,
)
from bridgestat.coordinator.client.witness import Witness, default_path
from bridgestat.coordinator.secure.aggregation import Hook, SecureDriver, SecureResult
from bridgestat.coordinator.statistics.pooling import PoolingError
from bridgestat.coordinator.statistics.tables import QueryResult
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

__all__ = ["AsyncNetwork", "CallLog", "CallRecord", "ClientClosed", "Network", "synced"]

P = ParamSpec("P")
R = TypeVar("R")
CLOSE_SECONDS = 10.0  # longest wait for the loop thread to close its channels and stop


class ClientClosed(RuntimeError):
    """A call on a network client after its `close()` (or `aclose()`)."""

    def __init__(self, client: str) -> None:
        super().__init__(f"this {client} is closed; open a new one (e.g. "
                         f"{client}.from_file('network.yaml')) to query the network again")


@dataclass(frozen=True)
class CallRecord:
    """One fanned-out call: the members asked, and why those that gave no answer did not."""

    members: tuple[str, ...]
    failures: Mapping[str, Failure]

    @property
    def answered(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m not in self.failures)


@dataclass
class CallLog:
    """The calls a client made while `recording()` was open (every thread's), in order."""

    calls: list[CallRecord] = field(default_factory=list)


class AsyncNetwork:
    """An asyncio client of every member's node. Its channels belong to the event loop of its
    first call: use it from that loop only (a `Network` per thread otherwise)."""

    def __init__(self, members: Sequence[Member], timeout: float = 10.0, *,
                 tls: TlsFiles | None = None, insecure: bool = False,
                 witness: Path | None = None,
                 secure: SecureSettings | None = None) -> None:
        """Mutual TLS with `tls` (the network file's); plain text only with `insecure`.
        Channels open on first use, on the loop that makes the call. `witness`: the file the
        members' audit heads are recorded in (`coordinator/client/witness.py`; None: not recorded).
        `secure`: t and c of secure aggregation (the network file's; default from the number
        of members)."""
        require_tls(tls, insecure, type(self).__name__)
        self.members = tuple(members)
        self.timeout = timeout
        self.tls = tls
        self.secure = secure or SecureSettings.default(len(self.members))
        self._insecure = insecure
        self._secure_driver: SecureDriver | None = None
        self._fanout = Fanout(self.members, tls.channel_credentials() if tls else None,
                              Witness(witness) if witness is not None else None)
        self._logs: list[CallLog] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_file(cls, path: str | Path, timeout: float = 10.0, *,
                  insecure: bool = False, witness: Path | None = None) -> Self:
        """The client of the network file at `path` (members and TLS identity); the members'
        audit heads are witnessed in `witness` (default: `<network>.witness.jsonl` beside it)."""
        return cls(timeout=timeout, **_from_file(path, insecure, witness))

    async def aclose(self) -> None:
        """Close every channel; harmless when already closed."""
        self._closed = True
        await self._fanout.close()
        if self._secure_driver is not None:
            await self._secure_driver.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @contextmanager
    def recording(self) -> Iterator[CallLog]:
        """Collect a `CallRecord` of every call made while open (a script's exit code)."""
        log = CallLog()
        self._logs.append(log)
        try:
            yield log
        finally:
            self._logs.remove(log)

    def _check_open(self) -> None:
        """Refuse a call after `aclose()`, or from another loop than the channels'."""
        if self._closed:
            raise ClientClosed(type(self).__name__)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(f"this {type(self).__name__} was first used on another event "
                               "loop, where its channels live; make one client per loop")

    def _record(self, failures: Mapping[str, Failure]) -> None:
        record = CallRecord(tuple(m.name for m in self.members), dict(failures))
        for log in tuple(self._logs):
            log.calls.append(record)

    # -- raw calls -------------------------------------------------------------------------

    async def node_infos(self) -> dict[str, pb.GetNodeInfoResponse | Failure]:
        """Every member's GetNodeInfo answer (schema, budget), or its failure."""
        self._check_open()

        async def call(stub: pb_grpc.NodeServiceStub, timeout: float) -> pb.GetNodeInfoResponse:
            reply: pb.GetNodeInfoResponse = await stub.GetNodeInfo(pb.GetNodeInfoRequest(),
                                                                   timeout=timeout)
            return reply
        outcomes = await self._fanout.call_all(call, self.timeout)
        self._record({o.member: o for o in outcomes if isinstance(o, Failure)})
        return {o.member: (o.value if isinstance(o, Success) else o) for o in outcomes}

    async def info(self) -> pd.DataFrame:
        """Every member: reachable, schema version, budget spent and left."""
        return pd.DataFrame([_info_row(member, info)
                             for member, info in (await self.node_infos()).items()])

    async def run(self, query: Query, key: str | None = None) -> QueryResult:
        """Send one query to every member; the same key makes a retry free on every node."""
        self._check_open()
        key = key or uuid.uuid4().hex
        request = pb.RunQueryRequest(idempotency_key=key, query=query_to_pb(query))
        decoded: dict[int, MemberRelease | PoolingError] = {}  # by id of the reply (kept)

        async def call(stub: pb_grpc.NodeServiceStub, timeout: float) -> pb.RunQueryResponse:
            reply: pb.RunQueryResponse = await stub.RunQuery(request, timeout=timeout)
            decoded[id(reply)] = _decoded(query, reply)  # while slower members still answer
            return reply
        outcomes = await self._fanout.call_all(call, self.timeout)
        releases: dict[str, MemberRelease] = {}
        failures = {o.member: o for o in outcomes if isinstance(o, Failure)}
        for outcome in outcomes:
            if isinstance(outcome, Success):
                release = decoded[id(outcome.value)]
                if isinstance(release, PoolingError):  # a member answering garbage fails alone
                    failures[outcome.member] = Failure(outcome.member, "INVALID_RESPONSE",
                                                       f"malformed release: {release}")
                    continue
                releases[outcome.member] = release
        self._record(failures)
        return QueryResult(query, key, tuple(m.name for m in self.members), releases, failures)


    async def run_secure(self, query: Query, key: str | None = None, *,
                         hook: Hook | None = None) -> SecureResult:
        """One query by secure aggregation (issue 13): the network's noisy sums only, its
        loss as rho (`coordinator/secure/aggregation.py`). `hook(round)` runs before each round (tests)."""
        self._check_open()
        if self._secure_driver is None:
            self._secure_driver = SecureDriver(self.members, self.tls, self.secure,
                                               self.timeout, insecure=self._insecure)
            if self._secure_driver.warning:
                warnings.warn(self._secure_driver.warning, stacklevel=2)
        result = await self._secure_driver.run(query, key, hook=hook)
        self._record({m: Failure(m, "SECURE_DROPPED", why) for m, why in result.dropped.items()})
        return result


def _decoded(query: Query, reply: pb.RunQueryResponse) -> MemberRelease | PoolingError:
    """A member's release, checked against its query, or why it is malformed."""
    try:
        release = release_from_pb(reply)
        check_release(query, release)
    except PoolingError as exc:
        return exc
    return release


def _from_file(path: str | Path, insecure: bool, witness: Path | None) -> dict[str, Any]:
    """A client's arguments from the network file at `path`: members, TLS identity, secure
    aggregation's settings, and where the members' audit heads are witnessed."""
    spec = load_network(Path(path))
    require_tls(spec.tls, insecure, str(path))
    return {"members": spec.members, "tls": spec.tls, "insecure": insecure,
            "witness": witness or default_path(Path(path)), "secure": spec.secure_settings}


def _info_row(member: str, info: pb.GetNodeInfoResponse | Failure) -> dict[str, Any]:
    """One row of `info()`: the member's node and budget, or why it did not answer."""
    if isinstance(info, Failure):
        return {"member": member, "reachable": False, "status": f"{info.code}: {info.message}"}
    budget = info.budget
    return {"member": member, "reachable": True, "node_id": info.node_id,
            "schema": f"{info.schema.name} {info.schema.version}",
            "dataset": budget.dataset,
            "epsilon_spent": budget.spent.epsilon,
            "epsilon_remaining": budget.remaining.epsilon,
            "epsilon_total": budget.total.epsilon,
            "rho_spent": budget.spent.rho, "delta": budget.total.delta,
            "max_epsilon_per_query": budget.max_per_query.epsilon,
            **_period_columns(budget),
            "software": info.software_version, "status": "ok"}


def _period_columns(budget: pb.Budget) -> dict[str, Any]:
    """The current period's cap, spent and left when the member's policy sets one."""
    if not budget.HasField("period"):
        return {"period": None, "period_epsilon_spent": None, "period_epsilon_remaining": None}
    period = budget.period
    return {"period": f"{period.period} {period.name}",
            "period_epsilon_spent": period.spent.epsilon,
            "period_epsilon_remaining": period.remaining.epsilon}


class _LoopThread:
    """A private event loop running forever in a daemon thread; any other thread submits a
    coroutine and blocks until it is done."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.closed = False
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()  # only touched on the loop
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, R], client: str) -> R:
        """Run `coroutine` on the loop and wait for it; an interrupt (Ctrl-C in a notebook)
        cancels it there too."""
        with self._lock:
            if self.closed or threading.current_thread() is self.thread:
                coroutine.close()  # never started: no "never awaited" warning
                if self.closed:
                    raise ClientClosed(client)
                raise RuntimeError(f"a blocking {client} method was called on the client's own "
                                   "event loop; use AsyncNetwork in coroutines there")
            future = asyncio.run_coroutine_threadsafe(self._tracked(coroutine), self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.closed:  # close() from another thread cancelled the call
                raise ClientClosed(client) from None
            raise
        except BaseException:
            future.cancel()
            raise

    async def _tracked(self, coroutine: Coroutine[Any, Any, R]) -> R:
        """`coroutine`, its task known to `_shut_down` (which cancels what is in flight)."""
        task = asyncio.current_task()  # always one: run_coroutine_threadsafe made it
        mine = {task} if task is not None else set()
        self._tasks |= mine
        try:
            return await coroutine
        finally:
            self._tasks -= mine

    def stop(self, client: AsyncNetwork) -> None:
        """Cancel calls in flight, close `client`'s channels on the loop, stop the thread and
        close the loop. Harmless when already stopped; callable from any thread."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if threading.current_thread() is self.thread:  # garbage collected on the loop itself
            self.loop.create_task(self._shut_down(client))
            return
        asyncio.run_coroutine_threadsafe(self._shut_down(client), self.loop)
        self.thread.join(CLOSE_SECONDS)
        if not self.thread.is_alive():
            self.loop.close()

    async def _shut_down(self, client: AsyncNetwork) -> None:
        """On the loop: cancel the calls in flight, close the channels, stop the loop."""
        loop = asyncio.get_running_loop()
        try:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await client.aclose()
            await loop.shutdown_asyncgens()
        finally:
            loop.stop()


def synced(method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]
           ) -> Callable[Concatenate[Network, P], R]:
    """The blocking twin of an `AsyncNetwork` coroutine method, for the `Network` class body:
    `info = synced(AsyncNetwork.info)` makes `net.info()` run `await net.aio.info()` on the
    client's loop and return its result."""
    @functools.wraps(method)
    def blocking(self: Network, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._wait(method(self.aio, *args, **kwargs))
    blocking.__qualname__ = f"Network.{method.__name__}"
    return blocking


class Network:
    """A blocking client of every member's node. Safe to share between threads, and usable
    where an event loop is already running (Jupyter, async code): every call runs on the
    client's own loop in a background thread (inside a coroutine a call still blocks that
    coroutine's loop while it waits; `AsyncNetwork` does not). Close it (or use `with`) to
    stop the thread; one nobody closed stops when it is garbage or at exit."""

    asynchronous: ClassVar[type[AsyncNetwork]] = AsyncNetwork
    """The client whose coroutine methods this one's blocking methods run."""

    def __init__(self, members: Sequence[Member], timeout: float = 10.0, *,
                 tls: TlsFiles | None = None, insecure: bool = False,
                 witness: Path | None = None,
                 secure: SecureSettings | None = None) -> None:
        """Mutual TLS with `tls` (the network file's); plain text only with `insecure`;
        `witness` and `secure` as in `AsyncNetwork`."""
        self.aio = self.asynchronous(members, timeout, tls=tls, insecure=insecure,
                                     witness=witness, secure=secure)
        self._thread = _LoopThread(f"bridgestat-{type(self).__name__}-{id(self):x}")
        # A client nobody closed still stops its thread once it is garbage (or at exit).
        self._finalizer = weakref.finalize(self, self._thread.stop, self.aio)

    @property
    def members(self) -> tuple[Member, ...]:
        return self.aio.members

    @property
    def timeout(self) -> float:
        return self.aio.timeout

    @property
    def tls(self) -> TlsFiles | None:
        return self.aio.tls

    @classmethod
    def from_file(cls, path: str | Path, timeout: float = 10.0, *,
                  insecure: bool = False, witness: Path | None = None) -> Self:
        """The client of the network file at `path` (members and TLS identity); the members'
        audit heads are witnessed in `witness` (default: `<network>.witness.jsonl` beside it)."""
        return cls(timeout=timeout, **_from_file(path, insecure, witness))

    def close(self) -> None:
        """Close the channels and stop the loop thread; harmless when already closed."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._thread.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def recording(self) -> AbstractContextManager[CallLog]:
        """Collect a `CallRecord` of every call made while open (see AsyncNetwork)."""
        return self.aio.recording()

    def _wait(self, coroutine: Coroutine[Any, Any, R]) -> R:
        """Run one of `self.aio`'s coroutines on the client's loop and return its result."""
        return self._thread.call(coroutine, type(self).__name__)

    # -- raw calls: the blocking twins of AsyncNetwork's -------------------------------------

    node_infos = synced(AsyncNetwork.node_infos)
    info = synced(AsyncNetwork.info)
    run = synced(AsyncNetwork.run)
    run_secure = synced(AsyncNetwork.run_secure)


