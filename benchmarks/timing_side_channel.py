"""Does a node's response time reveal the noise it drew? (issue 5, "Timing")

Runs many releases of the same queries through the node's engine (planning, OpenDP release,
ledger commit) and correlates each one's wall time with the magnitude of its noise (the
released value minus the exact value, known here because the data are synthetic). OpenDP
samples exact discrete Laplace noise with big integers, whose sampling time could grow with
the magnitude drawn; a correlation would let an observer learn about the noise. Prints the
Spearman correlation and its p-value per query, and the mean time by noise decile.

    .venv/bin/python benchmarks/timing_side_channel.py --releases 3000
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from scipy import stats

from bridgestat.coordinator.demo import local, synth
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.query import QuerySpec, Statistic

QUERIES = {
    "count (eps 0.05: noise scale 20)": QuerySpec(Statistic.COUNT, "participant", "", 0.05),
    "count (eps 1: noise scale 1)": QuerySpec(Statistic.COUNT, "participant", "", 1.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--releases", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.write_network(root, members=1, seed=3, sizes=[2000])
        member = local.write_configs(root, total_epsilon=1e9, max_per_query=2.0, tls=False)[0]
        engine = open_engine(load_config(member.config))
        truth = float(len(engine.frames.participants))
        for name, query in QUERIES.items():
            times, noise = [], []
            for _ in range(args.releases):
                start = time.perf_counter()
                answer = engine.run(uuid.uuid4().hex, query)
                times.append(time.perf_counter() - start)
                noise.append(abs(answer.release.cells[0].values[0].value - truth))
            report(name, np.array(times) * 1000, np.array(noise))


def report(name: str, ms: np.ndarray, noise: np.ndarray) -> None:
    rho, p = stats.spearmanr(ms, noise)
    print(f"{name}: {len(ms)} releases, time p50 {np.median(ms):.2f} ms; Spearman(time, "
          f"|noise|) = {rho:+.3f} (p = {p:.2g})")
    deciles = np.quantile(noise, np.linspace(0, 1, 11))
    groups = np.clip(np.searchsorted(deciles, noise, side="right") - 1, 0, 9)
    means = [ms[groups == g].mean() for g in range(10) if (groups == g).any()]
    print("  mean time by |noise| decile (ms): " + " ".join(f"{m:.2f}" for m in means))


if __name__ == "__main__":
    main()
