"""Plan a study's precision and losses before spending: predicted SEs, MDEs, optimal budgets.

Everything here is computed from public inputs only: each member's expected size (a noisy count
already released, or a size declared in the study file), the public clip bounds, the loss, the
split of a mean's loss, the node's noise constructions (`node/mechanisms.py`, reproduced here
because the coordinator does not import the node) and planning guesses of the outcome (mean,
SD, share) that a researcher states. No release is read.

Noise (statistics.md "What a node releases"): a count is discrete Laplace with scale 1/eps_N;
a centred sum of (clip(x) - c) has scale H/eps_S in the variable's units (integer scale F/eps_S
at unit H/F, F = 2^20); a sum of squares H^2/eps_Q; each histogram cell 1/eps. The variance of
discrete Laplace with integer scale b is 2q/(1-q)^2, q = exp(-1/b) (about 2 b^2). Pooled sums
over members add their noise variances. A rho (zCDP) analysis has DP variance
sum_k c_k / rho_k (Gaussian noise variance is proportional to 1/rho).

Predicted variance of each pooled estimator, N = sum n_k, r = (m - c)/H:
- mean / paired change: sigma^2/N + sum_k [v_S,k + (m - c)^2 v_N,k] / N^2;
- d_z: 1/N + d^2/(2N) + Var_DP(m)/sigma^2 + d^2 sum v_Q,k / (4 N^2 sigma^4);
- proportion: p(1-p)/N + [(1-p)^2 v_1 + p^2 v_0] / N^2 (v_1, v_0 summed over the cells);
- risk difference of two disjoint groups: the sum of the groups' proportion variances;
- random-effects pooling of members' estimates: 1 / sum_k 1/(v_k + tau2).
SE is its square root; the minimal detectable effect at 80 % power, two-sided 5 %, is
(z_0.975 + z_0.80) SE = 2.80 SE.

Optimal budgets (statistics.md "Planning a study's budget"). Minimise sum_a w_a Var_a / scale_a^2
(each variance in units of its outcome's planning SD, so that analyses of different units can be
weighed; w_a the analysis weight) subject to, at every member, pure-DP losses plus OpenDP's
(epsilon, delta) conversion of the summed rho within the remaining budget, each query within
the per-query cap, and every pooled mean's SD determined: the DP noise SD of its s^2 at most
SD_SHARE_TARGET of its planning variance (`calibrate`; the mean's SE and d_z are computed from
s^2, which the estimators' variances alone would starve). With pooled sums,
Var_a = V_a + sum_k c_ak / eps_ak^2 is separable over members, so at each member eps_ak is proportional to (w_a c_ak)^(1/3) (the cube-root rule) and
rho_ak to (w_a c_ak)^(1/2), capped by water-filling; one scalar search splits a member's budget
between its pure and its rho analyses. A mean's own split follows the same rule over its three
components, eps_N : eps_S : eps_Q = (r^2)^(1/3) : 1 : (lambda H^2)^(1/3), where lambda weighs the
DP variance of s^2 against that of the mean: lambda = mu/(4 sigma^2) for a mean (the DP variance
of the SD estimate, Var(s^2)/(4 sigma^2), weighed by mu, the item's `sd_weight`) and
max(d^2, mu)/(4 sigma^2) for d_z (its own v_Q term, never less than the SD's). mu is the
Lagrange multiplier of the item's SD constraint: `calibrate` sets it so that the constraint
holds with equality where it binds (mu = 1, the SD's noise counted as much as the mean's, is
where it starts and what random-effects items keep); the count keeps
at least MIN_COUNT_SHARE. A query carries its split (`Query.split`), so the study runner sends
what the planner chose. A mean with clip counts spends CLIP_SHARE of its loss on them and
splits the rest. Random-effects
weights make the problem non-convex: scipy's SLSQP refines the closed form, started from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
from scipy import optimize

from bridgestat.coordinator.statistics.privacy import rho_to_epsilon

FIXED_POINT = 1 << 20
"""The node's fixed-point factor F of centred sums (node/mechanisms.py)."""
MDE_FACTOR = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)
"""(z_0.975 + z_0.80): minimal detectable effect per SE at 80 % power, two-sided 5 %."""
MIN_LOSS = 1e-6
CLIP_SHARE = 0.05
"""Share of a mean's loss its clip counts take when asked for (node/mechanisms.py CLIP_SHARE);
the count, sum and sum of squares share the rest by the split."""

Floats = npt.NDArray[np.float64]


class PlanningError(ValueError):
    """A plan cannot be computed from these inputs; the message names the input and why."""


class Kind(str, Enum):
    """The release types whose pooled estimators the planner predicts."""

    MEAN = "mean"  # also a paired change (clip [-D, D], centre 0)
    D_Z = "d_z"  # Cohen's d_z of a paired change
    PROPORTION = "proportion"
    RISK_DIFFERENCE = "risk_difference"
    GAUSSIAN = "gaussian"  # a rho (zCDP) analysis with stated variance coefficients


class Pooling(str, Enum):
    SUMS = "sums"  # members' sums pooled into one estimate (coordinator/statistics/pooling.py)
    RANDOM = "random"  # members' estimates meta-analysed with weights 1/(v_k + tau2)


