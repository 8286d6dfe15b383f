"""Empirical privacy audit of the node's releases: an epsilon lower bound per statistic.

Usage: python benchmarks/privacy_audit.py [--releases 100000] [--control-releases 20000]
                                          [--alpha 0.001] [--workers 2]

Prints, per statistic (count, mean, histogram, paired change, each charged epsilon 1), the
audit's epsilon lower bound for the node's pipeline and for a deliberately under-noised
negative control, with the chosen event and its counts. A benchmark: it asserts nothing. The
statistical test (tests/statistical/test_privacy_audit.py) runs the same core with 20,000
releases per dataset (5,000 for the negative control) and asserts.

Neighbouring datasets (statistics.md, "Testing DP"). D is one synthetic member of ~100
participants (`benchmarks.validity.member_tables`, fixed data seed, typed as `node.data`
delivers them). D' = D plus one participant at the worst case for every audited query at once:
intake income_to_norm_ratio 2.0 (the query's upper clip; both clip bounds are H = 1 from the
centre), bridge_total 50 at intake and 90 at month 12 (a change of +40, the clip bound), and
work_status paid_full_time at month 12. So D' adds 1 to the count, (1, +H, +H^2) to the
mean's (count, centred sum, sum of squares), 1 to the paid_full_time cell of the histogram,
and (1, +40, +40^2) to the paired change's three outputs.

Which code runs. Per release the node's own measurement path below the ledger: the plan from
`planner.compile_query` (the node's schema and a policy allowing epsilon 1), the cell rows
from `frames.Frames.cells` (deterministic; computed once per dataset) and `Engine._cell(plan,
rows)` on an `Engine` instance, exactly what `Engine._release` calls per cell. `Engine.run`
itself (ledger reserve and commit per query, audit entry) measured ~1.3 ms per query on
/dev/shm and ~2 ms on disk, against 0.16-0.42 ms for `_cell`: 160,000 releases through
`run` would not fit the CI budget. The loss the audit compares with is the one `Engine.run`
charges: one real run per query against a temporary ledger (`charged`). OpenDP noise comes
from OpenSSL and cannot be seeded.

Negative control. The same plan with every component's measurement rebuilt from the same
OpenDP transformation and `then_laplace(scale / 2)` (its OpenDP map(1) is twice the claimed
loss) while the component still claims the calibrated epsilon: a release whose noise is half
of what is charged. It exists only here, never in node/.

Audited scalar per statistic: count -> the count; histogram -> the affected cell
(paid_full_time). Mean and paired change release three outputs, each with a share of the
epsilon (0.2 / 0.5 / 0.3); any single output can show at most its share (the centred sum
alone at most 0.5, so a sum-only audit could never approach the charged 1, and would not catch
the negative control either: it has 2 x 0.5 = 1.0). The audited scalar is therefore the
Neyman-Pearson statistic of the whole release, score = sum_k eps_k clip((y_k - a_k) / D_k,
0, 1), with a_k the output's exact value on D (computed with the node's `fixed_point`), D_k
its shift from D to D' (1, H, H^2) and eps_k the loss each component claims. For discrete
Laplace noise this is the log likelihood ratio up to a constant, and its top event (every
output at least a_k + D_k) has probability ratio exactly exp(sum eps_k) = exp(charged):
the event is tight.

The audit (statistics.md). Each sample set is split in halves. On the first half, over
thresholds t (sample quantiles of the pooled scores, plus their atoms) and both directions
(E = {score >= t}, ratio P_D'(E) / P_D(E); E = {score <= t}, ratio P_D(E) / P_D'(E)), pick the
event with the largest *lower-bounded* log ratio: ln(p_lo / q_hi) with the same
Clopper-Pearson bounds as below (the plain empirical log ratio is largest, infinite, on tail
events one sample set never reaches, so its maximiser is noise). On the second half, which the
choice never saw: p_lo = Clopper-Pearson lower bound of the numerator probability, q_hi =
upper bound of the denominator's, each one-sided at 1 - alpha (alpha = 0.001: together the
bound holds with probability >= 1 - 2 alpha, Bonferroni); epsilon_lb = ln(p_lo / q_hi).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import opendp.prelude as dp
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import benchmarks.validity from the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import validity
from bridgestat.node.engine import Engine
from bridgestat.node.frames import CellRows, Frames
from bridgestat.node.ledger import Ledger
from bridgestat.node.loss import Epsilon
from bridgestat.node.mechanisms import FIXED_POINT, Component, fixed_point
from bridgestat.node.planner import Plan, Policy, compile_query
from bridgestat.node.query import INTAKE, QuerySpec, Statistic

Floats = npt.NDArray[np.float64]
Key = TypeVar("Key", bound=tuple[Any, ...])

EPSILON = 1.0
ALPHA = 0.001  # one-sided, per probability
POLICY = Policy(max_epsilon_per_query=EPSILON)
SCHEMA = validity.SCHEMA
AFFECTED = "paid_full_time"  # the histogram cell the added participant lands in
QUERIES = {
    "count": QuerySpec(Statistic.COUNT, "participant", "", EPSILON),
    "mean": QuerySpec(Statistic.MEAN, "assessment", "income_to_norm_ratio", EPSILON,
                      occasion=INTAKE, clip=validity.RATIO_CLIP),
    "histogram": QuerySpec(Statistic.HISTOGRAM, "assessment", "work_status", EPSILON,
                           occasion=validity.TWELVE_MONTHS),
    "paired_change": QuerySpec(Statistic.PAIRED_CHANGE, "assessment", "bridge_total", EPSILON,
                               occasion=validity.TWELVE_MONTHS, baseline=INTAKE,
                               clip=validity.CHANGE_CLIP),
}
DATA_SEED = 7
CHUNK = 2500  # releases per worker task


# --------------------------------------------------------------------------- datasets


@lru_cache(maxsize=2)
def dataset(neighbour: bool) -> dict[str, pd.DataFrame]:
    """D (neighbour False) or D' = D plus the worst-case participant (module docstring)."""
    rng = np.random.default_rng(DATA_SEED)
    draw = validity.MemberDraw(expected_size=100.0, comparison=True, effect=0.0,
                               ratio_location=0.9, paid_shift=0.0)
    tables = validity.member_tables(draw, rng)
    if not neighbour:
        return tables
    participant, assessment = tables["participant"], tables["assessment"]
    pid = pd.array(["p_worst"], dtype=participant.participant_id.dtype)
    arm = pd.Categorical(["mobility_mentoring"], dtype=participant.arm.dtype)
    work = assessment.work_status.dtype
    added = pd.DataFrame({"participant_id": pid, "arm": arm, "total_sessions": [60.0]})
    rows = pd.DataFrame({
        "participant_id": pd.array(["p_worst", "p_worst"], dtype=pid.dtype),
        "assessment_seq": [0.0, 1.0], "months_since_intake": [0.0, 12.0],
        "bridge_total": [50.0, 90.0],
        "income_to_norm_ratio": [validity.RATIO_CLIP[1], np.nan],
        "work_status": pd.Categorical([None, AFFECTED], dtype=work)})
    return {"participant": pd.concat([participant, added], ignore_index=True),
            "assessment": pd.concat([assessment, rows], ignore_index=True)}


