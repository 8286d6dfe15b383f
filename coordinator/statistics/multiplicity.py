"""Adjusted p-values for a study's confirmatory analyses (Holm; Benjamini-Hochberg).

A study may name one multiplicity rule over its confirmatory analyses; the report shows each
adjusted p-value beside the raw one. Both rules are step-wise on the sorted p-values:

- Holm (1979) controls the family-wise error rate: p_(i) adjusted is
  max_{j <= i} min(1, (m - j + 1) p_(j)) (step-down).
- Benjamini-Hochberg (1995) controls the false discovery rate under independence or positive
  dependence: p_(i) adjusted is min_{j >= i} min(1, m p_(j) / j) (step-up).

Post-processing of reported p-values only; nothing here touches a release.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum


class MultiplicityError(ValueError):
    """The p-values or the rule cannot be used; the message says which and why."""


class Rule(str, Enum):
    """The multiplicity rules a study may name."""

    HOLM = "holm"
    BENJAMINI_HOCHBERG = "benjamini-hochberg"


def _checked(pvalues: Sequence[float]) -> list[float]:
    """The p-values as floats, each in [0, 1]; `MultiplicityError` names the first bad one."""
    out = []
    for i, p in enumerate(pvalues):
        value = float(p)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise MultiplicityError(f"p-value {i} is {p!r}; it must be a number in [0, 1]")
        out.append(value)
    return out


def holm(pvalues: Sequence[float]) -> tuple[float, ...]:
    """Holm's step-down adjusted p-values, in the input order."""
    p = _checked(pvalues)
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return tuple(adjusted)


def benjamini_hochberg(pvalues: Sequence[float]) -> tuple[float, ...]:
    """Benjamini-Hochberg step-up adjusted p-values (q-values), in the input order."""
    p = _checked(pvalues)
    m = len(p)
    adjusted = [0.0] * m
    running = 1.0
    for rank, i in reversed(list(enumerate(sorted(range(m), key=lambda j: p[j]), start=1))):
        running = min(running, m * p[i] / rank)
        adjusted[i] = running
    return tuple(adjusted)


def adjust(pvalues: Sequence[float], rule: Rule | str) -> tuple[float, ...]:
    """Adjusted p-values under `rule` ("holm" or "benjamini-hochberg")."""
    try:
        chosen = Rule(rule)
    except ValueError as exc:
        names = ", ".join(r.value for r in Rule)
        raise MultiplicityError(f"unknown multiplicity rule {rule!r}; use one of {names}"
                                ) from exc
    return holm(pvalues) if chosen is Rule.HOLM else benjamini_hochberg(pvalues)
