"""Tests of coordinator/statistics/regression.py: exact OLS without noise, pooling, CI coverage, errors.

The coverage test simulates the nodes' releases with numpy Gaussian noise (a test stand-in for
the node's discrete Gaussian: only the public noise variance matters to the coordinator).
"""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from bridgestat.coordinator.statistics.pooling import Z95, Noisy, PoolingError
from bridgestat.coordinator.statistics.regression import (
    EIGEN_FLOOR,
    INTERCEPT,
    SIGMA2_FLOOR,
    CrossProducts,
    RegressionResult,
    fit,
    pool_cross_products,
)

Bounds = tuple[tuple[float, float], ...]

DOSE_NAMES = ("sessions", "outcome")
DOSE_BOUNDS: Bounds = ((0.0, 120.0), (-40.0, 40.0))
DOSE_SPEC = (DOSE_NAMES, DOSE_BOUNDS)


def u_matrix(data: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Exact U'U of raw columns [x_1..x_p, y]: clipped, rescaled to [-1, 1], intercept first."""
    lo, hi = np.array(bounds).T
    u = (np.clip(data, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
    full = np.column_stack([np.ones(len(data)), u])
    gram: np.ndarray = full.T @ full
    return gram


def release(
    mat: np.ndarray,
    names: tuple[str, ...],
    bounds: Bounds,
    variance: float = 0.0,
    rng: np.random.Generator | None = None,
) -> CrossProducts:
    """Wrap U'U as a release; with rng, add Gaussian noise of the given variance per entry."""
    m = len(mat)
    entries = {}
    for i in range(m):
        for j in range(i, m):
            noise = rng.normal(0.0, math.sqrt(variance)) if rng is not None else 0.0
            entries[(i, j)] = Noisy(float(mat[i, j] + noise), variance)
    return CrossProducts(names, bounds, entries)


def textbook_ols(data: np.ndarray, bounds: Bounds) -> tuple[np.ndarray, np.ndarray, float]:
    """lstsq coefficients, textbook SEs and residual SD on the clipped raw data."""
    lo, hi = np.array(bounds).T
    clipped = np.clip(data, lo, hi)
    x = np.column_stack([np.ones(len(data)), clipped[:, :-1]])
    y = clipped[:, -1]
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    s2 = resid @ resid / (len(y) - x.shape[1])
    se = np.sqrt(s2 * np.diag(np.linalg.inv(x.T @ x)))
    return beta, se, math.sqrt(s2)


def dose_data(rng: np.random.Generator, n: int) -> np.ndarray:
    """Dose-response: sessions uniform on 0..120, y = 2 + 0.15 x + N(0, 8^2) (clipped later)."""
    x = rng.integers(0, 121, n).astype(float)
    return np.column_stack([x, 2 + 0.15 * x + rng.normal(0.0, 8.0, n)])


def assert_close(actual: float, expected: float, tol: float = 1e-9) -> None:
    """|actual - expected| <= tol * max(1, |expected|) (relative, absolute near 0)."""
    assert abs(actual - expected) <= tol * max(1.0, abs(expected)), (actual, expected)


# ---------------------------------------------------------------- exact recovery without noise


def test_exact_cross_products_reproduce_ols() -> None:
    rng = np.random.default_rng(11)
    x = rng.normal(60, 40, 400)  # some values outside [0, 120]: clipping matters
    data = np.column_stack([x, 2 + 0.15 * x + rng.normal(0, 8, 400)])
    bounds: Bounds = ((0.0, 120.0), (-10.0, 30.0))  # y clipped too
    res = fit(release(u_matrix(data, bounds), DOSE_NAMES, bounds), replicates=2000, seed=3)
    beta, se, sigma = textbook_ols(data, bounds)
    assert [c.name for c in res.coefficients] == [INTERCEPT, "sessions"]
    for c, b, s in zip(res.coefficients, beta, se, strict=True):
        assert_close(c.estimate, b)
        assert_close(c.se_ols, s)
        # No DP noise: replicates are exactly N(beta, sigma2 XX^-1), so the bootstrap SD is a
        # sample SD of 2000 normals, relative SE 1/sqrt(2 * 1999); allow 4 of those.
        assert abs(c.se / s - 1) <= 4 / math.sqrt(2 * 1999)
        assert c.ci_low == pytest.approx(c.estimate - Z95 * c.se, rel=1e-12)
        assert c.ci_high == pytest.approx(c.estimate + Z95 * c.se, rel=1e-12)
    assert_close(res.sigma, sigma)
    assert res.n == 400
    lo, hi = np.array(bounds).T
    y = np.clip(data[:, 1], lo[1], hi[1])
    x_c = np.clip(data[:, 0], lo[0], hi[0])
    assert res.r2 is not None
    assert_close(res.r2, np.corrcoef(x_c, y)[0, 1] ** 2)  # one regressor: R^2 = r^2
    assert res.warnings == ()


def test_ancova_shape_exact_recovery() -> None:
    rng = np.random.default_rng(5)
    n = 300
    arm = rng.integers(0, 2, n).astype(float)
    baseline = rng.normal(50, 15, n)
    age = rng.uniform(18, 80, n)
    y = 10 + 5 * arm + 0.6 * baseline + 0.1 * age + rng.normal(0, 10, n)
    data = np.column_stack([arm, baseline, age, y])
    names = ("arm", "baseline", "age", "outcome")
    bounds: Bounds = ((0.0, 1.0), (0.0, 100.0), (18.0, 80.0), (0.0, 100.0))
    members = [release(u_matrix(part, bounds), names, bounds) for part in np.array_split(data, 3)]
    res = fit(pool_cross_products(members), replicates=200)
    beta, se, sigma = textbook_ols(data, bounds)
    assert [c.name for c in res.coefficients] == [INTERCEPT, "arm", "baseline", "age"]
    assert res.names == names
    for c, b, s in zip(res.coefficients, beta, se, strict=True):
        assert_close(c.estimate, b)
        assert_close(c.se_ols, s)
    assert_close(res.sigma, sigma)


# ---------------------------------------------------------------- pooling


def test_pooling_equals_cross_products_of_concatenated_data() -> None:
    rng = np.random.default_rng(8)
    a, b = dose_data(rng, 120), dose_data(rng, 75)
    pooled = pool_cross_products(
        [
            release(u_matrix(a, DOSE_BOUNDS), DOSE_NAMES, DOSE_BOUNDS, variance=6.0),
            release(u_matrix(b, DOSE_BOUNDS), DOSE_NAMES, DOSE_BOUNDS, variance=2.5),
        ]
    )
    whole = u_matrix(np.vstack([a, b]), DOSE_BOUNDS)
    assert pooled.names == DOSE_NAMES and pooled.bounds == DOSE_BOUNDS
    assert sorted(pooled.entries) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    for (i, j), e in pooled.entries.items():
        assert e.value == pytest.approx(whole[i, j], rel=1e-12, abs=1e-9)
        assert e.variance == 8.5
    assert pooled.entries[(0, 0)].value == 195


def test_single_member_pools_to_itself() -> None:
    cp = release(u_matrix(dose_data(np.random.default_rng(1), 50), DOSE_BOUNDS), *DOSE_SPEC)
    assert pool_cross_products([cp]) == cp


# ---------------------------------------------------------------- coverage with DP noise


def clipped_mean(mu: float, sd: float, lo: float, hi: float) -> float:
    """E[clip(Y, lo, hi)] for Y ~ N(mu, sd^2)."""
    nd = NormalDist()
    a, b = (lo - mu) / sd, (hi - mu) / sd
    inside = mu * (nd.cdf(b) - nd.cdf(a)) + sd * (nd.pdf(a) - nd.pdf(b))
    return lo * nd.cdf(a) + hi * (1 - nd.cdf(b)) + inside


def dose_slope_estimand() -> float:
    """Population OLS slope of clip(y) on x for `dose_data` (0.14992: clipping y at 40 moves it
    by -8e-5, 1 % of the slope's SE), exact: x is uniform on 0..120, E[clip(y) | x] closed form.
    """
    x = np.arange(121.0)
    mean_y = np.array([clipped_mean(2 + 0.15 * v, 8.0, -40.0, 40.0) for v in x])
    return float(np.cov(x, mean_y, bias=True)[0, 1] / x.var())


def test_bootstrap_ci_covers_and_textbook_se_does_not() -> None:
    """95 % CI coverage of the slope over 1000 simulated networks (5 members, n = 1500).

    Node noise: rho = 0.5 split over the 6 entries, sensitivity 1 in u-units, so each member's
    entry has variance 1/(2 rho_e) = 6 (pooled: 30). Material here: delta method for the slope,
    sampling variance 8^2 / (1500 * 1220) = 3.5e-5, DP variance about 5.8e-5 (mostly the noise
    on sum u_x u_y, 30 / (1500 * 1220/3600)^2 in u-units, times (40/60)^2), so the textbook SE
    is about sqrt(3.5 / 9.3) = 0.61 of the true SD and its 95 % interval should cover about
    2 Phi(1.96 * 0.61) - 1 = 0.77. (Measured with 4000 runs: bootstrap 0.952, textbook 0.771.)
    """
    rng = np.random.default_rng(20240611)
    variance = 1 / (2 * (0.5 / 6))
    sizes = (150, 250, 300, 350, 450)
    runs, replicates = 1000, 300
    slope = dose_slope_estimand()
    estimates, se_boot, se_ols = (np.empty(runs) for _ in range(3))
    for r in range(runs):
        members = [
            release(u_matrix(dose_data(rng, n), DOSE_BOUNDS), *DOSE_SPEC, variance, rng)
            for n in sizes
        ]
        c = fit(pool_cross_products(members), replicates=replicates, seed=r).coefficients[1]
        estimates[r], se_boot[r], se_ols[r] = c.estimate, c.se, c.se_ols
    half = 4 * math.sqrt(0.95 * 0.05 / runs)  # 4 binomial SEs: 0.028
    covered = np.mean(np.abs(estimates - slope) <= Z95 * se_boot)
    covered_ols = np.mean(np.abs(estimates - slope) <= Z95 * se_ols)
    print(f"coverage: bootstrap {covered:.3f}, textbook OLS {covered_ols:.3f}")
    assert abs(covered - 0.95) <= half
    assert covered_ols < 0.95 - half  # clearly below nominal
    # Textbook coverage as predicted from the measured SE ratio (4 binomial SEs at that level).
    expected_ols = 2 * NormalDist().cdf(Z95 * float(np.mean(se_ols / se_boot))) - 1
    binomial_se = math.sqrt(expected_ols * (1 - expected_ols) / runs)
    assert abs(covered_ols - expected_ols) <= 4 * binomial_se
    # The bootstrap SE estimates the true SD of the estimate; the empirical SD over 1000 runs
    # has relative SE 1/sqrt(2 * 999) (4 of them: 0.09); the textbook SE is about 0.61 of it.
    sd = float(np.std(estimates, ddof=1))
    assert abs(float(np.mean(se_boot)) / sd - 1) <= 4 / math.sqrt(2 * (runs - 1))
    assert float(np.mean(se_ols)) / sd < 1 - 4 / math.sqrt(2 * (runs - 1))


# ---------------------------------------------------------------- degenerate releases


def hand_release(values: dict[tuple[int, int], float], variance: float = 6.0) -> CrossProducts:
    """A one-regressor release from hand-written u-unit sums (x in [0, 120], y in [-40, 40])."""
    return CrossProducts(
        DOSE_NAMES, DOSE_BOUNDS, {k: Noisy(v, variance) for k, v in values.items()}
    )


def test_non_pd_design_is_floored_and_reported() -> None:
    # sum u_x^2 = -2 < 0 after noise: XX = diag(10, -2) becomes diag(10, EIGEN_FLOOR * 10).
    cp = hand_release({(0, 0): 10, (0, 1): 0, (1, 1): -2, (0, 2): 1, (1, 2): 0.5, (2, 2): 5})
    res = fit(cp, replicates=200)
    assert any("not positive definite" in w for w in res.warnings)
    g1 = 0.5 / (EIGEN_FLOOR * 10)  # u-unit slope along the floored direction
    assert res.coefficients[1].estimate == pytest.approx(g1 * 40 / 60, rel=1e-6)
    assert all(math.isfinite(v) for c in res.coefficients for v in (c.se, c.se_ols))


def test_negative_residual_variance_is_floored_and_reported() -> None:
    # g = (0.3, 0.8), Xy'g = 4.1 > yy = 1: the noisy RSS is negative.
    cp = hand_release({(0, 0): 10, (0, 1): 0, (1, 1): 5, (0, 2): 3, (1, 2): 4, (2, 2): 1})
    res = fit(cp, replicates=200)
    assert any("residual sum of squares was not positive" in w for w in res.warnings)
    assert res.sigma == pytest.approx(40 * math.sqrt(SIGMA2_FLOOR))
    assert res.coefficients[1].estimate == pytest.approx(0.8 * 40 / 60)
    assert res.coefficients[1].se > 0  # the DP noise still gives a bootstrap SD


@pytest.mark.parametrize("n", [2.0, 1.5, 0.0, -4.0])
def test_fit_needs_n_above_p_plus_one(n: float) -> None:
    cp = hand_release({(0, 0): n, (0, 1): 0, (1, 1): 1, (0, 2): 0, (1, 2): 0, (2, 2): 1})
    with pytest.raises(PoolingError, match=rf"noisy count {n:g} is too small for 1 regressor"):
        fit(cp)


def test_fit_rejects_bad_settings() -> None:
    cp = release(u_matrix(dose_data(np.random.default_rng(2), 30), DOSE_BOUNDS), *DOSE_SPEC)
    with pytest.raises(ValueError, match="replicates"):
        fit(cp, replicates=1)
    with pytest.raises(ValueError, match="level"):
        fit(cp, level=1.0)


def test_pooling_rejects_mismatched_members() -> None:
    mat = u_matrix(dose_data(np.random.default_rng(3), 40), DOSE_BOUNDS)
    a = release(mat, *DOSE_SPEC)
    with pytest.raises(PoolingError, match="nothing to pool"):
        pool_cross_products([])
    other_names = release(mat, ("visits", "outcome"), DOSE_BOUNDS)
    with pytest.raises(PoolingError, match=r"member 1 has term names \('visits', 'outcome'\)"):
        pool_cross_products([a, other_names])
    other_bounds = release(mat, DOSE_NAMES, ((0.0, 100.0), (-40.0, 40.0)))
    with pytest.raises(PoolingError, match=r"member 1 has bounds \(\(0\.0, 100\.0\)"):
        pool_cross_products([a, other_bounds])


def full_entries(m: int) -> dict[tuple[int, int], Noisy]:
    return {(i, j): Noisy(1.0, 0.0) for i in range(m) for j in range(i, m)}


@pytest.mark.parametrize(
    ("names", "bounds", "entries", "message"),
    [
        (DOSE_NAMES, DOSE_BOUNDS, {**full_entries(3), (0, 2): None}, "not Noisy"),
        (
            DOSE_NAMES,
            DOSE_BOUNDS,
            {**full_entries(3), (2, 1): Noisy(1, 0)},
            r"unexpected .*\(2, 1\)",
        ),
        (("x", "x"), DOSE_BOUNDS, full_entries(3), "distinct"),
        ((INTERCEPT, "y"), DOSE_BOUNDS, full_entries(3), "distinct"),
        ((), (), full_entries(1), "at least a response"),
        (DOSE_NAMES, DOSE_BOUNDS[:1], full_entries(3), "1 bounds for 2 terms"),
        (DOSE_NAMES, ((5.0, 5.0), (0.0, 1.0)), full_entries(3), "bounds of 'sessions'"),
        (DOSE_NAMES, ((0.0, math.inf), (0.0, 1.0)), full_entries(3), "finite with L < U"),
    ],
)
def test_cross_products_validation(
    names: tuple[str, ...], bounds: Bounds, entries: dict[tuple[int, int], Noisy], message: str
) -> None:
    with pytest.raises(PoolingError, match=message):
        CrossProducts(names, bounds, entries)


def test_missing_entries_are_named() -> None:
    entries = full_entries(3)
    del entries[(0, 2)], entries[(2, 2)]
    with pytest.raises(PoolingError, match=r"miss entries \[\(0, 2\), \(2, 2\)\]"):
        CrossProducts(DOSE_NAMES, DOSE_BOUNDS, entries)


def test_noisy_entries_validate_themselves() -> None:
    with pytest.raises(PoolingError, match="not finite"):
        CrossProducts(DOSE_NAMES, DOSE_BOUNDS, {**full_entries(3), (1, 1): Noisy(math.nan, 0)})
    with pytest.raises(PoolingError, match=">= 0"):
        CrossProducts(DOSE_NAMES, DOSE_BOUNDS, {**full_entries(3), (1, 1): Noisy(1, -1)})


def test_entries_are_read_only_copies() -> None:
    entries = full_entries(3)
    cp = CrossProducts(DOSE_NAMES, DOSE_BOUNDS, entries)
    entries[(0, 0)] = Noisy(99.0, 0.0)
    assert cp.entries[(0, 0)].value == 1.0
    with pytest.raises(TypeError):
        cp.entries[(0, 0)] = Noisy(99.0, 0.0)  # type: ignore[index]


# ---------------------------------------------------------------- result: seed, level, JSON


def noisy_dose_release(seed: int) -> CrossProducts:
    rng = np.random.default_rng(seed)
    return release(u_matrix(dose_data(rng, 400), DOSE_BOUNDS), *DOSE_SPEC, 6.0, rng)


def test_seeded_and_level() -> None:
    cp = noisy_dose_release(4)
    a, b = fit(cp, replicates=300, seed=9), fit(cp, replicates=300, seed=9)
    assert a == b
    assert fit(cp, replicates=300, seed=10).coefficients[1].se != a.coefficients[1].se
    c90 = fit(cp, replicates=300, seed=9, level=0.90).coefficients[1]
    z90 = NormalDist().inv_cdf(0.95)
    assert c90.ci_high - c90.estimate == pytest.approx(z90 * c90.se)
    assert c90.se == a.coefficients[1].se  # the level changes the interval only


def test_json_round_trip() -> None:
    res = fit(noisy_dose_release(6), replicates=100)
    text = json.dumps(res.to_dict(), allow_nan=False)
    assert RegressionResult.from_dict(json.loads(text)) == res
    no_r2 = RegressionResult(DOSE_NAMES, res.coefficients, 10.0, 1.0, None, 100, ("w",))
    assert RegressionResult.from_dict(json.loads(json.dumps(no_r2.to_dict()))) == no_r2