# --------------------------------------------------------------------------- the pipeline


def _int_vectors() -> Any:
    return dp.vector_domain(dp.atom_domain(T=dp.i64))


def under_noised(component: Component, n_categories: int) -> Component:
    """The negative control: the same transformation, Laplace at half the calibrated scale,
    still claiming the calibrated epsilon."""
    space = (_int_vectors(), dp.symmetric_distance())
    if component.name == "count":
        transformation = dp.t.make_count(*space)
    elif component.name == "sum":
        transformation = dp.t.make_clamp(*space, (-FIXED_POINT, FIXED_POINT)) >> dp.t.then_sum()
    elif component.name == "sum_squares":
        transformation = dp.t.make_clamp(*space, (0, FIXED_POINT)) >> dp.t.then_sum()
    elif component.name == "histogram":
        transformation = dp.t.make_count_by_categories(*space,
                                                       categories=list(range(n_categories)))
    else:
        raise ValueError(component.name)
    broken = transformation >> dp.m.then_laplace(component.scale / 2)
    assert broken.map(1) > 1.9 * component.epsilon  # really twice the claimed loss
    return replace(component, measurement=broken)


@lru_cache(maxsize=8)
def plan(name: str, broken: bool) -> Plan:
    compiled = compile_query(QUERIES[name], SCHEMA, POLICY)
    if not broken:
        return compiled
    k = len(compiled.labels) - 1
    return replace(compiled, components=tuple(under_noised(c, k) for c in compiled.components))


