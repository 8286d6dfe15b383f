"""DP measurements: OpenDP's maps bound the charge; noise variance matches its metadata."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridgestat.node import mechanisms
from bridgestat.node.planner import Policy, compile_query
from bridgestat.node.query import INTAKE, Occasion, QuerySpec, Statistic, Term
from bridgestat.node.schema import load_schema

SCHEMA = load_schema()
POLICY = Policy(max_epsilon_per_query=5.0)
QUERIES = [
    QuerySpec(Statistic.COUNT, "participant", "", 0.7),
    QuerySpec(Statistic.MEAN, "participant", "months_in_program", 1.0),
    QuerySpec(Statistic.MEAN, "assessment", "total_debt", 0.5, occasion=INTAKE),
    QuerySpec(Statistic.HISTOGRAM, "participant", "household_type", 0.3),
    QuerySpec(Statistic.HISTOGRAM, "assessment", "income_to_norm_ratio", 0.3,
              bin_edges=(1.0, 1.2)),
    QuerySpec(Statistic.PAIRED_CHANGE, "assessment", "bridge_total", 2.0,
              occasion=Occasion(12, 9, 15)),
    QuerySpec(Statistic.MEAN, "participant", "total_sessions", 0.9, group_by=("arm", "gender")),
    QuerySpec(Statistic.HISTOGRAM, "assessment", "work_status", 0.4,
              occasion=Occasion(12, 9, 15), baseline=INTAKE),
    QuerySpec(Statistic.QUANTILE, "assessment", "total_debt", 0.6, quantile=0.5,
              bin_edges=tuple(float(x) for x in range(0, 100001, 500))),
]
REGRESSION = QuerySpec(
    Statistic.CROSS_PRODUCTS, "assessment", "", 0.0, rho=0.05,
    terms=(Term("total_sessions"), Term("arm", category="comparison"),
           Term("bridge_total", occasion=Occasion(12, 9, 15), baseline=INTAKE,
                clip=(-40.0, 40.0))))


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.statistic.value}-{q.column}")
def test_every_measurement_map_is_within_the_charge(query: QuerySpec) -> None:
    plan = compile_query(query, SCHEMA, POLICY)
    for component in plan.components:
        assert component.measurement.map(1) <= component.epsilon
    assert float(plan.loss.epsilon) <= query.epsilon * (1 + 1e-12)
    assert plan.loss.rho == 0
    assert sum(c.measurement.map(1) for c in plan.components) <= \
        float(plan.loss.epsilon) * (1 + 1e-15)


def test_regression_entries_are_zcdp_and_their_rho_adds_to_the_charge() -> None:
    plan = compile_query(REGRESSION, SCHEMA, Policy(max_epsilon_per_query=5.0))
    assert len(plan.components) == 10  # (3 terms + 1)(3 terms + 2) / 2 entries of U'U
    for component in plan.components:
        assert str(component.measurement.output_measure).startswith("ZeroConcentrated")
        # the measurement takes a sum of integers in [-F, F]: d_in = F per added row
        assert component.sum_bound == mechanisms.FIXED_POINT
        assert component.measurement.map(mechanisms.FIXED_POINT) <= component.rho
        # discrete Gaussian: rho = F^2 / (2 sigma^2) per entry, rho split evenly
        sigma = mechanisms.FIXED_POINT / math.sqrt(2 * REGRESSION.rho / 10)
        assert component.scale == pytest.approx(sigma, rel=1e-9)
    assert plan.loss.epsilon == 0
    assert float(plan.loss.rho) == pytest.approx(REGRESSION.rho, rel=1e-12)


def test_empirical_noise_variance_of_a_gaussian_entry() -> None:
    """2,000 releases; Gaussian kurtosis 3, so the relative SE of s^2 is sqrt(2 / n)."""
    component = mechanisms.gaussian_sum_component("zz[0,1]", rho=0.01)
    data = np.full(40, mechanisms.FIXED_POINT // 2, dtype=np.int64)
    exact = float(data.sum()) * component.unit
    draws = np.array([float(component.release(data)) * component.unit
                      for _ in range(2000)]) - exact
    assert abs(draws.var(ddof=1) / component.noise_variance - 1) < 4 * math.sqrt(2 / 2000)


def test_bounded_sum_clamps_and_one_row_moves_it_by_at_most_the_bound() -> None:
    bound = mechanisms.FIXED_POINT
    data = np.array([bound + 5, -3 * bound, 7, bound], dtype=np.int64)
    assert mechanisms.bounded_sum(data, bound) == bound - bound + 7 + bound
    for extra in (-10 * bound, -bound, 0, 12, 3 * bound):
        grown = np.append(data, np.int64(extra))
        shift = mechanisms.bounded_sum(grown, bound) - mechanisms.bounded_sum(data, bound)
        assert abs(shift) <= bound
    assert mechanisms.bounded_sum(np.array([], dtype=np.int64), bound) == 0
    with pytest.raises(ValueError, match="overflow"):
        # a view of 2^40 rows without the memory: the check comes before any pass over the data
        mechanisms.bounded_sum(np.broadcast_to(np.int64(0), (2**40,)), 2**22)


def test_noise_metadata_follows_the_discrete_laplace_formula() -> None:
    half = 50.0
    count, total, squares = mechanisms.mean_components(half, 1.0)
    for component, sensitivity in ((count, 1.0), (total, mechanisms.FIXED_POINT),
                                   (squares, mechanisms.FIXED_POINT)):
        b = component.scale
        assert b == pytest.approx(sensitivity / component.epsilon, rel=1e-9)
        q = math.exp(-1 / b)
        assert component.noise_variance == pytest.approx(2 * q / (1 - q) ** 2 * component.unit**2,
                                                         rel=1e-9)
    # in the variable's own units the sum's noise scale is H / eps
    assert total.noise_scale == pytest.approx(half / total.epsilon, rel=1e-9)
    assert squares.noise_scale == pytest.approx(half**2 / squares.epsilon, rel=1e-9)


@pytest.mark.parametrize("epsilon", [0.1, 1.0])
def test_empirical_noise_variance_matches_the_formula(epsilon: float) -> None:
    """2,000 releases of the same count: sample variance within 4 SE of the formula.

    For Laplace-like noise the kurtosis is 6, so Var(s^2) ~= 5 sigma^4 / n and the
    relative SE of s^2 is sqrt(5 / n) = 0.05 at n = 2,000; 4 SE = 20 %.
    """
    component = mechanisms.count_component(epsilon)
    data = np.zeros(100, dtype=np.int64)
    draws = np.array([component.release(data) for _ in range(2000)], dtype=float) - 100
    expected = component.noise_variance
    assert abs(draws.var(ddof=1) / expected - 1) < 4 * math.sqrt(5 / 2000)
    assert abs(draws.mean()) < 4 * math.sqrt(expected / 2000)


def test_empirical_noise_variance_of_a_released_sum() -> None:
    component = mechanisms.centred_sum_component(half_width=50.0, epsilon=0.5)
    z, _ = mechanisms.fixed_point(np.full(50, 70.0), 0.0, 100.0)
    exact = float(z.sum()) * component.unit
    draws = np.array([float(component.release(z)) * component.unit for _ in range(2000)]) - exact
    assert abs(draws.var(ddof=1) / component.noise_variance - 1) < 4 * math.sqrt(5 / 2000)


def test_fixed_point_clips_to_public_bounds() -> None:
    z, w = mechanisms.fixed_point(np.array([-5.0, 0.0, 50.0, 100.0, 250.0]), 0.0, 100.0)
    f = mechanisms.FIXED_POINT
    assert z.tolist() == [-f, -f, 0, f, f]
    assert w.tolist() == [f, f, 0, f, f]
