"""Adjusted p-values against statsmodels' `multipletests` (an implementation nobody here wrote)."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from bridgestat.coordinator.statistics.multiplicity import (
    MultiplicityError,
    Rule,
    adjust,
    benjamini_hochberg,
    holm,
)

CASES = [
    [0.01, 0.04, 0.03, 0.005],
    [0.2, 0.2, 0.01, 0.5, 0.04, 0.04, 0.9],  # ties
    [0.0, 1.0, 0.5],
    [0.03],
    [0.001, 0.002, 0.003, 0.004, 0.6],
]
SM_METHOD = {Rule.HOLM: "holm", Rule.BENJAMINI_HOCHBERG: "fdr_bh"}


@pytest.mark.parametrize("pvalues", CASES)
@pytest.mark.parametrize("rule", list(Rule))
def test_agrees_with_statsmodels(pvalues: list[float], rule: Rule) -> None:
    _, expected, _, _ = multipletests(pvalues, method=SM_METHOD[rule])
    assert adjust(pvalues, rule) == pytest.approx(expected.tolist(), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_statsmodels_on_random_p_values(seed: int) -> None:
    p = np.random.default_rng(seed).beta(0.5, 2, 12).tolist()
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1].tolist(), rel=1e-12)
    assert benjamini_hochberg(p) == pytest.approx(
        multipletests(p, method="fdr_bh")[1].tolist(), rel=1e-12)


def test_holm_hand_computed() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx((0.03, 0.06, 0.06, 0.02))


def test_adjusted_never_below_raw_and_bh_never_above_holm() -> None:
    p = [0.01, 0.02, 0.2, 0.03, 0.04]
    for raw, h, b in zip(p, holm(p), benjamini_hochberg(p), strict=True):
        assert raw <= b <= h <= 1


def test_empty_family() -> None:
    assert holm([]) == () and benjamini_hochberg([]) == ()


@pytest.mark.parametrize("bad", [[0.1, 1.5], [-0.01], [float("nan")]])
def test_bad_p_value_is_named(bad: list[float]) -> None:
    with pytest.raises(MultiplicityError, match=f"p-value {len(bad) - 1} is"):
        holm(bad)


def test_unknown_rule_is_named() -> None:
    with pytest.raises(MultiplicityError, match="unknown multiplicity rule 'bonferroni'"):
        adjust([0.1], "bonferroni")