@lru_cache(maxsize=2)
def frames(neighbour: bool) -> Frames:
    return Frames(dataset(neighbour), SCHEMA)


def cell_rows(name: str, neighbour: bool) -> CellRows:
    (rows,) = frames(neighbour).cells(plan(name, False))  # no group-by: one cell
    return rows


_FOLDER = tempfile.TemporaryDirectory(prefix="privacy-audit-")  # removed at exit


@lru_cache(maxsize=1)
def engine() -> Engine:
    """An Engine instance for `_cell` (which touches neither ledger nor frames)."""
    ledger = Ledger(Path(_FOLDER.name) / "ledger.sqlite", "audit", Epsilon.of(1_000_000),
                    POLICY.delta)
    return Engine("audit", SCHEMA, frames(False), ledger, POLICY)


def release_values(name: str, neighbour: bool, broken: bool, n: int) -> Floats:
    """n releases of the query's single cell: an (n, outputs) array of the released values."""
    p, rows, node = plan(name, broken), cell_rows(name, neighbour), engine()
    out = np.empty((n, len(p.labels) or len(p.components)))
    for i in range(n):
        cell = node._cell(p, rows)
        out[i] = [v.value for v in cell.values]
    return out


def charged(name: str) -> float:
    """The epsilon `Engine.run` charges for the query."""
    return charged_loss(QUERIES[name], POLICY)[0]


def charged_loss(query: QuerySpec, policy: Policy) -> tuple[float, float]:
    """The (epsilon, rho) `Engine.run` charges for `query` (one real run, temporary ledger);
    the ledger and the release must agree."""
    with tempfile.TemporaryDirectory(prefix="privacy-audit-") as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite", "audit", Epsilon.of(100), policy.delta)
        node = Engine("audit", SCHEMA, frames(False), ledger, policy)
        release = node.run("audit-charge", query).release
        spent = ledger.state().spent_loss
    for what, booked, said in (("epsilon", spent.epsilon, release.charged),
                               ("rho", spent.rho, release.charged_rho)):
        if not math.isclose(float(booked), said, rel_tol=1e-12, abs_tol=1e-15):
            raise AssertionError(f"{query.statistic.value}: ledger spent {what} {booked}, "
                                 f"release says {said}")
    return release.charged, release.charged_rho


# --------------------------------------------------------------------------- audited scalar


@dataclass(frozen=True)
class Scorer:
    """Maps a release (its output values) to the audited scalar (module docstring)."""

    columns: tuple[int, ...]
    exact: tuple[float, ...]  # a_k on D
    shift: tuple[float, ...]  # D_k, D -> D'
    weight: tuple[float, ...]  # eps_k; empty: the raw value of the single column

    def __call__(self, values: Floats) -> Floats:
        if not self.weight:
            return values[:, self.columns[0]]
        y = values[:, list(self.columns)]
        steps = np.clip((y - np.array(self.exact)) / np.array(self.shift), 0.0, 1.0)
        return np.asarray(steps @ np.array(self.weight), dtype=np.float64)


def scorer(name: str) -> Scorer:
    p = plan(name, False)
    if name == "count":
        return Scorer((0,), (), (), ())
    if name == "histogram":
        return Scorer((p.labels.index(AFFECTED),), (), (), ())
    rows = cell_rows(name, False)
    values = rows.values[~np.isnan(rows.values)]
    z, w = fixed_point(values, p.lower, p.upper)
    count, total, squares = p.components
    half = (p.upper - p.lower) / 2
    exact = (float(len(z)), float(z.sum()) * total.unit, float(w.sum()) * squares.unit)
    return Scorer((0, 1, 2), exact, (1.0, half, half * half),
                  tuple(c.epsilon for c in (count, total, squares)))


