"""Privacy loss conversion: a rho too large for OpenDP to bound is infinite, never an error
that escapes as an internal failure."""

from __future__ import annotations

import math

import pytest

from bridgestat.node.loss import Loss, rho_to_epsilon

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
