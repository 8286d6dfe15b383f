"""The node's newer statistics over real gRPC: transitions, quantile, cross products, refusals.

Every expected value is computed here from the member's CSV files (the ones the node under
test serves), independently of the node's own code: per participant the assessment with
months_since_intake in the window nearest to the target month (the earlier on a tie), the
baseline being the intake assessment (months_since_intake == 0).

DP noise comes from OpenSSL through OpenDP and cannot be seeded, so each release is checked
against its truth with a tail tolerance, as in tests/integration/test_end_to_end.py: a
per-check false-alarm rate ALPHA = 2.5e-6 and, for Laplace noise, K = ln(1/ALPHA) / sqrt(2)
noise standard deviations (P(|X| > k sd) = exp(-k sqrt 2) for Laplace), taken from the
release's own noise_variance. The node's noise is *discrete* Laplace, whose tail in units of
its (smaller) standard deviation is slightly heavier: at scale 1 (epsilon 1, as used here)
P(|X| > K sd) = 2 q^13 / (1 + q) = 3.3e-6 with q = e^-1. Gaussian entries use the normal
tail at the same ALPHA, and the quantile the exponential mechanism's utility bound at
beta = ALPHA. With about 80 checks the file fails by chance with probability under 3e-4.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import norm

from bridgestat.node.loss import rho_to_epsilon
from bridgestat.node.mechanisms import FIXED_POINT
from bridgestat.v1 import node_service_pb2 as pb

from .conftest import RunningNode, start_node

ALPHA = 2.5e-6
K_LAPLACE = math.log(1 / ALPHA) / math.sqrt(2)  # about 9.1 noise SDs
K_GAUSS = float(norm.isf(ALPHA / 2))  # about 4.85 noise SDs
TOTAL_EPSILON = 100.0
MAX_PER_QUERY = 2.0  # large enough for the quantile's epsilon 2.0 and rho 0.05 (eps ~1.47)

TWELVE = pb.Occasion(target_month=12, window_lower=9, window_upper=15)
INTAKE = pb.Occasion()  # target 0, window [0, 0]
CANDIDATES = [float(x) for x in range(0, 100_001, 500)]
RHO = 0.05
TERMS = [
    pb.Term(column="total_sessions", clip=pb.Bounds(lower=0, upper=60)),
    pb.Term(column="arm", category="comparison"),
    pb.Term(column="bridge_total", occasion=TWELVE, baseline=INTAKE,
            clip=pb.Bounds(lower=-40, upper=40)),
]
TERM_BOUNDS = [(0.0, 60.0), (0.0, 1.0), (-40.0, 40.0)]
MISSING = "(missing)"


# --------------------------------------------------------------------------- the member's data


@dataclass(frozen=True)
class Member:
    """The member's raw tables as text ("" = missing), read straight from its CSV files."""

    participant: pd.DataFrame  # indexed by participant_id
    assessment: pd.DataFrame
    coaching_contact: pd.DataFrame

    @classmethod
    def read(cls, node: RunningNode) -> Member:
        config_path = node.root / node.engine.node_id / "node.yaml"
        config = yaml.safe_load(config_path.read_text())
        folder = config_path.parent / config["data"]["path"]

        def table(name: str) -> pd.DataFrame:
            return pd.read_csv(folder / f"{name}.csv", dtype=str, keep_default_na=False)

        assessment = table("assessment")
        assessment["_month"] = assessment["months_since_intake"].map(int)
        return cls(table("participant").set_index("participant_id"), assessment,
                   table("coaching_contact"))

    def occasion(self, occ: pb.Occasion) -> pd.DataFrame:
        """Per participant: the assessment in the window nearest the target, earlier on a tie."""
        rows = self.assessment
        rows = rows[(rows["_month"] >= occ.window_lower) & (rows["_month"] <= occ.window_upper)]
        rows = rows.assign(_distance=(rows["_month"] - occ.target_month).abs())
        rows = rows.sort_values(["_distance", "_month"], kind="stable")
        first = rows.groupby("participant_id", sort=False).head(1).set_index("participant_id")
        return first[first.index.isin(self.participant.index)]

    def pair(self, column: str) -> tuple[pd.Series, pd.Series]:
        """(intake value, 12-month value) per participant with an intake assessment."""
        base = self.occasion(INTAKE)
        follow = self.occasion(TWELVE)[column].reindex(base.index)
        return base[column], follow

    def total_sessions(self) -> pd.Series:
        sessions = self.coaching_contact["n_sessions"].map(_number).fillna(0.0)
        per_person = sessions.groupby(self.coaching_contact["participant_id"]).sum()
        return per_person.reindex(self.participant.index, fill_value=0.0)


