"""Tests of coordinator/statistics/meta.py against statsmodels' `combine_effects` as a reference.

statsmodels (statsmodels.stats.meta_analysis, pinned in the dev extras) is an implementation
nobody here wrote. With method_re="dl" its results map onto ours as follows:

- fixed effect: mean_effect_fe, sd_eff_w_fe, conf_int(use_t=False)[0], weights_rel_fe
- DL random effects (Wald): tau2, mean_effect_re, sd_eff_w_re, conf_int(use_t=False)[1],
  weights_rel_re
- HKSJ: sd_eff_w_re_hksj = sqrt(var_hksj_re) with
  var_hksj_re = sum(weights_rel_re * (eff - mean_effect_re)**2) / (k - 1), i.e. exactly
  sum w* (theta - theta_RE)^2 / ((K-1) sum w*); interval conf_int(use_t=True)[3]
  ("random effect wls"), t on k - 1 df. Plain HKSJ, no max(1, q) truncation, like ours.
- heterogeneity: q, test_homogeneity().pvalue, i2 = 1 - 1/h2, h2 = q / (k - 1)

Two conventions differ, both in statsmodels 0.15.0's source (combine_effects):

- Its DL tau2 = (q - df) / c is NOT truncated at 0, and its i2 is not truncated either. When
  Q < K-1 it reports a negative tau2 (and then random weights 1/(v + tau2), which can be
  negative, giving a NaN HKSJ SE) and a negative I2. We truncate both at 0 (DerSimonian &
  Laird 1986; Higgins & Thompson 2002), so in the homogeneous case we compare our random-
  effects results with statsmodels' Paule-Mandel fit (method_re="pm"), which returns tau2 = 0
  exactly when Q < K-1 (_fit_tau_iterative stops at the start value 0), and with its
  fixed-effect attributes (tau2 = 0 makes RE equal FE); i2/h2 with max(0, .)/max(1, .).
- statsmodels has no prediction interval; the test computes Higgins et al. (2009)'s formula
  from statsmodels' RE quantities with scipy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.meta_analysis import CombineResults, combine_effects

from bridgestat.coordinator.statistics.meta import (
    MetaError,
    MetaResult,
    Pooled,
    dl_tau2,
    meta_analysis,
    tau2_interval,
)

REL = 1e-8  # relative agreement required with statsmodels
ABS = 1e-12  # absolute floor, only for quantities near 0

TWELVE_MEMBERS = [  # (estimate, variance)
    (0.1843, 0.01272),
    (0.1168, 0.04999),
    (0.3453, 0.03099),
    (0.0969, 0.04241),
    (0.2470, 0.01622),
    (0.0930, 0.00917),
    (0.4298, 0.04016),
    (0.2201, 0.02792),
    (0.5169, 0.04707),
    (0.3188, 0.03365),
    (0.4476, 0.01300),
    (-0.1788, 0.02738),
]
# Members' effects (e.g. Cohen's d or a proportion) and total variances (sampling + DP).
HETEROGENEOUS: dict[str, tuple[list[float], list[float]]] = {
    "five": ([0.32, 0.11, 0.45, 0.05, 0.27], [0.012, 0.020, 0.030, 0.008, 0.015]),
    "seven_unequal": (
        [0.62, 0.48, 0.71, 0.55, 0.90, 0.35, 0.58],
        [0.0004, 0.0015, 0.0009, 0.0030, 0.02, 0.011, 0.0006],
    ),
    "twelve": (
        [e for e, _ in TWELVE_MEMBERS],
        [v for _, v in TWELVE_MEMBERS],
    ),
    "two": ([0.1, 0.4], [0.01, 0.02]),
}
HOMOGENEOUS = ([0.20, 0.22, 0.19, 0.21, 0.20], [0.01, 0.02, 0.015, 0.012, 0.018])


def close(actual: float, expected: float) -> bool:
    """Agreement to 1e-8 relative (absolute 1e-12 near zero)."""
    return math.isclose(actual, expected, rel_tol=REL, abs_tol=ABS)


def reference(
    estimates: Sequence[float], variances: Sequence[float], method_re: str = "dl"
) -> CombineResults:
    """statsmodels' combine_effects on numpy arrays (it needs arrays, not lists)."""
    return combine_effects(np.asarray(estimates), np.asarray(variances), method_re=method_re)


