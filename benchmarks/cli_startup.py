"""CLI start-up: wall time and peak RSS of `bridgestat --help` and `bridgestat-node --help`.

Each command is the installed entry point (beside this interpreter, e.g. .venv/bin), run N
times as a fresh process; wall time is measured around the process, max RSS comes from
wait4's rusage of that child. Prints median and p95 wall time, max RSS, and the median's ratio
to the 0.25 s target, and the median CPU time (user + system), which a busy shared machine
inflates far less than wall time. `python -c pass` is the floor of any Python command here.
Usage: python benchmarks/cli_startup.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TARGET_SECONDS = 0.25


@dataclass(frozen=True)
class Startup:
    label: str
    walls: tuple[float, ...]  # seconds, one per run
    cpus: tuple[float, ...]  # user + system seconds of the child, one per run
    max_rss_mib: float

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    @property
    def p95(self) -> float:
        ordered = sorted(self.walls)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run_once(command: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, max RSS MiB) of one run of `command`, output discarded."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # KiB on Linux


def measure(label: str, command: list[str], runs: int) -> Startup:
    run_once(command)  # warm the page cache and the .pyc files
    results = [run_once(command) for _ in range(runs)]
    return Startup(label, tuple(w for w, _, _ in results), tuple(c for _, c, _ in results),
                   max(r for *_, r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per command")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    commands = {"bridgestat --help": [str(bin_dir / "bridgestat"), "--help"],
                "bridgestat-node --help": [str(bin_dir / "bridgestat-node"), "--help"],
                "python -c pass (floor)": [sys.executable, "-c", "pass"]}
    print(f"{args.runs} runs each, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; target: median <= {TARGET_SECONDS} s")
    print(f"{'command':<24} {'median s':>9} {'p95 s':>7} {'ratio':>6} {'CPU s':>6} "
          f"{'max RSS MiB':>12}")
    for label, command in commands.items():
        r = measure(label, command, args.runs)
        print(f"{label:<24} {r.median:>9.3f} {r.p95:>7.3f} {r.median / TARGET_SECONDS:>6.2f} "
              f"{statistics.median(r.cpus):>6.3f} {r.max_rss_mib:>12.1f}")


if __name__ == "__main__":
    main()