# --------------------------------------------------------------------------- the audit


def clopper_pearson(k: npt.ArrayLike, n: int, alpha: float) -> tuple[Floats, Floats]:
    """One-sided (1 - alpha) lower and upper bounds of a binomial probability."""
    k = np.asarray(k, dtype=np.float64)
    lower = np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
    upper = np.where(k < n, stats.beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1)), 1.0)
    return lower, upper


def log_ratio_bound(k_num: npt.ArrayLike, k_den: npt.ArrayLike, n: int, alpha: float
                    ) -> Floats:
    lower, _ = clopper_pearson(k_num, n, alpha)
    _, upper = clopper_pearson(k_den, n, alpha)
    with np.errstate(divide="ignore"):
        return np.asarray(np.log(lower) - np.log(upper), dtype=np.float64)


@dataclass(frozen=True)
class Audit:
    epsilon_lb: float
    event: str  # e.g. "score >= 0.73", the direction names the dataset favoured
    favours: str  # "D'" (numerator D') or "D"
    k_num: int  # evaluation half: samples in the event under the numerator's dataset
    k_den: int
    n: int  # evaluation samples per dataset

    def describe(self) -> str:
        return (f"eps_lb {self.epsilon_lb:.3f}  event {self.event} (favours {self.favours}): "
                f"{self.k_num} vs {self.k_den} of {self.n}")


def _at_least(sorted_values: Floats, t: Floats) -> npt.NDArray[np.int64]:
    return len(sorted_values) - np.searchsorted(sorted_values, t, side="left")


def _at_most(sorted_values: Floats, t: Floats) -> npt.NDArray[np.int64]:
    return np.searchsorted(sorted_values, t, side="right")