@dataclass(frozen=True)
class Split:
    """Shares of a mean's loss spent on count, centred sum and sum of squares."""

    count: float = 0.2
    sum: float = 0.5
    sum_squares: float = 0.3

    def __post_init__(self) -> None:
        parts = (self.count, self.sum, self.sum_squares)
        if not all(p > 0 for p in parts) or not math.isclose(sum(parts), 1.0, rel_tol=1e-9):
            raise PlanningError(f"split {parts} must be three shares > 0 summing to 1")


HAND_SPLIT = Split()
"""The node's present split (node/mechanisms.py MEAN_SPLIT)."""


@dataclass(frozen=True)
class PlanItem:
    """One analysis as the planner sees it; one entry per member in `sizes`.

    For a GAUSSIAN item the losses are rho, `sampling_variance` is its V_a and
    `dp_coefficients[k]` its c_ak (DP variance at member k times rho_k).
    """

    name: str
    kind: Kind
    sizes: tuple[float, ...]
    lower: float = 0.0
    upper: float = 1.0
    mean: float | None = None  # planning mean (default: the clip's centre)
    sd: float | None = None  # planning SD (default: half-width / 3)
    share: float = 0.5  # planning proportion (group A of a risk difference)
    share_other: float = 0.5  # group B of a risk difference
    sizes_other: tuple[float, ...] = ()  # group B sizes of a risk difference
    cells_in: int = 1  # histogram cells counted in the share
    cells_out: int = 1  # histogram cells counted against it
    weight: float = 1.0
    pooling: Pooling = Pooling.SUMS
    tau2: float = 0.0  # planning between-member variance (random pooling)
    sampling_variance: float = 0.0
    dp_coefficients: tuple[float, ...] = ()
    clip_counts: bool = False  # a mean's clip counts take CLIP_SHARE of its loss
    sd_weight: float = 1.0  # weight of the DP variance of s^2, in units of 1/(4 sigma^2)

    def __post_init__(self) -> None:
        where = f"analysis {self.name!r}"
        if not self.sizes or any(not (math.isfinite(n) and n > 1) for n in self.sizes):
            raise PlanningError(f"{where}: sizes must be one expected size > 1 per member, "
                                f"got {list(self.sizes)}")
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)
                and self.lower < self.upper):
            raise PlanningError(f"{where}: clip bounds [{self.lower}, {self.upper}] must be "
                                "finite with lower < upper")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise PlanningError(f"{where}: weight {self.weight} must be finite and >= 0")
        if not (self.sd_weight >= 0 and math.isfinite(self.sd_weight)):
            raise PlanningError(f"{where}: sd_weight {self.sd_weight} must be finite and >= 0")
        if self.kind is Kind.RISK_DIFFERENCE and len(self.sizes_other) != len(self.sizes):
            raise PlanningError(f"{where}: a risk difference needs sizes_other, one per member")
        if self.kind is Kind.GAUSSIAN and len(self.dp_coefficients) != len(self.sizes):
            raise PlanningError(f"{where}: a rho analysis needs dp_coefficients, one per member")
        if not 0 < self.share < 1 or not 0 < self.share_other < 1:
            raise PlanningError(f"{where}: planning shares must lie in (0, 1)")

    @property
    def members(self) -> int:
        return len(self.sizes)

    @property
    def half_width(self) -> float:
        return (self.upper - self.lower) / 2

    @property
    def centre(self) -> float:
        return (self.upper + self.lower) / 2

    @property
    def planning_sd(self) -> float:
        return self.half_width / 3 if self.sd is None else self.sd

    @property
    def planning_mean(self) -> float:
        return self.centre if self.mean is None else self.mean

    @property
    def mean_share(self) -> float:
        """The share of a mean's loss its count, sum and sum of squares split."""
        return 1.0 - CLIP_SHARE if self.clip_counts else 1.0

    @property
    def rho(self) -> bool:
        """Its losses are rho (zCDP), not pure epsilon."""
        return self.kind is Kind.GAUSSIAN

    @property
    def scale(self) -> float:
        """The outcome's planning SD: the unit in which the objective weighs its variance."""
        if self.kind in (Kind.MEAN,):
            return self.planning_sd
        if self.kind is Kind.PROPORTION:
            return math.sqrt(self.share * (1 - self.share))
        if self.kind is Kind.RISK_DIFFERENCE:
            return math.sqrt((self.share * (1 - self.share)
                              + self.share_other * (1 - self.share_other)) / 2)
        if self.kind is Kind.GAUSSIAN and self.sd is not None:
            return self.sd
        return 1.0


# --------------------------------------------------------------------------- noise


def discrete_laplace_variance(scale: float) -> float:
    """Var of discrete Laplace with integer scale b: 2q/(1-q)^2, q = exp(-1/b)."""
    q = math.exp(-1.0 / scale)
    return 2.0 * q / math.expm1(-1.0 / scale) ** 2


def count_variance(epsilon: float) -> float:
    """Noise variance of a count (or one histogram cell) at loss epsilon."""
    return discrete_laplace_variance(1.0 / epsilon)


def fixed_point_variance(unit: float, epsilon: float) -> float:
    """Noise variance of a fixed-point sum whose values span +-unit (sum: H; squares: H^2)."""
    return discrete_laplace_variance(FIXED_POINT / epsilon) * (unit / FIXED_POINT) ** 2


