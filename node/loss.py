"""Privacy loss as an exact value object.

Losses come from OpenDP's privacy maps as floats; the ledger adds them up many times, so
they are kept as exact rationals (every float is one) and compared without rounding drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, order=True)
class Epsilon:
    """A pure-DP loss epsilon >= 0, exact."""

    value: Fraction

    @classmethod
    def of(cls, value: float | int | Fraction | str) -> Epsilon:
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
