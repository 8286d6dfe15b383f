"""Tests of coordinator/statistics/tables.py: the one rule every table applies to a member's answer
(`QueryResult.member_cells`: failed, suppressed or missing cell, pooled only) and the
builders that applied it differently before it was shared."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pandas as pd
import pytest

from bridgestat.coordinator.client.fanout import Failure
from bridgestat.coordinator.client.query import Query, Term
from bridgestat.coordinator.client.wire import CellRelease, MemberRelease
from bridgestat.coordinator.statistics.pooling import Noisy
from bridgestat.coordinator.statistics.tables import (
    NETWORK,
    WITHHELD,
    WITHHELD_NETWORK,
    Group,
    QueryResult,
    compare_table,
    count_table,
    did_table,
    histogram_table,
    quantile_table,
    regression_fits,
    transition_table,
)

T, C = (("arm", "t"),), (("arm", "c"),)
SUPPRESSED = "suppressed by member policy (noisy n < 25; not pooled)"
DOWN = Failure("m0", "UNAVAILABLE", "down")


def cell(group: Group = (), **values: float) -> CellRelease:
    """A released cell; every value has noise variance 1."""
    return named_cell(group, values)


def named_cell(group: Group, values: Mapping[str, float]) -> CellRelease:
    """A released cell with values whose names are not identifiers ("a -> b")."""
    return CellRelease(group, {k: Noisy(v, 1.0) for k, v in values.items()})


def hidden(group: Group = ()) -> CellRelease:
    """A cell the member's node suppressed."""
    return CellRelease(group, {}, suppressed=True)


def release(name: str, *cells: CellRelease, pooled_only: bool = False,
            charged: float = 0.5) -> MemberRelease:
    """A release from a member whose policy suppresses cells under 25."""
    return MemberRelease(name, cells, center=0.0, charged=charged, remaining=1.0,
                         replayed=False, mechanism="test", pooled_only=pooled_only,
                         min_group_size=25.0, term_bounds=((-1.0, 1.0), (-1.0, 1.0)))


def result(*answers: MemberRelease | Failure, query: Query | None = None) -> QueryResult:
    """Members in the order given, each a release or a failure."""
    names = tuple(a.node_id if isinstance(a, MemberRelease) else a.member for a in answers)
    return QueryResult(query or Query("count", "participant"), "key", names,
                       {a.node_id: a for a in answers if isinstance(a, MemberRelease)},
                       {a.member: a for a in answers if isinstance(a, Failure)})


def row(frame: pd.DataFrame, member: str, **labels: str) -> pd.Series:
    """The one row of `member` with the given labels (group column values, measure)."""
    keep = frame.member == member
    for column, value in labels.items():
        keep &= frame[column] == value
    [index] = frame.index[keep]
    return frame.loc[index]


def mean_cell(group: Group, n: float, mean: float) -> CellRelease:
    """Mean statistics of n values around `mean` with variance 1 (centre 0)."""
    return cell(group, count=n, sum=n * mean, sum_squares=n * (mean**2 + 1))


# -- the rule -------------------------------------------------------------------------------

def test_a_failed_member_shows_its_failure_and_pools_nothing() -> None:
    answer = result(DOWN).member_cells("m0")
    assert (answer.release, answer.cells, answer.status) == (None, (), "UNAVAILABLE: down")
    assert (answer.pooled, answer.shown, answer.loss) == (False, False, None)


def test_an_answering_member_is_shown_and_pooled_with_the_cells_asked_for() -> None:
    r = release("m1", cell(T, count=40), cell(C, count=60), charged=0.7)
    answer = result(r).member_cells("m1", (C, T))
    assert answer.cells == (r.cells[1], r.cells[0])  # in the order asked
    assert (answer.status, answer.pooled, answer.shown, answer.loss) == ("ok", True, True, 0.7)
    assert answer.pairs() == [(r, r.cells[1]), (r, r.cells[0])]


