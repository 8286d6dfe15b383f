"""The distributed discrete Gaussian bound against Kairouz, Liu and Steinke's Prop. 14,
hand-computed values, its limits, and OpenDP's own map for one share."""

from __future__ import annotations

import math

import opendp.prelude as dp
import pytest

from bridgestat.common.distributed_dp import (
    DistributedDpError,
    account,
    network_rho,
    share_alone_rho,
    sigma_for_rho,
    tau,
)

dp.enable_features("contrib")


def published(delta2: float, delta1: float, sigma: float, n: int, d: int) -> float:
    """Prop. 14 (arXiv 2102.06387) as printed: the two alpha-linear terms divided by alpha."""
    t = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    second = (delta2**2 / (n * sigma**2) + 2 * delta1 * t / (math.sqrt(n) * sigma)
              + t**2 * d) / 2
    third = (delta2 / (math.sqrt(n) * sigma) + t * math.sqrt(d)) ** 2 / 2
    return min(second, third)


def test_tau_by_hand() -> None:
    assert tau(1.0, 2) == pytest.approx(10 * math.exp(-math.pi**2), rel=1e-12)
    two = 10 * (math.exp(-math.pi**2 * 0.25) + math.exp(-math.pi**2 * 0.25 * 4 / 3))
    assert tau(0.5, 3) == pytest.approx(two, rel=1e-12)
    assert tau(3.0, 1) == 0.0  # one share: a plain discrete Gaussian


@pytest.mark.parametrize(("delta2", "delta1", "sigma", "n", "d"), [
    (1.0, 1.0, 0.5, 2, 1), (1.0, 1.0, 0.6, 25, 1), (3.0, 5.0, 0.7, 10, 4),
    (2.0**10, 2.0**10, 102.4, 1000, 1), (2.0**20, 2.0**21, 5000.0, 16, 9)])
def test_matches_the_published_formula(delta2: float, delta1: float, sigma: float, n: int,
                                       d: int) -> None:
    assert network_rho(delta2, sigma, n, dim=d, delta_l1=delta1) == pytest.approx(
        published(delta2, delta1, sigma, n, d), rel=1e-12)


def test_hand_computed_value() -> None:
    # Delta = 1, sigma = 1, two honest shares: tau = 10 e^{-pi^2} = 5.1723e-4 and
    # rho = (1/sqrt(2) + tau)^2 / 2 = 0.250366 (the tau-free value is 0.25).
    assert network_rho(1.0, 1.0, 2) == pytest.approx(0.5 * (2**-0.5 + 5.17228e-4) ** 2,
                                                     rel=1e-6)
    assert network_rho(1.0, 1.0, 2) == pytest.approx(0.250366, abs=1e-6)


def test_tau_vanishes_for_large_sigma_and_rho_is_the_continuous_one() -> None:
    # statistics.md: a fixed-point sum with Delta = 2^20 at rho = 0.05 has tau = 0 at K = 25
    # and 1,000, so the sum's loss is Delta^2 / (2 H sigma^2) exactly.
    for honest in (24, 999):
        sigma = sigma_for_rho(2.0**20, 0.05, honest)
        assert tau(sigma, honest) == 0.0
        assert sigma == pytest.approx(2.0**20 / math.sqrt(2 * 0.05 * honest), rel=1e-12)
        assert network_rho(2.0**20, sigma, honest) == pytest.approx(0.05, rel=1e-12)
    assert tau(3.0, 1000) < 1e-30 < tau(0.5, 1000)  # k = 1 term: 10 exp(-9 pi^2) = 3e-38


def test_raw_count_needs_scaling() -> None:
    # A raw count (Delta = 1) at H = 1,000 and rho = 0.05 would want sigma_share = 0.1, below
    # the bound's sigma >= 1/2, where tau is about 10 * 999 * e^{-pi^2/2} = 72: unusable.
    assert network_rho(1.0, 0.5, 1000) > 1000
    sigma = sigma_for_rho(1.0, 0.05, 1000)
    assert network_rho(1.0, sigma, 1000) <= 0.05
    assert sigma > 0.5  # the bound forces a larger share than the continuous arithmetic
    scaled = sigma_for_rho(2.0**10, 0.05, 1000)  # x 2^10: sigma 102.4, tau = 0
    assert scaled == pytest.approx(102.4, rel=1e-12)


def test_inverse_is_tight() -> None:
    for delta, rho, honest in ((1.0, 0.5, 3), (4.0, 0.1, 50), (2.0**20, 0.01, 16)):
        sigma = sigma_for_rho(delta, rho, honest)
        assert network_rho(delta, sigma, honest) <= rho
        assert network_rho(delta, sigma * (1 - 1e-6), honest) > rho or sigma == 0.5


def test_share_alone_matches_opendp() -> None:
    for sigma, delta in ((3.0, 1), (1000.0, 2**10), (5.5, 7)):
        m = dp.m.make_gaussian(dp.atom_domain(T=dp.i64), dp.absolute_distance(T=dp.i64), sigma)
        assert share_alone_rho(float(delta), sigma) == pytest.approx(m.map(delta), rel=1e-9)
    # One honest share: the network bound is the share's own loss.
    assert network_rho(5.0, 2.0, 1) == share_alone_rho(5.0, 2.0)
    # H shares: H times less loss than one share alone (tau = 0 here).
    assert network_rho(2.0**20, 2.0**18, 9) == pytest.approx(
        share_alone_rho(2.0**20, 2.0**18) / 9, rel=1e-12)


def test_refuses_outside_assumptions() -> None:
    with pytest.raises(DistributedDpError, match="sigma_share: must be a finite number >= 0.5"):
        network_rho(1.0, 0.4, 3)
    with pytest.raises(DistributedDpError, match="honest: at least one"):
        tau(1.0, 0)
    with pytest.raises(DistributedDpError, match="rho: must be"):
        sigma_for_rho(1.0, 0.0, 3)


def test_account_charges_the_network_bound_and_audits_the_share_alone() -> None:
    sigma = sigma_for_rho(2.0**20, 0.05, 16)
    entry = account(17, 1, 2.0**20, sigma)
    assert (entry.honest, entry.dim) == (16, 1)
    assert entry.rho_network == pytest.approx(0.05, rel=1e-9)
    assert entry.rho_alone == pytest.approx(16 * 0.05, rel=1e-9)
