"""Figures a reader can trust: shares on the simplex, too-uncertain and impossible values."""

from __future__ import annotations

import pytest

from bridgestat.coordinator.report import figures as fg
from bridgestat.coordinator.report.plots import share_matrix


@pytest.mark.parametrize("raw", [[0.97, 0.62, 0.31, -0.9], [0.2, 0.3, 0.5], [-0.1, -0.2, 1.5],
                                 [0.0, 0.0, 0.0], [0.4, -0.05, 0.4, 0.25]])
def test_projection_is_within_0_1_and_sums_to_1(raw: list[float]) -> None:
    shares = fg.project_to_simplex(raw)
    assert all(0.0 <= s <= 1.0 for s in shares)
    assert sum(shares) == pytest.approx(1.0, abs=1e-12)


def test_projection_keeps_valid_shares_and_is_the_nearest_point() -> None:
    assert fg.project_to_simplex([0.2, 0.3, 0.5]) == pytest.approx([0.2, 0.3, 0.5])
    # 97 + 62 + 31 - 90 %: every share moves by the same amount, then is cut at 0
    assert fg.project_to_simplex([0.97, 0.62, 0.31, -0.9]) == pytest.approx(
        [0.67, 0.32, 0.01, 0.0], abs=1e-9)


def test_share_bars_add_up_to_100_percent() -> None:
    rows = [{"member": "a", "category": c, "estimate": v}
            for c, v in zip("xyz", (0.97, 0.62, -0.59), strict=True)]
    rows += [{"member": "NETWORK", "category": "x", "estimate": 0.5}]  # y, z missing: 0
    _, matrix, adjusted = share_matrix(rows, "category", ["a", "NETWORK"])
    assert adjusted
    for bar in matrix:
        assert sum(bar) == pytest.approx(1.0) and min(bar) >= 0.0


MEAN = {"kind": "mean", "spec": {"clip": [0, 30]}}


def test_a_negative_mean_of_a_non_negative_variable_is_not_shown() -> None:
    table = {"name": "mean"}
    row = {"estimate": -21.6, "ci_low": -30.0, "ci_high": -13.0, "sd": 0.0}
    bounds = fg.public_range(MEAN, table, row)
    assert bounds == (0.0, 30.0)
    assert fg.readability(row, bounds) == fg.Readable(False, "outside")
    assert not fg.sd_readable(row) and fg.sd_readable({"sd": 2.0})


def test_an_interval_wider_than_the_range_is_too_uncertain() -> None:
    share = {"estimate": 0.4, "ci_low": -0.3, "ci_high": 1.1}
    assert fg.readability(share, fg.public_range({}, {"name": "proportion"}, share)
                          ) == fg.Readable(False, "uncertain")
    narrow = {"estimate": 0.4, "ci_low": 0.1, "ci_high": 0.7}
    assert fg.readability(narrow, fg.SHARE_RANGE).shown
    assert fg.public_range({"kind": "did", "spec": {"clip": [-40, 40]}}, {"name": "did"},
                           {}) == (-80.0, 80.0)
    assert fg.public_range({"kind": "mean", "spec": {}}, {"name": "mean"}, {}) is None


@pytest.mark.parametrize("analysis, table, expected", [
    # known bounded kinds, whatever the table is called
    ({"kind": "histogram"}, {"name": "Age bands"}, (0.0, 1.0)),
    ({"kind": "follow_up"}, {"name": "followed_up"}, (0.0, 1.0)),
    # a quantile is one of its public candidates
    ({"kind": "quantile", "spec": {"candidates": {"from": 0, "to": 40000, "step": 500}}},
     {"name": "quantile"}, (0.0, 40000.0)),
    ({"kind": "quantile", "spec": {"candidates": [5, 1, 3]}}, {"name": "quantile"},
     (1.0, 5.0)),
    # the column's schema bounds, when the study run saved them; the clip narrows them
    ({"kind": "mean", "spec": {}, "column_bounds": [0, 100]}, {"name": "mean"}, (0.0, 100.0)),
    ({"kind": "mean", "spec": {"clip": [10, 200]}, "column_bounds": [0, 100]},
     {"name": "mean"}, (10.0, 100.0)),
    # a change without clip moves at most the column's width either way
    ({"kind": "paired_change", "spec": {}, "column_bounds": [1, 5]}, {"name": "change"},
     (-4.0, 4.0)),
    ({"kind": "paired_change", "spec": {"clip": [-40, 40]}}, {"name": "change"},
     (-40.0, 40.0)),
    # nothing public to go by: no range, so nothing is hidden
    ({"kind": "paired_change", "spec": {}}, {"name": "change"}, None),
    ({"kind": "regression", "spec": {"clip": [0, 1]}}, {"name": "coefficients"}, None),
    ({"kind": "mean", "spec": {"clip": [30, 0]}}, {"name": "mean"}, None),
])
def test_public_range_uses_what_the_results_document_holds(
        analysis: dict[str, object], table: dict[str, object],
        expected: tuple[float, float] | None) -> None:
    assert fg.public_range(analysis, table, {"estimate": 1.0}) == expected


def test_chart_texts_in_dutch() -> None:
    from bridgestat.coordinator.report.i18n import Translator

    nl = Translator("nl")
    assert fg.truncation_note(fg.MAX_PANELS) == ""
    assert fg.truncation_note(20, nl) == (
        " Alleen de eerste 12 van 20 panelen staan hier; de tabel bevat ze allemaal.")
    assert fg.truncation_note(20).startswith(" Showing the first 12 of 20 panels")
    assert fg.not_estimable_text("too_few_records", nl) == "niet te schatten (te weinig records)"
    assert fg.not_estimable_text("not estimable: " + "x" * 80, nl) == (
        "niet te schatten (zie tabel)")