def test_a_pooled_only_member_is_pooled_but_withheld() -> None:
    r = release("m1", cell(count=40), pooled_only=True)
    answer = result(r).member_cells("m1")
    assert (answer.status, answer.pooled, answer.shown) == (WITHHELD, True, False)
    assert answer.cells == r.cells


def test_a_suppressed_cell_is_named_and_not_pooled() -> None:
    answer = result(release("m1", hidden(), charged=0.3)).member_cells("m1")
    assert (answer.status, answer.cells, answer.loss) == (SUPPRESSED, (), 0.3)


@pytest.mark.parametrize("pooled_only", [False, True])
def test_one_suppressed_cell_keeps_every_cell_out_and_names_it(pooled_only: bool) -> None:
    """A pooled-only member too: "withheld (pooled only)" would claim the cells were pooled."""
    r = release("m1", cell(T, count=40), hidden(C), pooled_only=pooled_only)
    answer = result(r).member_cells("m1", (T, C))
    assert answer.status == ("suppressed by member policy (cell {'arm': 'c'}: noisy n < 25; "
                             "not pooled)")
    assert (answer.cells, answer.pooled, answer.shown) == ((), False, False)


def test_a_missing_cell_is_not_estimable() -> None:
    answer = result(release("m1", cell(T, count=40))).member_cells("m1", (T, C))
    assert answer.status == "not estimable: no cell {'arm': 'c'} in the release"
    assert not answer.pooled


# -- the builders ---------------------------------------------------------------------------

def test_compare_shows_a_pooled_only_members_suppressed_group_as_suppressed() -> None:
    """Was "withheld by member policy (pooled only)" though NETWORK left the member out."""
    frame = compare_table(result(
        release("m1", cell(T, yes=30, no=70), hidden(C), pooled_only=True),
        release("m2", cell(T, yes=40, no=60), cell(C, yes=20, no=80))),
        ("yes",), "arm", ("t", "c"))
    assert set(frame[frame.member == "m1"].status) == {
        "suppressed by member policy (cell {'arm': 'c'}: noisy n < 25; not pooled)"}
    pooled = row(frame, NETWORK, measure="share:t")
    assert (pooled.estimate, pooled.n, pooled.status) == (0.4, 100.0, "ok")  # m2 alone
    assert row(frame, "m2", measure="risk_difference").estimate == pytest.approx(0.2)


def test_did_names_a_suppressed_arm_and_pools_the_others() -> None:
    """Was "no c arm (noisy n < 20 or none)", wrong about the threshold (25) and the cause."""
    frame = did_table(result(
        release("m1", mean_cell(T, 50, 2.0), hidden(C)),
        release("m2", mean_cell(T, 50, 3.0), mean_cell(C, 50, 1.0))), "arm", ("t", "c"))
    assert row(frame, "m1").status == ("suppressed by member policy (cell {'arm': 'c'}: "
                                       "noisy n < 25; not pooled)")
    assert row(frame, "m2").estimate == pytest.approx(2.0)
    assert row(frame, NETWORK).estimate == pytest.approx(2.0)  # m2 alone
    assert row(frame, NETWORK).n == row(frame, "m2").n


@pytest.mark.parametrize("build", [histogram_table, transition_table])
def test_long_tables_with_every_cell_suppressed_say_so(
        build: Callable[[QueryResult], pd.DataFrame]) -> None:
    """transition_table raised ValueError (nothing to concatenate); histogram_table gave an
    empty frame: the suppressed members' rows were gone."""
    frame = build(result(release("m1", hidden(), charged=0.2), release("m2", hidden()), DOWN))
    assert list(frame.member) == ["m1", "m2", "m0", NETWORK]
    assert list(frame.status) == [SUPPRESSED, SUPPRESSED, "UNAVAILABLE: down",
                                  "nothing to pool: every member's cell is suppressed"]
    assert frame.loss.tolist()[:2] == [0.2, 0.5] and frame.loss[2:].isna().all()
    assert frame.estimate.isna().all()


