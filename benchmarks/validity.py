"""95 % CI coverage of the coordinator's estimates on simulated networks with known truth.

Usage: python benchmarks/validity.py [--networks 1000] [--seed 1] [--members 5] [--workers 2]
                                     [--members-re 12] [--replicates 300]

Prints, per quantity, the share of networks whose 95 % interval holds the true value (with a
Clopper-Pearson 95 % interval for that share), the mean interval width, the mean bias and the
mean true value; then the pooled mean's RMSE as a ratio to the oracle of statistics.md
("Utility anchor"). A benchmark: it prints figures and asserts nothing. The statistical test
(tests/statistical/test_validity.py) runs the same core on fewer networks.

How releases are made (the real node path, without the gRPC transport). Every simulated network
is a fresh set of nodes: per member an `Engine` over in-memory tables of the default schema,
typed as `node.data` delivers them (numbers float64, categories `pd.Categorical` with the schema
categories, string keys, the derived `total_sessions` already on the participant table), with
its own SQLite ledger (large total budget). `Engine.run` plans, charges the ledger and releases
with OpenDP; the answer goes through its wire form (`node.serde` -> `coordinator.wire`), and the
coordinator's own functions turn the releases into estimates: `pooling` (pooled mean, change,
d_z; member means), the result tables of `tables` (`proportion_table`, `compare_table`: their
NETWORK rows; `cross_products`), `meta.meta_analysis` and `regression.fit` on
`pool_cross_products`. OpenDP noise cannot be seeded (OpenSSL randomness); the data are:
network r draws from numpy `default_rng([seed, r])`, so its data do not depend on the number
of workers.

Data model (all parameters in `Model`; every draw is fresh per network):
- Member k has Poisson(lambda_k) participants, lambda_k log-uniform on [100, 900]. Given the
  total, participants are therefore i.i.d. draws from the mixture of members with weights
  pi_k = lambda_k / sum lambda: the network's population.
- (K + 1) // 2 members, chosen at random, run a comparison arm: each of their participants is
  in it with probability 0.3; all others receive Mobility Mentoring (MM).
- intake income_to_norm_ratio ~ N(m_k, 0.35^2) truncated to [0.05, 1.95], m_k uniform in
  0.9 +- 0.15; queried as a mean at intake with the analyst's clip [0, 2] (H = 1), so clipping
  never binds and the mean is the truncated normal's.
- total_sessions uniform on the integers 0..60 (the same at every member and arm); clip [0, 60].
- 12-month change of bridge_total d = mu + a_k + beta (s - 30) + e with mu = 5, beta = 0.1 per
  session, e ~ N(0, 10^2) truncated to [-20, 20], and member effects a_k ~ N(0, 3^2) truncated
  to [-12, 12] (heterogeneous networks) or a_k = 0 (the homogeneous network). |d| <= 40, so
  the change clip [-40, 40] never binds. Intake bridge_total ~ N(50, 8^2) on [30, 60], so both
  occasions stay in [0, 100]. A participant has a 12-month assessment (month 10..14, window
  9..15) with probability 0.9, independently of everything (MCAR), so completers are a random
  subset with the same member mix.
- Paid work at 12 months (work_status in synth.PAID_WORK) with probability 0.35 + b_k (MM) or
  0.25 + b_k (comparison), b_k uniform in +-0.08.

Per network three groups of nodes are simulated: the main network (K = --members, heterogeneous;
every query below), a homogeneous network of K members (a_k = 0; the paired change only, for the
fixed-effect meta-analysis) and a heterogeneous network of --members-re members (paired change
only, for random effects with more members). Queries (per member): mean at epsilon 1 and, as a
DP-dominated contrast, at epsilon 0.1; paired change at epsilon 1; paid-work histogram at
epsilon 1, overall and grouped by arm; cross products of (total_sessions, change) at rho 0.5.

The truth each interval targets (exact: no clipping binds, the moments of the truncated normals
are exact, and the member mix is known):
- pooled mean: the network population mean sum_k pi_k E[ratio | k];
- pooled paired change: the network population mean change mu + sum_k pi_k a_k;
- d_z: that mean change over the population SD of d, sqrt(Var_pi(a) + beta^2 Var(s) + Var(e));
- proportion: the population share in paid work, sum_k pi_k [c_k p_C,k + (1 - c_k) p_MM,k]
  (c_k the member's comparison probability);
- risk difference (pooled two-group, as `api.compare_table`'s NETWORK row): the population
  share in paid work among MM participants minus among comparison participants (each arm's
  member mix weighted pi_k (1 - c_k) resp. pi_k c_k; a descriptive contrast, not causal);
- fixed effect (homogeneous network): the common member mean change mu;
- random effects (heterogeneous networks, K = --members and --members-re): the mean of the
  member-effect distribution, mu (a_k has mean 0);
- regression slope of the change on total_sessions (pooled cross products): the population
  OLS slope, beta (E[d | s] is linear in s, since s is independent of member and arm).
Rows marked "no DP" use the same estimate with the DP variance left out (se_sampling, or the
fixed effect weighted by sampling variances only, or the textbook OLS SE): a contrast, no target.

Two further parts (issue 15), each from its own seeded stream ([seed, r, 1] and [seed, r, 2]),
so `--parts attrition,optimised` runs them alone with the same data:
- attrition: the model with follow-up 0.65 and the intake bridge_total of completers shifted
  by +5 (0.35 * 5 up, leavers 0.65 * 5 down: `Model.attrition_shift`), so completers minus
  leavers at intake is exactly 5 at every member and in the network; queried as the
  `attrition_epsilon` of a paired change sends it (intake mean split by presence at 12 months,
  schema bounds [0, 100]) at epsilon_small, with 5 members of 40 and K members of the main
  sizes; the NETWORK difference of the coordinator's attrition table.
- optimised budgets: the pooled intake ratio mean and the pooled mean change at the losses
  `planning.optimise` chooses per member for unequal budgets (member j may spend
  2 epsilon_small (0.5 .. 1.5) on the two; planning inputs the expected sizes and the
  planner's default guesses), once with the node's split of a mean's loss and once with the
  planner's split, applied in the node's own mechanisms (`SplitNode`: a query cannot carry a
  split); 5 members of 40 and K of the main sizes. Truths as for the main network.

Oracle (statistics.md): RMSE of a pooled mean with N records, per-member budget e_k and half
width H: sqrt(sigma^2 / N + sum_k 2 (H / e_k)^2 / N^2); here e_k is the epsilon the member spends
on the whole mean query (count, sum and sum of squares), H = 1, sigma the population SD, and N
the network's true number of participants. The ratio is sqrt(mean squared error / mean oracle
MSE) over networks.
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import special, stats

from bridgestat.coordinator.client import query as coordinator_query
from bridgestat.coordinator.client.wire import MemberRelease, release_from_pb
from bridgestat.coordinator.demo.synth import PAID_WORK
from bridgestat.coordinator.statistics import planning, pooling
from bridgestat.coordinator.statistics.meta import MetaError, Pooled, meta_analysis
from bridgestat.coordinator.statistics.pooling import Z95, Estimate, PoolingError
from bridgestat.coordinator.statistics.regression import Coefficient, fit, pool_cross_products
from bridgestat.coordinator.statistics.tables import (
    NETWORK,
    QueryResult,
    attrition_table,
    compare_table,
    cross_products,
    proportion_table,
)
from bridgestat.node import mechanisms
from bridgestat.node.engine import Engine
from bridgestat.node.frames import Frames
from bridgestat.node.ledger import Ledger
from bridgestat.node.loss import Epsilon
from bridgestat.node.planner import Plan, Policy, compile_query
from bridgestat.node.query import INTAKE, Occasion, QuerySpec, Statistic, Term
from bridgestat.node.schema import load_schema
from bridgestat.node.serde import answer_to_pb

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

SCHEMA = load_schema()
POLICY = Policy(max_epsilon_per_query=10.0)  # rho 0.5 is epsilon ~5.8 at delta 1e-6
LEDGER_TOTAL = Epsilon.of(1_000_000)
TWELVE_MONTHS = Occasion(12, 9, 15)
RATIO_CLIP = (0.0, 2.0)
CHANGE_CLIP = (-40.0, 40.0)
SESSIONS_CLIP = (0.0, 60.0)
ARMS = ("mobility_mentoring", "comparison")
WORK_STATUSES = SCHEMA.table("assessment").column("work_status").categories
NOT_PAID = tuple(w for w in WORK_STATUSES if w not in PAID_WORK)
DOSE_NAMES = ("total_sessions", "bridge_total change 0->12")
SHM = Path("/dev/shm")
TARGET = (0.93, 0.97)  # the target range of coverage


# --------------------------------------------------------------------------- settings, model


@dataclass(frozen=True)
class Settings:
    """What one benchmark run simulates (privacy losses per member and query)."""

    networks: int = 1000
    seed: int = 1
    members: int = 5
    members_re: int = 12
    epsilon: float = 1.0
    epsilon_low: float = 0.1
    rho: float = 0.5
    replicates: int = 300
    workers: int = 2
    epsilon_small: float = 0.3  # the small networks: paired change only (d_z flag, tau2)
    pilot: tuple[int, float] = (2, 150.0)  # members, participants each
    tiny: tuple[int, float] = (5, 40.0)
    parts: tuple[str, ...] = ("main", "attrition", "optimised")  # which networks to simulate


@dataclass(frozen=True)
class Model:
    """The data-generating model (see the module docstring); `check` keeps clips slack."""

    size_range: tuple[float, float] = (100.0, 900.0)
    comparison_share: float = 0.3
    follow_up: float = 0.9
    ratio_location: float = 0.9
    ratio_spread: float = 0.15
    ratio_sd: float = 0.35
    ratio_support: tuple[float, float] = (0.05, 1.95)
    sessions_max: int = 60
    change_mean: float = 5.0
    slope: float = 0.1
    tau: float = 3.0
    tau_bound: float = 4.0  # member effects truncated at +- tau_bound * tau
    residual_sd: float = 10.0
    residual_bound: float = 20.0
    intake: tuple[float, float, float, float] = (50.0, 8.0, 30.0, 60.0)  # mean, sd, lo, hi
    paid_mm: float = 0.35
    paid_comparison: float = 0.25
    paid_spread: float = 0.08
    attrition_shift: float = 0.0  # intake bridge: completers minus non-completers (0: MCAR)

    def check(self) -> None:
        """Raise unless no generated value can reach a clip (else the truths are not exact)."""
        lo, hi = self.ratio_support
        spread = self.tau_bound * self.tau + self.slope * self.sessions_max / 2 \
            + self.residual_bound
        if not (RATIO_CLIP[0] <= lo and hi <= RATIO_CLIP[1]):
            raise ValueError("ratio support must lie inside the ratio clip")
        if not (CHANGE_CLIP[0] <= self.change_mean - spread
                and self.change_mean + spread <= CHANGE_CLIP[1]):
            raise ValueError("changes could be clipped")
        if self.sessions_max > SESSIONS_CLIP[1]:
            raise ValueError("sessions could be clipped")
        shift = abs(self.attrition_shift)
        if not (0 <= self.intake[2] - shift and self.intake[3] + shift <= 100):
            raise ValueError("shifted intake scores could be clipped")

    @property
    def sessions_variance(self) -> float:
        """Var of the discrete uniform on 0..sessions_max."""
        return ((self.sessions_max + 1) ** 2 - 1) / 12


MODEL = Model()


@dataclass(frozen=True)
class MemberDraw:
    """One member's parameters in one simulated network."""

    expected_size: float  # lambda_k
    comparison: bool  # runs a comparison arm
    effect: float  # a_k, shift of the mean change
    ratio_location: float  # location of the truncated normal of the intake ratio
    paid_shift: float  # b_k


