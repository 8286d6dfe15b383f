"""Node memory: resident set size of a real `bridgestat-node serve` process, idle after
start-up and after a round of queries, at 10k, 100k and 1M participants.

Each size is a synthetic member (participants plus their assessments, as CSV) served over
mutual TLS; RSS and its peak (VmHWM) are read from /proc. Start-up time (load, validation
against the data matrix, ledger and audit log) is printed beside them. The queries cover the
node's caches: a mean, a histogram, a paired change, a transition table and a quantile.
The last columns say whether pandas' or Arrow's extension modules are mapped into the node
after the queries: the serving process never imports pandas (its data are loaded and checked
in a child process, node/loader.py), nor Arrow. Start-up CPU is the serving process's own and,
beside it, its loader child's (user + system, from /proc), and the loader's peak RSS (from
the node's `data_loaded` log line; ? for a node without one): figures that load on a shared
machine does not inflate the way it inflates wall time. The load average is printed beside.
Usage: python benchmarks/node_memory.py [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.query import INTAKE, Occasion
from bridgestat.coordinator.demo import local, synth

TWELVE_MONTHS = Occasion(12, 9, 15)
START_TIMEOUT = 900.0  # seconds; a 1M-participant node starts in about two minutes


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc/<pid>/status."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def mapped(pid: int, marker: str) -> str:
    """'yes' if a file whose path contains `marker` is mapped into the process."""
    return "yes" if marker in Path(f"/proc/{pid}/maps").read_text() else "no"


def loader_peak_mib(log: Path) -> str:
    """The loader process's peak RSS, from the node's `data_loaded` log line."""
    found = re.search(r"loader process peak (\d+) MiB", log.read_text(errors="replace"))
    return found.group(1) if found else "?"


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time of a process so far and of its children it waited for (the
    loader process), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return ((int(fields[11]) + int(fields[12])) / tick,
            (int(fields[13]) + int(fields[14])) / tick)


def query_round(net: Network) -> None:
    """One of each kind of query whose data the node caches."""
    net.mean("assessment", "bridge_total", epsilon=0.5)
    net.histogram("participant", "household_type", epsilon=0.5)
    net.paired_change("assessment", "bridge_total", occasion=TWELVE_MONTHS, epsilon=0.5,
                      clip=(-40.0, 40.0))
    net.transition("assessment", "work_status", occasion=TWELVE_MONTHS, baseline=INTAKE,
                   epsilon=0.5)
    net.quantile("assessment", "total_debt", 0.5,
                 [float(x) for x in range(0, 100_001, 500)], epsilon=0.5)


def measure(n: int, workdir: Path) -> str:
    root = workdir / f"n{n}"
    synth.write_network(root, members=1, seed=3, sizes=[n])
    member = local.write_configs(root, total_epsilon=1e6, max_per_query=1.0)[0]
    started = time.perf_counter()
    [process] = local.start_nodes([member], root, timeout=START_TIMEOUT)
    try:
        ready = time.perf_counter() - started
        cpu, loader = cpu_seconds(process.pid)
        time.sleep(2)  # let start-up garbage settle
        idle, _ = rss_mib(process.pid)
        with Network.from_file(root / "network.yaml", timeout=120) as net:
            for _ in range(3):
                query_round(net)
        busy, peak = rss_mib(process.pid)
        pandas = mapped(process.pid, "/pandas/_libs/")
        loader_peak = loader_peak_mib(root / f"{member.name}.log")
        arrow = mapped(process.pid, "libarrow")
    finally:
        local.stop_nodes([process])
    load = os.getloadavg()[0]
    return (f"{n:>12,} | {ready:7.1f} | {cpu:5.2f} | {loader:8.2f} | {idle:8.0f} | "
            f"{busy:17.0f} | {peak:8.0f} | {loader_peak:>15} | {pandas:6} | {arrow:5} | "
            f"{load:4.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    print("participants | start s | CPU s | loader s | idle MiB | after queries MiB | peak MiB "
          "| loader peak MiB | pandas | Arrow | load")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            print(measure(n, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
