"""Tests of coordinator/statistics/planning.py: noise variances as the node makes them, predicted SEs as
the coordinator computes them, the inverse, and the optimiser against its closed form."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bridgestat.coordinator.statistics import planning as P
from bridgestat.coordinator.statistics.pooling import (
    MeanStats,
    Noisy,
    pooled_change,
    pooled_mean,
    pooled_proportion,
)
from bridgestat.coordinator.statistics.privacy import rho_to_epsilon
from bridgestat.node import mechanisms

SIZES = (100.0, 300.0, 600.0)
MEAN = P.PlanItem("ratio", P.Kind.MEAN, SIZES, lower=0, upper=2, mean=0.9, sd=0.35)
CHANGE = P.PlanItem("change", P.Kind.MEAN, SIZES, lower=-40, upper=40, mean=5, sd=12)
D_Z = replace(CHANGE, name="d_z", kind=P.Kind.D_Z)
SHARE = P.PlanItem("paid", P.Kind.PROPORTION, SIZES, share=0.3, cells_in=4, cells_out=4)
RD = P.PlanItem("rd", P.Kind.RISK_DIFFERENCE, SIZES, share=0.35, share_other=0.25,
                sizes_other=(50.0, 100.0, 200.0))
SLOPE = P.simple_slope_item("slope", SIZES, (0, 60), (-40, 40), sd_x=17.6, sd_residual=10,
                            slope=0.1)
ITEMS = (MEAN, CHANGE, D_Z, SHARE, RD, SLOPE)
BUDGETS = (P.MemberBudget(3.0, 1.0),) * 3


# ------------------------------------------------------------------ noise as the node makes it


@pytest.mark.parametrize("eps", [0.05, 0.3, 1.0])
def test_noise_variances_equal_the_nodes(eps: float) -> None:
    h = 40.0
    count, total, squares = mechanisms.mean_components(h, eps)
    v_n, v_s, v_q = P._mean_noise(replace(CHANGE), eps, P.HAND_SPLIT)
    assert v_n == pytest.approx(count.noise_variance, rel=1e-9)
    assert v_s == pytest.approx(total.noise_variance, rel=1e-9)
    assert v_q == pytest.approx(squares.noise_variance, rel=1e-9)
    cell = mechanisms.histogram_component(3, eps)
    assert P.count_variance(eps) == pytest.approx(cell.noise_variance, rel=1e-9)


# ------------------------------------------------------------------ predictions = pooling's


def expected_stats(item: P.PlanItem, eps: float) -> list[MeanStats]:
    """Each member's release at values whose pooled mean and s2 are the planning ones, with
    the node's noise variances."""
    count, total, squares = mechanisms.mean_components(item.half_width, eps)
    mu, sd = item.planning_mean - item.centre, item.planning_sd
    n_all = sum(item.sizes)
    v_s = len(item.sizes) * total.noise_variance
    q_all = (n_all - 1) * sd * sd + ((n_all * mu) ** 2 - v_s) / n_all
    return [MeanStats(Noisy(n, count.noise_variance), Noisy(n * mu, total.noise_variance),
                      Noisy(q_all * n / n_all, squares.noise_variance), item.centre)
            for n in item.sizes]


@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_mean_prediction_is_poolings_se_at_expected_values(eps: float) -> None:
    for item in (MEAN, CHANGE):
        got = pooled_mean(expected_stats(item, eps))
        predicted = P.predict(item, [eps] * 3)
        assert (got.se_dp or 0) ** 2 == pytest.approx(predicted.dp, rel=1e-9)
        assert (got.se_sampling or 0) ** 2 == pytest.approx(predicted.sampling, rel=1e-9)


def test_d_z_prediction_is_poolings_se_at_expected_values() -> None:
    got = pooled_change(expected_stats(CHANGE, 0.3)).d_z
    predicted = P.predict(D_Z, [0.3] * 3)
    assert got.se == pytest.approx(predicted.se, rel=5e-3)
    assert (got.se_dp or 0) ** 2 == pytest.approx(predicted.dp, rel=5e-3)


