"""One loss per analysis at every member (what a fanned-out query carries), the count's
floor in a mean's split, and the planned SD noise share."""

from __future__ import annotations

import math

import pytest

from bridgestat.coordinator.statistics import planning as P

SIZES = (600.0, 150.0, 300.0)
ITEMS = [
    P.PlanItem("mean", P.Kind.MEAN, SIZES, 0, 100, mean=55, sd=15),
    P.PlanItem("change", P.Kind.MEAN, SIZES, -40, 40, mean=2, sd=12),
    P.PlanItem("share", P.Kind.PROPORTION, SIZES, share=0.3, cells_in=2, cells_out=5),
    P.simple_slope_item("slope", SIZES, (0, 60), (-40, 40), sd_x=15, sd_residual=12),
]
BUDGETS = [P.MemberBudget(3.0, 2.0), P.MemberBudget(2.0, 2.0), P.MemberBudget(4.0, 1.5)]


def test_uniform_sends_one_loss_per_analysis_within_the_tightest_member() -> None:
    same = P.uniform(ITEMS, BUDGETS)
    for item in ITEMS:
        assert len(set(same.losses[item.name])) == 1
        assert same.losses[item.name][0] <= 1.5 * (1 + 1e-12)  # the tightest cap
    assert all(P.member_spend(ITEMS, same, k, 1e-6) <= 2.0 * (1 + 1e-9) for k in range(3))
    assert max(P.member_spend(ITEMS, same, k, 1e-6) for k in range(3)) == pytest.approx(2.0,
                                                                                         rel=1e-6)
    # per-member losses can only do better; any other uniform allocation of the same spend
    # (here: the pure loss shared equally) can only do worse
    assert P.objective(ITEMS, P.closed_form(ITEMS, BUDGETS)) <= P.objective(ITEMS, same)
    pure = [i for i in ITEMS if not i.rho]
    left = sum(same.losses[i.name][0] for i in pure)
    equal = P.Allocation({**same.losses, **{i.name: (left / len(pure),) * 3 for i in pure}},
                         same.splits)
    assert P.objective(ITEMS, same) < P.objective(ITEMS, equal)


def test_the_count_keeps_its_floor_and_the_rest_follows_the_cube_roots() -> None:
    centred = P.PlanItem("c", P.Kind.MEAN, SIZES, -40, 40, mean=0)  # r = 0: the count ~0
    split = P.best_split(centred)
    assert split.count == pytest.approx(P.MIN_COUNT_SHARE)
    _, c_s, c_q = (c ** (1 / 3) for c in P._components(centred, 1.0))
    assert split.sum / split.sum_squares == pytest.approx(c_s / c_q)
    off = P.PlanItem("o", P.Kind.MEAN, SIZES, 0, 100, mean=90, sd=5)  # far from the centre
    assert P.best_split(off).count > P.MIN_COUNT_SHARE


def test_without_a_planning_mean_the_count_is_weighted_as_if_the_mean_could_be_anywhere() -> None:
    unknown = P.PlanItem("u", P.Kind.MEAN, SIZES, -40, 40)  # no planning mean given
    c_n, c_s, c_q = P._components(unknown, 1.0)
    assert c_n / c_s == pytest.approx(1 / 3)  # E[(m - c)^2] = h^2 / 3 against h^2
    roots = [c ** (1 / 3) for c in (c_n, c_s, c_q)]
    assert P.best_split(unknown).count == pytest.approx(roots[0] / sum(roots))
    assert P.best_split(unknown).count > 0.15  # near the node's default 0.2, far from 5 %


def test_sd_noise_share_is_the_pooled_squares_noise_against_the_planning_variance() -> None:
    item = ITEMS[1]
    losses = (0.5, 0.3, 0.4)
    v_q = [P.fixed_point_variance(40.0**2, e * P.HAND_SPLIT.sum_squares) for e in losses]
    expected = math.sqrt(sum(v_q)) / sum(SIZES) / 12.0**2
    assert P.sd_noise_share(item, losses) == pytest.approx(expected, rel=1e-12)
