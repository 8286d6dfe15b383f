"""The attrition table (`tables.attrition_table`) and its estimator (`pooling.attrition`):
intake means of those with and without the follow-up occasion, and their difference, under
the one rule every table applies to a member's answer (failed, suppressed, pooled only)."""

from __future__ import annotations

import math

import pytest

from bridgestat.common.labels import ABSENT, PRESENCE, PRESENT
from bridgestat.coordinator.client.query import INTAKE, Occasion, Query
from bridgestat.coordinator.statistics import pooling
from bridgestat.coordinator.statistics.pooling import MeanStats, Noisy
from bridgestat.coordinator.statistics.tables import (
    NETWORK,
    WITHHELD,
    WITHHELD_NETWORK,
    attrition_table,
)
from tests.unit.test_tables import DOWN, hidden, mean_cell, release, result, row

P, A = ((PRESENCE, PRESENT),), ((PRESENCE, ABSENT),)
QUERY = Query("mean", "assessment", "bridge_total", 0.5, occasion=INTAKE,
              split_by_presence=Occasion.month(12, 3))


def stats(n: float, mean: float, var_sum: float = 1.0) -> MeanStats:
    """n values around `mean` with variance 1 (centre 0); sum noise variance `var_sum`."""
    return MeanStats(Noisy(n, 1.0), Noisy(n * mean, var_sum), Noisy(n * (mean**2 + 1), 1.0),
                     0.0)


def test_the_difference_adds_both_cells_variances_apart() -> None:
    found = pooling.attrition([stats(100, 3.0, var_sum=400.0)], [stats(50, 1.0)])
    assert found.difference.estimate == pytest.approx(2.0)
    assert found.difference.se_sampling == pytest.approx(
        math.hypot(found.present.se_sampling or 0, found.absent.se_sampling or 0))
    assert found.difference.se_dp == pytest.approx(
        math.hypot(found.present.se_dp or 0, found.absent.se_dp or 0))
    assert found.difference.se == pytest.approx(math.hypot(found.present.se, found.absent.se))
    assert found.present.se_dp == pytest.approx(math.sqrt(400.0 + 9.0) / 100)  # [v_S+m^2 v_N]/N^2


def test_network_pools_each_cells_sums_then_differences() -> None:
    """Not a pool of the members' differences: the pooled cells' means, as pooled_mean."""
    frame = attrition_table(result(release("m1", mean_cell(P, 100, 4.0), mean_cell(A, 20, 0.0)),
                                   release("m2", mean_cell(P, 100, 2.0), mean_cell(A, 80, 2.0)),
                                   query=QUERY))
    assert row(frame, "m1", cell="difference").estimate == pytest.approx(4.0)
    assert row(frame, "m2", cell="difference").estimate == pytest.approx(0.0)
    assert row(frame, NETWORK, cell=PRESENT).estimate == pytest.approx(3.0)
    assert row(frame, NETWORK, cell=ABSENT).estimate == pytest.approx(1.6)
    assert row(frame, NETWORK, cell="difference").estimate == pytest.approx(1.4)
    assert row(frame, NETWORK, cell="difference").n == pytest.approx(300)
    assert set(frame.status) == {"ok"}


def test_a_member_with_a_suppressed_cell_is_named_and_not_pooled() -> None:
    frame = attrition_table(result(release("m1", mean_cell(P, 100, 4.0), hidden(A)),
                                   release("m2", mean_cell(P, 100, 2.0), mean_cell(A, 80, 2.0)),
                                   DOWN, query=QUERY))
    for cell in (PRESENT, ABSENT, "difference"):
        assert row(frame, "m1", cell=cell).status.startswith("suppressed by member policy "
                                                             "(cell {'(follow-up)': 'absent'}")
        assert row(frame, "m0", cell=cell).status == "UNAVAILABLE: down"
    assert row(frame, NETWORK, cell="difference").estimate == pytest.approx(0.0)  # m2 alone


def test_a_pooled_only_member_is_pooled_but_withheld() -> None:
    only = release("m1", mean_cell(P, 100, 4.0), mean_cell(A, 20, 0.0), pooled_only=True)
    frame = attrition_table(result(only, query=QUERY))
    assert row(frame, "m1", cell="difference").status == WITHHELD
    assert row(frame, NETWORK, cell="difference").status == WITHHELD_NETWORK
    frame = attrition_table(result(only, release("m2", mean_cell(P, 100, 2.0),
                                                 mean_cell(A, 80, 2.0)), query=QUERY))
    assert row(frame, NETWORK, cell="difference").estimate == pytest.approx(1.4)


def test_a_cell_without_a_mean_names_itself_and_the_difference_says_why() -> None:
    frame = attrition_table(result(release("m1", mean_cell(P, 100, 4.0), mean_cell(A, 0.5, 0.0)),
                                   query=QUERY))
    assert row(frame, "m1", cell=PRESENT).status == "ok"
    assert row(frame, "m1", cell=ABSENT).status.startswith("not estimable: ")
    assert row(frame, "m1", cell="difference").status == row(frame, "m1", cell=ABSENT).status
    assert math.isnan(row(frame, "m1", cell="difference").estimate)