def _number(text: object) -> float:
    return float(text) if isinstance(text, str) and text.strip() else math.nan


def _numbers(series: pd.Series) -> pd.Series:
    return series.map(_number).astype(np.float64)


def change_12_months(member: Member, column: str) -> pd.Series:
    """Follow-up minus intake; NaN without a 12-month assessment or a value."""
    before, after = member.pair(column)
    return _numbers(after) - _numbers(before)


# --------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(scope="module")
def stats_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running, server, channel = start_node(tmp_path_factory.mktemp("statistics"),
                                          total_epsilon=TOTAL_EPSILON,
                                          max_per_query=MAX_PER_QUERY)
    yield running
    channel.close()
    server.stop(grace=None).wait()


@pytest.fixture
def fresh_node(tmp_path: Path) -> Iterator[RunningNode]:
    """A node that has spent nothing, for exact budget checks."""
    running, server, channel = start_node(tmp_path, total_epsilon=TOTAL_EPSILON,
                                          max_per_query=MAX_PER_QUERY)
    yield running
    channel.close()
    server.stop(grace=None).wait()


@pytest.fixture(scope="module")
def member(stats_node: RunningNode) -> Member:
    return Member.read(stats_node)


def _run(node: RunningNode, key: str, query: pb.Query) -> pb.RunQueryResponse:
    response: pb.RunQueryResponse = node.stub.RunQuery(
        pb.RunQueryRequest(idempotency_key=key, query=query))
    return response


def _budget(node: RunningNode) -> pb.Budget:
    budget: pb.Budget = node.stub.GetNodeInfo(pb.GetNodeInfoRequest()).budget
    return budget


def _schema_column(node: RunningNode, table: str, column: str) -> pb.Column:
    schema = node.stub.GetNodeInfo(pb.GetNodeInfoRequest()).schema
    found: pb.Column = next(c for t in schema.tables if t.name == table
                            for c in t.columns if c.name == column)
    return found


def transition(column: str, epsilon: float = 1.0, **fields: object) -> pb.Query:
    return pb.Query(statistic=pb.STATISTIC_HISTOGRAM, table="assessment", column=column,
                    occasion=TWELVE, baseline=INTAKE, loss=pb.PrivacyLoss(epsilon=epsilon),
                    **fields)


def quantile(epsilon: float = 2.0, **fields: object) -> pb.Query:
    base: dict[str, object] = {"statistic": pb.STATISTIC_QUANTILE, "table": "assessment",
                               "column": "total_debt", "quantile": 0.5,
                               "bin_edges": CANDIDATES, "loss": pb.PrivacyLoss(epsilon=epsilon)}
    base.update(fields)
    return pb.Query(**base)


def cross_products(terms: list[pb.Term] | None = None, **fields: object) -> pb.Query:
    base: dict[str, object] = {"statistic": pb.STATISTIC_CROSS_PRODUCTS, "table": "assessment",
                               "terms": TERMS if terms is None else terms,
                               "loss": pb.PrivacyLoss(rho=RHO)}
    base.update(fields)
    return pb.Query(**base)


def _laplace_tolerance(value: pb.NoisyValue) -> float:
    assert value.noise_variance > 0, value
    return K_LAPLACE * math.sqrt(value.noise_variance)


