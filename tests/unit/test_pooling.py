"""Tests of coordinator/statistics/pooling.py: exact formulas, degenerate inputs, and CI coverage.

The coverage tests simulate members' releases with numpy Laplace noise (a test stand-in for
the node's OpenDP noise: only the noise variance matters to the coordinator).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pytest

from bridgestat.coordinator.statistics.pooling import (
    Z95,
    Estimate,
    MeanStats,
    Noisy,
    PoolingError,
    count_estimate,
    member_change,
    member_mean,
    pooled_change,
    pooled_count,
    pooled_mean,
    pooled_proportion,
    proportion,
)


def exact_stats(x: np.ndarray, center: float) -> MeanStats:
    """Noise-free release of x (all noise variances 0)."""
    y = x - center
    return MeanStats(
        count=Noisy(float(len(x)), 0.0),
        sum=Noisy(float(y.sum()), 0.0),
        sum_squares=Noisy(float((y * y).sum()), 0.0),
        center=center,
    )


def stats(n: float, s: float, q: float, v: tuple[float, float, float], c: float) -> MeanStats:
    return MeanStats(Noisy(n, v[0]), Noisy(s, v[1]), Noisy(q, v[2]), c)


# ---------------------------------------------------------------- exact formulas


def test_member_mean_hand_computed() -> None:
    # m = 50 + 20/10 = 52; s2 = [500 - (400 - 50)/10]/9 = 465/9
    # Var = (465/9)/10 + [50 + 2^2 * 2]/10^2 = 5.1666... + 0.58
    e = member_mean(stats(10, 20, 500, (2, 50, 1000), 50))
    assert e.estimate == pytest.approx(52.0)
    assert e.sd == pytest.approx(math.sqrt(465 / 9))
    assert e.se_sampling == pytest.approx(math.sqrt(465 / 90))
    assert e.se_dp == pytest.approx(math.sqrt(0.58))
    assert e.se == pytest.approx(math.sqrt(465 / 90 + 0.58))
    assert e.ci_low == pytest.approx(52 - 1.959963984540054 * e.se)
    assert e.ci_high == pytest.approx(52 + 1.959963984540054 * e.se)
    assert e.n == 10


def test_zero_noise_mean_is_textbook() -> None:
    x = np.array([3.0, 7.5, 1.0, 9.0, 4.25, 6.0, 0.5])
    e = member_mean(exact_stats(x, center=5.0))
    assert e.estimate == pytest.approx(x.mean())
    assert e.sd == pytest.approx(x.std(ddof=1))
    assert e.se == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)))
    assert e.se_dp == 0.0


def test_zero_noise_pooled_mean_uses_total_variance() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([6.0, 8.0, 9.0])  # a different mean: the pooled SD includes the spread
    e = pooled_mean([exact_stats(a, 5.0), exact_stats(b, 5.0)])
    both = np.concatenate([a, b])
    assert e.estimate == pytest.approx(both.mean())
    assert e.sd == pytest.approx(both.std(ddof=1))
    assert e.se == pytest.approx(both.std(ddof=1) / math.sqrt(len(both)))
    assert e.n == 7


def test_pooled_mean_hand_computed() -> None:
    # Sums: N = 30, S = 60 - 30 = 30, Q = 900 + 1100 = 2000, v = (5, 150, 3000), c = 10
    # m = 10 + 1 = 11; s2 = [2000 - (900 - 150)/30]/29 = 1975/29
    # Var = 1975/29/30 + [150 + 1 * 5]/900
    e = pooled_mean(
        [stats(12, 60, 900, (2, 50, 1000), 10), stats(18, -30, 1100, (3, 100, 2000), 10)]
    )
    assert e.estimate == pytest.approx(11.0)
    assert e.sd == pytest.approx(math.sqrt(1975 / 29))
    assert e.se_sampling == pytest.approx(math.sqrt(1975 / 29 / 30))
    assert e.se_dp == pytest.approx(math.sqrt(155 / 900))
    assert e.n == 30


def test_member_change_hand_computed() -> None:
    # m_d = 40/20 = 2; s2 = [480 - (1600 - 80)/20]/19 = 404/19; d = 2/sqrt(404/19)
    # Var(d) = 1/20 + d^2/40 + [(80 + 4*2)/400]/s2 + d^2 * 900/(4 * 400 * s2^2)
    c = member_change(stats(20, 40, 480, (2, 80, 900), 0))
    s2 = 404 / 19
    d = 2 / math.sqrt(s2)
    assert c.change.estimate == pytest.approx(2.0)
    assert c.change.se == pytest.approx(math.sqrt(s2 / 20 + 88 / 400))
    assert c.d_z.estimate == pytest.approx(d)
    assert c.d_z.se_sampling == pytest.approx(math.sqrt(1 / 20 + d**2 / 40))
    assert c.d_z.se_dp == pytest.approx(math.sqrt(0.22 / s2 + d**2 * 900 / (1600 * s2**2)))
    assert c.d_z.n == 20


def test_zero_noise_change_is_textbook() -> None:
    pre = np.array([10.0, 12.0, 9.0, 15.0, 11.0, 13.0])
    post = np.array([12.0, 15.0, 9.5, 18.0, 11.0, 17.0])
    d = post - pre
    c = member_change(exact_stats(d, 0.0))
    dz = d.mean() / d.std(ddof=1)
    assert c.change.estimate == pytest.approx(d.mean())
    assert c.d_z.estimate == pytest.approx(dz)
    assert c.d_z.se == pytest.approx(math.sqrt(1 / 6 + dz**2 / 12))
    assert c.d_z.se_dp == 0.0
    pooled = pooled_change([exact_stats(d[:2], 0.0), exact_stats(d[2:], 0.0)])
    assert pooled.d_z.estimate == pytest.approx(dz)


def test_proportion_hand_computed() -> None:
    # N = 40, p = 0.25; Var = 0.25 * 0.75/40 + [0.75^2 * 2 + 0.25^2 * 3]/1600
    e = proportion(Noisy(10, 2), Noisy(30, 3))
    assert e.estimate == pytest.approx(0.25)
    assert e.se_sampling == pytest.approx(math.sqrt(0.1875 / 40))
    assert e.se_dp == pytest.approx(math.sqrt((0.5625 * 2 + 0.0625 * 3) / 1600))
    assert e.n == 40


def test_zero_noise_proportion_is_textbook() -> None:
    y = np.array([1, 0, 0, 1, 1, 0, 1, 1, 0, 1])
    e = proportion(Noisy(float(y.sum()), 0), Noisy(float((1 - y).sum()), 0))
    p = y.mean()
    assert e.estimate == pytest.approx(p)
    assert e.se == pytest.approx(math.sqrt(p * (1 - p) / len(y)))


def test_proportion_truncates_p_in_variance_only() -> None:
    e = proportion(Noisy(10.5, 2), Noisy(-0.5, 2))  # N = 10, p = 1.05
    assert e.estimate == pytest.approx(1.05)
    assert e.se_sampling == 0.0
    assert e.se == pytest.approx(math.sqrt(2 / 100))  # p taken as 1: only v_0 counts


def test_pooled_proportion_sums_cells_and_variances() -> None:
    e = pooled_proportion([(Noisy(4, 2), Noisy(16, 2)), (Noisy(6, 1), Noisy(14, 3))])
    assert e == proportion(Noisy(10, 3), Noisy(30, 5))


def test_counts() -> None:
    e = count_estimate(Noisy(-1.5, 8.0))  # a noisy count may be negative; kept as released
    assert (e.estimate, e.se, e.n, e.se_sampling) == (-1.5, math.sqrt(8), -1.5, 0.0)
    assert e.ci_low == pytest.approx(-1.5 - Z95 * math.sqrt(8))
    p = pooled_count([Noisy(10, 2), Noisy(20.5, 6)])
    assert (p.estimate, p.se) == (30.5, math.sqrt(8))


# ---------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("n", [1.0, 0.7, 0.0, -3.2])
def test_mean_needs_noisy_count_above_one(n: float) -> None:
    with pytest.raises(PoolingError, match=re.escape(f"noisy count {n:g} is too small for a mean")):
        member_mean(stats(n, 1, 1, (1, 1, 1), 0))
    with pytest.raises(PoolingError, match="too small"):
        member_change(stats(n, 1, 1, (1, 1, 1), 0))


def test_pooled_mean_keeps_small_and_negative_member_counts() -> None:
    small = stats(-0.8, 3, 40, (2, 50, 1000), 0)
    big = stats(50, 100, 5000, (2, 50, 1000), 0)
    e = pooled_mean([small, big])
    assert e.n == pytest.approx(49.2)
    assert e.estimate == pytest.approx(103 / 49.2)
    with pytest.raises(PoolingError, match=r"pooled noisy count 0\.5 is too small"):
        pooled_mean([stats(-0.5, 0, 0, (1, 1, 1), 0), stats(1.0, 0, 0, (1, 1, 1), 0)])


def test_variance_truncated_at_zero() -> None:
    e = member_mean(stats(10, 30, 20, (2, 50, 1000), 0))  # Q~ < (S~^2 - v_S)/N~
    assert e.sd == 0.0
    assert e.se_sampling == 0.0
    assert e.se == pytest.approx(math.sqrt((50 + 9 * 2) / 100))
    with pytest.raises(PoolingError, match="SD of the change is 0"):
        member_change(stats(10, 30, 20, (2, 50, 1000), 0))


def test_pooling_rejects_different_centres() -> None:
    with pytest.raises(ValueError, match=re.escape("different centres [45.0, 50.0]")):
        pooled_mean([stats(10, 1, 1, (1, 1, 1), 50.0), stats(10, 1, 1, (1, 1, 1), 45.0)])
    with pytest.raises(PoolingError, match="different centres"):
        pooled_change([stats(10, 1, 1, (1, 1, 1), 0.0), stats(10, 1, 1, (1, 1, 1), 1.0)])


def test_empty_pools_are_errors() -> None:
    for call in (pooled_mean, pooled_change, pooled_proportion, pooled_count):
        with pytest.raises(PoolingError, match="no member releases"):
            call([])


@pytest.mark.parametrize("total", [0.99, 0.0, -2.0])
def test_proportion_needs_total_of_one(total: float) -> None:
    with pytest.raises(PoolingError, match=re.escape(f"noisy total {total:g} is too small")):
        proportion(Noisy(total - 0.5, 1), Noisy(0.5, 1))


def test_non_finite_or_negative_variance_rejected() -> None:
    with pytest.raises(PoolingError, match="not finite"):
        Noisy(math.nan, 1.0)
    with pytest.raises(PoolingError, match="must be finite and >= 0"):
        Noisy(1.0, -0.1)
    with pytest.raises(PoolingError, match="must be finite and >= 0"):
        Noisy(1.0, math.inf)
    with pytest.raises(PoolingError, match="centre"):
        stats(10, 1, 1, (1, 1, 1), math.inf)


# ---------------------------------------------------------------- coverage (statistical)

T = TypeVar("T")

REPS = 2000
SIZES = (40, 100, 200, 400, 600)
TOL = 4 * math.sqrt(0.95 * 0.05 / REPS)  # binomial, 4 sigma: about 0.0195
EPS_SPLIT = 1.0 / 3  # epsilon 1 per member, split evenly over N~, S~, Q~
H = 50.0  # half-width: x in [0, 100] (c = 50) and d in [-50, 50] (c = 0)
V_N, V_S, V_Q = (2 * (sens / EPS_SPLIT) ** 2 for sens in (1.0, H, H * H))  # Laplace 2 b^2
V_CELL = 2.0  # histogram cell: Laplace scale 1 / epsilon 1 (one epsilon buys all cells)


def laplace_release(rng: np.random.Generator, x: np.ndarray, center: float) -> list[MeanStats]:
    """One MeanStats per row of x (reps x n), with Laplace noise of the variances above."""
    y = x - center
    scale = np.sqrt(np.array([V_N, V_S, V_Q]) / 2)
    reps, n = x.shape
    count = n + rng.laplace(0, scale[0], reps)
    total = y.sum(axis=1) + rng.laplace(0, scale[1], reps)
    squares = (y * y).sum(axis=1) + rng.laplace(0, scale[2], reps)
    return [
        MeanStats(Noisy(a, V_N), Noisy(b, V_S), Noisy(q, V_Q), center)
        for a, b, q in zip(count.tolist(), total.tolist(), squares.tolist(), strict=True)
    ]


def coverage(estimates: list[Estimate], truth: float, dp_term: bool = True) -> float:
    """Share of 95 % intervals covering truth; dp_term=False drops the DP variance."""
    hits = [
        abs(e.estimate - truth) <= Z95 * (e.se if dp_term else (e.se_sampling or 0.0))
        for e in estimates
    ]
    return float(np.mean(hits))


@dataclass(frozen=True)
class Sim:
    means: list[list[MeanStats]]  # [member][rep]
    changes: list[list[MeanStats]]
    hetero: list[list[MeanStats]]
    hetero_truth: float
    cells: list[list[tuple[Noisy, Noisy]]]


# x = 100 * Beta(2, 3): mean 40, SD 20, within [0, 100] (no clipping)
MEAN_X = 40.0
# d = 50 * (2 * Beta(6, 5) - 1): within [-50, 50]
MEAN_D = 50 * (2 * 6 / 11 - 1)
SD_D = 100 * math.sqrt(6 * 5 / (11**2 * 12))
P_TRUE = 0.3
HETERO_A = (1.5, 2.0, 2.5, 3.0, 3.5)  # member k: 100 * Beta(a_k, 3), means 33 to 54


@pytest.fixture(scope="module")
def sim() -> Sim:
    rng = np.random.default_rng(20240611)
    means = [laplace_release(rng, 100 * rng.beta(2, 3, (REPS, n)), 50.0) for n in SIZES]
    changes = [laplace_release(rng, H * (2 * rng.beta(6, 5, (REPS, n)) - 1), 0.0) for n in SIZES]
    hetero = [
        laplace_release(rng, 100 * rng.beta(a, 3, (REPS, n)), 50.0)
        for a, n in zip(HETERO_A, SIZES, strict=True)
    ]
    hetero_truth = sum(n * 100 * a / (a + 3) for a, n in zip(HETERO_A, SIZES, strict=True))
    cells = []
    for n in SIZES:
        y1 = rng.binomial(n, P_TRUE, REPS)
        y1_noisy = y1 + rng.laplace(0, 1, REPS)
        y0_noisy = (n - y1) + rng.laplace(0, 1, REPS)
        cells.append(
            [
                (Noisy(a, V_CELL), Noisy(b, V_CELL))
                for a, b in zip(y1_noisy.tolist(), y0_noisy.tolist(), strict=True)
            ]
        )
    return Sim(means, changes, hetero, hetero_truth / sum(SIZES), cells)


def by_rep(members: list[list[T]]) -> list[list[T]]:
    """[member][rep] -> [rep][member]."""
    return [list(rep) for rep in zip(*members, strict=True)]


@pytest.mark.parametrize("member", range(len(SIZES)))
def test_member_mean_coverage(sim: Sim, member: int) -> None:
    estimates = [member_mean(s) for s in sim.means[member]]
    assert abs(coverage(estimates, MEAN_X) - 0.95) <= TOL


def test_member_mean_without_dp_term_undercovers(sim: Sim) -> None:
    estimates = [member_mean(s) for s in sim.means[0]]  # n = 40: DP noise dominates
    assert coverage(estimates, MEAN_X, dp_term=False) < 0.95 - TOL


def test_pooled_mean_coverage(sim: Sim) -> None:
    estimates = [pooled_mean(rep) for rep in by_rep(sim.means)]
    assert abs(coverage(estimates, MEAN_X) - 0.95) <= TOL
    assert coverage(estimates, MEAN_X, dp_term=False) < 0.95 - TOL


def test_pooled_mean_of_different_members_does_not_undercover(sim: Sim) -> None:
    # Fixed member sizes, different member means: s2_tot includes the between-member spread,
    # so the interval is conservative for the size-weighted mean (never too narrow).
    estimates = [pooled_mean(rep) for rep in by_rep(sim.hetero)]
    assert coverage(estimates, sim.hetero_truth) >= 0.95 - TOL


def test_pooled_change_coverage(sim: Sim) -> None:
    changes = [pooled_change(rep) for rep in by_rep(sim.changes)]
    assert abs(coverage([c.change for c in changes], MEAN_D) - 0.95) <= TOL
    d_z = [c.d_z for c in changes]
    assert abs(coverage(d_z, MEAN_D / SD_D) - 0.95) <= TOL
    assert coverage(d_z, MEAN_D / SD_D, dp_term=False) < 0.95 - TOL


def test_pooled_proportion_coverage(sim: Sim) -> None:
    estimates = [pooled_proportion(rep) for rep in by_rep(sim.cells)]
    assert abs(coverage(estimates, P_TRUE) - 0.95) <= TOL
