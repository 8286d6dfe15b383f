"""Fan-out latency of a pooled mean as the network grows (targets: 25 nodes <= 25 ms p50,
1,000 nodes <= 1.5 s p50), against the transport floor measured in the same run.

One synthetic network of the largest size is written once; for each size N its first N members
are served by `node_host.py` processes (each member its own gRPC server, port, engine and
SQLite ledger; `--hosts` processes share them, since 1,000 node processes do not fit on two
cores). The researcher's whole call `Network.mean(...)` is timed: fan-out over grpc.aio, N node
releases with their ledger charges, pooling, the DataFrame. Two floors are printed beside it:
one raw gRPC round trip to one node (grpc.health.v1 Check), and the same raw call fanned out to
all N. CPU per query is printed for the pooled mean and for the raw fan-out (the transport's
share): the coordinator's own, and the nodes' per member (from /proc). On a real network,
where every node has its own machine, the coordinator's part is what grows with N; here the
nodes' work also shares the machine's two cores, so the p50 is the sum of all members' work,
not the slowest one's.
Mutual TLS as deployed, unless `--insecure`.
Usage: python benchmarks/fanout_scale.py [--nodes 1 10 25 100 1000] [--participants 500]
       [--queries 50] [--hosts 2] [--insecure]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.network_file import Member, TlsFiles, load_network
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.demo.local import LocalMember

HOST = Path(__file__).with_name("node_host.py")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def hosted(members: list[LocalMember], hosts: int, tls: bool,
           log: IO[str]) -> Iterator[list[int]]:
    """Serve `members` from `hosts` processes (their stderr to `log`); wait until every
    server is up."""
    chunks = [members[i::hosts] for i in range(min(hosts, len(members)))]
    processes = [subprocess.Popen(
        [sys.executable, str(HOST), *(["--tls"] if tls else []),
         *(str(m.config) for m in chunk)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        for chunk in chunks]
    try:
        for process, chunk in zip(processes, chunks, strict=True):
            line = process.stdout.readline() if process.stdout else ""
            if line.strip() != f"ready {len(chunk)}":
                raise RuntimeError(f"node host did not start: {line!r}")
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def cpu_ms(pids: Sequence[int]) -> float:
    """User plus system CPU time of processes so far, in ms (/proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Timing:
    wall_ms: list[float]  # per call
    coordinator_cpu_ms: float  # this process, mean per call
    nodes_cpu_ms: float  # all node hosts together, mean per call


def timed(call: Callable[[], object], repeats: int, hosts: Sequence[int]) -> Timing:
    """Wall times of `call` and the CPU it cost here and in the node hosts."""
    times, cpu, nodes = [], time.process_time(), cpu_ms(hosts)
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return Timing(times, (time.process_time() - cpu) * 1000 / repeats,
                  (cpu_ms(hosts) - nodes) / repeats)


class HealthFanout:
    """The transport floor: a raw grpc.health.v1 Check to each member, fanned out like the
    coordinator's calls (grpc.aio, one channel per member, the same TLS identity)."""

    def __init__(self, members: Sequence[Member], tls: TlsFiles | None) -> None:
        self.loop = asyncio.new_event_loop()
        credentials = tls.channel_credentials() if tls else None

        async def open_all() -> list[grpc.aio.Channel]:  # aio channels bind to this loop
            return [grpc.aio.secure_channel(m.address, credentials,
                                            options=[("grpc.ssl_target_name_override", m.name)])
                    if credentials else grpc.aio.insecure_channel(m.address) for m in members]
        self.channels = self.loop.run_until_complete(open_all())
        self.stubs = [health_pb2_grpc.HealthStub(channel) for channel in self.channels]

    def __call__(self) -> None:
        async def check_all() -> None:
            await asyncio.gather(*(stub.Check(health_pb2.HealthCheckRequest(), timeout=30)
                                   for stub in self.stubs))
        self.loop.run_until_complete(check_all())

    def close(self) -> None:
        for channel in self.channels:
            self.loop.run_until_complete(channel.close())
        self.loop.close()


def measure(net: Network, queries: int, hosts: Sequence[int]) -> dict[str, Timing]:
    one, everyone = HealthFanout(net.members[:1], net.tls), HealthFanout(net.members, net.tls)
    try:
        for _ in range(3):  # warm channels, TLS sessions and the nodes' plan caches
            net.mean("assessment", "bridge_total", epsilon=0.5)
            one()
            everyone()
        frame = net.mean("assessment", "bridge_total", epsilon=0.5)
        failed = frame[frame.status != "ok"]
        if len(failed):
            raise RuntimeError(f"members failed: {failed[['member', 'status']].to_dict()}")
        return {
            "floor_one": timed(one, queries, hosts),
            "floor_all": timed(everyone, queries, hosts),
            "pooled": timed(lambda: net.mean("assessment", "bridge_total", epsilon=0.5),
                            queries, hosts),
        }
    finally:
        one.close()
        everyone.close()


def report(n: int, times: dict[str, Timing]) -> str:
    pooled = times["pooled"]
    p50, floor = statistics.median(pooled.wall_ms), statistics.median(times["floor_all"].wall_ms)
    return (f"{n:>5} | {p50:8.1f} | {percentile(pooled.wall_ms, 0.95):8.1f} | "
            f"{statistics.median(times['floor_one'].wall_ms):10.2f} | {floor:10.1f} | "
            f"{p50 / floor:11.2f} | {pooled.coordinator_cpu_ms:12.1f} | "
            f"{pooled.nodes_cpu_ms / n:10.2f} | {times['floor_all'].coordinator_cpu_ms:12.1f} | "
            f"{times['floor_all'].nodes_cpu_ms / n:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 10, 25, 100, 1000])
    parser.add_argument("--participants", type=int, default=500)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--hosts", type=int, default=2, help="node host processes")
    parser.add_argument("--insecure", action="store_true", help="plain text instead of mTLS")
    args = parser.parse_args()
    largest, tls = max(args.nodes), not args.insecure
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        synth.write_network(root, members=largest, seed=5,
                            sizes=[args.participants] * largest)
        members = local.write_configs(root, total_epsilon=1e6, max_per_query=1.0, tls=tls)
        print(f"wrote {largest} members x {args.participants} participants "
              f"({'mutual TLS' if tls else 'plain text'}, {args.hosts} host processes) "
              f"in {time.perf_counter() - started:.0f} s", flush=True)
        spec = load_network(root / "network.yaml")
        print("nodes |   p50 ms |   p95 ms | floor 1 ms | floor N ms | p50/floor N | "
              "coord CPU ms | node CPU ms (per member) | floor N: coord CPU ms | node CPU ms "
              "(per member)")
        for n in args.nodes:
            with open(root / f"hosts-{n}.log", "w") as log, \
                    hosted(members[:n], args.hosts, tls, log) as pids, \
                    Network(spec.members[:n], timeout=30, tls=spec.tls,
                            insecure=not tls) as net:
                print(report(n, measure(net, args.queries, pids)), flush=True)
    print("targets: 25 nodes p50 <= 25 ms; 1,000 nodes p50 <= 1,500 ms")


if __name__ == "__main__":
    main()