def test_transition_table_pools_the_unsuppressed_members() -> None:
    counts = {"a -> a": 30, "a -> b": 10, "b -> a": 20, "b -> b": 40, "(missing)": 5}
    frame = transition_table(result(release("m1", hidden()),
                                    release("m2", named_cell((), counts))))
    assert set(frame.transition) == {"a -> a", "a -> b", "b -> a", "b -> b"}
    assert set(frame[frame.member == "m1"].status) == {SUPPRESSED}
    pooled = row(frame, NETWORK, transition="a -> b")
    assert (pooled.estimate, pooled.n) == (0.1, 100.0)


@pytest.mark.parametrize("order", [("m1", "m2"), ("m2", "m1")])
def test_members_with_different_cells_get_a_row_per_cell(order: tuple[str, str]) -> None:
    """Members declare their own teams. The table took its cells from the first release, so
    m2's team_3 was dropped after m1, and m1 (which has no team_3) after m2 raised
    StopIteration."""
    team = [(("team", f"team_{i}"),) for i in (1, 2, 3)]
    releases = {"m1": release("m1", cell(team[0], count=10), cell(team[1], count=20)),
                "m2": release("m2", *(cell(g, count=100 * i) for i, g in enumerate(team, 1)))}
    frame = count_table(result(*(releases[m] for m in order)))
    assert sorted(set(frame.team)) == ["team_1", "team_2", "team_3"]
    assert row(frame, "m1", team="team_3").status == \
        "not estimable: no cell {'team': 'team_3'} in the release"
    assert row(frame, NETWORK, team="team_3").estimate == 300.0  # m2 alone
    assert row(frame, NETWORK, team="team_2").estimate == 220.0


REGRESSION = Query("cross_products", "assessment", terms=(Term("x"), Term("y")))


def regression_cell(n: float) -> CellRelease:
    """Cross products of n complete cases over [1, x, y] (a positive definite U'U)."""
    shares = {(0, 0): 1.0, (0, 1): 0.1, (0, 2): 0.2, (1, 1): 0.4, (1, 2): 0.1, (2, 2): 0.5}
    return named_cell((), {f"zz[{i},{j}]": n * v for (i, j), v in shares.items()})


def network_status(build: str, member: MemberRelease) -> str:
    """NETWORK's status in `build`'s table when `member` is the only one answering."""
    answered = result(DOWN, member, query=REGRESSION)
    if build == "regression":
        fitted = regression_fits(answered, replicates=20)[NETWORK]
        return fitted if isinstance(fitted, str) else "ok"
    if build == "quantile":
        quantile = result(DOWN, release("m1", CellRelease((), {}, {"quantile": 42.0}),
                                        pooled_only=True))
        frame = quantile_table(quantile, answered, 0.5, (0.0, 10.0, 20.0))
    elif build == "compare":
        frame = compare_table(answered, ("yes",), "arm", ("t", "c"))
    elif build == "did":
        frame = did_table(answered, "arm", ("t", "c"))
    else:
        frame = {"count": count_table, "histogram": histogram_table}[build](answered)
    return str(frame[frame.member == NETWORK].status.iloc[0])


@pytest.mark.parametrize(("build", "cells"), [
    ("count", (cell(count=80),)),
    ("histogram", (cell(a=50, b=30),)),
    ("compare", (cell(T, yes=30, no=70), cell(C, yes=20, no=80))),
    ("did", (mean_cell(T, 50, 2.0), mean_cell(C, 50, 1.0))),
    ("regression", (regression_cell(80),)),
    ("quantile", (named_cell((), {"0": 40, "1": 40}),))])
