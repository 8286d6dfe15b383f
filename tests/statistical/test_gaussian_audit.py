"""Empirical audit of the Gaussian release (regression cross products): the rho the node's
pipeline shows on worst-case neighbours does not exceed the rho it charges, and a half-noise
control is caught.

Runs the core of benchmarks/gaussian_audit.py (see its docstring for the datasets, the
audited scalar and the bound) with 10,000 releases per dataset and 2,500 for the control.
Cross products are the release whose stability step (the clamped integer sums) is the node's
own code rather than OpenDP's, so it gets its own audit beside the Laplace one.

Error probabilities (derived, not tuned): rho_lb exceeds the true rho only if the shift's
lower bound or the variance's upper bound fails, each one-sided at alpha = 1e-5, so a false
failure has probability <= 2e-5. Expected values with per-entry noise sd 1 (rho 0.5 per
entry, so the worst-case shift of each entry is one sd), T = mean of 6 entries with variance
1/6, n = 10,000: SE of the shift sqrt(2 (1/6) / n) = 0.0058, z = 4.26, shift_lo ~ 0.975,
variance bound ~ (1 + 4.26 sqrt(2 / 2n)) / 6, so rho_lb ~ 2.7 against the charged 3.0. The
control (sd halved: true rho 12) gives rho_lb ~ 10.5 at n = 2,500. The sharpness check
(rho_lb above half the charge) fails only if the shift estimate is more than 40 SE low.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import gaussian_audit as audit

RELEASES = 10_000
CONTROL_RELEASES = 2_500
WORKERS = 2


@pytest.fixture(scope="module")
def result() -> audit.Result:
    return audit.run(RELEASES, CONTROL_RELEASES, WORKERS)


def test_charged_rho_is_the_queried_rho(result: audit.Result) -> None:
    assert result.charged_rho == pytest.approx(audit.RHO, rel=1e-9)
    assert result.charged_rho <= audit.RHO


def test_worst_case_neighbour_moves_every_entry_by_one_unit(result: audit.Result) -> None:
    """The added participant sits at both clip bounds: the shift of the mean entry is 1."""
    assert result.correct.shift == pytest.approx(1.0, abs=6 * 0.0058)


def test_rho_lower_bound_does_not_exceed_the_charged_rho(result: audit.Result) -> None:
    assert result.correct.rho_lb <= result.charged_rho, result.correct.describe()
    assert result.correct.rho_lb > 0.5 * result.charged_rho, result.correct.describe()


def test_negative_control_with_half_the_noise_is_caught(result: audit.Result) -> None:
    assert result.control.rho_lb > result.charged_rho, result.control.describe()


def test_the_bound_on_exact_gaussian_draws() -> None:
    """The estimator alone, on seeded numpy draws with a known rho (no privacy noise here):
    shift 1 per entry, sd 1, 6 entries -> rho 3; the bound stays below and near it."""
    rng = np.random.default_rng(5)
    d = rng.normal(0.0, 1.0, (RELEASES, 6))
    d_prime = rng.normal(1.0, 1.0, (RELEASES, 6))
    bound = audit.audit(d, d_prime)
    assert 2.4 < bound.rho_lb <= 3.0
    assert bound.variance == pytest.approx(1 / 6, rel=4 * np.sqrt(2 / (2 * RELEASES)))