@dataclass(frozen=True)
class Prediction:
    """Predicted variance of a pooled estimator, split into sampling and DP parts."""

    sampling: float
    dp: float
    sd_dp: float = 0.0  # planning only: lambda-weighted DP variance of s^2 (module docstring)

    @property
    def variance(self) -> float:
        return self.sampling + self.dp

    @property
    def criterion(self) -> float:
        """What the optimiser minimises for this item: variance plus the SD term."""
        return self.variance + self.sd_dp

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)

    @property
    def mde(self) -> float:
        """Minimal detectable effect, 80 % power, two-sided 5 %."""
        return MDE_FACTOR * self.se


# --------------------------------------------------------------------------- prediction


def _losses(item: PlanItem, losses: Sequence[float]) -> tuple[float, ...]:
    if len(losses) != item.members:
        raise PlanningError(f"analysis {item.name!r}: {len(losses)} losses for "
                            f"{item.members} members")
    if any(not (math.isfinite(e) and e > 0) for e in losses):
        raise PlanningError(f"analysis {item.name!r}: every loss must be > 0, got {list(losses)}")
    return tuple(float(e) for e in losses)


def _splits(item: PlanItem, splits: Split | Sequence[Split]) -> tuple[Split, ...]:
    return (splits,) * item.members if isinstance(splits, Split) else tuple(splits)


def _mean_noise(item: PlanItem, eps: float, split: Split) -> tuple[float, float, float]:
    """(v_N, v_S, v_Q) of one member's mean release (less the clip counts' share)."""
    h = item.half_width
    eps *= item.mean_share
    return (count_variance(eps * split.count), fixed_point_variance(h, eps * split.sum),
            fixed_point_variance(h * h, eps * split.sum_squares))


def _mean_type(item: PlanItem, n: float, v_n: float, v_s: float, v_q: float) -> Prediction:
    """Mean or d_z from (summed) size and noise variances, with the planner's SD term."""
    mean, sd = item.planning_mean, item.planning_sd
    if item.kind is Kind.MEAN:
        r = mean - item.centre
        return Prediction(sd * sd / n, (v_s + r * r * v_n) / n**2,
                          item.sd_weight * v_q / (4 * sd * sd * n * n))
    d = mean / sd
    return Prediction(1 / n + d * d / (2 * n),
                      (v_s + mean**2 * v_n) / (n * n * sd * sd) + d * d * v_q / (4 * n**2 * sd**4),
                      max(0.0, item.sd_weight - d * d) * v_q / (4 * n**2 * sd**4))


def _proportion(p: float, n: float, v_in: float, v_out: float) -> Prediction:
    return Prediction(p * (1 - p) / n, ((1 - p) ** 2 * v_in + p * p * v_out) / n**2)


def _pooled_sums(item: PlanItem, eps: tuple[float, ...], splits: tuple[Split, ...]
                 ) -> Prediction:
    """Pooled sums: the one-member formula applied to summed sizes and noise variances."""
    n = math.fsum(item.sizes)
    if item.kind in (Kind.MEAN, Kind.D_Z):
        noise = [_mean_noise(item, e, s) for e, s in zip(eps, splits, strict=True)]
        v_n, v_s, v_q = (math.fsum(v[i] for v in noise) for i in range(3))
        return _mean_type(item, n, v_n, v_s, v_q)
    cells = [count_variance(e) for e in eps]
    v_cell = math.fsum(cells)
    first = _proportion(item.share, n, item.cells_in * v_cell, item.cells_out * v_cell)
    if item.kind is Kind.PROPORTION:
        return first
    second = _proportion(item.share_other, math.fsum(item.sizes_other), item.cells_in * v_cell,
                         item.cells_out * v_cell)
    return Prediction(first.sampling + second.sampling, first.dp + second.dp)


def _member_prediction(item: PlanItem, k: int, eps: float, split: Split) -> Prediction:
    """Member k's own estimator (for random-effects pooling)."""
    n = item.sizes[k]
    if item.kind in (Kind.MEAN, Kind.D_Z):
        return _mean_type(item, n, *_mean_noise(item, eps, split))
    v = count_variance(eps)
    first = _proportion(item.share, n, item.cells_in * v, item.cells_out * v)
    if item.kind is Kind.PROPORTION:
        return first
    second = _proportion(item.share_other, item.sizes_other[k], item.cells_in * v,
                         item.cells_out * v)
    return Prediction(first.sampling + second.sampling, first.dp + second.dp)


def _random_effects(item: PlanItem, eps: tuple[float, ...], splits: tuple[Split, ...]
                    ) -> Prediction:
    """1 / sum 1/(v_k + tau2), split into parts in proportion to the members' weights."""
    members = [_member_prediction(item, k, e, s)
               for k, (e, s) in enumerate(zip(eps, splits, strict=True))]
    weights = [1 / (m.variance + item.tau2) for m in members]
    total = math.fsum(weights)
    rel = [w / total for w in weights]
    sampling = math.fsum(r * r * (m.sampling + item.tau2) for r, m in zip(rel, members,
                                                                          strict=True))
    sd_dp = math.fsum(r * r * m.sd_dp for r, m in zip(rel, members, strict=True))
    return Prediction(sampling, 1 / total - sampling, sd_dp)