def test_proportion_prediction_is_poolings_se() -> None:
    eps, v = 0.2, P.count_variance(0.2)
    pairs = [(Noisy(n * 0.3, 4 * v), Noisy(n * 0.7, 4 * v)) for n in SIZES]
    got = pooled_proportion(pairs)
    assert got.se == pytest.approx(P.predict(SHARE, [eps] * 3).se, rel=1e-12)


def test_risk_difference_is_the_sum_of_two_proportions() -> None:
    eps = 0.2
    one = replace(SHARE, cells_in=1, cells_out=1)
    a = P.predict(replace(one, share=0.35), [eps] * 3)
    b = P.predict(replace(one, share=0.25, sizes=RD.sizes_other), [eps] * 3)
    assert P.predict(RD, [eps] * 3).variance == pytest.approx(a.variance + b.variance)


def test_mde_is_2_8_standard_errors() -> None:
    pred = P.predict(CHANGE, [0.3] * 3)
    assert pred.mde / pred.se == pytest.approx(1.959964 + 0.841621, rel=1e-6)


def test_random_effects_with_no_dp_and_no_tau_is_fixed_effect() -> None:
    item = replace(CHANGE, pooling=P.Pooling.RANDOM, tau2=0.0)
    pred = P.predict(item, [1e9] * 3)
    assert pred.variance == pytest.approx(12**2 / sum(SIZES), rel=1e-9)
    with_tau = P.predict(replace(item, tau2=4.0), [1e9] * 3)
    expected = 1 / sum(1 / (144 / n + 4.0) for n in SIZES)
    assert with_tau.variance == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------ the inverse


@pytest.mark.parametrize("item", [MEAN, CHANGE, D_Z, SHARE, RD], ids=lambda i: i.name)
def test_loss_for_se_round_trips(item: P.PlanItem) -> None:
    target = 1.2 * P.predict(item, [1e9] * 3).se
    losses = P.loss_for_se(item, target)
    assert P.predict(item, losses).se == pytest.approx(target, rel=1e-8)
    profile = (1.0, 2.0, 3.0)
    uneven = P.loss_for_mde(item, target * P.MDE_FACTOR, profile)
    assert uneven[1] / uneven[0] == pytest.approx(2.0)
    assert P.predict(item, uneven).mde == pytest.approx(target * P.MDE_FACTOR, rel=1e-8)


def test_unreachable_target_is_refused_by_name() -> None:
    floor = P.predict(CHANGE, [1e9] * 3).se
    with pytest.raises(P.PlanningError, match="'change': target SE .* more participants"):
        P.loss_for_se(CHANGE, 0.99 * floor)


# ------------------------------------------------------------------ the optimiser


def test_best_split_is_the_cube_root_rule() -> None:
    split = P.best_split(MEAN)
    r, h, sd = (0.9 - 1.0) / 1.0, 1.0, 0.35
    assert split.count / split.sum == pytest.approx((r * r) ** (1 / 3), rel=1e-9)
    lam = 1 / (4 * sd * sd)
    assert split.sum_squares / split.sum == pytest.approx((lam * h * h) ** (1 / 3), rel=1e-9)


def test_closed_form_is_the_cube_root_rule_without_caps() -> None:
    items = (MEAN, CHANGE, SHARE)
    budgets = (P.MemberBudget(2.0, 10.0),) * 3
    allocation = P.closed_form(items, budgets)
    coef = [it.weight / it.scale**2 * P._coefficient(it, 0, None) for it in items]
    roots = [c ** (1 / 3) for c in coef]
    for it, root in zip(items, roots, strict=True):
        assert allocation.losses[it.name][0] == pytest.approx(2.0 * root / sum(roots), rel=1e-9)


def test_slsqp_from_an_equal_split_reaches_the_closed_form() -> None:
    """Pooled sums: the problem is convex, so SLSQP from anywhere lands on the closed form."""
    items = (MEAN, CHANGE, D_Z, SHARE, RD)
    budgets = tuple(P.MemberBudget(e, 1.0) for e in (1.5, 2.0, 2.5))
    exact = P.closed_form(items, budgets)
    equal = P.Allocation({i.name: tuple(b.epsilon / len(items) for b in budgets)
                          for i in items}, exact.splits)
    found = P.numerical(items, budgets, equal)
    for it in items:
        assert found.losses[it.name] == pytest.approx(exact.losses[it.name], rel=1e-3)
    assert P.objective(items, found) == pytest.approx(P.objective(items, exact), rel=1e-5)


