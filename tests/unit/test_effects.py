"""Effect statistics: delta-method intervals cover at the nominal rate, DP noise included.

Simulations draw sampling and (Laplace-like) DP noise with seeded numpy: what is tested is the
coordinator's arithmetic, which only needs noise of the released variance. Coverage over R
replications is checked within 4 binomial SEs of 0.95 (R = 2,000: +-0.019).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridgestat.coordinator.statistics import effects, pooling
from bridgestat.coordinator.statistics.pooling import Noisy, PoolingError

R = 2000
TOLERANCE = 4 * math.sqrt(0.95 * 0.05 / R)
B = 1 / 0.3  # Laplace scale of a histogram cell at epsilon 0.3
V = 2 * B**2


def _noisy(count: float, rng: np.random.Generator) -> Noisy:
    return Noisy(count + rng.laplace(0.0, B), V)


def _share(n: int, p: float, rng: np.random.Generator) -> pooling.Estimate:
    yes = rng.binomial(n, p)
    return pooling.proportion(_noisy(yes, rng), _noisy(n - yes, rng))


@pytest.mark.parametrize(("name", "truth"), [
    ("risk_difference", 0.45 - 0.30),
    ("log_risk_ratio", math.log(0.45 / 0.30)),
    ("log_odds_ratio", math.log(0.45 / 0.55) - math.log(0.30 / 0.70)),
])
def test_two_group_effects_cover_their_truth(name: str, truth: float) -> None:
    rng = np.random.default_rng(3)
    fn = getattr(effects, name)
    hits = 0
    for _ in range(R):
        est = fn(_share(300, 0.45, rng), _share(120, 0.30, rng))
        hits += est.ci_low <= truth <= est.ci_high
    assert abs(hits / R - 0.95) < TOLERANCE, hits / R


def test_paired_risk_difference_covers_and_beats_treating_occasions_as_independent() -> None:
    """Same participants at two occasions: p(after) - p(before) from one transition table.

    Cells (before, after): in->in 0.30, out->in 0.20, in->out 0.05, out->out 0.45;
    truth p_after - p_before = 0.50 - 0.35 = 0.15.
    """
    rng = np.random.default_rng(5)
    probs = [0.30, 0.20, 0.05, 0.45]
    hits = wrong_hits = 0
    for _ in range(R):
        both, entered, left, neither = rng.multinomial(400, probs)
        counts = {"yes -> yes": _noisy(both, rng), "no -> yes": _noisy(entered, rng),
                  "yes -> no": _noisy(left, rng), "no -> no": _noisy(neither, rng),
                  "(missing)": _noisy(37, rng)}
        est = effects.paired_risk_difference(*effects.transition_counts(counts, {"yes"}))
        hits += est.ci_low <= 0.15 <= est.ci_high
        naive = effects.risk_difference(
            pooling.proportion(effects.sum_noisy([counts["yes -> yes"], counts["no -> yes"]]),
                               effects.sum_noisy([counts["yes -> no"], counts["no -> no"]])),
            pooling.proportion(effects.sum_noisy([counts["yes -> yes"], counts["yes -> no"]]),
                               effects.sum_noisy([counts["no -> yes"], counts["no -> no"]])))
        wrong_hits += naive.ci_low <= 0.15 <= naive.ci_high
    assert abs(hits / R - 0.95) < TOLERANCE, hits / R
    # Treating the occasions as independent ignores the positive correlation of the two
    # shares; its interval is too wide here (over-covers), the paired one is right.
    assert wrong_hits / R > 0.95 + TOLERANCE, wrong_hits / R


def test_difference_adds_both_variance_components() -> None:
    a = pooling.make_estimate(5.0, 0.04, 0.01, 100)
    b = pooling.make_estimate(2.0, 0.09, 0.16, 50)
    d = effects.difference(a, b)
    assert d.estimate == 3.0
    assert d.se_sampling == pytest.approx(math.sqrt(0.13))
    assert d.se_dp == pytest.approx(math.sqrt(0.17))
    assert d.se == pytest.approx(math.sqrt(0.30))


def test_undefined_ratios_and_malformed_cells_are_named() -> None:
    zero = pooling.make_estimate(0.0, 0.0, 0.01, 40)
    half = pooling.make_estimate(0.5, 0.01, 0.0, 40)
    with pytest.raises(PoolingError, match="first group's noisy share 0 .* log risk ratio"):
        effects.log_risk_ratio(zero, half)
    with pytest.raises(PoolingError, match="second group's noisy share 0 .* log odds ratio"):
        effects.log_odds_ratio(half, zero)
    with pytest.raises(PoolingError, match="not a 'before -> after' transition"):
        effects.transition_counts({"yes": Noisy(3, 1)}, {"yes"})
    with pytest.raises(PoolingError, match="too small for a paired share"):
        effects.paired_risk_difference(Noisy(0, 1), Noisy(0, 1), Noisy(0.5, 1))
