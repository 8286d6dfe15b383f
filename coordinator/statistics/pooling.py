"""Estimates from members' DP releases, for one member or pooled over members.

Post-processing only: every function here reads noisy statistics and their public noise
variances (see "Coordinator formulas" in statistics.md) and never touches data.

Pooling sums the members' noisy statistics and their noise variances (independent noise adds)
and applies the one-member formula to the sums: N = sum N~_k, S = sum S~_k, Q = sum Q~_k.

Variance used for a pooled mean or pooled change (s2_tot): the variance computed from the
pooled sums, [Q - (S^2 - sum v_S)/N] / (N - 1), i.e. the *total* variance of all participants
around the network mean, including the spread between members' means. Why:

- The pooled mean is the mean of the network's participants, seen as one sample of the
  population the network serves, in which the member a participant attends is itself random.
  Its sampling variance is then sigma_tot^2 / N, and sigma_tot^2 contains the between-member
  spread. The within-member pooled variance s2_W = sum_k [Q~_k - (S~_k^2 - v_S,k)/N~_k] / (N - K)
  that statistics.md offers as a small-member remedy leaves that spread out: it is right only if
  the members' sample sizes are fixed by design (stratified sampling) and understates the SE
  when members truly differ and their mix is random. When members agree the two coincide; when
  they differ s2_tot is the conservative one (larger by about sum_k N_k (m_k - m)^2 / N).
- It uses the pooled sums only: one truncation at 0 of a well-determined quantity (the Q~ noise
  is sum v_Q against N^2) instead of K noisy per-member corrections S~_k^2 / N~_k, each with a
  noisy small N~_k in the denominator.
- The same s_d is the natural standardiser of the pooled Cohen's d_z.

Member heterogeneity as such is the business of the meta-analysis (random effects), not of this
pooled estimate.

Degenerate releases raise `PoolingError` (a `ValueError`) naming the problem; the API reports it
per member. Noisy counts may be negative at tiny n and are pooled as released (dropping or
clipping them would bias the sums).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

Z95 = NormalDist().inv_cdf(0.975)
"""Normal quantile for a two-sided 95 % interval (1.959963...)."""


class PoolingError(ValueError):
    """A release cannot give the requested estimate; the message says why."""


@dataclass(frozen=True)
class Noisy:
    """One released noisy statistic with its public DP noise variance."""

    value: float
    variance: float  # DP noise variance (public)

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise PoolingError(f"noisy value {self.value} is not finite")
        if not (math.isfinite(self.variance) and self.variance >= 0):
            raise PoolingError(f"noise variance {self.variance} must be finite and >= 0")


@dataclass(frozen=True)
class MeanStats:
    """One member's (or cell's) release for a mean or a paired change (centre 0)."""

    count: Noisy
    sum: Noisy  # centred sum: sum(clip(x) - center) + noise
    sum_squares: Noisy  # centred sum of squares: sum((clip(x) - center)^2) + noise
    center: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.center):
            raise PoolingError(f"centre {self.center} is not finite")


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and 95 % normal interval."""

    estimate: float
    se: float  # sqrt(sampling variance + DP variance)
    ci_low: float  # 95% normal interval
    ci_high: float
    n: float  # noisy count used (N~ or pooled sum)
    sd: float | None = None  # estimated SD of the variable when meaningful
    se_sampling: float | None = None  # the two components, for reporting/teaching
    se_dp: float | None = None
    flag: str | None = None  # why the interval is not to be trusted (None: no caveat)


@dataclass(frozen=True)
class ChangeEstimate:
    """Paired change: the mean change and Cohen's d_z."""

    change: Estimate  # mean change
    d_z: Estimate  # Cohen's d_z with SE per statistics.md


def make_estimate(
    value: float, var_sampling: float, var_dp: float, n: float, sd: float | None = None
) -> Estimate:
    """Build an `Estimate` with a 95 % normal interval from the two variance components."""
    se = math.sqrt(var_sampling + var_dp)
    return Estimate(
        estimate=value,
        se=se,
        ci_low=value - Z95 * se,
        ci_high=value + Z95 * se,
        n=n,
        sd=sd,
        se_sampling=math.sqrt(var_sampling),
        se_dp=math.sqrt(var_dp),
    )


def sum_noisy(items: Sequence[Noisy]) -> Noisy:
    """Sum of independent noisy statistics: values and variances add."""
    return Noisy(math.fsum(x.value for x in items), math.fsum(x.variance for x in items))


