"""Empirical audit of the node's Gaussian (zCDP) release: regression cross products.

Usage: python benchmarks/gaussian_audit.py [--releases 20000] [--control-releases 5000]
                                           [--alpha 1e-5] [--workers 2]

Cross products are the one release whose stability step is the node's own rather than
OpenDP's: numpy sums the fixed-point products clamped to [-F, F], and OpenDP's integer
`make_gaussian` noises each sum with d_in = F (node/mechanisms.py). This audit checks that
claim end to end on the node's own path, the way `privacy_audit.py` checks the Laplace
releases, and prints a rho lower bound beside the rho the node charges. A benchmark: it asserts
nothing; tests/statistical/test_gaussian_audit.py runs the same core and asserts.

Neighbouring datasets: D and D' of `privacy_audit` (D' adds one participant with
total_sessions 60 and a bridge_total change of +40, both at the upper clip bound). The query
is change ~ total_sessions, so the added row has u = (1, 1, 1) and moves every one of the six
entries of U'U by exactly one unit of the product (F integer units): the worst case.

Which code runs per release: `Engine._cell(plan, rows)` on the plan `planner.compile_query`
builds (rho 3.0 in all, 0.5 per entry), as in `privacy_audit`. The loss compared with is the
rho one real `Engine.run` charges.

The audit. For a Gaussian mechanism with per-entry noise sd sigma and mean shift vector
delta between D and D', zCDP's rho is ||delta||^2 / (2 sigma^2). The audited scalar is the
mean of the six released entries, T; its mean shifts by delta_bar = mean(delta) and its
variance is v = sigma^2 / 6, and by Cauchy-Schwarz ||delta||^2 >= 6 delta_bar^2, so
rho >= delta_bar^2 / (2 v). The bound: delta_lo = the one-sided (1 - alpha) lower confidence
bound of delta_bar (difference of the two sample means, normal approximation: each T is a
mean of discrete Gaussians with sd near 10^6 integer units, Gaussian to any precision that
matters here), v_hi = the one-sided (1 - alpha) upper bound of v (chi-square, both samples'
variances pooled); rho_lb = max(delta_lo, 0)^2 / (2 v_hi). It exceeds the true rho with
probability <= 2 alpha. A sensitivity step that let one row move a sum by more than F, or
noise smaller than charged, raises delta_bar^2 / v above 2 rho and shows here.

Negative control: every entry's OpenDP Gaussian rebuilt at half its scale while the component
still claims its rho (true rho four times the claim). It exists only here, never in node/.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import benchmarks.* from the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import privacy_audit, validity
from bridgestat.node.frames import CellRows
from bridgestat.node.mechanisms import Component
from bridgestat.node.planner import Plan, Policy, compile_query
from bridgestat.node.query import INTAKE, QuerySpec, Statistic, Term

Floats = npt.NDArray[np.float64]

RHO = 3.0  # 0.5 per entry: each entry's shift is one noise sd, so the audit is sharp
ALPHA = 1e-5  # one-sided, per bound
POLICY = Policy(max_epsilon_per_query=20.0)  # rho 3 is epsilon ~15.9 at delta 1e-6
QUERY = QuerySpec(Statistic.CROSS_PRODUCTS, "assessment", "", 0.0, rho=RHO,
                  terms=(Term("total_sessions", clip=validity.SESSIONS_CLIP),
                         Term("bridge_total", occasion=validity.TWELVE_MONTHS,
                              baseline=INTAKE, clip=validity.CHANGE_CLIP)))


def under_noised(component: Component) -> Component:
    """The negative control: OpenDP's integer Gaussian at half the calibrated scale, still
    claiming the calibrated rho."""
    broken = dp.m.make_gaussian(dp.atom_domain(T=dp.i64), dp.absolute_distance(T=dp.i64),
                                component.scale / 2)
    assert broken.map(component.sum_bound) > 3.9 * component.rho  # really four times
    return replace(component, measurement=broken)


@lru_cache(maxsize=2)
def plan(broken: bool) -> Plan:
    compiled = compile_query(QUERY, validity.SCHEMA, POLICY)
    if not broken:
        return compiled
    return replace(compiled, components=tuple(under_noised(c) for c in compiled.components))


@lru_cache(maxsize=2)
def cell_rows(neighbour: bool) -> CellRows:
    (rows,) = privacy_audit.frames(neighbour).cells(plan(False))  # no group-by: one cell
    return rows


def release_values(neighbour: bool, broken: bool, n: int) -> Floats:
    """n releases: an (n, entries) array of the released cross products."""
    p, rows, node = plan(broken), cell_rows(neighbour), privacy_audit.engine()
    out = np.empty((n, len(p.components)))
    for i in range(n):
        cell = node._cell(p, rows)
        out[i] = [v.value for v in cell.values]
    return out


def charged_rho() -> float:
    """The rho `Engine.run` charges for the query (one real run, temporary ledger)."""
    return privacy_audit.charged_loss(QUERY, POLICY)[1]


@dataclass(frozen=True)
class Audit:
    rho_lb: float
    shift: float  # delta_bar, estimated
    shift_lo: float
    variance: float  # v, estimated (pooled)
    variance_hi: float
    n: int  # samples per dataset

    def describe(self) -> str:
        return (f"rho_lb {self.rho_lb:.3f}  mean shift {self.shift:.4f} (lower bound "
                f"{self.shift_lo:.4f}), variance {self.variance:.4f} (upper bound "
                f"{self.variance_hi:.4f}), n {self.n}")


def audit(d: Floats, d_prime: Floats, alpha: float = ALPHA) -> Audit:
    """rho lower bound from releases on D and D' (rows: releases, columns: entries)."""
    t, t_prime = d.mean(axis=1), d_prime.mean(axis=1)
    n, m = len(t), len(t_prime)
    shift = float(t_prime.mean() - t.mean())
    pooled = float(((n - 1) * t.var(ddof=1) + (m - 1) * t_prime.var(ddof=1)) / (n + m - 2))
    z = float(stats.norm.ppf(1 - alpha))
    shift_lo = shift - z * math.sqrt(pooled * (1 / n + 1 / m))
    variance_hi = pooled * (n + m - 2) / float(stats.chi2.ppf(alpha, n + m - 2))
    rho_lb = max(shift_lo, 0.0) ** 2 / (2 * variance_hi)
    return Audit(rho_lb, shift, shift_lo, pooled, variance_hi, n)


