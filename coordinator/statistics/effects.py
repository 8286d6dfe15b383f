"""Effect statistics built from pooled or per-member estimates (post-processing only).

Two groups are disjoint sets of participants with independent DP noise, so the variances of
their estimates add; both variance components (sampling and DP) are carried separately so a
report can show how much of an interval is DP noise. Ratios use the delta method.

A paired comparison (the same participants at two occasions) cannot treat the occasions as
independent: its risk difference comes from one transition histogram (see
`paired_risk_difference`), where each participant sits in exactly one cell.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from bridgestat.common import labels
from bridgestat.common.labels import MISSING
from bridgestat.coordinator.statistics.pooling import (
    Estimate,
    Noisy,
    PoolingError,
    make_estimate,
    sum_noisy,
)

ARROW = labels.ARROW  # "before -> after" of a transition cell (tables splits on it too)


def _components(e: Estimate) -> tuple[float, float]:
    return (e.se_sampling or 0.0) ** 2, (e.se_dp or 0.0) ** 2


def difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b for independent estimates (e.g. change in one arm minus the other: DiD)."""
    sa, da = _components(a)
    sb, db = _components(b)
    return make_estimate(a.estimate - b.estimate, sa + sb, da + db, a.n + b.n)


def risk_difference(a: Estimate, b: Estimate) -> Estimate:
    """p_a - p_b of two disjoint groups; Var(RD) = Var(p_a) + Var(p_b)."""
    return difference(a, b)


def _scaled(e: Estimate, factor: float) -> tuple[float, float]:
    sampling, dp = _components(e)
    return sampling * factor**2, dp * factor**2


def log_risk_ratio(a: Estimate, b: Estimate) -> Estimate:
    """ln(p_a / p_b); delta method Var = Var(p_a)/p_a^2 + Var(p_b)/p_b^2."""
    for name, e in (("first", a), ("second", b)):
        if not 0 < e.estimate <= 1:
            raise PoolingError(f"{name} group's noisy share {e.estimate:.3g} is not in (0, 1], "
                               "so its log risk ratio is undefined")
    sa, da = _scaled(a, 1 / a.estimate)
    sb, db = _scaled(b, 1 / b.estimate)
    return make_estimate(math.log(a.estimate / b.estimate), sa + sb, da + db, a.n + b.n)


def log_odds_ratio(a: Estimate, b: Estimate) -> Estimate:
    """ln(odds_a / odds_b); delta method Var = Var(p)/(p(1-p))^2 summed over the groups."""
    for name, e in (("first", a), ("second", b)):
        if not 0 < e.estimate < 1:
            raise PoolingError(f"{name} group's noisy share {e.estimate:.3g} is not in (0, 1), "
                               "so its log odds ratio is undefined")
    sa, da = _scaled(a, 1 / (a.estimate * (1 - a.estimate)))
    sb, db = _scaled(b, 1 / (b.estimate * (1 - b.estimate)))
    value = math.log(a.estimate / (1 - a.estimate)) - math.log(b.estimate / (1 - b.estimate))
    return make_estimate(value, sa + sb, da + db, a.n + b.n)


def transition_counts(cells: Mapping[str, Noisy], wanted: Collection[str]
                      ) -> tuple[Noisy, Noisy, Noisy]:
    """(entered, left, stayed): noisy counts of "before -> after" cells relative to `wanted`.

    entered: before outside, after inside; left: the reverse; stayed: the rest (both inside
    or both outside). The missing cell (no value at an occasion) is left out.
    """
    entered: list[Noisy] = []
    left: list[Noisy] = []
    stayed: list[Noisy] = []
    for label, value in cells.items():
        if label == MISSING:
            continue
        before, sep, after = label.partition(ARROW)
        if not sep:
            raise PoolingError(f"cell {label!r} is not a 'before -> after' transition")
        was, now = before in wanted, after in wanted
        (entered if now and not was else left if was and not now else stayed).append(value)
    return sum_noisy(entered), sum_noisy(left), sum_noisy(stayed)


def paired_risk_difference(entered: Noisy, left: Noisy, stayed: Noisy) -> Estimate:
    """p_after - p_before = (A - B) / N on the same participants (N = A + B + C).

    Sampling: [(p_A + p_B) - (p_A - p_B)^2] / N (McNemar-type, the occasions are paired).
    DP (delta method on the three independent noisy sums):
    [v_A (1 - RD)^2 + v_B (1 + RD)^2 + v_C RD^2] / N^2.
    """
    n = entered.value + left.value + stayed.value
    if not n >= 1:
        raise PoolingError(f"noisy total {n:g} is too small for a paired share (need >= 1)")
    rd = (entered.value - left.value) / n
    pa = min(1.0, max(0.0, entered.value / n))
    pb = min(1.0, max(0.0, left.value / n))
    var_sampling = max(0.0, (pa + pb) - (pa - pb) ** 2) / n
    var_dp = (entered.variance * (1 - rd) ** 2 + left.variance * (1 + rd) ** 2
              + stayed.variance * rd**2) / n**2
    return make_estimate(rd, var_sampling, var_dp, n)


def pooled_transition_counts(per_member: Sequence[tuple[Noisy, Noisy, Noisy]]
                             ) -> tuple[Noisy, Noisy, Noisy]:
    """Sum members' (entered, left, stayed) counts; independent noise, so variances add."""
    if not per_member:
        raise PoolingError("nothing to pool: no member releases")
    return (sum_noisy([m[0] for m in per_member]), sum_noisy([m[1] for m in per_member]),
            sum_noisy([m[2] for m in per_member]))