def _pool(stats: Sequence[MeanStats]) -> MeanStats:
    """Sum members' mean releases; all must share one centre."""
    if not stats:
        raise PoolingError("nothing to pool: no member releases")
    center = stats[0].center
    centers = sorted({s.center for s in stats})
    if any(not math.isclose(c, center, rel_tol=1e-12, abs_tol=1e-12) for c in centers):
        raise PoolingError(
            f"members use different centres {centers}: their bounds differ, so their "
            "centred sums cannot be pooled"
        )
    return MeanStats(
        count=sum_noisy([s.count for s in stats]),
        sum=sum_noisy([s.sum for s in stats]),
        sum_squares=sum_noisy([s.sum_squares for s in stats]),
        center=center,
    )


def _mean(s: MeanStats, what: str) -> Estimate:
    """m = c + S~/N~ with s2 = [Q~ - (S~^2 - v_S)/N~]/(N~ - 1) truncated at 0."""
    n = s.count.value
    if not n > 1:
        raise PoolingError(f"{what} {n:g} is too small for a mean (need > 1)")
    centred = s.sum.value / n
    s2 = max(0.0, (s.sum_squares.value - (s.sum.value**2 - s.sum.variance) / n) / (n - 1))
    var_dp = (s.sum.variance + centred**2 * s.count.variance) / n**2
    return make_estimate(s.center + centred, s2 / n, var_dp, n, sd=math.sqrt(s2))


SD_DETERMINED = 0.3
"""Largest DP noise SD of the variance estimate, as a share of the reference variance, at which
d_z counts as well determined (see `sd_noise_share`)."""


def sd_noise_share(count: float, var_sum_squares: float, half_width: float,
                   reference_sd: float | None = None) -> float:
    """DP noise SD of the noisy variance s^2 over a reference variance: sqrt(v_Q) / (N~ sd_ref^2).

    Why this rule (the d_z flag). d_z = m / s is a ratio whose denominator carries the noise of
    the released sum of squares: s^2 = [Q~ - ...] / (N~ - 1) has DP noise SD sqrt(v_Q) / N~
    (public: v_Q is the release's noise variance, N~ its noisy count). The delta-method interval
    of a ratio holds while that noise is small against the denominator; as it grows, s^2 may
    come out <= 0 (d_z not estimable) and the distribution of d_z turns skewed. The obvious rule,
    judging the noise against the noisy s^2 itself, must not be used: it passes exactly the
    releases whose s^2 came out too high, whose d_z is biased towards 0 with too small an SE
    (simulated, 2 members x 150 at epsilon 0.3, bounds 0.2-0.5 on sqrt(v_Q) / (N~ s^2): the
    "unflagged" intervals covered 0.23-0.80, the flagged ones 0.94-0.97). So the reference is
    public: sd_ref = H / 3 by default, the SD of
    a variable whose clip bounds [c - H, c + H] sit three SDs from its centre (how a clip is
    chosen: "a change beyond 40 points in a year is rare"); a study that clips more widely
    passes its planning SD as `reference_sd`. The rule then depends on the noisy count and
    public metadata only, so flagged and unflagged intervals keep the coverage of their regime.
    At the bound 0.3 the noisy s^2 is <= 0 with probability below 0.5 (exp(-sqrt(2)/0.3)) =
    0.5 % (Laplace tail; sums of several members' noise are lighter-tailed still).
    """
    if not count > 0:
        return math.inf
    sd_ref = half_width / 3 if reference_sd is None else reference_sd
    if not sd_ref > 0:
        raise PoolingError(f"reference SD {sd_ref:g} must be > 0")
    return math.sqrt(var_sum_squares) / (count * sd_ref**2)


def d_z_flag(count: float, var_sum_squares: float, half_width: float,
             reference_sd: float | None = None) -> str | None:
    """A plain-language caveat when `sd_noise_share` exceeds `SD_DETERMINED`, else None."""
    share = sd_noise_share(count, var_sum_squares, half_width, reference_sd)
    if share <= SD_DETERMINED:
        return None
    return (f"SD not well determined: DP noise in the variance is {share:.2f} of the reference "
            f"variance (above {SD_DETERMINED:g}); d_z and its interval are unreliable "
            "(spend more loss on the sum of squares, or pool more participants)")


def _change(s: MeanStats, what: str, half_width: float | None = None,
            reference_sd: float | None = None) -> ChangeEstimate:
    """Mean change and d_z = m_d / s_d with Var(d_z) per statistics.md (n = N~); the d_z
    carries `d_z_flag` when the clip's half-width is given."""
    change = _mean(s, what)
    s_d = change.sd
    if s_d is None or s_d <= 0:
        raise PoolingError(
            "estimated SD of the change is 0 (noisy sum of squares too small), so d_z is undefined"
        )
    n = change.n
    d_z = change.estimate / s_d
    var_dp_mean = (change.se_dp or 0.0) ** 2  # [v_S + (m_d - c)^2 v_N] / n^2
    var_sampling = 1 / n + d_z**2 / (2 * n)
    var_dp = var_dp_mean / s_d**2 + d_z**2 * s.sum_squares.variance / (4 * n**2 * s_d**4)
    estimate = make_estimate(d_z, var_sampling, var_dp, n)
    if half_width is not None:
        flag = d_z_flag(n, s.sum_squares.variance, half_width, reference_sd)
        estimate = replace(estimate, flag=flag)
    return ChangeEstimate(change=change, d_z=estimate)