def _task(args: tuple[bool, bool, int]) -> Floats:
    return release_values(*args)


def sample(releases: int, control_releases: int, workers: int
           ) -> dict[tuple[bool, bool], Floats]:
    """Releases per (neighbour, broken), in `workers` spawned processes."""
    counts = {(neighbour, broken): control_releases if broken else releases
              for neighbour in (False, True) for broken in (False, True)}
    return privacy_audit.sample_in_pool(_task, counts, workers)


@dataclass(frozen=True)
class Result:
    charged_rho: float
    correct: Audit
    control: Audit


def run(releases: int, control_releases: int, workers: int, alpha: float = ALPHA) -> Result:
    samples = sample(releases, control_releases, workers)
    return Result(charged_rho(),
                  audit(samples[False, False], samples[True, False], alpha),
                  audit(samples[False, True], samples[True, True], alpha))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=20_000)
    parser.add_argument("--control-releases", type=int, default=5_000)
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    result = run(args.releases, args.control_releases, args.workers, args.alpha)
    print(f"cross products (change ~ total_sessions, 6 entries), releases per dataset "
          f"{args.releases} (control {args.control_releases}), one-sided confidence "
          f"{1 - args.alpha} per bound")
    print(f"charged rho {result.charged_rho:.6g}")
    print(f"  node pipeline     {result.correct.describe()}")
    print(f"  negative control  {result.control.describe()}")


if __name__ == "__main__":
    main()