def predict(item: PlanItem, losses: Sequence[float], splits: Split | Sequence[Split] = HAND_SPLIT
            ) -> Prediction:
    """Predicted sampling and DP variance of the item's pooled estimator at these per-member
    losses (rho for a GAUSSIAN item) and mean splits."""
    eps = _losses(item, losses)
    if item.kind is Kind.GAUSSIAN:
        dp = math.fsum(c / r for c, r in zip(item.dp_coefficients, eps, strict=True))
        return Prediction(item.sampling_variance, dp)
    chosen = _splits(item, splits)
    if item.pooling is Pooling.RANDOM:
        return _random_effects(item, eps, chosen)
    return _pooled_sums(item, eps, chosen)


def sd_noise_share(item: PlanItem, losses: Sequence[float],
                   splits: Split | Sequence[Split] = HAND_SPLIT) -> float:
    """DP noise SD of a pooled mean's s^2 against its planning variance, sqrt(sum v_Q) / N /
    sigma^2: what `pooling.d_z_flag` judges (flagged above 0.3), predicted for the plan."""
    eps = _losses(item, losses)
    v_q = math.fsum(_mean_noise(item, e, s)[2]
                    for e, s in zip(eps, _splits(item, splits), strict=True))
    return math.sqrt(v_q) / math.fsum(item.sizes) / item.planning_sd**2


# --------------------------------------------------------------------------- the inverse


def loss_for_se(item: PlanItem, target_se: float, profile: Sequence[float] | None = None,
                splits: Split | Sequence[Split] = HAND_SPLIT) -> tuple[float, ...]:
    """Per-member loss t * profile_k (profile default: 1 at every member) at which the
    predicted SE equals `target_se`; the SE falls monotonically in t, so a root find on t.
    Raises `PlanningError` if the target is at or below the sampling-only SE (no loss reaches
    it)."""
    shape = tuple(1.0 for _ in item.sizes) if profile is None else tuple(profile)
    _losses(item, shape)
    floor = predict(item, [1e12 * p for p in shape], splits).se
    if not target_se > floor * (1 + 1e-9):
        raise PlanningError(f"analysis {item.name!r}: target SE {target_se:.4g} is not above "
                            f"the SE without DP noise ({floor:.4g}); more participants are "
                            "needed, not more loss")

    def gap(log_t: float) -> float:
        return predict(item, [math.exp(log_t) * p for p in shape], splits).se - target_se

    low, high = math.log(1e-6), 0.0
    while gap(high) > 0:
        high += 2.0
    t = math.exp(optimize.brentq(gap, low, high, xtol=1e-12, rtol=1e-12))
    return tuple(t * p for p in shape)


def loss_for_mde(item: PlanItem, target_mde: float, profile: Sequence[float] | None = None,
                 splits: Split | Sequence[Split] = HAND_SPLIT) -> tuple[float, ...]:
    """Per-member loss at which the minimal detectable effect equals `target_mde`."""
    return loss_for_se(item, target_mde / MDE_FACTOR, profile, splits)


# --------------------------------------------------------------------------- the optimiser


@dataclass(frozen=True)
class MemberBudget:
    """What one member can still spend: remaining (epsilon, delta) budget and per-query cap."""

    epsilon: float
    cap: float
    delta: float = 1e-6

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and self.cap > 0 and 0 < self.delta < 1):
            raise PlanningError(f"member budget {self} needs epsilon > 0, cap > 0, "
                                "0 < delta < 1")


@dataclass(frozen=True)
class Allocation:
    """Per analysis, the loss at each member (rho for a rho analysis) and the mean splits."""

    losses: Mapping[str, tuple[float, ...]]
    splits: Mapping[str, tuple[Split, ...]] = field(default_factory=dict)

    def splits_of(self, name: str, members: int) -> tuple[Split, ...]:
        return self.splits.get(name, (HAND_SPLIT,) * members)


def weighted_variance(items: Sequence[PlanItem], allocation: Allocation) -> float:
    """sum_a w_a Var_a / scale_a^2 of the estimators alone (no SD term)."""
    return math.fsum(
        item.weight * predict(item, allocation.losses[item.name],
                              allocation.splits_of(item.name, item.members)).variance
        / item.scale**2
        for item in items)


def objective(items: Sequence[PlanItem], allocation: Allocation) -> float:
    """sum_a w_a Var_a / scale_a^2 at the allocation (exact discrete Laplace variances), with
    each mean's SD term (module docstring): the criterion the optimiser minimises."""
    return math.fsum(
        item.weight * predict(item, allocation.losses[item.name],
                              allocation.splits_of(item.name, item.members)).criterion
        / item.scale**2
        for item in items)


def member_spend(items: Sequence[PlanItem], allocation: Allocation, k: int,
                 delta: float) -> float:
    """The epsilon of member k's (epsilon, delta) guarantee for the allocation."""
    pure = math.fsum(allocation.losses[i.name][k] for i in items if not i.rho)
    rho = math.fsum(allocation.losses[i.name][k] for i in items if i.rho)
    return pure + rho_to_epsilon(rho, delta)