def _assert_histogram_matches(response: pb.RunQueryResponse, truth: dict[str, int],
                              epsilon: float) -> None:
    """One epsilon buys the whole table; every cell within the Laplace tail of its truth."""
    assert len(response.release.cells) == 1
    values = response.release.cells[0].values
    assert [v.name for v in values] == list(truth)
    charged = response.charged.epsilon
    assert charged <= epsilon and charged == pytest.approx(epsilon, rel=1e-9)
    assert response.charged.rho == 0.0
    for value in values:
        assert value.epsilon == charged, value  # the table's one measurement, not per cell
        assert abs(value.value - truth[value.name]) <= _laplace_tolerance(value), \
            (value.name, value.value, truth[value.name], value.noise_variance)


# --------------------------------------------------------------------------- transitions


def test_categorical_transition_histogram_recovers_every_transition(
        stats_node: RunningNode, member: Member) -> None:
    categories = list(_schema_column(stats_node, "assessment", "work_status").categories)
    assert len(categories) == 7
    before, after = member.pair("work_status")
    truth = {f"{a} -> {b}": 0 for a in categories for b in categories} | {MISSING: 0}
    for b, a in zip(before, after, strict=True):
        measured = isinstance(a, str) and a != "" and b != ""
        truth[f"{b} -> {a}" if measured else MISSING] += 1
    assert sum(truth.values()) == len(before) and truth[MISSING] > 0  # some lack month 12

    spent_before = _budget(stats_node).spent.epsilon
    query = transition("work_status")
    response = _run(stats_node, "transition-work", query)
    assert response.query == query and not response.replayed
    _assert_histogram_matches(response, truth, epsilon=1.0)
    assert len(response.release.cells[0].values) == 7 * 7 + 1
    assert "discrete Laplace" in response.release.mechanism
    assert response.budget.spent.epsilon == pytest.approx(
        spent_before + response.charged.epsilon, rel=1e-12)


def test_numeric_transition_without_edges_counts_the_direction_of_change(
        stats_node: RunningNode, member: Member) -> None:
    change = change_12_months(member, "bridge_total")
    truth = {"decreased": int((change < 0).sum()), "unchanged": int((change == 0).sum()),
             "increased": int((change > 0).sum()), MISSING: int(change.isna().sum())}
    response = _run(stats_node, "transition-sign", transition("bridge_total"))
    _assert_histogram_matches(response, truth, epsilon=1.0)


def test_numeric_transition_with_edges_bins_the_change(
        stats_node: RunningNode, member: Member) -> None:
    column = _schema_column(stats_node, "assessment", "bridge_total")
    width = column.upper - column.lower  # the change lies in [-(U - L), U - L]
    edges = [-10.0, 0.0, 10.0]
    change = change_12_months(member, "bridge_total")
    measured = change.dropna()
    bins = list(itertools.pairwise([-width, *edges, width]))  # the last bin is closed
    labels = [f"[{a:g}, {b:g})" for a, b in bins[:-1]] + ["[{:g}, {:g}]".format(*bins[-1])]
    assert labels == ["[-100, -10)", "[-10, 0)", "[0, 10)", "[10, 100]"]
    counts = [int(((measured >= a) & ((measured < b) | (i == len(bins) - 1))).sum())
              for i, (a, b) in enumerate(bins)]
    truth = dict(zip(labels, counts, strict=True)) | {MISSING: int(change.isna().sum())}
    response = _run(stats_node, "transition-bins", transition("bridge_total", bin_edges=edges))
    _assert_histogram_matches(response, truth, epsilon=1.0)


# --------------------------------------------------------------------------- quantile