def truncated_normal(mean: float, sd: float, lower: float, upper: float) -> Any:
    """scipy's frozen N(mean, sd^2) truncated to [lower, upper] (its exact moments)."""
    return stats.truncnorm((lower - mean) / sd, (upper - mean) / sd, loc=mean, scale=sd)


def draw_truncated(rng: np.random.Generator, mean: float, sd: float, lower: float,
                   upper: float, size: int) -> Floats:
    """Draws of N(mean, sd^2) truncated to [lower, upper] by the inverse CDF.

    Faster than freezing scipy's truncnorm per member; the truths use scipy's moments, so the
    two implementations check each other (the coverage of the means would show a mismatch).
    """
    a, b = special.ndtr((lower - mean) / sd), special.ndtr((upper - mean) / sd)
    draws: Floats = mean + sd * special.ndtri(rng.uniform(a, b, size))
    return np.clip(draws, lower, upper)  # rounding only: ndtri of a or b is the bound


def draw_network(rng: np.random.Generator, k: int, heterogeneous: bool,
                 model: Model = MODEL) -> tuple[MemberDraw, ...]:
    """K members' parameters: sizes, comparison arms, effects, ratio locations, paid shifts."""
    low, high = np.log(model.size_range)
    sizes = np.exp(rng.uniform(low, high, k))
    comparison = rng.permutation(k) < (k + 1) // 2
    bound = model.tau_bound * model.tau
    effects_k = (draw_truncated(rng, 0.0, model.tau, -bound, bound, k)
                 if heterogeneous else np.zeros(k))
    locations = model.ratio_location + rng.uniform(-model.ratio_spread, model.ratio_spread, k)
    shifts = rng.uniform(-model.paid_spread, model.paid_spread, k)
    return tuple(MemberDraw(float(s), bool(c), float(a), float(m), float(b))
                 for s, c, a, m, b in zip(sizes, comparison, effects_k, locations, shifts,
                                          strict=True))


# --------------------------------------------------------------------------- member data