def _components(item: PlanItem, omega: float) -> tuple[float, float, float]:
    """Coefficients C_N, C_S, C_Q (weighted DP variance times the component's loss^2) of a
    mean-type item whose member release enters the pooled estimate with weight omega per
    participant (1/N for pooled sums), per unit of the whole query's loss (the clip counts'
    share, when asked for, leaves the three components mean_share of it)."""
    h, sd = item.half_width, item.planning_sd
    r2 = _offset_squared(item)
    omega /= item.mean_share
    if item.kind is Kind.D_Z:
        d = item.planning_mean / sd
        return (2 * item.planning_mean**2 * omega**2 / sd**2, 2 * h * h * omega**2 / sd**2,
                max(d * d, item.sd_weight) * 2 * h**4 * omega**2 / (4 * sd**4))
    return (2 * r2 * omega**2, 2 * h * h * omega**2,
            item.sd_weight * 2 * h**4 * omega**2 / (4 * sd * sd))


def _offset_squared(item: PlanItem) -> float:
    """(m - c)^2, the weight of the count's noise in a mean's variance. Without a planning
    mean the planner does not pretend the mean sits at the clip's centre (which would make
    the count look free and starve it: pooled means then under-covered, 0.12-0.27, in
    `benchmarks/validity.py --parts optimised`); it takes the mean anywhere in the clip,
    E[(m - c)^2] = h^2 / 3 for m uniform on [c - h, c + h]."""
    if item.mean is None:
        return item.half_width**2 / 3
    return (item.mean - item.centre) ** 2


MIN_COUNT_SHARE = 0.05
"""Least share of a mean's loss for its count. The delta-method variance lets the count
matter only through (m - c)^2 v_N, so a planning mean at the clip's centre would give it
almost nothing; but N~ divides everything (the mean, s^2, d_z, the member's suppression
threshold), and the first-order formula fails once its noise is not small against N. At 5 %
and epsilon 1 the count's noise SD is about 28."""


def best_split(item: PlanItem) -> Split:
    """eps_N : eps_S : eps_Q proportional to the cube roots of the components' coefficients,
    the count floored at MIN_COUNT_SHARE (then the sum and the squares share the rest by
    their cube roots, which is still optimal for them: the problem is separable)."""
    roots = [c ** (1 / 3) for c in _components(item, 1.0)]
    total = sum(roots)
    count = max(roots[0] / total, MIN_COUNT_SHARE)
    rest = roots[1] + roots[2]
    return Split(count, (1 - count) * roots[1] / rest, (1 - count) * roots[2] / rest)


def _shares_term(p: float, item: PlanItem) -> float:
    return 2 * ((1 - p) ** 2 * item.cells_in + p * p * item.cells_out)


def _coefficient(item: PlanItem, k: int, split: Split | None,
                 re_weight: float | None = None) -> float:
    """c_ak: member k's contribution to the pooled DP variance times eps_ak^2 (continuous
    Laplace). re_weight None: pooled sums (member noise over the total N); else member k's
    relative random-effects weight (its own estimate's noise over n_k, times the weight).
    split None: the mean's best split (`best_split`); then sum C_j / f_j^2, which without
    the count's floor is (sum C_j^(1/3))^3."""
    def omega(sizes: tuple[float, ...]) -> float:
        return 1 / math.fsum(sizes) if re_weight is None else re_weight / sizes[k]

    if item.kind in (Kind.MEAN, Kind.D_Z):
        parts = _components(item, omega(item.sizes))
        split = best_split(item) if split is None else split
        shares = (split.count, split.sum, split.sum_squares)
        return math.fsum(c / f**2 for c, f in zip(parts, shares, strict=True))
    total = omega(item.sizes) ** 2 * _shares_term(item.share, item)
    if item.kind is Kind.RISK_DIFFERENCE:
        total += omega(item.sizes_other) ** 2 * _shares_term(item.share_other, item)
    return total


def water_fill(coefficients: Sequence[float], total: float, caps: Sequence[float],
               power: float) -> tuple[float, ...]:
    """x_a proportional to coefficient_a^power with sum x = total and x_a <= cap_a (KKT of
    min sum A_a / x_a^(1/power - 1)): cap the largest, share the rest, repeat."""
    n = len(coefficients)
    out = [0.0] * n
    free = [i for i in range(n) if coefficients[i] > 0]
    for i in range(n):
        if coefficients[i] <= 0:
            out[i] = MIN_LOSS
    left = total - MIN_LOSS * (n - len(free))
    while free:
        weights = {i: coefficients[i] ** power for i in free}
        scale = left / math.fsum(weights.values())
        over = [i for i in free if weights[i] * scale > caps[i]]
        if not over:
            for i in free:
                out[i] = weights[i] * scale
            break
        for i in over:
            out[i] = caps[i]
            left -= caps[i]
            free.remove(i)
    return tuple(out)


@lru_cache(maxsize=4096)
def _rho_epsilon(rho: float, delta: float) -> float:
    return rho_to_epsilon(rho, delta)


@lru_cache(maxsize=256)
def epsilon_to_rho(epsilon: float, delta: float) -> float:
    """The largest rho whose OpenDP (epsilon, delta) conversion is at most `epsilon`."""
    high = epsilon
    while _rho_epsilon(high, delta) < epsilon:
        high *= 2
    return float(optimize.brentq(lambda r: _rho_epsilon(r, delta) - epsilon, 1e-12, high,
                                 xtol=1e-12, rtol=1e-10))


@dataclass(frozen=True)
class _Member:
    """One member's closed-form problem: pure coefficients and rho coefficients."""

    pure: tuple[float, ...]
    rho: tuple[float, ...]