def test_quantile_is_a_candidate_near_the_true_median(
        stats_node: RunningNode, member: Member) -> None:
    """Exponential mechanism (McSherry-Talwar): with utility -err(c), err(c) =
    |(1 - q) #(x < c) - q #(x > c)| of sensitivity Delta = max(q, 1 - q), the candidate
    released at epsilon has P(err > OPT + (2 Delta / eps) ln(m / beta)) <= beta over m
    candidates, OPT being the best candidate's err (candidates are discrete). (OpenDP's
    make_private_quantile scores exactly this err, scaled by an integer.) With E = OPT + that
    bound and err = |#(x < c) + q #(x = c) - q n|: #(x < c) <= q n + E and
    #(x <= c) >= q n - E, i.e. the share of data below the release is q +- E / n.
    """
    q, epsilon = 0.5, 2.0
    debt = _numbers(member.occasion(INTAKE)["total_debt"]).dropna().to_numpy()
    n = len(debt)
    data = np.sort(debt)
    below = np.searchsorted(data, CANDIDATES, side="left")
    at_or_below = np.searchsorted(data, CANDIDATES, side="right")
    err = np.abs((1 - q) * below - q * (n - at_or_below))
    delta_u = max(q, 1 - q)
    bound = float(err.min()) + 2 * delta_u / epsilon * math.log(len(CANDIDATES) / ALPHA)

    query = quantile(epsilon)
    response = _run(stats_node, "median-debt", query)
    assert response.query == query
    (value,) = response.release.cells[0].values
    assert value.name == "quantile"
    assert value.value in CANDIDATES
    assert math.isnan(value.noise_variance)
    assert "exponential mechanism" in response.release.mechanism
    charged = response.charged.epsilon
    assert charged <= epsilon and charged == pytest.approx(epsilon, rel=1e-9)
    assert value.epsilon == charged and response.charged.rho == 0.0
    released_below = int(np.searchsorted(data, value.value, side="left"))
    released_at_or_below = int(np.searchsorted(data, value.value, side="right"))
    assert released_below / n <= q + bound / n, (value.value, np.median(data), bound)
    assert released_at_or_below / n >= q - bound / n, (value.value, np.median(data), bound)
    # the bound is a few candidate steps here (about 9 of some 380 values)
    assert bound / n < 0.05


def test_quantile_replay_keeps_its_nan_variance(stats_node: RunningNode) -> None:
    first = _run(stats_node, "median-replay", quantile(0.5))
    spent = _budget(stats_node).spent.epsilon
    second = _run(stats_node, "median-replay", quantile(0.5))
    assert second.replayed and not first.replayed
    assert second.release.cells[0].values[0].value == first.release.cells[0].values[0].value
    assert math.isnan(second.release.cells[0].values[0].noise_variance)
    assert second.charged == first.charged
    assert _budget(stats_node).spent.epsilon == spent


# --------------------------------------------------------------------------- cross products


def exact_cross_products(member: Member, bounds: list[tuple[float, float]] = TERM_BOUNDS
                         ) -> tuple[dict[str, float], int]:
    """sum u_i u_j over complete cases, u = [1, (clip(x_t) - c_t) / H_t ...], for the terms
    total_sessions, arm == comparison and the 12-month bridge_total change; and their n."""
    participants = member.occasion(INTAKE).index  # the query's table at its (intake) occasion
    sessions = member.total_sessions().reindex(participants)
    arm = member.participant["arm"].reindex(participants)
    comparison = (arm == "comparison").astype(np.float64).where(arm != "")
    change = change_12_months(member, "bridge_total").reindex(participants)
    raw = np.column_stack([sessions, comparison, change]).astype(np.float64)
    complete = raw[~np.isnan(raw).any(axis=1)]
    lower, upper = np.array(bounds).T
    u = (np.clip(complete, lower, upper) - (lower + upper) / 2) / ((upper - lower) / 2)
    u = np.column_stack([np.ones(len(u)), u])
    gram = u.T @ u
    m = gram.shape[0]
    return {f"zz[{i},{j}]": float(gram[i, j]) for i in range(m) for j in range(i, m)}, len(u)


def _assert_cross_products_match(response: pb.RunQueryResponse, truth: dict[str, float],
                                 n: int, rho: float = RHO) -> None:
    assert len(response.release.cells) == 1
    values = response.release.cells[0].values
    assert [v.name for v in values] == list(truth)  # i <= j, row by row
    rounding = n * 0.5 / FIXED_POINT  # each product is rounded to the fixed-point grid
    for value in values:
        assert value.epsilon == 0.0 and value.rho == pytest.approx(rho / len(truth), rel=1e-9)
        tolerance = K_GAUSS * math.sqrt(value.noise_variance) + rounding
        assert abs(value.value - truth[value.name]) <= tolerance, \
            (value.name, value.value, truth[value.name], value.noise_variance)