def test_caps_are_water_filled() -> None:
    budgets = (P.MemberBudget(3.0, 0.6),) * 3
    allocation = P.closed_form((MEAN, CHANGE, SHARE, RD), budgets)
    for k in range(3):
        losses = [allocation.losses[n][k] for n in ("ratio", "change", "paid", "rd")]
        assert max(losses) <= 0.6 * (1 + 1e-12)
        assert sum(losses) == pytest.approx(min(3.0, 4 * 0.6))
    assert P.water_fill([8.0, 1.0, 1.0], 3.0, [1.5, 5, 5], 1 / 3) == pytest.approx((1.5, 0.75, 0.75))


def test_rho_analyses_spend_through_opendps_conversion() -> None:
    allocation = P.closed_form(ITEMS, BUDGETS)
    for k, budget in enumerate(BUDGETS):
        spent = P.member_spend(ITEMS, allocation, k, budget.delta)
        assert spent == pytest.approx(budget.epsilon, rel=1e-6)
        assert rho_to_epsilon(allocation.losses["slope"][k], budget.delta) <= budget.cap


def test_optimum_beats_the_hand_split_and_every_perturbation() -> None:
    items = (MEAN, CHANGE, D_Z, SHARE, RD)
    budgets = (P.MemberBudget(1.0, 1.0),) * 3
    best = P.closed_form(items, budgets)
    hand = P.Allocation({i.name: (0.2,) * 3 for i in items})
    assert P.objective(items, best) < P.objective(items, hand)
    rng = np.random.default_rng(3)
    for _ in range(20):  # move loss between two analyses at one member
        a, b = rng.choice(len(items), 2, replace=False)
        moved = dict(best.losses)
        shift = 0.02 * moved[items[a].name][0]
        moved[items[a].name] = (moved[items[a].name][0] - shift, *moved[items[a].name][1:])
        moved[items[b].name] = (moved[items[b].name][0] + shift, *moved[items[b].name][1:])
        assert P.objective(items, best) <= P.objective(items, replace(best, losses=moved)) \
            * (1 + 1e-6)


def test_random_effects_are_refined_numerically() -> None:
    re = replace(CHANGE, name="re", pooling=P.Pooling.RANDOM, tau2=4.0)
    items = (*ITEMS, re)
    closed = P.closed_form(items, BUDGETS)
    best = P.optimise_weighted(items, BUDGETS)
    assert P.objective(items, best) <= P.objective(items, closed)
    for k, budget in enumerate(BUDGETS):
        assert P.member_spend(items, best, k, budget.delta) <= budget.epsilon * (1 + 1e-6)


# ------------------------------------------------------------------ the SD constraint


def test_calibrated_plan_holds_every_pooled_mean_at_the_sd_target() -> None:
    items = (*ITEMS, replace(CHANGE, name="re", pooling=P.Pooling.RANDOM, tau2=4.0))
    chosen, best = P.calibrate(items, lambda its: P.optimise_weighted(its, BUDGETS))
    assert best == P.optimise(items, BUDGETS)
    binding = 0
    for item in chosen:
        if P.constrained(item):
            share = P.sd_noise_share(item, best.losses[item.name],
                                     best.splits_of(item.name, item.members))
            assert share <= P.SD_SHARE_TARGET * (1 + P.CALIBRATION_TOLERANCE)
            if item.sd_weight > P.SD_WEIGHT_RANGE[0]:  # the constraint binds: at the target
                binding += 1
                assert share == pytest.approx(P.SD_SHARE_TARGET, rel=P.CALIBRATION_TOLERANCE)
        else:
            assert item.sd_weight == 1.0
    assert binding >= 2  # the two means; d_z's own variance already holds its s^2 below
    for k, budget in enumerate(BUDGETS):
        assert P.member_spend(items, best, k, budget.delta) <= budget.epsilon * (1 + 1e-6)
    # the estimators are better than at the fixed SD weight, which over-determines the SDs
    fixed = P.optimise_weighted(items, BUDGETS)
    assert P.weighted_variance(items, best) < P.weighted_variance(items, fixed)


