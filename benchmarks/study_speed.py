"""Wall time of the standard effect study over a local network (target: 25 members <= 4 s),
and the coordinator's own CPU (process CPU time of this process, which runs the study).

A synthetic network (`coordinator/demo/synth.py`) of `--members` members is written once, every
member's node runs as its own process on a loopback port with mutual TLS (as `bridgestat
demo` and the integration tests start them), and the standard effect study runs `--runs`
times in this process, each with a fresh run id (so every query is a real release, nothing
replayed). Printed per run: wall seconds, coordinator CPU seconds and their ratio (the share
of the wall time the coordinator is busy), the node processes' CPU seconds together, the
floor (coordinator and nodes' CPU over the machine's cores: no schedule finishes sooner on
an otherwise idle machine) and the 1-minute load average; then the medians. `--profile FILE`
writes a cProfile of the last run's study thread to FILE and of the client's event-loop
thread (gRPC calls, decoding the answers) to FILE.loop, both in CPU time (read them with
`python -m pstats FILE`, `sort cumulative`). Everything shares the machine's cores: CPU
seconds are the trustworthy figures while others run; check the load before trusting a wall
time.

Usage: python benchmarks/study_speed.py [--members 25] [--runs 3] [--profile study.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.studies import runner as study
from bridgestat.coordinator.studies.studyfile import load_study

CORES = os.cpu_count() or 1


def nodes_cpu(pids: list[int]) -> float:
    """User plus system CPU seconds of the node processes so far (/proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _run_once(net: Network, out: Path, profile: Path | None,
              pids: list[int]) -> tuple[float, float, float]:
    standard = load_study(study.STANDARD_STUDY)
    main, loop = cProfile.Profile(time.process_time), cProfile.Profile(time.process_time)
    wall, cpu, nodes = time.perf_counter(), time.process_time(), nodes_cpu(pids)
    if profile is not None:
        _on_loop(net, loop.enable)
        main.enable()
    study.run(standard, net, out, echo=lambda _: None)
    if profile is not None:
        main.disable()
        _on_loop(net, loop.disable)
    figures = time.perf_counter() - wall, time.process_time() - cpu, nodes_cpu(pids) - nodes
    if profile is not None:
        main.dump_stats(profile)
        loop.dump_stats(profile.with_name(profile.name + ".loop"))
    return figures


def _on_loop(net: Network, call: Callable[[], object]) -> None:
    """Run `call` on the client's event-loop thread (a profiler is enabled per thread)."""
    async def run() -> None:
        call()
    net._wait(run())  # the benchmark reaches into the client on purpose


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=25)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write a cProfile of the last run")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="study-speed-") as tmp:
        root = Path(tmp)
        synth.write_network(root, members=args.members, seed=args.seed)
        members = local.write_configs(root, total_epsilon=1e4, max_per_query=2.5, tls=True)
        processes = local.start_nodes(members, root, timeout=600)
        try:
            with Network.from_file(root / "network.yaml", timeout=60) as net:
                walls, cpus, all_nodes = [], [], []
                for i in range(args.runs):
                    last = i == args.runs - 1
                    wall, cpu, nodes = _run_once(net, root / f"run-{i}",
                                                 args.profile if last else None,
                                                 [p.pid for p in processes])
                    size = (root / f"run-{i}" / "results.json").stat().st_size
                    print(f"run {i + 1}: wall {wall:.2f} s, coordinator CPU {cpu:.2f} s "
                          f"({cpu / wall:.0%} of wall), nodes' CPU {nodes:.2f} s (all "
                          f"{args.members}), floor {(cpu + nodes) / CORES:.2f} s, "
                          f"results.json {size / 1e6:.1f} MB, load {os.getloadavg()[0]:.2f}")
                    walls.append(wall)
                    cpus.append(cpu)
                    all_nodes.append(nodes)
        finally:
            local.stop_nodes(processes)
    print(f"median of {args.runs}: wall {statistics.median(walls):.2f} s (target <= 4 s for "
          f"25 members), coordinator CPU {statistics.median(cpus):.2f} s, nodes' CPU "
          f"{statistics.median(all_nodes):.2f} s; {args.members} members, mutual TLS, "
          f"{CORES} cores")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