def test_cross_products_recover_the_exact_gram_and_charge_rho(
        fresh_node: RunningNode) -> None:
    member = Member.read(fresh_node)
    truth, n = exact_cross_products(member)
    assert len(truth) == 10 and 200 < n < 400  # complete cases: those measured at month 12
    delta = _budget(fresh_node).total.delta
    assert delta > 0

    query = cross_products()
    response = _run(fresh_node, "gram", query)
    assert response.query == query
    release = response.release
    assert [(b.lower, b.upper) for b in release.term_bounds] == TERM_BOUNDS
    assert len(release.cells) == 1 and "Gaussian" in release.mechanism
    _assert_cross_products_match(response, truth, n)

    charged = response.charged
    assert charged.rho <= RHO and charged.rho == pytest.approx(RHO, rel=1e-9)
    assert charged.delta == delta
    assert charged.epsilon > 0
    assert charged.epsilon == pytest.approx(rho_to_epsilon(charged.rho, delta), rel=1e-12)
    assert math.fsum(v.rho for v in release.cells[0].values) == pytest.approx(charged.rho,
                                                                              rel=1e-12)

    budget = _budget(fresh_node)
    assert budget.spent.rho == pytest.approx(RHO, rel=1e-9)
    assert budget.spent.rho == charged.rho
    assert budget.spent.epsilon == pytest.approx(rho_to_epsilon(budget.spent.rho, delta),
                                                 rel=1e-12)
    assert budget.remaining.epsilon == pytest.approx(TOTAL_EPSILON - budget.spent.epsilon,
                                                     rel=1e-12)
    assert response.budget == budget

    # the audit entry names the step outside OpenDP: the sums the Gaussian is applied to
    assert fresh_node.engine.audit is not None
    entry = json.loads(fresh_node.engine.audit.path.read_text().splitlines()[-1])
    [shown] = entry["measurement"]
    assert len(shown["components"]) == 10
    assert shown["input"].startswith("exact int64 sum") and "d_in = 1048576" in shown["input"]


def test_cross_products_clip_each_term_to_its_own_bounds(
        stats_node: RunningNode, member: Member) -> None:
    """Tight analyst bounds, so that many sessions and changes are actually clipped."""
    bounds = [(5.0, 20.0), (0.0, 1.0), (-10.0, 10.0)]
    terms = [pb.Term(column="total_sessions", clip=pb.Bounds(lower=5, upper=20)), TERMS[1],
             pb.Term(column="bridge_total", occasion=TWELVE, baseline=INTAKE,
                     clip=pb.Bounds(lower=-10, upper=10))]
    truth, n = exact_cross_products(member, bounds)
    sessions = member.total_sessions()
    assert ((sessions < 5) | (sessions > 20)).mean() > 0.2  # the clip matters
    rho = 0.02
    response = _run(stats_node, "gram-clipped",
                    cross_products(terms, loss=pb.PrivacyLoss(rho=rho)))
    assert [(b.lower, b.upper) for b in response.release.term_bounds] == bounds
    _assert_cross_products_match(response, truth, n, rho)


def test_cross_products_retry_replays_the_release_and_spends_nothing(
        fresh_node: RunningNode) -> None:
    first = _run(fresh_node, "gram-once", cross_products())
    spent = _budget(fresh_node).spent
    second = _run(fresh_node, "gram-once", cross_products())
    assert second.replayed and not first.replayed
    assert second.release == first.release
    assert second.charged == first.charged
    after = _budget(fresh_node).spent
    assert after.rho == spent.rho == first.charged.rho
    assert after.epsilon == spent.epsilon
    assert [c[0] for c in fresh_node.engine.ledger.charges()] == ["gram-once"]
    with pytest.raises(grpc.RpcError) as caught:  # the key is bound to its query
        _run(fresh_node, "gram-once", cross_products(loss=pb.PrivacyLoss(rho=RHO / 2)))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _budget(fresh_node).spent == after


# --------------------------------------------------------------------------- refusals