def assert_pooled(p: Pooled, estimate: float, se: float, ci: Sequence[float]) -> None:
    """Estimate, SE and interval agree with the reference."""
    assert close(p.estimate, estimate), (p.estimate, estimate)
    assert close(p.se, se), (p.se, se)
    assert close(p.ci_low, ci[0]), (p.ci_low, ci[0])
    assert close(p.ci_high, ci[1]), (p.ci_high, ci[1])


def assert_all_close(actual: Sequence[float], expected: Sequence[float]) -> None:
    """Elementwise `close`."""
    assert len(actual) == len(expected)
    assert all(close(a, e) for a, e in zip(actual, expected, strict=True)), (actual, expected)


@pytest.mark.parametrize("level", [0.95, 0.90])
@pytest.mark.parametrize("name", sorted(HETEROGENEOUS))
def test_agrees_with_statsmodels_dl(name: str, level: float) -> None:
    estimates, variances = HETEROGENEOUS[name]
    res = meta_analysis(estimates, variances, level=level)
    ref = reference(estimates, variances)
    alpha = 1 - level
    ci_normal = ref.conf_int(alpha=alpha, use_t=False)
    ci_t = ref.conf_int(alpha=alpha, use_t=True)

    assert ref.tau2 > 0  # these sets are heterogeneous: no truncation anywhere
    assert res.k == ref.k == len(estimates)
    assert_pooled(res.fixed, ref.mean_effect_fe, ref.sd_eff_w_fe, ci_normal[0])
    assert_pooled(res.random, ref.mean_effect_re, ref.sd_eff_w_re, ci_normal[1])
    assert_pooled(res.hksj, ref.mean_effect_re, ref.sd_eff_w_re_hksj, ci_t[3])
    assert (res.fixed.df, res.random.df, res.hksj.df) == (None, None, ref.df_resid)
    assert close(res.q, ref.q)
    assert res.q_df == ref.df_resid == len(estimates) - 1
    assert close(res.q_pvalue, ref.test_homogeneity().pvalue)
    assert close(res.tau2, ref.tau2)
    assert close(res.i2, ref.i2)
    assert close(res.h2, ref.h2)
    assert_all_close(res.weights_fixed, ref.weights_rel_fe)
    assert_all_close(res.weights_random, ref.weights_rel_re)


@pytest.mark.parametrize("name", sorted(HETEROGENEOUS))
def test_prediction_interval_matches_higgins_formula(name: str) -> None:
    estimates, variances = HETEROGENEOUS[name]
    res = meta_analysis(estimates, variances)
    ref = reference(estimates, variances)
    k = len(estimates)
    if k < 3:
        assert res.prediction is None
        return
    # Higgins, Thompson & Spiegelhalter (2009): t_{K-2} with tau2 + SE_RE^2 (Wald SE).
    half = stats.t.ppf(0.975, k - 2) * math.sqrt(ref.tau2 + ref.sd_eff_w_re**2)
    assert res.prediction is not None
    assert close(res.prediction[0], ref.mean_effect_re - half)
    assert close(res.prediction[1], ref.mean_effect_re + half)
    # t_{K-2} >= z and tau2 >= 0: the prediction interval always contains the Wald CI.
    assert res.prediction[0] <= res.random.ci_low and res.random.ci_high <= res.prediction[1]


def test_homogeneous_truncates_tau2_and_i2_at_zero() -> None:
    estimates, variances = HOMOGENEOUS
    res = meta_analysis(estimates, variances)
    with np.errstate(invalid="ignore"):  # statsmodels' RE HKSJ: sqrt of a negative variance
        dl = reference(estimates, variances, "dl")
        dl_normal, dl_t = dl.conf_int(use_t=False), dl.conf_int(use_t=True)
    assert math.isnan(dl.sd_eff_w_re_hksj)  # negative DL tau2 gave negative random weights
    pm = reference(estimates, variances, "pm")

    # The differing convention (module docstring): statsmodels leaves both untruncated.
    assert dl.q < len(estimates) - 1
    assert dl.tau2 < 0 and dl.i2 < 0
    assert res.tau2 == 0.0 == pm.tau2
    assert res.i2 == 0.0 == max(0.0, dl.i2)
    assert close(res.h2, max(1.0, dl.h2)) and res.h2 == 1.0
    assert close(res.q, dl.q)
    assert close(res.q_pvalue, dl.test_homogeneity().pvalue)

    assert_pooled(res.fixed, dl.mean_effect_fe, dl.sd_eff_w_fe, dl_normal[0])
    # With tau2 = 0 the random-effects model is the fixed-effect one: PM and FE both agree.
    pm_normal, pm_t = pm.conf_int(use_t=False), pm.conf_int(use_t=True)
    assert_pooled(res.random, pm.mean_effect_re, pm.sd_eff_w_re, pm_normal[1])
    assert_pooled(res.random, dl.mean_effect_fe, dl.sd_eff_w_fe, dl_normal[0])
    assert_pooled(res.hksj, pm.mean_effect_re, pm.sd_eff_w_re_hksj, pm_t[3])
    assert_pooled(res.hksj, dl.mean_effect_fe, dl.sd_eff_w_fe_hksj, dl_t[2])
    assert_all_close(res.weights_random, pm.weights_rel_re)
    # Plain HKSJ is not truncated: here it is far narrower than the Wald interval.
    assert res.hksj.se < res.random.se


