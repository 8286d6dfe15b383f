"""What a secure session's transport costs: N unary calls against one bidirectional stream
carrying N messages (issue 13, before building the Session stream).

A sync gRPC server (as the node: thread pool, mutual TLS) runs in a child process; the
client is grpc.aio (as the coordinator) over loopback mutual TLS. Each "session" is either
N unary calls in sequence or one stream with N request/response pairs; `--concurrent`
sessions run at once (as the coordinator's K members). Messages are the protocol's own
(a ConsistencyRequest with 25 survivors, answered with a ConsistencySignature), so framing
and protobuf cost are realistic, and the server has the node's allow-list interceptor (run
once per call: five times for unary sessions, once for a stream). A third kind feeds the
stream's requests from an async generator instead of `write`. Prints the server's and the
client's process CPU per message and per session for each kind, and their ratios to unary.
Nothing in the handlers does work: what is measured is gRPC, TLS, protobuf and thread
hand-offs.
Usage: python benchmarks/grpc_stream_cost.py [--messages 5] [--sessions 400]
       [--concurrent 25]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path

import grpc

from bridgestat.coordinator import ca
from bridgestat.node.tls import AllowList, caller_identity
from bridgestat.v1 import secure_aggregation_pb2 as spb

UNARY = "/bench.Bench/Unary"
STREAM = "/bench.Bench/Stream"
SURVIVORS = [f"member-{i:02d}" for i in range(1, 26)]


def _answer(request: spb.ConsistencyRequest) -> spb.ConsistencyResponse:
    return spb.ConsistencyResponse(signature=spb.ConsistencySignature(
        member=request.survivors[0], signature=b"s" * 71))


def _unary(request: spb.ConsistencyRequest, context: grpc.ServicerContext
           ) -> spb.ConsistencyResponse:
    caller_identity(context)  # as the node's handlers: who is calling
    return _answer(request)


def _stream(requests: Iterator[spb.ConsistencyRequest], context: grpc.ServicerContext
            ) -> Iterator[spb.ConsistencyResponse]:
    caller_identity(context)  # once per stream
    for request in requests:
        yield _answer(request)


def serve(folder: Path) -> None:
    """The child: a sync server with both methods; prints its port, then answers each
    line on stdin with its process CPU seconds."""
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            _unary, spb.ConsistencyRequest.FromString,
            spb.ConsistencyResponse.SerializeToString),
        "Stream": grpc.stream_stream_rpc_method_handler(
            _stream, spb.ConsistencyRequest.FromString,
            spb.ConsistencyResponse.SerializeToString)}
    # as the node's server: 8 workers and the allow-list interceptor on every call
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         interceptors=[AllowList(("coordinator",))])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Bench",
                                                                          handlers),))
    creds = grpc.ssl_server_credentials(
        [((folder / "node.key").read_bytes(), (folder / "node.pem").read_bytes())],
        root_certificates=(folder / "ca.pem").read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    print(port, flush=True)
    for _ in sys.stdin:
        times = os.times()
        print(times.user + times.system, flush=True)
    server.stop(None)


async def _sessions(channel: grpc.aio.Channel, kind: str, sessions: int, messages: int,
                    concurrent: int) -> None:
    request = spb.ConsistencyRequest(session="0" * 32, survivors=SURVIVORS)
    unary = channel.unary_unary(UNARY, spb.ConsistencyRequest.SerializeToString,
                                spb.ConsistencyResponse.FromString)
    stream = channel.stream_stream(STREAM, spb.ConsistencyRequest.SerializeToString,
                                   spb.ConsistencyResponse.FromString)

    async def one() -> None:
        if kind == "unary":
            for _ in range(messages):
                await unary(request, timeout=10)
            return
        if kind == "stream-iter":  # requests from a queue-fed async generator
            queue: asyncio.Queue[spb.ConsistencyRequest | None] = asyncio.Queue()

            async def requests() -> AsyncIterator[spb.ConsistencyRequest]:
                while (item := await queue.get()) is not None:
                    yield item
            call = stream(requests(), timeout=10)
            replies = call.__aiter__()
            for _ in range(messages):
                queue.put_nowait(request)
                await replies.__anext__()
            queue.put_nowait(None)
            return
        call = stream(timeout=10)
        for _ in range(messages):
            await call.write(request)
            await call.read()
        await call.done_writing()
        await call.read()  # EOF: the server's end of stream

    for start in range(0, sessions, concurrent):
        await asyncio.gather(*(one() for _ in range(min(concurrent, sessions - start))))


class Server:
    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(folder)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def cpu(self) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(10)


async def measure(folder: Path, port: int, server: Server, kind: str, sessions: int,
                  messages: int, concurrent: int) -> tuple[float, float, float]:
    """(server CPU, client CPU, wall) in seconds for `sessions` sessions of `kind`."""
    creds = grpc.ssl_channel_credentials((folder / "ca.pem").read_bytes(),
                                         (folder / "coordinator.key").read_bytes(),
                                         (folder / "coordinator.pem").read_bytes())
    async with grpc.aio.secure_channel(
            f"127.0.0.1:{port}", creds,
            options=[("grpc.ssl_target_name_override", "node")]) as channel:
        await _sessions(channel, kind, concurrent, messages, concurrent)  # warm up
        server_before, client_before = server.cpu(), time.process_time()
        wall = time.perf_counter()
        await _sessions(channel, kind, sessions, messages, concurrent)
        wall = time.perf_counter() - wall
        return server.cpu() - server_before, time.process_time() - client_before, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5, help="messages per session")
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--concurrent", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of both kinds")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ca.init_ca(folder)
        for name in ("node", "coordinator"):
            ca.issue(folder, name)
        server = Server(folder)
        try:
            print(f"load average {os.getloadavg()[0]:.1f}; {args.sessions} sessions of "
                  f"{args.messages} messages, {args.concurrent} at once, loopback mutual TLS")
            kinds = ("unary", "stream", "stream-iter")
            totals = {kind: [0.0, 0.0, 0.0] for kind in kinds}
            for _ in range(args.rounds):
                for kind in kinds:
                    got = asyncio.run(measure(folder, server.port, server, kind,
                                              args.sessions, args.messages, args.concurrent))
                    totals[kind] = [a + b for a, b in zip(totals[kind], got, strict=True)]
            n = args.sessions * args.rounds
            for kind, (srv, cli, wall) in totals.items():
                print(f"{kind:11s}: server {1e6 * srv / n / args.messages:6.0f} us/message "
                      f"({1e3 * srv / n:.2f} ms/session), client "
                      f"{1e6 * cli / n / args.messages:6.0f} us/message "
                      f"({1e3 * cli / n:.2f} ms/session), wall {1e3 * wall / n:.2f} ms/session")
            us, uc, _ = totals["unary"]
            for kind in kinds[1:]:
                ss, sc, _ = totals[kind]
                print(f"{kind}/unary CPU: server {ss / us:.2f}, client {sc / uc:.2f}")
            print(f"load average {os.getloadavg()[0]:.1f}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