def _member_value(m: _Member, budget: MemberBudget, rho_total: float
                  ) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """Objective and allocations of one member given its rho total."""
    pure_budget = budget.epsilon - (_rho_epsilon(rho_total, budget.delta) if m.rho else 0.0)
    pure = water_fill(m.pure, pure_budget, [budget.cap] * len(m.pure), 1 / 3) if m.pure else ()
    cap_rho = epsilon_to_rho(budget.cap, budget.delta)
    rho = water_fill(m.rho, rho_total, [cap_rho] * len(m.rho), 1 / 2) if m.rho else ()
    value = math.fsum(c / e**2 for c, e in zip(m.pure, pure, strict=True)) \
        + math.fsum(c / r for c, r in zip(m.rho, rho, strict=True))
    return value, pure, rho


def _solve_member(m: _Member, budget: MemberBudget) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Closed form at one member; one bounded scalar search for its pure/rho split."""
    if not m.rho:
        return _member_value(m, budget, 0.0)[1:]
    top = epsilon_to_rho(budget.epsilon, budget.delta)
    if not m.pure:
        return _member_value(m, budget, top)[1:]
    best = optimize.minimize_scalar(lambda r: _member_value(m, budget, r)[0],
                                    bounds=(top * 1e-4, top * (1 - 1e-4)), method="bounded",
                                    options={"xatol": top * 1e-6})
    return _member_value(m, budget, float(best.x))[1:]


def _check_budgets(items: Sequence[PlanItem], budgets: Sequence[MemberBudget]) -> None:
    if not items:
        raise PlanningError("nothing to plan: no analyses")
    for item in items:
        if item.members != len(budgets):
            raise PlanningError(f"analysis {item.name!r} has {item.members} member sizes but "
                                f"there are {len(budgets)} member budgets")


def closed_form(items: Sequence[PlanItem], budgets: Sequence[MemberBudget],
                optimise_split: bool = True, fixed_split: Split = HAND_SPLIT,
                reference: Allocation | None = None) -> Allocation:
    """The cube-root rule with water-filling at every member (module docstring). Random-effects
    items use their weights at `reference` (default: an equal split of each budget)."""
    _check_budgets(items, budgets)
    weights = _re_weights(items, budgets, reference)
    coef: dict[str, list[float]] = {}
    for item in items:
        w = item.weight / item.scale**2
        if item.rho:
            coef[item.name] = [w * c for c in item.dp_coefficients]
        else:
            split = None if optimise_split else fixed_split
            coef[item.name] = [w * _coefficient(item, k, split, weights[item.name][k])
                               for k in range(item.members)]
    losses: dict[str, list[float]] = {i.name: [] for i in items}
    for k, budget in enumerate(budgets):
        pure_items = [i for i in items if not i.rho]
        rho_items = [i for i in items if i.rho]
        m = _Member(tuple(coef[i.name][k] for i in pure_items),
                    tuple(coef[i.name][k] for i in rho_items))
        pure, rho = _solve_member(m, budget)
        for i, e in zip(pure_items, pure, strict=True):
            losses[i.name].append(e)
        for i, r in zip(rho_items, rho, strict=True):
            losses[i.name].append(r)
    return Allocation({n: tuple(v) for n, v in losses.items()},
                      _split_map(items, optimise_split, fixed_split))


def uniform(items: Sequence[PlanItem], budgets: Sequence[MemberBudget],
            optimise_split: bool = True) -> Allocation:
    """`uniform_weighted` with every pooled mean's SD determined (`calibrate`)."""
    return calibrate(items, lambda chosen: uniform_weighted(chosen, budgets, optimise_split))[1]


def uniform_weighted(items: Sequence[PlanItem], budgets: Sequence[MemberBudget],
                     optimise_split: bool = True) -> Allocation:
    """The cube-root rule with one loss per analysis at every member, which is what one
    fanned-out query carries (`precision.auto_share` does this for a study): each analysis's
    coefficients summed over members, the tightest member's budget and cap."""
    _check_budgets(items, budgets)
    weights = _re_weights(items, budgets, None)
    split = None if optimise_split else HAND_SPLIT
    coef = {i.name: math.fsum(
        (i.weight / i.scale**2) * (i.dp_coefficients[k] if i.rho
                                   else _coefficient(i, k, split, weights[i.name][k]))
        for k in range(i.members)) for i in items}
    tightest = min(budgets, key=lambda b: b.epsilon)
    pure_items = [i for i in items if not i.rho]
    rho_items = [i for i in items if i.rho]
    pure, rho = _solve_member(_Member(tuple(coef[i.name] for i in pure_items),
                                      tuple(coef[i.name] for i in rho_items)),
                              MemberBudget(tightest.epsilon, min(b.cap for b in budgets),
                                           tightest.delta))
    losses = {i.name: (e,) * i.members for i, e in zip(pure_items, pure, strict=True)}
    losses.update({i.name: (r,) * i.members for i, r in zip(rho_items, rho, strict=True)})
    return Allocation(losses, _split_map(items, optimise_split, HAND_SPLIT))


def _split_map(items: Sequence[PlanItem], optimise_split: bool, fixed_split: Split
               ) -> dict[str, tuple[Split, ...]]:
    return {i.name: (best_split(i) if optimise_split else fixed_split,) * i.members
            for i in items if i.kind in (Kind.MEAN, Kind.D_Z)}


