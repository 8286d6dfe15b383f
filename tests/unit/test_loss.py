"""Privacy loss conversion: a rho too large for OpenDP to bound is infinite, never an error
that escapes as an internal failure."""

from __future__ import annotations

import math

import pytest

from bridgestat.node.loss import Epsilon, Loss, rho_to_epsilon

DELTA = 1e-6
HUGE_RHO = 70284.0  # OpenDP's zCDP -> (epsilon, delta) conversion overflows from ~70283


def test_a_moderate_rho_converts_to_a_finite_epsilon_above_rho() -> None:
    epsilon = rho_to_epsilon(0.5, DELTA)
    assert math.isfinite(epsilon) and epsilon > 0.5
    assert float(Loss.of(rho=0.5).epsilon_at(DELTA)) == epsilon


@pytest.mark.parametrize("rho", [HUGE_RHO, 1e10, 1.7e308])
def test_a_rho_opendp_cannot_bound_converts_to_infinity(rho: float) -> None:
    assert rho_to_epsilon(rho, DELTA) == math.inf


def test_a_loss_with_an_unbounded_rho_has_no_finite_epsilon() -> None:
    with pytest.raises(OverflowError, match="rho 70284 has no finite epsilon"):
        Loss.of(epsilon=0.1, rho=HUGE_RHO).epsilon_at(DELTA)


# ------------------------------------------------------------------ the ledger's cap check


@pytest.mark.parametrize("delta", [1e-12, 1e-9, 1e-6, 1e-3, 0.05])
@pytest.mark.parametrize("rho", [1e-9, 1e-6, 1e-4, 0.01, 0.1, 0.5, 1.0, 7.0, 100.0, 5000.0])
def test_opendps_conversion_is_never_above_the_analytic_bound(rho: float, delta: float) -> None:
    """What makes `Loss.within`'s shortcut sound: OpenDP's epsilon is at most Bun and
    Steinke's rho + 2 sqrt(rho ln(1/delta))."""
    assert rho_to_epsilon(rho, delta) <= rho + 2 * math.sqrt(rho * math.log(1 / delta))


def test_within_gives_the_exact_comparisons_answer() -> None:
    """At caps on both sides of the exact epsilon, close and far, with and without pure
    epsilon, `within` says what comparing `epsilon_at` says."""
    for epsilon, rho in [(0.0, 0.003), (0.4, 0.003), (0.0, 0.37), (1.25, 2.5)]:
        loss = Loss.of(epsilon=epsilon, rho=rho)
        exact = float(loss.epsilon_at(DELTA))
        for factor in (0.5, 0.999999, 1.0, 1.000001, 1.2, 1.5, 3.0):
            cap = Epsilon.of(exact * factor)
            assert loss.within(cap, DELTA) == (loss.epsilon_at(DELTA) <= cap), (loss, factor)
    assert Loss.of(epsilon=0.3).within(Epsilon.of(0.3), DELTA)
    assert not Loss.of(epsilon=0.3).within(Epsilon.of(0.29), DELTA)


def test_within_converts_only_near_the_cap() -> None:
    """Far below the cap the bound decides and OpenDP's conversion is not run (it costs
    about 4 ms, and a ledger's running total is a new rho at every charge); near the cap
    it is."""
    rho_to_epsilon.cache_clear()
    assert Loss.of(rho=0.01234).within(Epsilon.of(10.0), DELTA)
    assert rho_to_epsilon.cache_info().misses == 0
    exact = Loss.of(rho=0.01234).epsilon_at(DELTA)
    rho_to_epsilon.cache_clear()
    assert Loss.of(rho=0.01234).within(Epsilon.of(float(exact) * 1.01), DELTA)
    assert rho_to_epsilon.cache_info().misses == 1


def test_within_a_rho_opendp_cannot_bound_is_an_overflow_as_before() -> None:
    with pytest.raises(OverflowError, match="no finite epsilon"):
        Loss.of(rho=HUGE_RHO).within(Epsilon.of(1e9), DELTA)