def test_modified_hksj_is_never_narrower_than_wald() -> None:
    for estimates, variances in [HOMOGENEOUS, *HETEROGENEOUS.values()]:
        plain = meta_analysis(estimates, variances)
        modified = meta_analysis(estimates, variances, hksj_modified=True)
        assert plain.hksj.method == "dl-hksj" and modified.hksj.method == "dl-hksj-modified"
        expected = max(plain.random.se, plain.hksj.se)
        assert close(modified.hksj.se, expected)
        assert modified.hksj.df == plain.hksj.df
        assert modified.random == plain.random and modified.fixed == plain.fixed


def test_statistic_and_pvalue() -> None:
    res = meta_analysis(*HETEROGENEOUS["five"])
    z = res.fixed.estimate / res.fixed.se
    assert close(res.fixed.statistic, z)
    assert close(res.fixed.pvalue, 2 * stats.norm.sf(abs(z)))
    t = res.hksj.estimate / res.hksj.se
    assert close(res.hksj.pvalue, 2 * stats.t.sf(abs(t), 4))


def test_all_equal_estimates_give_zero_q_and_degenerate_hksj() -> None:
    res = meta_analysis([0.3, 0.3, 0.3], [0.01, 0.02, 0.03])
    assert res.q == 0.0 and res.i2 == 0.0 and res.tau2 == 0.0 and res.h2 == 1.0
    assert res.hksj.se == 0.0 and res.hksj.ci_low == res.hksj.ci_high == 0.3
    assert res.hksj.statistic == math.inf and res.hksj.pvalue == 0.0


def test_dl_tau2_exact_with_one_dominant_weight() -> None:
    """The leave-one-out form of c stays exact where sum w - sum w^2/sum w cancels (~1e-9)."""
    estimates = [0.0, 3.0, -3.0, 5.0]
    variances = [1e-9, 1.0, 2.0, 4.0]
    res = meta_analysis(estimates, variances)
    w = [1 / Fraction(v) for v in variances]
    theta = [Fraction(x) for x in estimates]
    sw = sum(w)
    mean = sum(wi * ti for wi, ti in zip(w, theta, strict=True)) / sw
    q = sum(wi * (ti - mean) ** 2 for wi, ti in zip(w, theta, strict=True))
    c = sw - sum(wi * wi for wi in w) / sw
    exact = float((q - 3) / c)
    assert math.isclose(res.tau2, exact, rel_tol=1e-12)
    assert math.isclose(dl_tau2(float(q), [float(x) for x in w]), exact, rel_tol=1e-12)


def test_few_members_warning() -> None:
    five = meta_analysis(*HETEROGENEOUS["five"])
    twelve = meta_analysis(*HETEROGENEOUS["twelve"])
    assert any("fewer than 10 members" in s and "HKSJ" in s for s in five.warnings)
    assert twelve.warnings == ()
    two = meta_analysis(*HETEROGENEOUS["two"])
    assert any("no prediction interval" in s for s in two.warnings)


def test_k_below_two_raises() -> None:
    with pytest.raises(MetaError, match="at least 2 members; got 1"):
        meta_analysis([0.3], [0.01])
    with pytest.raises(MetaError, match="at least 2 members; got 0"):
        meta_analysis([], [])