def _re_weights(items: Sequence[PlanItem], budgets: Sequence[MemberBudget],
                reference: Allocation | None) -> dict[str, list[float | None]]:
    """Each random-effects item's relative member weights 1/(v_k + tau2) at the `reference`
    allocation (default: each budget shared equally); None for pooled sums."""
    out: dict[str, list[float | None]] = {}
    share = len([i for i in items if not i.rho]) or 1
    for item in items:
        if item.pooling is Pooling.SUMS or item.rho:
            out[item.name] = [None] * item.members
            continue
        losses = reference.losses[item.name] if reference else \
            tuple(b.epsilon / share for b in budgets)
        inverse = [1 / (_member_prediction(item, k, losses[k], best_split(item)).variance
                        + item.tau2) for k in range(item.members)]
        total = math.fsum(inverse)
        out[item.name] = [x / total for x in inverse]
    return out


# --------------------------------------------------------------------------- numerical


def _smooth_variance(item: PlanItem, eps: Floats) -> tuple[float, Floats]:
    """Continuous-Laplace Var_a at pure losses eps (best split) and its gradient."""
    split = best_split(item) if item.kind in (Kind.MEAN, Kind.D_Z) else HAND_SPLIT
    if item.pooling is Pooling.SUMS:
        c = np.array([_coefficient(item, k, None) for k in range(item.members)])
        sampling = _pooled_sums(item, (1e12,) * item.members, (split,) * item.members).sampling
        return sampling + float(np.sum(c / eps**2)), -2 * c / eps**3
    own = np.array([_coefficient(item, k, None, 1.0) for k in range(item.members)])
    base = np.array([_member_prediction(item, k, 1e12, split).sampling
                     for k in range(item.members)]) + item.tau2
    u = base + own / eps**2
    total = float(np.sum(1 / u))
    grad = -(2 * own / (eps**3 * u**2)) / total**2
    return 1 / total, grad


def _total(pure: Sequence[PlanItem], x: Floats, k_members: int) -> tuple[float, Floats]:
    """sum_a w_a Var_a / scale_a^2 over the pure items (x: item-major blocks of members)."""
    value, grad = 0.0, np.zeros_like(x)
    for a, item in enumerate(pure):
        block = slice(a * k_members, (a + 1) * k_members)
        v, g = _smooth_variance(item, x[block])
        w = item.weight / item.scale**2
        value += w * v
        grad[block] = w * g
    return value, grad


def numerical(items: Sequence[PlanItem], budgets: Sequence[MemberBudget],
              start: Allocation | None = None) -> Allocation:
    """SLSQP over the pure losses (best splits), started from the closed form; each member's
    rho analyses keep their closed-form rho and the pure budget it leaves."""
    first = start or closed_form(items, budgets)
    pure = [i for i in items if not i.rho]
    if not pure:
        return first
    k_members = len(budgets)
    x0 = np.array([first.losses[i.name][k] for i in pure for k in range(k_members)],
                  dtype=np.float64)
    left = [b.epsilon - _rho_epsilon(math.fsum(first.losses[i.name][k] for i in items if i.rho),
                                     b.delta) if any(i.rho for i in items) else b.epsilon
            for k, b in enumerate(budgets)]
    scale = max(_total(pure, x0, k_members)[0], 1e-300)

    def fun(x: Floats) -> tuple[float, Floats]:
        value, grad = _total(pure, x, k_members)
        return value / scale, grad / scale

    rows = np.zeros((k_members, len(x0)))
    for k in range(k_members):
        rows[k, k::k_members] = 1.0
    budget = optimize.LinearConstraint(rows, -np.inf, np.array(left))
    caps = np.array([budgets[k].cap for _ in pure for k in range(k_members)])
    result = optimize.minimize(fun, x0, jac=True, method="SLSQP",
                               bounds=optimize.Bounds(np.full(len(x0), MIN_LOSS), caps),
                               constraints=budget, options={"maxiter": 500, "ftol": 1e-14})
    x = result.x if fun(result.x)[0] <= fun(x0)[0] and _feasible(result.x, left, k_members) \
        else x0
    losses = dict(first.losses)
    for a, item in enumerate(pure):
        losses[item.name] = tuple(float(v) for v in x[a * k_members:(a + 1) * k_members])
    return replace(first, losses=losses)


def _feasible(x: Floats, left: Sequence[float], k_members: int) -> bool:
    return all(float(np.sum(x[k::k_members])) <= left[k] * (1 + 1e-9) for k in range(k_members))


def optimise_weighted(items: Sequence[PlanItem], budgets: Sequence[MemberBudget],
                      optimise_split: bool = True) -> Allocation:
    """The allocation minimising `objective` at the items' own SD weights: the closed form,
    refined numerically when any analysis pools by random effects (its weights depend on the
    losses)."""
    first = closed_form(items, budgets, optimise_split=optimise_split)
    if optimise_split and any(i.pooling is Pooling.RANDOM and not i.rho for i in items):
        second = closed_form(items, budgets, reference=first)
        return numerical(items, budgets, second)
    return first


def optimise(items: Sequence[PlanItem], budgets: Sequence[MemberBudget],
             optimise_split: bool = True) -> Allocation:
    """The best allocation: the estimators' weighted variance at its least with every pooled
    mean's SD determined (`calibrate`)."""
    return calibrate(items, lambda chosen: optimise_weighted(chosen, budgets, optimise_split))[1]


