"""Pooled-mean round trip over K local node processes (target: 5 x 10k, p50 under 25 ms).

Starts K real `bridgestat-node serve` processes on loopback with ~N participants each,
then times the researcher's whole call `Network.mean(...)`: fan-out over grpc.aio,
K node releases (ledger charge included), pooling, DataFrame. The floor printed beside it
is one GetNodeInfo round trip to one node.
Usage: python benchmarks/fanout_latency.py [--members 5] [--participants 10000] [--queries 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.demo import local, synth


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--participants", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.write_network(root, members=args.members, seed=5,
                            sizes=[args.participants] * args.members)
        members = local.write_configs(root, total_epsilon=1e6, max_per_query=1.0)
        processes = local.start_nodes(members, root)
        try:
            with Network.from_file(root / "network.yaml") as net:
                single = Network(net.members[:1], tls=net.tls)
                for _ in range(10):  # warm channels and the nodes' plan caches
                    net.mean("assessment", "bridge_total", epsilon=0.5)
                    single.info()
                floor, pooled = [], []
                for _ in range(args.queries):
                    start = time.perf_counter()
                    single.info()
                    floor.append((time.perf_counter() - start) * 1000)
                    start = time.perf_counter()
                    frame = net.mean("assessment", "bridge_total", epsilon=0.5)
                    pooled.append((time.perf_counter() - start) * 1000)
                single.close()
                assert (frame.status == "ok").all(), frame.status.tolist()
        finally:
            local.stop_nodes(processes)
    p50 = statistics.median(pooled)
    print(f"pooled mean over {args.members} nodes x {args.participants:,} participants, "
          f"{args.queries} queries: p50 {p50:.1f} ms, p95 {percentile(pooled, 0.95):.1f} ms")
    print(f"floor (one GetNodeInfo round trip): p50 {statistics.median(floor):.2f} ms")
    print(f"target p50 <= 25 ms: ratio {p50 / 25:.2f}")


if __name__ == "__main__":
    main()
