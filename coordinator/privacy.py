"""Privacy-loss arithmetic the coordinator needs to plan a study (what a node will charge).

A node caps the (epsilon, delta) guarantee epsilon_pure + epsilon(rho, delta) of everything it
released; pure-DP losses add, zCDP losses add, and the conversion is OpenDP's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import opendp.prelude as dp

dp.enable_features("contrib")


def rho_to_epsilon(rho: float, delta: float) -> float:
    """OpenDP's zCDP -> (epsilon, delta) conversion, evaluated at a map of at least rho."""
    if rho <= 0:
        return 0.0
    scale = (1 - 1e-12) / math.sqrt(2 * rho)
    gaussian = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False),
                                  dp.absolute_distance(T=float), scale)
    return float(dp.c.make_zCDP_to_approxDP(gaussian).map(1.0).epsilon(delta))


@dataclass(frozen=True)
class Spend:
    """Pure epsilon plus rho, as a node sums them."""

    epsilon: float = 0.0
    rho: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.epsilon + other.epsilon, self.rho + other.rho)

    def guarantee(self, delta: float) -> float:
        """The epsilon of the (epsilon, delta) guarantee."""
        return self.epsilon + rho_to_epsilon(self.rho, delta)