def _categorical(codes: npt.NDArray[np.int64], categories: Sequence[str]) -> pd.Categorical:
    """Codes (-1: missing) as a categorical with exactly the schema's categories."""
    dtype = pd.CategoricalDtype(list(categories))
    return pd.Categorical.from_codes(codes, dtype=dtype)


def _work_codes(paid: Bools, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """work_status codes: a paid status or a status without pay, uniformly within each."""
    index = {w: i for i, w in enumerate(WORK_STATUSES)}
    paid_codes = np.array([index[w] for w in PAID_WORK])
    other_codes = np.array([index[w] for w in NOT_PAID])
    return np.where(paid, rng.choice(paid_codes, len(paid)),
                    rng.choice(other_codes, len(paid))).astype(np.int64)


def member_tables(draw: MemberDraw, rng: np.random.Generator, model: Model = MODEL
                  ) -> dict[str, pd.DataFrame]:
    """One member's participant and assessment tables, typed as `node.data` delivers them."""
    n = int(rng.poisson(draw.expected_size))
    ids = pd.array([f"p{i:05d}" for i in range(n)], dtype="str")
    comparison = draw.comparison & (rng.random(n) < model.comparison_share)
    sessions = rng.integers(0, model.sessions_max + 1, n).astype(np.float64)
    residual = draw_truncated(rng, 0.0, model.residual_sd, -model.residual_bound,
                              model.residual_bound, n)
    change = (model.change_mean + draw.effect
              + model.slope * (sessions - model.sessions_max / 2) + residual)
    lo, hi = model.ratio_support
    ratio = draw_truncated(rng, draw.ratio_location, model.ratio_sd, lo, hi, n)
    intake = draw_truncated(rng, *model.intake, n)
    p_paid = np.where(comparison, model.paid_comparison, model.paid_mm) + draw.paid_shift
    work = _work_codes(rng.random(n) < p_paid, rng)
    followed = rng.random(n) < model.follow_up
    # selective attrition (no extra draw): completers up, the others down, mean unchanged
    intake = intake + model.attrition_shift * (followed - model.follow_up)
    month = rng.integers(10, 15, n).astype(np.float64)
    participant = pd.DataFrame({
        "participant_id": ids,
        "arm": _categorical(comparison.astype(np.int64), ARMS),
        "total_sessions": sessions})
    first = pd.DataFrame({
        "participant_id": ids, "assessment_seq": 0.0, "months_since_intake": 0.0,
        "bridge_total": intake, "income_to_norm_ratio": ratio,
        "work_status": _categorical(np.full(n, -1), WORK_STATUSES)})
    second = pd.DataFrame({
        "participant_id": ids[followed], "assessment_seq": 1.0,
        "months_since_intake": month[followed], "bridge_total": (intake + change)[followed],
        "income_to_norm_ratio": np.nan,
        "work_status": _categorical(work[followed], WORK_STATUSES)})
    assessment = pd.concat([first, second], ignore_index=True)
    return {"participant": participant, "assessment": assessment}


# --------------------------------------------------------------------------- truth


@dataclass(frozen=True)
class Truth:
    """Population parameters of one network (module docstring: which interval targets what)."""

    mean: float
    sd: float  # population SD of the intake ratio (for the oracle)
    change: float
    d_z: float
    share: float
    risk_difference: float


def _weights(draws: Sequence[MemberDraw]) -> Floats:
    sizes = np.array([d.expected_size for d in draws], dtype=np.float64)
    weights: Floats = sizes / sizes.sum()
    return weights


def _mixture(weights: Floats, means: Floats, variances: Floats) -> tuple[float, float]:
    """Mean and variance of a mixture with component means and variances."""
    mean = float(weights @ means)
    return mean, float(weights @ (variances + means**2) - mean**2)


def network_truth(draws: Sequence[MemberDraw], model: Model = MODEL) -> Truth:
    """The exact population parameters of a network of members `draws`."""
    pi = _weights(draws)
    lo, hi = model.ratio_support
    ratio = [truncated_normal(d.ratio_location, model.ratio_sd, lo, hi) for d in draws]
    mean, variance = _mixture(pi, np.array([r.mean() for r in ratio]),
                              np.array([r.var() for r in ratio]))
    residual = truncated_normal(0.0, model.residual_sd, -model.residual_bound,
                                model.residual_bound)
    a = np.array([d.effect for d in draws])
    change, between = _mixture(pi, model.change_mean + a, np.zeros(len(draws)))
    var_d = between + model.slope**2 * model.sessions_variance + float(residual.var())
    c = np.array([model.comparison_share if d.comparison else 0.0 for d in draws])
    b = np.array([d.paid_shift for d in draws])
    p_mm, p_c = model.paid_mm + b, model.paid_comparison + b
    share = float(pi @ (c * p_c + (1 - c) * p_mm))
    rd = float((pi * (1 - c)) @ p_mm / (pi * (1 - c)).sum() - (pi * c) @ p_c / (pi * c).sum())
    return Truth(mean, math.sqrt(variance), change, change / math.sqrt(var_d), share, rd)


# --------------------------------------------------------------------------- nodes


def queries(settings: Settings) -> dict[str, QuerySpec]:
    """The main network's queries by name (each member answers each once)."""
    eps = settings.epsilon
    mean = QuerySpec(Statistic.MEAN, "assessment", "income_to_norm_ratio", eps,
                     occasion=INTAKE, clip=RATIO_CLIP)
    paid = QuerySpec(Statistic.HISTOGRAM, "assessment", "work_status", eps,
                     occasion=TWELVE_MONTHS)
    dose = QuerySpec(Statistic.CROSS_PRODUCTS, "assessment", "", 0.0, rho=settings.rho,
                     terms=(Term("total_sessions", clip=SESSIONS_CLIP),
                            Term("bridge_total", occasion=TWELVE_MONTHS, baseline=INTAKE,
                                 clip=CHANGE_CLIP)))
    return {"mean": mean, "mean_low": replace(mean, epsilon=settings.epsilon_low),
            "change": change_query(settings), "paid": paid,
            "paid_by_arm": replace(paid, group_by=("arm",)),
            "dose": dose}  # last: the ledger's rho conversion is slow, so rho is spent last


def change_query(settings: Settings) -> QuerySpec:
    """Paired change of bridge_total from intake to 12 months, clipped to [-40, 40]."""
    return QuerySpec(Statistic.PAIRED_CHANGE, "assessment", "bridge_total", settings.epsilon,
                     occasion=TWELVE_MONTHS, baseline=INTAKE, clip=CHANGE_CLIP)


@lru_cache(maxsize=64)
def shared_plan(query: QuerySpec) -> Plan:
    """`compile_query` under the simulation's schema and policy, once per process."""
    return compile_query(query, SCHEMA, POLICY)


class SimulatedNode(Engine):
    """The node's `Engine`, unchanged except that its compiled plans are shared by all nodes.

    A plan depends only on the query, the schema and the policy (which all simulated nodes
    share), and OpenDP measurements are stateless, so this is the engine's own plan cache made
    process-wide; compiling anew for each of the ~20 fresh nodes per network would cost about a
    third of the runtime. Charging, releasing and storing are the engine's own.
    """

    def _compile_uncached(self, query: QuerySpec) -> Plan:
        return shared_plan(query)


def open_engine(name: str, tables: dict[str, pd.DataFrame], folder: Path,
                node: type[SimulatedNode] = SimulatedNode) -> Engine:
    """A fresh node over `tables` with its own ledger in `folder`."""
    ledger = Ledger(folder / f"{name}.sqlite", f"{name}-simulated", LEDGER_TOTAL, POLICY.delta)
    return node(name, SCHEMA, Frames(tables, SCHEMA), ledger, POLICY)


def ask(engine: Engine, key: str, query: QuerySpec) -> MemberRelease:
    """Run `query` on the node; return the release as the coordinator receives it (wire form
    as the node's service sends it, decoded by the coordinator)."""
    answer = engine.run(key, query)
    return release_from_pb(answer_to_pb(answer, POLICY.max_epsilon_per_query))


@dataclass(frozen=True)
class Released:
    """Members' releases by query name, and their true sizes (for the oracle only)."""

    releases: dict[str, list[MemberRelease]]
    sizes: tuple[int, ...]


def run_members(draws: Sequence[MemberDraw], asked: dict[str, QuerySpec], prefix: str,
                rng: np.random.Generator, folder: Path, model: Model = MODEL) -> Released:
    """Generate each member's data, open its node and ask every query."""
    out: dict[str, list[MemberRelease]] = {name: [] for name in asked}
    sizes: list[int] = []
    for k, draw in enumerate(draws):
        tables = member_tables(draw, rng, model)
        sizes.append(len(tables["participant"]))
        engine = open_engine(f"{prefix}{k}", tables, folder)
        for name, query in asked.items():
            out[name].append(ask(engine, name, query))
    return Released(out, tuple(sizes))


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Outcome:
    """One quantity in one network: truth, interval (None: not estimable), oracle MSE."""

    key: str
    truth: float
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    oracle_mse: float | None = None

    @property
    def covered(self) -> bool:
        assert self.low is not None and self.high is not None
        return self.low <= self.truth <= self.high


def _interval(key: str, truth: float, estimate: float, half: float) -> Outcome:
    return Outcome(key, truth, estimate, estimate - half, estimate + half)


def from_estimate(key: str, truth: float, compute: Callable[[], Estimate],
                  contrast: bool = True) -> list[Outcome]:
    """The interval with DP terms and (contrast) the same estimate +- z * se_sampling."""
    try:
        e = compute()
    except PoolingError:
        return [Outcome(key, truth)] + ([Outcome(f"{key}_nodp", truth)] if contrast else [])
    out = [Outcome(key, truth, e.estimate, e.ci_low, e.ci_high)]
    if contrast:
        out.append(_interval(f"{key}_nodp", truth, e.estimate, Z95 * (e.se_sampling or 0.0)))
    return out


def from_pooled(key: str, truth: float, pooled: Pooled) -> Outcome:
    return Outcome(key, truth, pooled.estimate, pooled.ci_low, pooled.ci_high)


def mean_stats(releases: Iterable[MemberRelease]) -> list[pooling.MeanStats]:
    """The (ungrouped) mean statistics of every member's release."""
    return [r.mean_stats(r.cells[0]) for r in releases]


def query_result(query: coordinator_query.Query, releases: Sequence[MemberRelease]
                 ) -> QueryResult:
    """The members' releases as the coordinator's raw result of one fanned-out query."""
    names = tuple(r.node_id for r in releases)
    return QueryResult(query, "simulated", names, dict(zip(names, releases, strict=True)), {})


def network_row(key: str, truth: float, frame: pd.DataFrame, **match: str) -> Outcome:
    """The NETWORK row of a coordinator result table (matching `match`) as an outcome."""
    rows = frame[frame.member == NETWORK]
    for column, value in match.items():
        rows = rows[rows[column] == value]
    row = rows.iloc[0]
    if row.status != "ok":
        return Outcome(key, truth)
    return Outcome(key, truth, float(row.estimate), float(row.ci_low), float(row.ci_high))


PAID_QUERY = coordinator_query.Query("histogram", "assessment", "work_status",
                                     occasion=coordinator_query.Occasion(12, 9, 15))


def paid_outcomes(releases: dict[str, list[MemberRelease]], truth: Truth,
                  settings: Settings) -> list[Outcome]:
    """Pooled share in paid work, and the pooled two-group risk difference MM - comparison,
    from the coordinator's result tables (`proportion_table`, `compare_table`)."""
    query = replace(PAID_QUERY, epsilon=settings.epsilon)
    shares = proportion_table(query_result(query, releases["paid"]), PAID_WORK)
    by_arm = replace(query, group_by=("arm",))
    compared = compare_table(query_result(by_arm, releases["paid_by_arm"]), PAID_WORK, "arm",
                             ARMS)
    return [network_row("share", truth.share, shares),
            network_row("rd", truth.risk_difference, compared, measure="risk_difference")]


def oracle_mse(truth: Truth, n: int, k: int, epsilon: float) -> float:
    """statistics.md's oracle: sigma^2 / N + sum_k 2 (H / e_k)^2 / N^2 (H of the clip)."""
    half = (RATIO_CLIP[1] - RATIO_CLIP[0]) / 2
    return truth.sd**2 / n + k * 2 * (half / epsilon) ** 2 / n**2


def main_outcomes(releases: dict[str, list[MemberRelease]], truth: Truth, n: int,
                  settings: Settings) -> list[Outcome]:
    """Pooled mean, change, d_z, proportion and risk difference of the main network."""
    out: list[Outcome] = []
    for key, eps in (("mean", settings.epsilon), ("mean_low", settings.epsilon_low)):
        stats_k = mean_stats(releases[key])
        found = from_estimate(key, truth.mean, partial(pooling.pooled_mean, stats_k))
        mse = oracle_mse(truth, n, len(stats_k), eps)
        out += [replace(found[0], oracle_mse=mse), found[1]]
    change = mean_stats(releases["change"])
    out += from_estimate("change", truth.change,  # as the product reports it: the change
                         lambda: pooling.pooled_mean(change), contrast=False)  # without d_z
    out += from_estimate("d_z", truth.d_z, lambda: pooling.pooled_change(change).d_z)
    return out + paid_outcomes(releases, truth, settings)


def member_changes(releases: Sequence[MemberRelease]) -> list[Estimate]:
    """Each member's mean change (sampling + DP variance) from its paired-change release."""
    return [pooling.member_mean(s) for s in mean_stats(releases)]


def meta_outcomes(prefix: str, releases: Sequence[MemberRelease], truth: float,
                  fixed: bool) -> list[Outcome]:
    """Fixed effect with and without DP variances, or DL-Wald and HKSJ random effects."""
    keys = (f"{prefix}", f"{prefix}_nodp") if fixed else (f"{prefix}_wald", f"{prefix}_hksj")
    try:
        members = member_changes(releases)
        theta = [e.estimate for e in members]
        result = meta_analysis(theta, [e.se**2 for e in members])
    except (PoolingError, MetaError):
        return [Outcome(key, truth) for key in keys]
    if not fixed:
        return [from_pooled(keys[0], truth, result.random),
                from_pooled(keys[1], truth, result.hksj)]
    try:  # a member whose noisy variance estimate hit 0 has no sampling-only weight
        sampling = meta_analysis(theta, [(e.se_sampling or 0.0) ** 2 for e in members]).fixed
    except MetaError:
        return [from_pooled(keys[0], truth, result.fixed), Outcome(keys[1], truth)]
    return [from_pooled(keys[0], truth, result.fixed), from_pooled(keys[1], truth, sampling)]


def slope_outcomes(releases: Sequence[MemberRelease], truth: float, replicates: int,
                   seed: int) -> list[Outcome]:
    """Pooled dose-response slope: bootstrap interval, and the textbook OLS one."""
    try:
        pooled = pool_cross_products([cross_products(r, r.cells[0], DOSE_NAMES)
                                      for r in releases])
        result = fit(pooled, replicates=replicates, seed=seed)
    except PoolingError:
        return [Outcome("slope", truth), Outcome("slope_ols", truth)]
    coef: Coefficient = next(c for c in result.coefficients if c.name == DOSE_NAMES[0])
    return [Outcome("slope", truth, coef.estimate, coef.ci_low, coef.ci_high),
            _interval("slope_ols", truth, coef.estimate, Z95 * coef.se_ols)]


def d_z_outcomes(prefix: str, releases: Sequence[MemberRelease], truth: float) -> list[Outcome]:
    """Pooled d_z with the flag of `pooling.d_z_flag`: `{prefix}` on every network (not
    estimable: no interval), and the same outcome again under `{prefix}_flagged` or
    `{prefix}_unflagged` (a network whose s^2 came out <= 0 is counted as flagged: the flag
    depends on public metadata and the noisy count only, and it is computed for it too)."""
    half = (CHANGE_CLIP[1] - CHANGE_CLIP[0]) / 2
    stats_k = mean_stats(releases)
    pooled = pooling.MeanStats(pooling.sum_noisy([s.count for s in stats_k]),
                               pooling.sum_noisy([s.sum for s in stats_k]),
                               pooling.sum_noisy([s.sum_squares for s in stats_k]), 0.0)
    flagged = pooling.d_z_flag(pooled.count.value, pooled.sum_squares.variance, half) is not None
    found = from_estimate(prefix, truth,
                          lambda: pooling.pooled_change(stats_k, half_width=half).d_z,
                          contrast=False)[0]
    return [found, replace(found, key=f"{prefix}_{'flagged' if flagged else 'unflagged'}")]


def tau2_outcome(key: str, releases: Sequence[MemberRelease], truth: float) -> Outcome:
    """The Q-profile interval for tau2 from the members' mean changes."""
    try:
        members = member_changes(releases)
        result = meta_analysis([e.estimate for e in members], [e.se**2 for e in members])
    except (PoolingError, MetaError):
        return Outcome(key, truth)
    assert result.tau2_ci is not None
    return Outcome(key, truth, result.tau2, *result.tau2_ci)


def tau2_truth(model: Model = MODEL) -> float:
    """Variance of the member effects a_k (normal truncated at +- tau_bound tau)."""
    bound = model.tau_bound * model.tau
    return float(truncated_normal(0.0, model.tau, -bound, bound).var())


def small_networks(rng: np.random.Generator, settings: Settings, folder: Path
                   ) -> list[Outcome]:
    """Pilot (2 x 150) at epsilon_small and at epsilon, members of 40 at epsilon_small:
    the paired change only; flagged / unflagged d_z and the tau2 interval."""
    out: list[Outcome] = []
    small = replace(settings, epsilon=settings.epsilon_small)
    for name, (k, size), eps_settings in (("pilot", settings.pilot, small),
                                          ("pilot_eps1", settings.pilot, settings),
                                          ("tiny", settings.tiny, small)):
        draws = tuple(replace(d, expected_size=size)
                      for d in draw_network(rng, k, heterogeneous=True))
        truth = network_truth(draws)
        released = run_members(draws, {"change": change_query(eps_settings)}, name, rng,
                               folder).releases["change"]
        out += d_z_outcomes(f"dz_{name}", released, truth.d_z)
        if k > 2:
            out.append(tau2_outcome(f"tau2_{name}", released, tau2_truth()))
    return out


# --------------------------------------------------------------------------- attrition


ATTRITION_MODEL = replace(MODEL, follow_up=0.65, attrition_shift=5.0)
"""Selective attrition: 35 % leave before 12 months (so a member of 40 has ~14 leavers), and
the intake Bridge score of completers is 5 points above that of leavers at every member."""


def attrition_query(epsilon: float) -> QuerySpec:
    """What the `attrition_epsilon` of a paired change sends: the intake mean of bridge_total
    (the schema's bounds [0, 100]) split by presence at 12 months."""
    return QuerySpec(Statistic.MEAN, "assessment", "bridge_total", epsilon, occasion=INTAKE,
                     split_by_presence=TWELVE_MONTHS)


def attrition_outcomes(key: str, releases: Sequence[MemberRelease], truth: float
                       ) -> list[Outcome]:
    """NETWORK present minus absent from the coordinator's attrition table (with the DP
    terms), and the same estimate +- z se_sampling as the contrast."""
    query = coordinator_query.Query("mean", "assessment", "bridge_total", occasion=INTAKE,
                                    split_by_presence=TWELVE_MONTHS)
    frame = attrition_table(query_result(query, releases))
    found = network_row(key, truth, frame, cell="difference")
    if found.estimate is None:
        return [found, Outcome(f"{key}_nodp", truth)]
    row = frame[(frame.member == NETWORK) & (frame.cell == "difference")].iloc[0]
    return [found, _interval(f"{key}_nodp", truth, found.estimate,
                             Z95 * float(row.se_sampling))]


def attrition_networks(rng: np.random.Generator, settings: Settings, folder: Path
                       ) -> list[Outcome]:
    """Completers vs leavers at intake at epsilon_small: members of 40 and the main sizes.
    Truth: attrition_shift exactly (intake is independent of member and of follow-up before
    the shift, so each member's and the network's difference is the shift)."""
    out: list[Outcome] = []
    asked = {"attrition": attrition_query(settings.epsilon_small)}
    for name, size in (("attr_tiny", settings.tiny[1]), ("attr", None)):
        draws = draw_network(rng, settings.tiny[0] if size else settings.members, True)
        if size:
            draws = tuple(replace(d, expected_size=size) for d in draws)
        released = run_members(draws, asked, name, rng, folder, ATTRITION_MODEL)
        out += attrition_outcomes(name, released.releases["attrition"],
                                  ATTRITION_MODEL.attrition_shift)
    return out


# --------------------------------------------------------------------------- optimised budgets


OPTIMISED = ("income_to_norm_ratio", "bridge_total")  # the pooled mean and the pooled change


def optimised_budgets(k: int, epsilon: float) -> tuple[planning.MemberBudget, ...]:
    """Unequal budgets, `epsilon` per analysis on average: member j may spend
    2 epsilon (0.5 .. 1.5) on the two auto analyses (the cap never binds)."""
    return tuple(planning.MemberBudget(2 * epsilon * float(f), cap=POLICY.max_epsilon_per_query,
                                       delta=POLICY.delta)
                 for f in np.linspace(0.5, 1.5, k))


def optimised_allocation(sizes: Sequence[float], epsilon: float, best_split: bool
                         ) -> planning.Allocation:
    """`planning.optimise` for the intake ratio mean and the 12-month change at public
    sizes (the expected ones) with the planner's default outcome guesses: per member its
    own losses (unequal budgets); with `best_split` also each mean's split of count, sum
    and squares (else the node's hand split, which is what a query can ask for today)."""
    sized = tuple(max(float(n), 2.0) for n in sizes)
    items = [planning.PlanItem("income_to_norm_ratio", planning.Kind.MEAN, sized,
                               *RATIO_CLIP),
             planning.PlanItem("bridge_total", planning.Kind.MEAN, sized, *CHANGE_CLIP)]
    return planning.optimise(items, optimised_budgets(len(sizes), epsilon),
                             optimise_split=best_split)


def optimised_query(column: str, epsilon: float) -> QuerySpec:
    """One of the two optimised analyses' queries at one member's loss."""
    if column == "bridge_total":
        return replace(change_query(Settings()), epsilon=epsilon)
    return QuerySpec(Statistic.MEAN, "assessment", column, epsilon, occasion=INTAKE,
                     clip=RATIO_CLIP)


class SplitNode(SimulatedNode):
    """The node with the optimiser's split of a mean's loss (count : sum : squares) in its own
    mechanisms (`mechanisms.mean_components`): a query cannot carry a split yet, so the
    benchmark sets it where the node builds the plan. Charging and releasing are unchanged;
    the ledger is charged the query's epsilon (the split's shares sum to 1)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.splits: dict[str, mechanisms.MeanSplit] = {}  # by column, set before querying

    def _compile_uncached(self, query: QuerySpec) -> Plan:
        plan = shared_plan(query)
        split = self.splits.get(query.column)
        if split is None:
            return plan
        return replace(plan, components=mechanisms.mean_components(
            (plan.upper - plan.lower) / 2, query.epsilon, split))


def _mean_splits(allocation: planning.Allocation, best_split: bool
                 ) -> dict[str, mechanisms.MeanSplit]:
    """The allocation's split per column as the node's MeanSplit ({}: the node's own)."""
    if not best_split:
        return {}
    return {c: mechanisms.MeanSplit(s[0].count, s[0].sum, s[0].sum_squares)
            for c, s in allocation.splits.items()}


def optimised_networks(rng: np.random.Generator, settings: Settings, folder: Path
                       ) -> list[Outcome]:
    """Pooled intake mean and pooled change at the optimiser's per-member losses
    (`epsilon_small` per analysis on average, unequal budgets), with the node's split and
    (`_split`) with the optimiser's, on the same member data: members of 40 and the main
    sizes."""
    out: list[Outcome] = []
    for name, size in (("opt_tiny", settings.tiny[1]), ("opt", None)):
        draws = draw_network(rng, settings.tiny[0] if size else settings.members, True)
        if size:
            draws = tuple(replace(d, expected_size=size) for d in draws)
        truth = network_truth(draws)
        sizes = [d.expected_size for d in draws]
        variants = {v: optimised_allocation(sizes, settings.epsilon_small, v == "_split")
                    for v in ("", "_split")}
        stats_by: dict[tuple[str, str], list[pooling.MeanStats]] = {
            (v, c): [] for v in variants for c in OPTIMISED}
        for k, draw in enumerate(draws):
            tables = member_tables(draw, rng)
            for variant, allocation in variants.items():
                engine = open_engine(f"{name}{variant}{k}", tables, folder, SplitNode)
                assert isinstance(engine, SplitNode)
                engine.splits = _mean_splits(allocation, variant == "_split")
                for column in OPTIMISED:
                    query = optimised_query(column, allocation.losses[column][k])
                    stats_by[variant, column] += mean_stats([ask(engine, column, query)])
        for variant in variants:
            ratio, change = stats_by[variant, OPTIMISED[0]], stats_by[variant, OPTIMISED[1]]
            out += from_estimate(f"{name}{variant}_mean", truth.mean,
                                 partial(pooling.pooled_mean, ratio), contrast=False)
            out += from_estimate(f"{name}{variant}_change", truth.change,
                                 partial(pooling.pooled_mean, change), contrast=False)
    return out


# --------------------------------------------------------------------------- one network


@dataclass(frozen=True)
class NetworkResult:
    """Every quantity's outcome in network `index`."""

    index: int
    outcomes: tuple[Outcome, ...]


def simulate_network(index: int, settings: Settings, workdir: Path | None = None
                     ) -> NetworkResult:
    """Draw network `index` (seeded), run its nodes, and estimate every quantity of the
    settings' parts. The attrition and optimised-budget networks draw from their own seeded
    streams, so they are the same whichever other parts run."""
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp)
        if "main" in settings.parts:
            outcomes += main_networks(index, settings, folder)
        for part, (stream, simulate_part) in EXTRA_PARTS.items():
            if part in settings.parts:
                rng = np.random.default_rng([settings.seed, index, stream])
                outcomes += simulate_part(rng, settings, folder)
    return NetworkResult(index, tuple(outcomes))


EXTRA_PARTS: dict[str, tuple[int, Callable[[np.random.Generator, Settings, Path],
                                           list[Outcome]]]] = {
    "attrition": (1, attrition_networks), "optimised": (2, optimised_networks)}
"""Parts beside "main" (the original networks): their own stream number and simulation."""
PARTS = ("main", *EXTRA_PARTS)


def main_networks(index: int, settings: Settings, folder: Path) -> list[Outcome]:
    """The original networks of one index: main, homogeneous, wide and the small ones."""
    rng = np.random.default_rng([settings.seed, index])
    main = draw_network(rng, settings.members, heterogeneous=True)
    homogeneous = draw_network(rng, settings.members, heterogeneous=False)
    wide = draw_network(rng, settings.members_re, heterogeneous=True)
    truth = network_truth(main)
    change_only = {"change": change_query(settings)}
    released = run_members(main, queries(settings), "main", rng, folder)
    fe = run_members(homogeneous, change_only, "fe", rng, folder).releases["change"]
    re = run_members(wide, change_only, "re", rng, folder).releases["change"]
    small = small_networks(rng, settings, folder)
    by_query = released.releases
    return [*main_outcomes(by_query, truth, sum(released.sizes), settings),
            *meta_outcomes("fe", fe, MODEL.change_mean, fixed=True),
            *meta_outcomes("re", by_query["change"], MODEL.change_mean, fixed=False),
            *meta_outcomes(f"re{settings.members_re}", re, MODEL.change_mean, fixed=False),
            *slope_outcomes(by_query["dose"], MODEL.slope, settings.replicates, index),
            tau2_outcome("tau2_re", by_query["change"], tau2_truth()),
            tau2_outcome(f"tau2_re{settings.members_re}", re, tau2_truth()),
            *small]


# --------------------------------------------------------------------------- many networks


def _chunks(indices: range, parts: int) -> list[range]:
    """`indices` cut into `parts` contiguous ranges (some may be empty)."""
    bounds = np.linspace(indices.start, indices.stop, parts + 1).round().astype(int)
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _workdir() -> Path | None:
    """Ledgers live in RAM when possible (/dev/shm): their fsyncs are not what is measured."""
    return SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else None


def simulate_chunk(indices: range, settings: Settings) -> list[NetworkResult]:
    """Networks `indices`, one after the other (one worker's share)."""
    workdir = _workdir()
    return [simulate_network(i, settings, workdir) for i in indices]


def simulate(settings: Settings) -> tuple[NetworkResult, ...]:
    """All networks, in `settings.workers` processes (spawned: no forked OpenDP state)."""
    MODEL.check()
    indices = range(settings.networks)
    if settings.workers <= 1:
        return tuple(simulate_chunk(indices, settings))
    chunks = _chunks(indices, settings.workers * 4)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(settings.workers, mp_context=context) as pool:
        parts = pool.map(simulate_chunk, chunks, [settings] * len(chunks))
        return tuple(r for part in parts for r in part)


# --------------------------------------------------------------------------- summary


@dataclass(frozen=True)
class Quantity:
    """A row of the table: what is estimated, the truth targeted, and whether it is a target."""

    key: str
    label: str
    target: str
    contrast: bool = False  # an interval without the DP variance: shown, not a target


def quantities(settings: Settings) -> tuple[Quantity, ...]:
    """The table's rows in print order (labels name the settings used), for the parts run."""
    parts = {"main": main_quantities, "attrition": attrition_quantities,
             "optimised": optimised_quantities}
    return tuple(q for part, rows in parts.items() if part in settings.parts
                 for q in rows(settings))


def attrition_quantities(settings: Settings) -> tuple[Quantity, ...]:
    """Rows of the attrition networks (selective attrition, epsilon_small)."""
    eps, (k, size) = settings.epsilon_small, settings.tiny
    target = "intake: completers - leavers"
    return (Quantity("attr_tiny", f"attrition difference, {k} x {size:g}, eps {eps:g}", target),
            Quantity("attr_tiny_nodp", "  same, no DP variance term", target, contrast=True),
            Quantity("attr", f"attrition difference, K={settings.members}, eps {eps:g}",
                     target),
            Quantity("attr_nodp", "  same, no DP variance term", target, contrast=True))


def optimised_quantities(settings: Settings) -> tuple[Quantity, ...]:
    """Rows of the optimised-budget networks (unequal per-member losses, epsilon_small)."""
    eps, (k, size) = settings.epsilon_small, settings.tiny
    rows: list[Quantity] = []
    for name, where in (("opt_tiny", f"{k} x {size:g}"), ("opt", f"K={settings.members}")):
        for variant, how in (("", "node split"), ("_split", "opt. split")):
            rows += [Quantity(f"{name}{variant}_mean", f"pooled mean, auto eps {eps:g}, "
                              f"{where}, {how}", "network population mean"),
                     Quantity(f"{name}{variant}_change", f"pooled change, auto eps {eps:g}, "
                              f"{where}, {how}", "population mean change")]
    return tuple(rows)


def main_quantities(settings: Settings) -> tuple[Quantity, ...]:
    """Rows of the original networks (main, homogeneous, wide, small)."""
    eps, low, k, k_re = settings.epsilon, settings.epsilon_low, settings.members, \
        settings.members_re
    no_dp = "  same, no DP variance term"
    return (
        Quantity("mean", f"pooled mean, intake income ratio, eps {eps:g}",
                 "network population mean"),
        Quantity("mean_nodp", no_dp, "network population mean", contrast=True),
        Quantity("mean_low", f"pooled mean, same, eps {low:g} (DP-dominated)",
                 "network population mean"),
        Quantity("mean_low_nodp", no_dp, "network population mean", contrast=True),
        Quantity("change", "pooled paired change, bridge 0->12 m", "population mean change"),
        Quantity("d_z", "pooled Cohen's d_z", "pop. mean change / pop. SD"),
        Quantity("d_z_nodp", no_dp, "pop. mean change / pop. SD", contrast=True),
        Quantity("share", "pooled proportion, paid work at 12 m", "population share"),
        Quantity("rd", "risk difference paid work, MM - comp.", "pop. share MM - comparison"),
        Quantity("fe", f"fixed effect, member changes (homog., K={k})", "common member effect"),
        Quantity("fe_nodp", "  same, sampling variances only", "common member effect",
                 contrast=True),
        Quantity("re_wald", f"random effects DL-Wald (heterog., K={k})",
                 "mean of member effects"),
        Quantity("re_hksj", f"random effects HKSJ (heterog., K={k})", "mean of member effects"),
        Quantity(f"re{k_re}_wald", f"random effects DL-Wald (heterog., K={k_re})",
                 "mean of member effects"),
        Quantity(f"re{k_re}_hksj", f"random effects HKSJ (heterog., K={k_re})",
                 "mean of member effects"),
        Quantity("slope", f"slope change ~ sessions, bootstrap R={settings.replicates}",
                 "population OLS slope"),
        Quantity("slope_ols", "  same, textbook OLS SE (no DP term)", "population OLS slope",
                 contrast=True),
        Quantity("tau2_re", f"tau2 Q-profile (heterog., K={k}, eps {eps:g})",
                 "variance of member effects"),
        Quantity(f"tau2_re{k_re}", f"tau2 Q-profile (heterog., K={k_re}, eps {eps:g})",
                 "variance of member effects"),
        *small_quantities(settings),
    )


def small_quantities(settings: Settings) -> tuple[Quantity, ...]:
    """Rows of the small networks (d_z all / flagged / unflagged; tau2)."""
    target = "pop. mean change / pop. SD"
    rows: list[Quantity] = []
    for name, (k, size), eps in (("pilot", settings.pilot, settings.epsilon_small),
                                 ("pilot_eps1", settings.pilot, settings.epsilon),
                                 ("tiny", settings.tiny, settings.epsilon_small)):
        label = f"d_z, {k} x {size:g} members, eps {eps:g}"
        rows += [Quantity(f"dz_{name}", label, target),
                 Quantity(f"dz_{name}_unflagged", "  unflagged", target),
                 Quantity(f"dz_{name}_flagged", "  flagged (SD not well determined)", target,
                          contrast=True)]
        if k > 2:
            rows.append(Quantity(f"tau2_{name}", f"tau2 Q-profile, {k} x {size:g}, eps {eps:g}",
                                 "variance of member effects"))
    return tuple(rows)


@dataclass(frozen=True)
class Row:
    """Coverage and accuracy of one quantity over the networks where it was estimable."""

    quantity: Quantity
    runs: int
    failed: int  # networks where it was not estimable (PoolingError, MetaError)
    covered: int
    coverage: float
    coverage_ci: tuple[float, float]  # Clopper-Pearson 95 %
    width: float  # mean interval width
    bias: float  # mean of estimate - truth
    truth: float  # mean truth


def _outcomes(results: Sequence[NetworkResult], key: str) -> list[Outcome]:
    return [o for r in results for o in r.outcomes if o.key == key]


def summarise(results: Sequence[NetworkResult], quantity: Quantity) -> Row:
    """Coverage (with its binomial CI), mean width, bias and mean truth of one quantity."""
    found = _outcomes(results, quantity.key)
    usable = [o for o in found if o.estimate is not None]
    covered = sum(o.covered for o in usable)
    runs = len(usable)
    ci = stats.binomtest(covered, runs).proportion_ci(0.95) if runs else None
    widths = [(o.high or 0.0) - (o.low or 0.0) for o in usable]
    errors = [(o.estimate or 0.0) - o.truth for o in usable]
    return Row(quantity, runs, len(found) - runs, covered, covered / runs if runs else math.nan,
               (ci.low, ci.high) if ci else (math.nan, math.nan),
               float(np.mean(widths)) if runs else math.nan,
               float(np.mean(errors)) if runs else math.nan,
               float(np.mean([o.truth for o in found])) if found else math.nan)


@dataclass(frozen=True)
class RmseRatio:
    """Pooled-mean RMSE over the oracle RMSE, with an approximate 95 % Monte Carlo interval."""

    key: str
    rmse: float
    oracle: float
    ratio: float
    ratio_ci: tuple[float, float]


def rmse_ratio(results: Sequence[NetworkResult], key: str) -> RmseRatio:
    """sqrt(mean (estimate - truth)^2 / mean oracle MSE); CI by the delta method on the MSE."""
    found = [o for o in _outcomes(results, key)
             if o.estimate is not None and o.oracle_mse is not None]
    squared = np.array([((o.estimate or 0.0) - o.truth) ** 2 for o in found])
    oracle = float(np.mean([o.oracle_mse or 0.0 for o in found]))
    mse = float(squared.mean())
    relative = 1.96 * float(squared.std(ddof=1)) / (mse * math.sqrt(len(squared)))
    ratio = math.sqrt(mse / oracle)
    low = ratio * math.sqrt(max(0.0, 1 - relative))
    return RmseRatio(key, math.sqrt(mse), math.sqrt(oracle), ratio,
                     (low, ratio * math.sqrt(1 + relative)))


# --------------------------------------------------------------------------- printing


def format_table(rows: Sequence[Row]) -> str:
    """The coverage table as fixed-width text."""
    head = (f"{'quantity':<46} {'target':<28} {'n':>5} {'cover':>6} {'95% CI':>15} "
            f"{'width':>9} {'bias':>10} {'truth':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "" if r.quantity.contrast else "*" if TARGET[0] <= r.coverage <= TARGET[1] \
            else "!"
        ci = f"[{r.coverage_ci[0]:.3f},{r.coverage_ci[1]:.3f}]"
        fail = f"  ({r.failed} not estimable)" if r.failed else ""
        lines.append(f"{mark + r.quantity.label:<46} {r.quantity.target:<28} {r.runs:>5} "
                     f"{r.coverage:>6.3f} {ci:>15} {r.width:>9.4g} {r.bias:>+10.2e} "
                     f"{r.truth:>8.4g}{fail}")
    return "\n".join(lines)


def format_ratio(ratio: RmseRatio, settings: Settings, epsilon: float) -> str:
    return (f"pooled mean (eps {epsilon:g} per member query, clip {RATIO_CLIP}, H = "
            f"{(RATIO_CLIP[1] - RATIO_CLIP[0]) / 2:g}, K = {settings.members}): RMSE "
            f"{ratio.rmse:.4g}, oracle {ratio.oracle:.4g}, ratio {ratio.ratio:.3f} "
            f"(95% MC interval {ratio.ratio_ci[0]:.3f} to {ratio.ratio_ci[1]:.3f})")


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    parser.add_argument("--networks", type=int, default=defaults.networks)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--members", type=int, default=defaults.members)
    parser.add_argument("--members-re", type=int, default=defaults.members_re)
    parser.add_argument("--replicates", type=int, default=defaults.replicates,
                        help="parametric-bootstrap replicates per regression fit")
    parser.add_argument("--workers", type=int, default=min(defaults.workers, os.cpu_count() or 1))
    parser.add_argument("--parts", default=",".join(defaults.parts),
                        help=f"comma-separated networks to simulate, of {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"--parts: {', '.join(unknown) or 'none given'}; choose from "
                     f"{', '.join(PARTS)}")
    return Settings(networks=args.networks, seed=args.seed, members=args.members,
                    members_re=args.members_re, replicates=args.replicates,
                    workers=args.workers, parts=parts)


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    start = time.perf_counter()
    results = simulate(settings)
    elapsed = time.perf_counter() - start
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"settings: {settings}")
    print(f"model: {MODEL}")
    print(f"runtime: {elapsed:.1f} s for {settings.networks} networks "
          f"({elapsed / settings.networks:.3f} s each, {settings.workers} worker(s))\n")
    print(f"95 % CI coverage. Targets: * within {TARGET[0]} to {TARGET[1]}, ! outside; rows "
          "without a mark are contrasts (DP variance left out), not targets.")
    print(format_table([summarise(results, q) for q in quantities(settings)]))
    if "main" in settings.parts:
        print("\nRMSE of the pooled mean against the oracle of statistics.md (target <= 1.15):")
        for key, eps in (("mean", settings.epsilon), ("mean_low", settings.epsilon_low)):
            print("  " + format_ratio(rmse_ratio(results, key), settings, eps))
    if "optimised" in settings.parts:
        print("\n" + format_allocation(settings))


def format_allocation(settings: Settings) -> str:
    """The optimiser's allocation for the members of `tiny` (the main sizes vary by network)."""
    k, size = settings.tiny
    budgets = [round(b.epsilon, 3) for b in optimised_budgets(k, settings.epsilon_small)]
    lines = [f"optimised budgets, {k} x {size:g} members, budgets per member {budgets}:"]
    for best in (False, True):
        allocation = optimised_allocation([size] * k, settings.epsilon_small, best)
        for column, losses in allocation.losses.items():
            split = allocation.splits_of(column, k)[0]
            lines.append(f"  {'optimised' if best else 'node'} split {split.count:.4f} / "
                         f"{split.sum:.4f} / {split.sum_squares:.4f}, {column}: losses "
                         f"{[round(e, 4) for e in losses]}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