def _direct_constrained_optimum(items: tuple[P.PlanItem, ...], budget: float) -> float:
    """SLSQP over every component's loss at every member (so every split is free): minimise
    the estimators' weighted variance with each pooled mean's SD share <= the target."""
    from scipy import optimize
    members = items[0].members
    means = [i for i in items if P.constrained(i)]
    layout = [(i, j) for i in items for j in range(3 if i in means else 1)]

    def allocation(x: np.ndarray) -> P.Allocation:
        x = x.reshape(members, len(layout))
        losses: dict[str, tuple[float, ...]] = {}
        splits: dict[str, tuple[P.Split, ...]] = {}
        for item in items:
            cols = [c for c, (i, _) in enumerate(layout) if i is item]
            per = [float(sum(x[k, cols])) for k in range(members)]
            losses[item.name] = tuple(per)
            if item in means:
                splits[item.name] = tuple(P.Split(*(x[k, c] / per[k] for c in cols))
                                          for k in range(members))
        return P.Allocation(losses, splits)

    x0 = np.full(members * len(layout), budget / len(layout))
    constraints = [{"type": "ineq", "fun": lambda x, i=i: P.SD_SHARE_TARGET - P.sd_noise_share(
        i, allocation(x).losses[i.name], allocation(x).splits[i.name])} for i in means]
    constraints += [{"type": "ineq", "fun": lambda x, k=k: budget - float(
        np.sum(x.reshape(members, len(layout))[k]))} for k in range(members)]
    found = optimize.minimize(lambda x: P.weighted_variance(items, allocation(x)), x0,
                              method="SLSQP", bounds=[(1e-4, budget)] * len(x0),
                              constraints=constraints, options={"maxiter": 1000, "ftol": 1e-15})
    assert found.success, found.message
    return P.weighted_variance(items, allocation(found.x))


def test_calibration_reaches_the_constrained_optimum() -> None:
    """The multipliers found by `calibrate` give the optimum of the constrained problem, as a
    general solver finds it with every component's loss at every member free."""
    items = (MEAN, CHANGE, SHARE)
    budgets = (P.MemberBudget(1.5, 10.0),) * 3
    best = P.optimise(items, budgets)
    direct = _direct_constrained_optimum(items, 1.5)
    assert P.weighted_variance(items, best) == pytest.approx(direct, rel=5e-3)


def test_a_mean_whose_sd_is_determined_anyway_gets_no_extra_loss() -> None:
    """A large network: at a small weight the SD share is already under the target, so the
    constraint does not bind and the weight falls to the floor."""
    big = replace(MEAN, sizes=(1e6, 1e6, 1e6))
    chosen, _ = P.calibrate((big, SHARE), lambda its: P.closed_form(its, BUDGETS))
    assert chosen[0].sd_weight == P.SD_WEIGHT_RANGE[0]


@pytest.mark.parametrize(("change", "message"), [
    ({"sizes": ()}, "'change': sizes must be"),
    ({"sizes": (100.0, 0.5)}, "'change': sizes must be"),
    ({"lower": 1.0, "upper": 1.0}, "'change': clip bounds"),
    ({"weight": -1.0}, "'change': weight"),
    ({"kind": P.Kind.RISK_DIFFERENCE}, "'change': a risk difference needs sizes_other"),
    ({"kind": P.Kind.GAUSSIAN}, "'change': a rho analysis needs dp_coefficients"),
])
def test_bad_items_are_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(P.PlanningError, match=message):
        replace(CHANGE, **change)  # type: ignore[arg-type]


def test_mismatched_budgets_and_losses_are_named() -> None:
    with pytest.raises(P.PlanningError, match="'change' has 3 member sizes but there are 2"):
        P.closed_form((CHANGE,), BUDGETS[:2])
    with pytest.raises(P.PlanningError, match="'change': 2 losses for 3 members"):
        P.predict(CHANGE, [0.1, 0.1])
    with pytest.raises(P.PlanningError, match="every loss must be > 0"):
        P.predict(CHANGE, [0.1, 0.0, 0.1])
    assert math.isfinite(P.predict(SLOPE, [0.1] * 3).se)
