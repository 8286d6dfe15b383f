"""Privacy-loss arithmetic the coordinator needs to plan a study (what a node will charge).

A node caps the (epsilon, delta) guarantee epsilon_pure + epsilon(rho, delta) of everything it
released; pure-DP losses add, zCDP losses add, and the conversion is the node's own
(`bridgestat.common.loss`: OpenDP's, infinite where OpenDP overflows).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridgestat.common.loss import rho_to_epsilon

__all__ = ["Spend", "rho_to_epsilon"]


@dataclass(frozen=True)
class Spend:
    """Pure epsilon plus rho, as a node sums them."""

    epsilon: float = 0.0
    rho: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.epsilon + other.epsilon, self.rho + other.rho)

    def guarantee(self, delta: float) -> float:
        """The epsilon of the (epsilon, delta) guarantee (math.inf for a rho too large to
        bound: every budget refuses it)."""
        return self.epsilon + rho_to_epsilon(self.rho, delta)
