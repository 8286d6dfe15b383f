"""Number checks both sides apply to what they read from files and the wire."""

from __future__ import annotations

import math


def finite(value: object) -> bool:
    """A finite int or float, not a bool (a huge YAML integer overflows float: not finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