# --------------------------------------------------------------------------- the SD constraint


SD_SHARE_TARGET = 0.2
"""Largest predicted DP noise SD of a pooled mean's s^2, as a share of its planning variance
(`sd_noise_share`), that a plan accepts. It is the d_z flag's bound (`pooling.SD_DETERMINED`,
0.3) over 1.5: the share grows like 1/N, so the flag stays silent while the network reaches
two thirds of its planned size, and the mean's own SE (which uses s^2) is off by at most
about 10 % from the noise."""
SD_WEIGHT_RANGE = (1e-6, 1.0)
"""The multiplier's range. Its top, 1, counts the SD's noise as much as the mean's: where
the target needs more (a small network at a small loss), a plan that starved the mean's own
sum to determine its SD would help nobody (5 members of 40 at epsilon 0.3 got 0.7 % of the
loss on the sum, and a fifth of the networks no mean at all, in `benchmarks/validity.py
--parts optimised`). The plan then shows the share above the target, and d_z may be flagged."""
CALIBRATION_ROUNDS = 60
CALIBRATION_TOLERANCE = 1e-3


def constrained(item: PlanItem) -> bool:
    """Whether the SD constraint applies: a mean or d_z pooled by sums, where one s^2 serves
    the network (random-effects items keep their SD weight: each member's own s^2 counts)."""
    return item.kind in (Kind.MEAN, Kind.D_Z) and item.pooling is Pooling.SUMS


def _reweigh(item: PlanItem, allocation: Allocation, target: float) -> PlanItem:
    """The item with its SD weight moved towards the one that puts its share at `target`.
    In the cube-root rule eps_Q grows like the weight's cube root and the share falls like
    1/eps_Q, so weight * (share / target)^3 is the fixed point's step (bounded per round)."""
    if not constrained(item):
        return item
    share = sd_noise_share(item, allocation.losses[item.name],
                           allocation.splits_of(item.name, item.members))
    low, high = SD_WEIGHT_RANGE
    if abs(share / target - 1) <= CALIBRATION_TOLERANCE \
            or (share < target and item.sd_weight <= low) \
            or (share > target and item.sd_weight >= high):
        return item
    step = min(max((share / target) ** 3, 1e-2), 1e2)
    return replace(item, sd_weight=min(max(item.sd_weight * step, low), high))


def calibrate(items: Sequence[PlanItem], solve: Callable[[tuple[PlanItem, ...]], Allocation],
              target: float = SD_SHARE_TARGET) -> tuple[tuple[PlanItem, ...], Allocation]:
    """Minimise the estimators' weighted variance subject to every pooled mean's predicted SD
    share being at most `target`.

    The estimators alone would leave a mean's sum of squares almost nothing (only d_z's
    variance uses it), so s^2, the mean's SE and d_z would be undetermined. The constraint
    enters as a Lagrange multiplier: the SD weight of each constrained item, in the same
    criterion the closed form and SLSQP minimise (`objective`). `solve` minimises that
    criterion for given weights; the weights are moved until each constrained item's share
    is at the target (or below it with a negligible weight). Returns the items with their
    final weights and the allocation."""
    current = tuple(items)
    allocation = solve(current)
    for _ in range(CALIBRATION_ROUNDS):
        updated = tuple(_reweigh(i, allocation, target) for i in current)
        if updated == current:
            break
        current = updated
        allocation = solve(current)
    return current, allocation


# --------------------------------------------------------------------------- regression


def simple_slope_item(name: str, sizes: Sequence[float], x_bounds: tuple[float, float],
                      y_bounds: tuple[float, float], sd_x: float, sd_residual: float,
                      slope: float = 0.0, n_terms: int = 2, weight: float = 1.0) -> PlanItem:
    """A rho item for the slope of y on x from pooled cross products (node: one discrete
    Gaussian sum per entry of U'U for u = [1, u_x, ..., u_y] scaled to [-1, 1], rho split evenly
    over (n_terms + 2)(n_terms + 1)/2 entries, each with noise variance 1/(2 rho_entry) in
    product units). Delta method on b = S_xy,c / S_xx,c with S_xx,c ~ N var(u_x): the DP
    variance of the scaled slope is about v_e (1 + b_s^2) / (N var(u_x))^2 (the noise in the
    centring sums is of lower order), times (H_y / H_x)^2 in the variable's units. The sampling
    variance is sd_residual^2 / (N sd_x^2). The objective weighs it in units of
    sd_residual / sd_x (a slope of one residual SD per SD of x)."""
    hx, hy = (x_bounds[1] - x_bounds[0]) / 2, (y_bounds[1] - y_bounds[0]) / 2
    entries = (n_terms + 2) * (n_terms + 1) / 2
    n = math.fsum(sizes)
    var_ux = (sd_x / hx) ** 2
    b_s = slope * hx / hy
    per_member = entries / 2 * (1 + b_s**2) * (hy / hx) ** 2 / (n * var_ux) ** 2
    return PlanItem(name, Kind.GAUSSIAN, tuple(sizes), weight=weight, sd=sd_residual / sd_x,
                    sampling_variance=sd_residual**2 / (n * sd_x**2),
                    dp_coefficients=tuple(per_member for _ in sizes))