def member_mean(s: MeanStats) -> Estimate:
    """One member's mean, SD and SE (sampling + DP); raises `PoolingError` if N~ <= 1."""
    return _mean(s, "noisy count")


def pooled_mean(stats: Sequence[MeanStats]) -> Estimate:
    """Network mean from summed releases; SE uses the total variance s2_tot (module doc)."""
    return _mean(_pool(stats), "pooled noisy count")


def member_change(s: MeanStats, half_width: float | None = None,
                  reference_sd: float | None = None) -> ChangeEstimate:
    """One member's mean paired change and Cohen's d_z; raises `PoolingError` if undefined.
    With the clip's `half_width` the d_z carries the flag of `d_z_flag`."""
    return _change(s, "noisy count", half_width, reference_sd)


def pooled_change(stats: Sequence[MeanStats], half_width: float | None = None,
                  reference_sd: float | None = None) -> ChangeEstimate:
    """Network mean change and d_z from summed releases (s_d is the total SD of d). With the
    clip's `half_width` the d_z carries the flag of `d_z_flag`."""
    return _change(_pool(stats), "pooled noisy count", half_width, reference_sd)


def difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b of independent estimates: sampling and DP variances add, each apart."""
    return make_estimate(a.estimate - b.estimate, (a.se_sampling or 0.0) ** 2
                         + (b.se_sampling or 0.0) ** 2, (a.se_dp or 0.0) ** 2
                         + (b.se_dp or 0.0) ** 2, a.n + b.n)


@dataclass(frozen=True)
class Attrition:
    """Intake mean of those with (present) and without (absent) the follow-up occasion, and
    present minus absent."""

    present: Estimate
    absent: Estimate
    difference: Estimate


def attrition(present: Sequence[MeanStats], absent: Sequence[MeanStats]) -> Attrition:
    """Do completers differ at intake? One member's two cells, or several members' pooled.

    Each cell's mean comes from its sums pooled over the members, as `pooled_mean` (total
    variance s2_tot): pooled, the cells are the network's completers and non-completers, the
    populations the pooled change describes and the one it leaves out. The difference's
    variance is the sum of the cells' (sampling and DP apart): the cells hold disjoint
    participants and independent noise. A difference of the pooled cells, not a pool of the
    members' differences: when members differ both in intake level and in follow-up rate it
    includes that between-member contrast, which is what makes the pooled completers
    unrepresentative of the pooled intake; the members' rows show the within-member contrasts
    (and a small member's noisy cells would give an inverse-variance pool weights that
    depend on its own noise). Raises `PoolingError` naming the cell that gives no mean.
    """
    found = _mean(_pool(present), "noisy count of those present")
    gone = _mean(_pool(absent), "noisy count of those absent")
    return Attrition(found, gone, difference(found, gone))


def proportion(y1: Noisy, y0: Noisy) -> Estimate:
    """p = Y1~/(Y0~ + Y1~); Var(p) = p(1-p)/N + [(1-p)^2 v_1 + p^2 v_0]/N^2.

    p is truncated to [0, 1] inside the variance only; the point estimate is the raw ratio
    (unbiased input for meta-analysis; a display may clip it). Raises `PoolingError` if N < 1.
    """
    n = y1.value + y0.value
    if not n >= 1:
        raise PoolingError(f"noisy total {n:g} is too small for a proportion (need >= 1)")
    p = y1.value / n
    pt = min(1.0, max(0.0, p))
    var_dp = ((1 - pt) ** 2 * y1.variance + pt**2 * y0.variance) / n**2
    return make_estimate(p, pt * (1 - pt) / n, var_dp, n)


def pooled_proportion(pairs: Sequence[tuple[Noisy, Noisy]]) -> Estimate:
    """Proportion from (Y1~, Y0~) summed over members, variances summed too."""
    if not pairs:
        raise PoolingError("nothing to pool: no member releases")
    return proportion(sum_noisy([y1 for y1, _ in pairs]), sum_noisy([y0 for _, y0 in pairs]))


def count_estimate(n: Noisy) -> Estimate:
    """A noisy count as released (may be negative); SE from the DP noise only."""
    return make_estimate(n.value, 0.0, n.variance, n.value)


def pooled_count(ns: Sequence[Noisy]) -> Estimate:
    """Sum of members' noisy counts; SE from the summed DP noise variances."""
    if not ns:
        raise PoolingError("nothing to pool: no member releases")
    return count_estimate(sum_noisy(ns))