def test_every_table_withholds_network_when_it_pools_one_pooled_only_member(
        build: str, cells: tuple[CellRelease, ...]) -> None:
    assert network_status(build, release("m1", *cells, pooled_only=True)) == WITHHELD_NETWORK
    assert network_status(build, release("m1", *cells)).startswith("ok")  # comparison: true


def test_regression_leaves_a_suppressed_member_out() -> None:
    fits = regression_fits(result(release("m1", hidden()), release("m2", regression_cell(80)),
                                  query=REGRESSION), replicates=20)
    assert fits["m1"] == SUPPRESSED
    network, alone = fits[NETWORK], fits["m2"]
    assert not isinstance(network, str) and not isinstance(alone, str)
    assert network.n == alone.n == 80.0
    assert not math.isnan(network.coefficients[0].estimate)


# -- the d_z flag ----------------------------------------------------------------------------

def change_cell(n: float, var_squares: float, var_sum: float = 1.0) -> CellRelease:
    """A paired change of n values with mean 0.5 and variance 1; noise variances as given."""
    return CellRelease((), {"count": Noisy(n, 1.0), "sum": Noisy(n * 0.5, var_sum),
                            "sum_squares": Noisy(n * 1.25, var_squares)})


def change_query(clip: tuple[float, float] | None, epsilon: float = 0.3) -> Query:
    return Query("paired_change", "assessment", "bridge_total", epsilon, clip=clip)


@pytest.mark.parametrize(("var_squares", "flagged"), [(2000.0, True), (1.0, False)])
def test_the_change_table_flags_a_d_z_whose_sd_is_not_well_determined(
        var_squares: float, flagged: bool) -> None:
    from bridgestat.coordinator.statistics import pooling
    from bridgestat.coordinator.statistics.tables import paired_change_table
    answers = [release(f"m{i}", change_cell(40.0, var_squares)) for i in range(2)]
    frame = paired_change_table(result(*answers, query=change_query((-4.0, 4.0))))
    for member, n, v_q in (("m0", 40.0, var_squares), ("m1", 40.0, var_squares),
                           (NETWORK, 80.0, 2 * var_squares)):
        status = row(frame, member).d_z_status
        flag = pooling.d_z_flag(n, v_q, 4.0)  # the rule, at the clip's half-width
        assert (flag is not None) == flagged
        assert status == (f"flagged: {flag}" if flagged else "ok")
        assert math.isfinite(row(frame, member).d_z)  # flagged, not withheld
    assert row(frame, NETWORK).status == "ok"  # the mean change itself is not flagged


def test_without_a_clip_the_half_width_is_read_off_the_public_noise() -> None:
    from bridgestat.coordinator.statistics import planning
    from bridgestat.coordinator.statistics.tables import change_half_width
    v_s = planning.fixed_point_variance(100.0, 0.3 * planning.HAND_SPLIT.sum)
    answer = release("m0", change_cell(40.0, 1.0, var_sum=v_s))
    assert change_half_width(result(answer, query=change_query(None))) == pytest.approx(100.0)
    assert change_half_width(result(answer, query=change_query((-40.0, 40.0)))) == 40.0


def test_the_half_width_is_read_at_the_sums_own_epsilon_not_the_requested_split() -> None:
    """A node that spent the sum's epsilon at its default split although another was asked
    for (one that predates the split): its reported epsilon, not the request, decides."""
    from dataclasses import replace

    from bridgestat.coordinator.statistics import planning
    from bridgestat.coordinator.statistics.tables import change_half_width
    spent = 0.3 * planning.HAND_SPLIT.sum
    cell = change_cell(40.0, 1.0, var_sum=planning.fixed_point_variance(100.0, spent))
    asked = replace(change_query(None), split=(0.1, 0.8, 0.1))
    guessed = change_half_width(result(release("m0", cell), query=asked))
    assert guessed != pytest.approx(100.0)  # the requested split would mislead it
    told = replace(cell, epsilons={"sum": spent})
    assert change_half_width(result(release("m0", told), query=asked)) == pytest.approx(100.0)