@pytest.mark.parametrize("bad", [0.0, -0.01, math.inf, math.nan])
def test_bad_variance_names_the_member(bad: float) -> None:
    with pytest.raises(MetaError, match=r"member 1 \('Utrecht'\): variance is .*must be finite"):
        meta_analysis([0.1, 0.2, 0.3], [0.01, bad, 0.02], labels=["Boston", "Utrecht", "Ede"])
    with pytest.raises(MetaError, match=r"^member 2: variance"):
        meta_analysis([0.1, 0.2, 0.3], [0.01, 0.02, bad])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_estimate_names_the_member(bad: float) -> None:
    with pytest.raises(MetaError, match=r"member 0 \('Boston'\): estimate is .*must be finite"):
        meta_analysis([bad, 0.2], [0.01, 0.02], labels=["Boston", "Utrecht"])


def test_other_input_errors() -> None:
    with pytest.raises(MetaError, match="2 estimates but 3 variances"):
        meta_analysis([0.1, 0.2], [0.01, 0.02, 0.03])
    with pytest.raises(MetaError, match="2 estimates but 1 labels"):
        meta_analysis([0.1, 0.2], [0.01, 0.02], labels=["a"])
    with pytest.raises(MetaError, match="level"):
        meta_analysis([0.1, 0.2], [0.01, 0.02], level=95)
    with pytest.raises(MetaError, match=r"member 1: variance .*too small"):
        meta_analysis([0.1, 0.2], [0.01, 1e-320])
    with pytest.raises(MetaError, match=r"member 0: estimate must be a real number"):
        meta_analysis(["x", 0.2], [0.01, 0.02])  # type: ignore[list-item]


@pytest.mark.parametrize("name", ["five", "two", "twelve"])
def test_to_dict_from_dict_round_trip(name: str) -> None:
    estimates, variances = HETEROGENEOUS[name]
    labels = [f"member-{i:02d}" for i in range(len(estimates))]
    res = meta_analysis(estimates, variances, labels=labels)
    text = json.dumps(res.to_dict(), allow_nan=False)  # strict JSON, plain types only
    back = MetaResult.from_dict(json.loads(text))
    assert back == res
    assert back.labels == tuple(labels)
    assert back.hksj.pvalue == res.hksj.pvalue


def test_from_dict_rejects_malformed() -> None:
    doc = meta_analysis(*HETEROGENEOUS["five"]).to_dict()
    del doc["tau2"]
    with pytest.raises(MetaError, match="malformed"):
        MetaResult.from_dict(doc)


def test_default_labels_and_weights_sum_to_one() -> None:
    res = meta_analysis(*HETEROGENEOUS["five"])
    assert res.labels == ("0", "1", "2", "3", "4")
    assert math.isclose(sum(res.weights_fixed), 1.0) and math.isclose(sum(res.weights_random), 1.0)
    assert res.estimates == tuple(HETEROGENEOUS["five"][0])


# Printed by tests/fixtures/tau2_qprofile.R (metafor 3.8.1, R 4.2.2): confint(rma(y, v,
# method = "DL"), level)$random["tau^2", c("ci.lb", "ci.ub")], the Q-profile interval.
METAFOR_TAU2_CI = [
    ("five", 0.95, 0, 0.196308987322),
    ("five", 0.90, 0, 0.127843459039),
    ("seven_unequal", 0.95, 0.00339260875621, 0.133688834421),
    ("seven_unequal", 0.90, 0.00461484802395, 0.0979300932158),
    ("twelve", 0.95, 0, 0.0770866556841),
    ("twelve", 0.90, 0, 0.0595656344635),
    ("two", 0.95, 0, 45.8066221374),
    ("two", 0.90, 0, 11.4291500048),
    ("homogeneous", 0.95, 0, 0),
    ("homogeneous", 0.90, 0, 0),
]


@pytest.mark.parametrize(("name", "level", "low", "high"), METAFOR_TAU2_CI)
def test_tau2_interval_agrees_with_metafor(name: str, level: float, low: float,
                                           high: float) -> None:
    """Q-profile bounds to metafor's printed 12 significant digits (its root finder's own
    tolerance set to 1e-12 in the script)."""
    estimates, variances = HETEROGENEOUS.get(name, HOMOGENEOUS)
    result = meta_analysis(estimates, variances, level=level)
    assert result.tau2_ci == pytest.approx((low, high), rel=1e-8, abs=1e-12)
    assert result.tau2_ci == tau2_interval(estimates, variances, level)
    assert result.tau2_ci[0] <= result.tau2 or result.tau2_ci[0] == 0


def test_tau2_interval_survives_the_round_trip_and_old_documents() -> None:
    result = meta_analysis(*HETEROGENEOUS["five"])
    assert MetaResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    old = result.to_dict()
    del old["tau2_ci"]
    assert MetaResult.from_dict(old).tau2_ci is None
