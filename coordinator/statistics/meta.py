"""Meta-analysis of members' estimates: fixed effect, DerSimonian-Laird random effects, HKSJ.

Each member k contributes an estimate theta_k with a known variance v_k (sampling plus DP
noise, taken as given). Where `pooling` pools members' sums into one network estimate, this
module treats each member as a study: it reports how far the members agree (Cochran's Q, I2,
tau2) and a random-effects mean that allows them to differ.

- Fixed effect (inverse variance): w_k = 1/v_k, theta_FE = sum w theta / sum w,
  SE = (sum w)^-1/2, normal interval.
- Heterogeneity: Q = sum w (theta - theta_FE)^2 on K-1 df (chi2 p-value),
  I2 = max(0, (Q - (K-1)) / Q) (0 when Q = 0), H2 = max(1, Q / (K-1)) so that I2 = 1 - 1/H2.
- DerSimonian-Laird: tau2 = max(0, (Q - (K-1)) / (sum w - sum w^2 / sum w)).
- Random effects: w*_k = 1/(v_k + tau2), theta_RE = sum w* theta / sum w*,
  Wald SE = (sum w*)^-1/2 with a normal interval.
- Hartung-Knapp-Sidik-Jonkman (HKSJ): same theta_RE,
  SE^2 = sum w* (theta - theta_RE)^2 / ((K-1) sum w*), t interval on K-1 df.
- Prediction interval for a new member's true effect (Higgins, Thompson & Spiegelhalter 2009):
  theta_RE +- t_{K-2} sqrt(tau2 + SE_RE^2) with the Wald SE_RE; needs K >= 3.
- Confidence interval for tau2 by the Q-profile method (Viechtbauer 2007), as metafor's
  `confint(rma(...))`: the generalised Q(tau2) = sum w(tau2) (theta - theta(tau2))^2 with
  w(tau2) = 1/(v + tau2) falls monotonically in tau2; the bounds solve Q(tau2) =
  chi2_{K-1} quantiles (1+level)/2 (lower) and (1-level)/2 (upper), each set to 0 when
  Q(0) is already below its quantile.

With few members tau2 is poorly estimated and the Wald random-effects interval is too narrow;
the result then carries a warning, and the HKSJ interval is the one to read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy import optimize, stats

FEW_MEMBERS = 10
"""Below this many members the result warns that tau2 and the Wald RE interval are unreliable."""


class MetaError(ValueError):
    """The inputs cannot be meta-analysed (or a saved result cannot be read); says why."""


@dataclass(frozen=True)
class Pooled:
    """One pooled estimate with its SE and interval; df is None for a normal reference."""

    estimate: float
    se: float
    ci_low: float
    ci_high: float
    method: str  # "fixed-iv", "dl-wald", "dl-hksj" or "dl-hksj-modified"
    df: float | None  # t degrees of freedom; None: normal (z) interval and test

    @property
    def statistic(self) -> float:
        """z (df None) or t statistic for H0: effect = 0; +-inf if se = 0 (degenerate HKSJ)."""
        if self.se > 0:
            return self.estimate / self.se
        return math.copysign(math.inf, self.estimate) if self.estimate != 0 else math.nan

    @property
    def pvalue(self) -> float:
        """Two-sided p-value of `statistic` against N(0, 1) or t(df)."""
        t = abs(self.statistic)
        if self.df is None:
            return float(2 * stats.norm.sf(t))
        return float(2 * stats.t.sf(t, self.df))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON types (derived `statistic`/`pvalue` are not stored)."""
        return {
            "estimate": self.estimate,
            "se": self.se,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "method": self.method,
            "df": self.df,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Pooled:
        """Inverse of `to_dict`."""
        df = doc["df"]
        return cls(
            estimate=float(doc["estimate"]),
            se=float(doc["se"]),
            ci_low=float(doc["ci_low"]),
            ci_high=float(doc["ci_high"]),
            method=str(doc["method"]),
            df=None if df is None else float(df),
        )


@dataclass(frozen=True)
class MetaResult:
    """Fixed-effect, DL random-effects and HKSJ results for K members, with heterogeneity.

    weights_fixed and weights_random are relative weights (each sums to 1). prediction is the
    interval for a new member's true effect (None when K < 3). warnings are plain-language
    caveats for a reader of the result.
    """

    k: int
    labels: tuple[str, ...]
    estimates: tuple[float, ...]
    variances: tuple[float, ...]
    weights_fixed: tuple[float, ...]
    weights_random: tuple[float, ...]
    fixed: Pooled
    random: Pooled
    hksj: Pooled
    q: float
    q_df: int
    q_pvalue: float
    i2: float
    h2: float
    tau2: float
    prediction: tuple[float, float] | None
    level: float
    warnings: tuple[str, ...]
    tau2_ci: tuple[float, float] | None = None  # Q-profile interval (None in older documents)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (floats, ints, str, lists, dicts, None): json.dumps-ready."""
        return {
            "k": self.k,
            "labels": list(self.labels),
            "estimates": list(self.estimates),
            "variances": list(self.variances),
            "weights_fixed": list(self.weights_fixed),
            "weights_random": list(self.weights_random),
            "fixed": self.fixed.to_dict(),
            "random": self.random.to_dict(),
            "hksj": self.hksj.to_dict(),
            "q": self.q,
            "q_df": self.q_df,
            "q_pvalue": self.q_pvalue,
            "i2": self.i2,
            "h2": self.h2,
            "tau2": self.tau2,
            "prediction": None if self.prediction is None else list(self.prediction),
            "level": self.level,
            "warnings": list(self.warnings),
            "tau2_ci": None if self.tau2_ci is None else list(self.tau2_ci),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> MetaResult:
        """Inverse of `to_dict`; raises `MetaError` if a field is missing or malformed."""
        try:
            return _result_from_dict(doc)
        except (KeyError, TypeError, ValueError) as exc:
            raise MetaError(f"malformed meta-analysis document: {exc!r}") from exc


def _floats(values: Any) -> tuple[float, ...]:
    """A JSON list of numbers as a tuple of floats."""
    return tuple(float(v) for v in values)


def _result_from_dict(doc: Mapping[str, Any]) -> MetaResult:
    """Build a `MetaResult` from `MetaResult.to_dict` output (errors propagate)."""
    prediction = doc["prediction"]
    if prediction is not None:
        low, high = _floats(prediction)
        prediction = (low, high)
    tau2_ci = doc.get("tau2_ci")
    if tau2_ci is not None:
        low, high = _floats(tau2_ci)
        tau2_ci = (low, high)
    return MetaResult(
        k=int(doc["k"]),
        labels=tuple(str(s) for s in doc["labels"]),
        estimates=_floats(doc["estimates"]),
        variances=_floats(doc["variances"]),
        weights_fixed=_floats(doc["weights_fixed"]),
        weights_random=_floats(doc["weights_random"]),
        fixed=Pooled.from_dict(doc["fixed"]),
        random=Pooled.from_dict(doc["random"]),
        hksj=Pooled.from_dict(doc["hksj"]),
        q=float(doc["q"]),
        q_df=int(doc["q_df"]),
        q_pvalue=float(doc["q_pvalue"]),
        i2=float(doc["i2"]),
        h2=float(doc["h2"]),
        tau2=float(doc["tau2"]),
        prediction=prediction,
        level=float(doc["level"]),
        warnings=tuple(str(s) for s in doc["warnings"]),
        tau2_ci=tau2_ci,
    )


def _member(i: int, labels: Sequence[str] | None) -> str:
    """How an error message names member i: its index, and its label if one was given."""
    return f"member {i}" if labels is None else f"member {i} ({labels[i]!r})"


def _as_float(x: object, what: str) -> float:
    """float(x), or `MetaError` naming `what` if x is not a real number."""
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise MetaError(f"{what} must be a real number, got {x!r}") from exc


def _check_member(i: int, theta: object, v: object, labels: Sequence[str] | None) -> None:
    """Raise `MetaError` unless theta is finite and 0 < v < inf with a finite weight 1/v."""
    who = _member(i, labels)
    t = _as_float(theta, f"{who}: estimate")
    var = _as_float(v, f"{who}: variance")
    if not math.isfinite(t):
        raise MetaError(f"{who}: estimate is {t}; it must be finite")
    if not (math.isfinite(var) and var > 0):
        raise MetaError(f"{who}: variance is {var}; it must be finite and > 0")
    if not math.isfinite(1 / var):
        raise MetaError(f"{who}: variance {var} is too small (its weight 1/v overflows)")


def _validate(
    estimates: Sequence[float], variances: Sequence[float], labels: Sequence[str] | None
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[str, ...]]:
    """Checked inputs as float tuples, with labels (default: "0", "1", ...)."""
    k = len(estimates)
    if len(variances) != k:
        raise MetaError(f"{k} estimates but {len(variances)} variances; need one per member")
    if labels is not None and len(labels) != k:
        raise MetaError(f"{k} estimates but {len(labels)} labels; need one per member")
    for i in range(k):
        _check_member(i, estimates[i], variances[i], labels)
    if k < 2:
        raise MetaError(f"meta-analysis needs at least 2 members; got {k}, nothing to pool")
    names = tuple(str(i) for i in range(k)) if labels is None else tuple(map(str, labels))
    return tuple(map(float, estimates)), tuple(map(float, variances)), names


def _weighted_mean(weights: Sequence[float], values: Sequence[float]) -> float:
    """sum w x / sum w."""
    return math.fsum(w * x for w, x in zip(weights, values, strict=True)) / math.fsum(weights)


def _weighted_ss(weights: Sequence[float], values: Sequence[float], center: float) -> float:
    """sum w (x - center)^2: Q for fixed weights, the HKSJ numerator for random weights."""
    return math.fsum(w * (x - center) ** 2 for w, x in zip(weights, values, strict=True))


def _dl_scaling(weights: Sequence[float]) -> float:
    """c = sum w - sum w^2 / sum w, computed as sum_k w_k (sum_{j != k} w_j) / sum w.

    The leave-one-out form avoids the cancellation of the textbook form when one member's
    weight dominates; c > 0 for K >= 2.
    """
    total = math.fsum(weights)
    others = (math.fsum(x for j, x in enumerate(weights) if j != i) for i in range(len(weights)))
    return math.fsum(w * o for w, o in zip(weights, others, strict=True)) / total


def dl_tau2(q: float, weights_fixed: Sequence[float]) -> float:
    """DerSimonian-Laird between-member variance max(0, (Q - (K-1)) / c), c as `_dl_scaling`."""
    return max(0.0, (q - (len(weights_fixed) - 1)) / _dl_scaling(weights_fixed))


def i2_h2(q: float, df: int) -> tuple[float, float]:
    """Higgins-Thompson I2 = max(0, (Q - df) / Q) (0 if Q = 0) and H2 = max(1, Q / df)."""
    i2 = max(0.0, (q - df) / q) if q > 0 else 0.0
    return i2, max(1.0, q / df)


def _quantile(level: float, df: float | None) -> float:
    """Two-sided critical value for coverage `level`: normal if df is None, else t(df)."""
    p = (1 + level) / 2
    return float(stats.norm.ppf(p) if df is None else stats.t.ppf(p, df))


def _pooled(estimate: float, se: float, method: str, df: float | None, level: float) -> Pooled:
    """`Pooled` with the symmetric interval estimate +- crit * se."""
    half = _quantile(level, df) * se
    return Pooled(estimate, se, estimate - half, estimate + half, method, df)


def hksj_se(
    weights_random: Sequence[float],
    estimates: Sequence[float],
    theta_re: float,
    modified: bool = False,
) -> float:
    """HKSJ SE: sqrt(sum w* (theta - theta_RE)^2 / ((K-1) sum w*)).

    Plain HKSJ by default, with no truncation: it can be narrower than the Wald SE (and is 0
    when all estimates coincide). modified=True applies the ad-hoc max(1, q) rule
    (Roever et al. 2015), i.e. never narrower than the Wald SE (sum w*)^-1/2.
    """
    df = len(estimates) - 1
    total = math.fsum(weights_random)
    scale = _weighted_ss(weights_random, estimates, theta_re) / df
    if modified:
        scale = max(1.0, scale)
    return math.sqrt(scale / total)


def prediction_interval(
    theta_re: float, se_re: float, tau2: float, k: int, level: float
) -> tuple[float, float] | None:
    """Higgins et al. (2009) interval for a new member's true effect, None if K < 3.

    theta_RE +- t_{K-2, (1+level)/2} sqrt(tau2 + SE_RE^2), with SE_RE the Wald random-effects
    SE (sum w*)^-1/2 as in the paper (not the HKSJ SE).
    """
    if k < 3:
        return None
    half = _quantile(level, k - 2) * math.sqrt(tau2 + se_re**2)
    return theta_re - half, theta_re + half


def generalised_q(tau2: float, estimates: Sequence[float], variances: Sequence[float]) -> float:
    """Q(tau2) = sum w (theta - theta_w)^2 with w = 1/(v + tau2) (Q at tau2 = 0)."""
    w = [1 / (v + tau2) for v in variances]
    return _weighted_ss(w, estimates, _weighted_mean(w, estimates))


def _q_root(estimates: Sequence[float], variances: Sequence[float], target: float) -> float:
    """The tau2 >= 0 where Q(tau2) = target (0 if Q(0) <= target); Q falls in tau2."""
    def gap(t: float) -> float:
        return generalised_q(t, estimates, variances) - target

    if gap(0.0) <= 0:
        return 0.0
    spread = max(estimates) - min(estimates)
    high = max(spread**2, max(variances))
    while gap(high) > 0:
        high *= 2
    return float(optimize.brentq(gap, 0.0, high, xtol=1e-14, rtol=1e-12))


def tau2_interval(estimates: Sequence[float], variances: Sequence[float],
                  level: float = 0.95) -> tuple[float, float]:
    """Q-profile confidence interval for tau2 (Viechtbauer 2007; metafor's `confint`)."""
    df = len(estimates) - 1
    low = _q_root(estimates, variances, float(stats.chi2.ppf((1 + level) / 2, df)))
    high = _q_root(estimates, variances, float(stats.chi2.ppf((1 - level) / 2, df)))
    return low, high


def _warnings(k: int) -> tuple[str, ...]:
    """Plain-language caveats that depend on the number of members."""
    notes: list[str] = []
    if k < FEW_MEMBERS:
        notes.append(
            f"Only {k} members: with fewer than {FEW_MEMBERS} members the between-member "
            "variance tau2 and the random-effects (Wald) interval are unreliable, the Wald "
            "interval usually too narrow; prefer the HKSJ interval."
        )
    if k < 3:
        notes.append(
            f"Only {k} members: no prediction interval (it needs at least 3), and the HKSJ "
            f"interval uses a t distribution with {k - 1} degree(s) of freedom, so it is wide."
        )
    return tuple(notes)


def _relative(weights: Sequence[float]) -> tuple[float, ...]:
    """Weights scaled to sum to 1."""
    total = math.fsum(weights)
    return tuple(w / total for w in weights)


def meta_analysis(
    estimates: Sequence[float],
    variances: Sequence[float],
    labels: Sequence[str] | None = None,
    level: float = 0.95,
    *,
    hksj_modified: bool = False,
) -> MetaResult:
    """Fixed-effect, DerSimonian-Laird random-effects and HKSJ meta-analysis of K members.

    `variances` are the members' total variances (sampling + DP noise). Intervals have
    coverage `level`. The HKSJ result is plain HKSJ unless `hksj_modified` (see `hksj_se`).
    Raises `MetaError` for K < 2, mismatched lengths, a non-finite estimate, a variance that
    is not finite and > 0 (naming the member), or a level outside (0, 1).
    """
    if not 0 < level < 1:
        raise MetaError(f"level must be in (0, 1), got {level!r}")
    theta, v, names = _validate(estimates, variances, labels)
    k, df = len(theta), len(theta) - 1

    w = tuple(1 / x for x in v)
    theta_fe = _weighted_mean(w, theta)
    fixed = _pooled(theta_fe, math.fsum(w) ** -0.5, "fixed-iv", None, level)

    q = _weighted_ss(w, theta, theta_fe)
    i2, h2 = i2_h2(q, df)
    tau2 = dl_tau2(q, w)

    w_re = tuple(1 / (x + tau2) for x in v)
    theta_re = _weighted_mean(w_re, theta)
    se_re = math.fsum(w_re) ** -0.5
    random = _pooled(theta_re, se_re, "dl-wald", None, level)
    method = "dl-hksj-modified" if hksj_modified else "dl-hksj"
    se_hksj = hksj_se(w_re, theta, theta_re, modified=hksj_modified)
    hksj = _pooled(theta_re, se_hksj, method, float(df), level)

    return MetaResult(
        k=k,
        labels=names,
        estimates=theta,
        variances=v,
        weights_fixed=_relative(w),
        weights_random=_relative(w_re),
        fixed=fixed,
        random=random,
        hksj=hksj,
        q=q,
        q_df=df,
        q_pvalue=float(stats.chi2.sf(q, df)),
        i2=i2,
        h2=h2,
        tau2=tau2,
        prediction=prediction_interval(theta_re, se_re, tau2, k, level),
        level=level,
        warnings=_warnings(k),
        tau2_ci=tau2_interval(theta, v, level),
    )