def audit(d: Floats, d_prime: Floats, alpha: float = ALPHA) -> Audit:
    """Threshold audit of scalar outputs on D and D' (same number of samples each)."""
    if len(d) != len(d_prime):
        raise ValueError("equal sample sizes expected")
    half = len(d) // 2
    pick_d, pick_dp = np.sort(d[:half]), np.sort(d_prime[:half])
    test_d, test_dp = np.sort(d[half:2 * half]), np.sort(d_prime[half:2 * half])
    pooled = np.concatenate([pick_d, pick_dp])
    grid = np.quantile(pooled, np.linspace(0, 1, 1001), method="inverted_cdf")
    values, counts = np.unique(pooled, return_counts=True)
    atoms = values[counts >= max(2, len(pooled) // 1000)]
    t = np.unique(np.concatenate([grid, atoms]))
    up = log_ratio_bound(_at_least(pick_dp, t), _at_least(pick_d, t), half, alpha)
    down = log_ratio_bound(_at_most(pick_d, t), _at_most(pick_dp, t), half, alpha)
    i_up, i_down = int(np.argmax(up)), int(np.argmax(down))
    threshold = np.array([t[i_up] if up[i_up] >= down[i_down] else t[i_down]])
    if up[i_up] >= down[i_down]:
        k_num, k_den = int(_at_least(test_dp, threshold)[0]), int(_at_least(test_d, threshold)[0])
        event, favours = f"score >= {threshold[0]:.6g}", "D'"
    else:
        k_num, k_den = int(_at_most(test_d, threshold)[0]), int(_at_most(test_dp, threshold)[0])
        event, favours = f"score <= {threshold[0]:.6g}", "D"
    bound = float(log_ratio_bound(k_num, k_den, len(test_d), alpha))
    return Audit(bound, event, favours, k_num, k_den, len(test_d))


# --------------------------------------------------------------------------- design


def false_failure(p: float, epsilon: float, n: int, alpha: float = ALPHA) -> float:
    """P(epsilon_lb > epsilon) for an event whose true ratio is exactly exp(epsilon):
    numerator probability p, denominator p exp(-epsilon), n evaluation samples each (exact
    binomial sums)."""
    return _exceeds(p, p * math.exp(-epsilon), epsilon, n, alpha)


def detection(p: float, true_epsilon: float, charged_epsilon: float, n: int,
              alpha: float = ALPHA) -> float:
    """P(epsilon_lb > charged) for an event with ratio exp(true_epsilon)."""
    return _exceeds(p, p * math.exp(-true_epsilon), charged_epsilon, n, alpha)


def _exceeds(p: float, q: float, epsilon: float, n: int, alpha: float) -> float:
    k = np.arange(n + 1)
    lower, upper = clopper_pearson(k, n, alpha)
    # lb > epsilon <=> upper[k_den] < lower[k_num] exp(-epsilon); upper increases with k_den
    below = np.searchsorted(upper, lower * math.exp(-epsilon), side="left")
    return float(np.sum(stats.binom.pmf(k, n, p) * stats.binom.cdf(below - 1, n, q)))


def worst_false_failure(epsilon: float, n: int, alpha: float = ALPHA) -> float:
    """Largest `false_failure` over the events an epsilon-DP mechanism allows with ratio
    exp(epsilon): p <= exp(epsilon) / (1 + exp(epsilon)) (from the complement's ratio)."""
    top = math.exp(epsilon) / (1 + math.exp(epsilon))
    return max(false_failure(float(p), epsilon, n, alpha)
               for p in np.geomspace(1e-3, top, 20))


# --------------------------------------------------------------------------- sampling


def _task(args: tuple[str, bool, bool, int]) -> Floats:
    return release_values(*args)


def sample_in_pool(task: Callable[[tuple[Any, ...]], Floats], counts: dict[Key, int],
                   workers: int) -> dict[Key, Floats]:
    """`counts[key]` releases per key: `task((*key, n))` returns n of them, run in chunks of
    CHUNK in `workers` spawned processes (`task` must be a module-level function)."""
    tasks = [(key, min(CHUNK, total - start)) for key, total in counts.items()
             for start in range(0, total, CHUNK)]
    arguments = [(*key, n) for key, n in tasks]
    if workers <= 1:
        parts = [task(a) for a in arguments]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = list(pool.map(task, arguments))
    out: dict[Key, list[Floats]] = {key: [] for key in counts}
    for (key, _), part in zip(tasks, parts, strict=True):
        out[key].append(part)
    return {key: np.concatenate(chunks) for key, chunks in out.items()}


def sample(releases: int, control_releases: int, workers: int
           ) -> dict[tuple[str, bool, bool], Floats]:
    """Releases per (statistic, neighbour, broken), in `workers` spawned processes."""
    counts = {(name, neighbour, broken): control_releases if broken else releases
              for name in QUERIES for neighbour in (False, True) for broken in (False, True)}
    return sample_in_pool(_task, counts, workers)


@dataclass(frozen=True)
class Result:
    name: str
    charged: float
    correct: Audit
    control: Audit


def run(releases: int, control_releases: int, workers: int, alpha: float = ALPHA
        ) -> dict[str, Result]:
    samples = sample(releases, control_releases, workers)
    results = {}
    for name in QUERIES:
        score = scorer(name)
        correct = audit(score(samples[name, False, False]), score(samples[name, True, False]),
                        alpha)
        control = audit(score(samples[name, False, True]), score(samples[name, True, True]),
                        alpha)
        results[name] = Result(name, charged(name), correct, control)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=100_000)
    parser.add_argument("--control-releases", type=int, default=20_000)
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    results = run(args.releases, args.control_releases, args.workers, args.alpha)
    print(f"releases per dataset {args.releases} (control {args.control_releases}), "
          f"one-sided confidence {1 - args.alpha} per probability")
    for r in results.values():
        print(f"{r.name:14s} charged {r.charged:.6g}")
        print(f"  node pipeline     {r.correct.describe()}")
        print(f"  negative control  {r.control.describe()}")


if __name__ == "__main__":
    main()