def _with_term(index: int, term: pb.Term) -> list[pb.Term]:
    terms = list(TERMS)
    terms[index] = term
    return terms


Refusal = tuple[str, Callable[[], pb.Query], grpc.StatusCode, str]
INVALID, DENIED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
REFUSALS: list[Refusal] = [
    ("cross products with epsilon",
     lambda: cross_products(loss=pb.PrivacyLoss(epsilon=0.5, rho=RHO)),
     INVALID, "query.loss.epsilon"),
    ("cross products without rho",
     lambda: cross_products(loss=pb.PrivacyLoss()), INVALID, "query.loss.rho"),
    ("cross products with one term", lambda: cross_products(TERMS[:1]),
     INVALID, "query.terms"),
    ("unknown term column", lambda: cross_products(_with_term(0, pb.Term(column="salary"))),
     INVALID, "query.terms[0].column"),
    ("indicator of an unknown category",
     lambda: cross_products(_with_term(1, pb.Term(column="arm", category="placebo"))),
     INVALID, "query.terms[1].category"),
    ("categorical term without a category",
     lambda: cross_products(_with_term(1, pb.Term(column="arm"))),
     INVALID, "query.terms[1].column"),
    ("term clip outside the bounds",
     lambda: cross_products(_with_term(0, pb.Term(column="total_sessions",
                                                  clip=pb.Bounds(lower=0, upper=200)))),
     INVALID, "query.terms[0].clip"),
    ("change clip outside the change's bounds",
     lambda: cross_products(_with_term(2, pb.Term(column="bridge_total", occasion=TWELVE,
                                                  baseline=INTAKE,
                                                  clip=pb.Bounds(lower=-150, upper=40)))),
     INVALID, "query.terms[2].clip"),
    ("occasion on a participant column",
     lambda: cross_products(_with_term(0, pb.Term(column="total_sessions", occasion=TWELVE))),
     INVALID, "query.terms[0].occasion"),
    ("change without its follow-up",
     lambda: cross_products(_with_term(2, pb.Term(column="bridge_total", baseline=INTAKE))),
     INVALID, "query.terms[2].occasion"),
    ("cross products with a column", lambda: cross_products(column="bridge_total"),
     INVALID, "query.column"),
    ("rho above the per-query cap",  # rho 0.2 is epsilon ~3.1 at delta 1e-6; the cap is 2
     lambda: cross_products(loss=pb.PrivacyLoss(rho=0.2)), DENIED, "query.loss.rho"),
    ("quantile without candidates", lambda: quantile(bin_edges=[]),
     INVALID, "query.bin_edges"),
    ("quantile 1.5", lambda: quantile(quantile=1.5), INVALID, "query.quantile"),
    ("quantile 0 (unset)", lambda: quantile(quantile=0.0), INVALID, "query.quantile"),
    ("candidates outside the bounds", lambda: quantile(bin_edges=[0.0, 50_000.0, 150_000.0]),
     INVALID, "query.bin_edges"),
    ("candidates not increasing", lambda: quantile(bin_edges=[0.0, 500.0, 400.0]),
     INVALID, "query.bin_edges"),
    ("quantile of a category", lambda: quantile(column="work_status"),
     INVALID, "query.column"),
    ("quantile with rho", lambda: quantile(loss=pb.PrivacyLoss(epsilon=1.0, rho=RHO)),
     INVALID, "query.loss.rho"),
    ("quantile above the per-query cap", lambda: quantile(epsilon=2.5),
     DENIED, "query.loss.epsilon"),
    ("quantile on a mean", lambda: pb.Query(
        statistic=pb.STATISTIC_MEAN, table="assessment", column="bridge_total", quantile=0.5,
        loss=pb.PrivacyLoss(epsilon=0.5)), INVALID, "query.quantile"),
    ("transition without its follow-up",
     lambda: pb.Query(statistic=pb.STATISTIC_HISTOGRAM, table="assessment",
                      column="work_status", baseline=INTAKE,
                      loss=pb.PrivacyLoss(epsilon=0.5)), INVALID, "query.occasion"),
    ("transition bins outside the change's range",
     lambda: transition("bridge_total", bin_edges=[-150.0, 0.0]), INVALID, "query.bin_edges"),
    ("transition on a table without occasions",
     lambda: pb.Query(statistic=pb.STATISTIC_HISTOGRAM, table="participant",
                      column="household_type", occasion=TWELVE, baseline=INTAKE,
                      loss=pb.PrivacyLoss(epsilon=0.5)), INVALID, "query.occasion"),
    ("baseline on a mean",
     lambda: pb.Query(statistic=pb.STATISTIC_MEAN, table="assessment", column="bridge_total",
                      occasion=TWELVE, baseline=INTAKE, loss=pb.PrivacyLoss(epsilon=0.5)),
     INVALID, "query.baseline"),
    ("terms on a mean",
     lambda: pb.Query(statistic=pb.STATISTIC_MEAN, table="assessment", column="bridge_total",
                      terms=TERMS, loss=pb.PrivacyLoss(epsilon=0.5)), INVALID, "query.terms"),
]


