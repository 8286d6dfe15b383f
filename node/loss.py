"""Privacy loss as an exact value object.

Losses come from OpenDP's privacy maps as floats; the ledger adds them up many times, so
they are kept as exact rationals (every float is one) and compared without rounding drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from bridgestat.common.loss import rho_to_epsilon

__all__ = ["Epsilon", "Loss", "rho_to_epsilon"]  # rho_to_epsilon: the shared conversion

CONVERTIBLE_RHO = 70_000.0
"""Below this rho OpenDP's conversion is finite (it overflows from about 70283): `within`
never accepts a total that `epsilon_at` could not then state."""


@dataclass(frozen=True, order=True)
class Epsilon:
    """A pure-DP loss epsilon >= 0, exact."""

    value: Fraction

    @classmethod
    def of(cls, value: float | Fraction | str) -> Epsilon:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"epsilon must be finite, got {value}")
        exact = Fraction(value)
        if exact < 0:
            raise ValueError(f"epsilon must be >= 0, got {value}")
        return cls(exact)

    @classmethod
    def zero(cls) -> Epsilon:
        return cls(Fraction(0))

    def __add__(self, other: Epsilon) -> Epsilon:
        return Epsilon(self.value + other.value)

    def __sub__(self, other: Epsilon) -> Epsilon:
        return Epsilon(max(Fraction(0), self.value - other.value))

    def __float__(self) -> float:
        return float(self.value)

    def encode(self) -> str:
        """Exact text form for storage ("numerator/denominator")."""
        return str(self.value)

    @classmethod
    def decode(cls, text: str) -> Epsilon:
        return cls(Fraction(text))

    def __str__(self) -> str:
        return f"{float(self.value):.6g}"


@dataclass(frozen=True)
class Loss:
    """What one release (or a ledger's total) spends: pure-DP epsilon plus zCDP rho, exact.

    Pure-DP losses add (basic composition), zCDP losses add, and the two combine into an
    (epsilon, delta) guarantee: epsilon_pure + epsilon(rho, delta), delta.
    """

    epsilon: Fraction = Fraction(0)
    rho: Fraction = Fraction(0)

    @classmethod
    def of(cls, epsilon: float | Fraction = 0, rho: float | Fraction = 0) -> Loss:
        return cls(Epsilon.of(epsilon).value, Epsilon.of(rho).value)

    def __add__(self, other: Loss) -> Loss:
        return Loss(self.epsilon + other.epsilon, self.rho + other.rho)

    def __sub__(self, other: Loss) -> Loss:
        return Loss(max(Fraction(0), self.epsilon - other.epsilon),
                    max(Fraction(0), self.rho - other.rho))

    def epsilon_at(self, delta: float) -> Epsilon:
        """The (epsilon, delta) guarantee's epsilon; exact when there is no rho.

        OverflowError when the rho is too large for OpenDP to bound (see rho_to_epsilon).
        """
        if self.rho == 0:
            return Epsilon(self.epsilon)
        converted = rho_to_epsilon(float(self.rho), delta)
        if math.isinf(converted):
            raise OverflowError(f"rho {float(self.rho):g} has no finite epsilon at delta "
                                f"{delta:g}")
        return Epsilon(self.epsilon + Fraction(converted))

    def within(self, cap: Epsilon, delta: float) -> bool:
        """Whether `epsilon_at(delta) <= cap`, usually without OpenDP's conversion.

        The conversion builds an OpenDP measurement (about 4 ms), and a ledger's running
        total is a new rho at every charge, so its cache misses at a node alone in its
        process. An analytic upper bound decides first: rho-zCDP implies
        (rho + 2 sqrt(rho ln(1/delta)), delta)-DP (Bun and Steinke 2016, Prop. 1.3), and
        OpenDP's conversion is never above it (tested). When the bound, inflated against
        float rounding, is within the cap, so is the exact epsilon; otherwise the exact
        conversion decides. Same answer as comparing `epsilon_at`; OverflowError as there
        (the shortcut is not taken for a rho OpenDP cannot convert).
        """
        if self.rho == 0:
            return self.epsilon <= cap.value
        rho = float(self.rho)
        bound = (rho + 2 * math.sqrt(rho * math.log(1 / delta))) * (1 + 1e-9)
        if rho < CONVERTIBLE_RHO and self.epsilon + Fraction(bound) <= cap.value:
            return True
        return self.epsilon_at(delta) <= cap

    def encode(self) -> str:
        return f"{self.epsilon};{self.rho}"

    @classmethod
    def decode(cls, text: str) -> Loss:
        epsilon, _, rho = text.partition(";")
        return cls(Fraction(epsilon), Fraction(rho or 0))

    def __str__(self) -> str:
        if self.rho == 0:
            return f"epsilon {float(self.epsilon):.6g}"
        return f"epsilon {float(self.epsilon):.6g} + rho {float(self.rho):.6g}"
