"""Node release time against data size (target: 1M participant rows under 100 ms).

Builds a member with N participants in memory (synthetic generator), then times the
engine's whole path for one query: plan -> ledger charge -> OpenDP release -> commit ->
audit entry, wall time (p50, max) and CPU time (mean) per query.
Usage: python benchmarks/node_release.py [--sizes 10000 100000 1000000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bridgestat.coordinator.demo import local, synth
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.engine import Engine
from bridgestat.node.query import INTAKE, Occasion, QuerySpec, Statistic, Term

QUERIES = {
    "mean participant.months_in_program": QuerySpec(Statistic.MEAN, "participant",
                                                    "months_in_program", 0.001),
    "histogram participant.household_type": QuerySpec(Statistic.HISTOGRAM, "participant",
                                                      "household_type", 0.001),
    "mean assessment.bridge_total @intake": QuerySpec(Statistic.MEAN, "assessment",
                                                      "bridge_total", 0.001),
    "paired change bridge_total 12m": QuerySpec(Statistic.PAIRED_CHANGE, "assessment",
                                                "bridge_total", 0.001,
                                                occasion=Occasion(12, 9, 15)),
    "transitions work_status 12m": QuerySpec(Statistic.HISTOGRAM, "assessment", "work_status",
                                             0.001, occasion=Occasion(12, 9, 15),
                                             baseline=INTAKE),
    "quantile total_debt @intake (201 candidates)": QuerySpec(
        Statistic.QUANTILE, "assessment", "total_debt", 0.001, quantile=0.5,
        bin_edges=tuple(float(x) for x in range(0, 100001, 500))),
    "cross products: change ~ sessions + arm": QuerySpec(
        Statistic.CROSS_PRODUCTS, "assessment", "", 0.0, rho=0.001,
        terms=(Term("total_sessions", clip=(0.0, 60.0)), Term("arm", category="comparison"),
               Term("bridge_total", occasion=Occasion(12, 9, 15), baseline=INTAKE,
                    clip=(-40.0, 40.0)))),
}


def engine_for(n: int, workdir: Path) -> Engine:
    """A member of n participants written as CSV and loaded through the node's config."""
    root = workdir / f"n{n}"
    synth.write_network(root, members=1, seed=3, sizes=[n])
    member = local.write_configs(root, total_epsilon=1e6, max_per_query=1.0)[0]
    return open_engine(load_config(member.config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            engine = engine_for(n, Path(tmp))
            for label, query in QUERIES.items():
                engine.run(f"warm-{n}-{label}", query)  # first call builds the occasion cache
                times, cpu = [], time.process_time()
                for i in range(args.repeats):
                    start = time.perf_counter()
                    engine.run(f"{n}-{label}-{i}", query)
                    times.append((time.perf_counter() - start) * 1000)
                cpu_ms = (time.process_time() - cpu) * 1000 / args.repeats
                p50 = statistics.median(times)
                target = f"  (target 1M <= 100 ms: ratio {p50 / 100:.2f})" if n >= 1_000_000 else ""
                print(f"n={n:>9,}  {label:<40} p50 {p50:7.1f} ms  max {max(times):7.1f} ms  "
                      f"CPU {cpu_ms:6.2f} ms{target}")

if __name__ == "__main__":
    main()