@pytest.mark.parametrize(("case", "query_fn", "code", "field"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_refusal_names_field_and_spends_nothing(
        stats_node: RunningNode, case: str, query_fn: Callable[[], pb.Query],
        code: grpc.StatusCode, field: str) -> None:
    before = _budget(stats_node)
    charges = len(stats_node.engine.ledger.charges())
    with pytest.raises(grpc.RpcError) as caught:
        _run(stats_node, f"refused-{case}", query_fn())
    assert caught.value.code() == code, (case, caught.value.details())
    details = caught.value.details()
    assert details.startswith(f"{field}:"), details
    after = _budget(stats_node)
    assert after.spent == before.spent
    assert len(stats_node.engine.ledger.charges()) == charges


@pytest.mark.parametrize("query_fn", [
    lambda: cross_products(loss=pb.PrivacyLoss(rho=1e-300)),
    lambda: transition("work_status", epsilon=1e-300),
], ids=["cross products rho 1e-300", "transition epsilon 1e-300"])
def test_vanishing_loss_is_refused_or_answered_never_an_internal_error(
        stats_node: RunningNode, query_fn: Callable[[], pb.Query]) -> None:
    before = _budget(stats_node).spent
    query = query_fn()
    try:
        response = _run(stats_node, f"vanishing-{query.statistic}", query)
    except grpc.RpcError as exc:
        assert _budget(stats_node).spent == before  # whatever failed was refunded
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        assert exc.details().startswith("query.loss."), exc.details()
        return
    values = response.release.cells[0].values
    assert all(v.noise_variance > 0 for v in values)  # inf is an honest answer


@pytest.mark.parametrize("split", [None, (0.2, 0.6, 0.2)])
def test_a_changes_default_clip_is_read_off_the_sum_at_the_epsilon_the_node_spent(
        stats_node: RunningNode, split: tuple[float, float, float] | None) -> None:
    """Without a clip the coordinator reads the schema's default half-width, U - L, off the
    released sum's noise, at the sum's own epsilon as the node reports it (so a split the node
    does not apply as asked cannot mislead it)."""
    from bridgestat.common import query as q
    from bridgestat.coordinator.client.wire import query_to_pb, release_from_pb
    from bridgestat.coordinator.statistics import planning
    from bridgestat.coordinator.statistics.tables import QueryResult, change_half_width
    query = q.Query("paired_change", "assessment", "bridge_total", 0.5,
                    occasion=q.Occasion(12, 9, 15), baseline=q.INTAKE, split=split)
    response = _run(stats_node, f"half-width-{split}", query_to_pb(query))
    release = release_from_pb(response)
    share = split[1] if split else planning.HAND_SPLIT.sum
    [cell] = release.cells
    assert cell.epsilons["sum"] == pytest.approx(0.5 * share, rel=1e-9)
    column = _schema_column(stats_node, "assessment", "bridge_total")
    result = QueryResult(query, "key", (release.node_id,), {release.node_id: release}, {})
    assert change_half_width(result) == pytest.approx(column.upper - column.lower, rel=1e-9)
