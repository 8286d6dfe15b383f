"""Optimised budgets against the hand-set ones on the standard study, at equal total loss.

Usage: python benchmarks/planning_gain.py [--members 5] [--seed 1] [--reps 400]

1. Reads coordinator/studies/standard-effect-study.yaml (each analysis's statistic, clip or
   schema bounds and hand-set epsilon or rho) and the synthetic member sizes of `make demo`
   (coordinator/demo/synth.py's size draw for --members and --seed). Every analysis with a variance
   formula becomes a `planning.PlanItem` (mapping below); the quantile has none and keeps its
   hand loss, off every member's budget.
2. Each member's budget is what the hand plan spends there (pure epsilon plus OpenDP's
   conversion of the summed rho at delta 1e-6), the per-query cap that of `make demo`'s
   nodes, 2.5 (a rho of 0.1 is epsilon 2.2 at delta 1e-6, above the README's example cap 1).
3. Prints the weighted sum of the estimators' predicted variances (each in units of its
   outcome's planning SD, weight 1: `planning.weighted_variance`) for the hand plan (node
   split 0.2/0.5/0.3) and for `planning.optimise`, their ratio (target <= 0.75), with each
   pooled mean's predicted SD noise share under both (`planning.sd_noise_share`: the plan
   holds it at `planning.SD_SHARE_TARGET`; d_z is flagged above 0.3), and each analysis's
   predicted SE under both. Beside them: the hand losses with the planner's mean splits, and
   `planning.uniform`, one loss per analysis at every member (what a study's `epsilon: auto`
   sends: one query per analysis). The criterion with a fixed SD weight of 1/(4 sigma^2)
   (the planner before the SD constraint, `planning.optimise_weighted`) is printed too.
4. Simulates the pooled mean, paired change, d_z and proportion under the optimised plan with
   the node's own OpenDP measurements (`node.mechanisms`, the planned split) on data drawn with
   the planning mean and SD, pools with `coordinator.pooling`, and prints the realised SD of
   the estimates over --reps repetitions against the predicted SE (target: within 10 %).
   Data are seeded; OpenDP noise cannot be.

Mapping (planning guesses, stated here because the planner needs them): histograms -> the
share of one category (1/k) with k cells; proportions and follow-up -> share 0.3 (follow-up
0.8) with the query's cells; paired changes -> mean with clip [-D, D], mean 0.15 D / 3 and
SD D / 3 (d_z 0.15 for the Bridge change: mean 2, SD 13.3); means -> centre + H/6, SD H/3;
12-month sizes 0.75 of a member's participants; compare -> risk difference, 0.35 vs 0.25,
with 30 % of each member's participants as comparison; did -> the change over the
comparison participants (the smaller arm dominates); analyses marked `meta: true` pool by
random effects with tau2 = (D/15)^2; regressions -> `simple_slope_item` (x the first term).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bridgestat.coordinator.demo.synth import _default_sizes
from bridgestat.coordinator.statistics import planning as P
from bridgestat.coordinator.statistics import pooling
from bridgestat.coordinator.statistics.privacy import rho_to_epsilon
from bridgestat.node import mechanisms
from bridgestat.node.schema import load_schema

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "coordinator" / "studies" / "standard-effect-study.yaml"
DELTA = 1e-6
CAP = 2.5  # the per-query cap of `make demo`'s nodes (coordinator/demo/local.py)
FOLLOW_UP = 0.75
SCHEMA = load_schema()


def member_sizes(members: int, seed: int) -> tuple[float, ...]:
    """The participants per member that `synth.write_network(members, seed)` draws."""
    net_seq = np.random.SeedSequence(seed).spawn(members + 1)[0]
    return tuple(float(n) for n in _default_sizes(members, np.random.default_rng(net_seq)))


def _bounds(a: dict[str, Any]) -> tuple[float, float]:
    column = SCHEMA.table(a["table"]).column(a["column"])
    lower, upper = float(column.lower), float(column.upper)
    if a["statistic"] in ("paired_change", "did"):
        lower, upper = -(upper - lower), upper - lower
    if "clip" in a:
        lower, upper = (float(x) for x in a["clip"])
    return lower, upper


def _categories(a: dict[str, Any]) -> int:
    return len(SCHEMA.table(a["table"]).column(a["column"]).categories)


def _proportion(a: dict[str, Any], sizes: tuple[float, ...], share: float) -> P.PlanItem:
    chosen = len(a.get("categories", ())) or 1
    total = len(a["bins"]) + 1 if "bins" in a else _categories(a)
    return P.PlanItem(a["id"], P.Kind.PROPORTION, sizes, share=share, cells_in=chosen,
                      cells_out=max(1, total - chosen))


def _change(a: dict[str, Any], sizes: tuple[float, ...]) -> P.PlanItem:
    lower, upper = _bounds(a)
    d = (upper - lower) / 2
    pooling_rule = P.Pooling.RANDOM if a.get("meta") else P.Pooling.SUMS
    return P.PlanItem(a["id"], P.Kind.MEAN, sizes, lower=lower, upper=upper,
                      mean=0.15 * d / 3, sd=d / 3, pooling=pooling_rule, tau2=(d / 15) ** 2)


def _regression(a: dict[str, Any], sizes: tuple[float, ...]) -> P.PlanItem:
    terms = a["terms"]
    first, last = terms[0], terms[-1]
    if "category" in first:
        x_bounds, sd_x = (0.0, 1.0), 0.45
    else:
        lo, hi = first.get("clip") or _bounds({"table": a["table"], "column": first["column"],
                                              "statistic": "mean"})
        x_bounds, sd_x = (float(lo), float(hi)), (float(hi) - float(lo)) / 4
    y_lo, y_hi = last.get("clip") or (0.0, 100.0)
    hy = (float(y_hi) - float(y_lo)) / 2
    return P.simple_slope_item(a["id"], sizes, x_bounds, (float(y_lo), float(y_hi)), sd_x=sd_x,
                               sd_residual=hy / 3, n_terms=len(terms))


def plan_item(a: dict[str, Any], sizes: tuple[float, ...]) -> P.PlanItem | None:
    """The analysis as a plan item (None: no variance formula, keeps its hand loss)."""
    stat = a["statistic"]
    later = tuple(FOLLOW_UP * n for n in sizes)
    if stat == "histogram":
        k = _categories(a)
        return P.PlanItem(a["id"], P.Kind.PROPORTION, sizes, share=1 / k, cells_in=1,
                          cells_out=k)
    if stat == "mean":
        lower, upper = _bounds(a)
        h = (upper - lower) / 2
        return P.PlanItem(a["id"], P.Kind.MEAN, sizes, lower=lower, upper=upper,
                          mean=(lower + upper) / 2 + h / 6, sd=h / 3)
    if stat == "proportion":
        return _proportion(a, later if "occasion" in a else sizes, 0.3)
    if stat == "follow_up":
        return P.PlanItem(a["id"], P.Kind.PROPORTION, sizes, share=0.8)
    if stat == "paired_change":
        return _change(a, later)
    if stat == "transition":
        return _proportion(a, later, 0.3)
    if stat == "compare":
        return P.PlanItem(a["id"], P.Kind.RISK_DIFFERENCE, tuple(0.7 * n for n in later),
                          share=0.35, share_other=0.25, sizes_other=tuple(0.3 * n for n in later),
                          cells_in=len(a["categories"]),
                          cells_out=_categories(a) - len(a["categories"]))
    if stat == "did":
        return _change(a, tuple(0.3 * n for n in later))
    if stat == "regression":
        return _regression(a, later)
    return None


def share_items(analyses: Sequence[dict[str, Any]], sizes: tuple[float, ...]
                ) -> list[tuple[P.PlanItem, float]]:
    """The share-improved histograms of paired changes (their own release and loss)."""
    later = tuple(FOLLOW_UP * n for n in sizes)
    return [(P.PlanItem(f"{a['id']}_share", P.Kind.PROPORTION, later, share=0.5),
             float(a["share_epsilon"])) for a in analyses if "share_epsilon" in a]


def build(members: int, seed: int) -> tuple[list[P.PlanItem], P.Allocation, float, float]:
    """(items, hand allocation, pure epsilon kept off the budget, hand rho total)."""
    analyses = yaml.safe_load(STUDY.read_text(encoding="utf-8"))["analyses"]
    sizes = member_sizes(members, seed)
    items: list[P.PlanItem] = []
    losses: dict[str, tuple[float, ...]] = {}
    kept = 0.0
    for a in analyses:
        item = plan_item(a, sizes)
        loss = float(a.get("rho", a.get("epsilon", 0.0)))
        if item is None:
            kept += loss
            continue
        items.append(item)
        losses[item.name] = (loss,) * members
    for item, loss in share_items(analyses, sizes):
        items.append(item)
        losses[item.name] = (loss,) * members
    rho = math.fsum(losses[i.name][0] for i in items if i.rho)
    return items, P.Allocation(losses), kept, rho


def budgets_of(items: Sequence[P.PlanItem], hand: P.Allocation) -> list[P.MemberBudget]:
    members = items[0].members
    return [P.MemberBudget(P.member_spend(items, hand, k, DELTA), CAP, DELTA)
            for k in range(members)]


# --------------------------------------------------------------------------- simulation


def _draw(rng: np.random.Generator, item: P.PlanItem, n: int) -> np.ndarray:
    x = rng.normal(item.planning_mean, item.planning_sd, n)
    return np.clip(x, item.lower, item.upper)


def _release(values: np.ndarray, item: P.PlanItem, eps: float, split: P.Split
             ) -> pooling.MeanStats:
    count, total, squares = mechanisms.mean_components(
        item.half_width, eps, mechanisms.MeanSplit(split.count, split.sum, split.sum_squares))
    z, w = mechanisms.fixed_point(values, item.lower, item.upper)
    ints = np.zeros(len(values), dtype=np.int64)

    def noisy(c: mechanisms.Component, data: np.ndarray) -> pooling.Noisy:
        return pooling.Noisy(float(c.release(data)) * c.unit, c.noise_variance)

    return pooling.MeanStats(noisy(count, ints), noisy(total, z), noisy(squares, w),
                             item.centre)


def simulate_mean(item: P.PlanItem, allocation: P.Allocation, reps: int, seed: int,
                  d_z: bool = False) -> np.ndarray:
    """Pooled estimates over `reps` networks: data seeded, noise OpenDP's."""
    rng = np.random.default_rng(seed)
    eps = allocation.losses[item.name]
    splits = allocation.splits_of(item.name, item.members)
    out = []
    for _ in range(reps):
        stats = [_release(_draw(rng, item, round(n)), item, e, s)
                 for n, e, s in zip(item.sizes, eps, splits, strict=True)]
        try:
            out.append(pooling.pooled_change(stats).d_z.estimate if d_z
                       else pooling.pooled_mean(stats).estimate)
        except pooling.PoolingError:
            continue
    return np.array(out)


def simulate_share(item: P.PlanItem, allocation: P.Allocation, reps: int, seed: int
                   ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    eps = allocation.losses[item.name]
    cells = item.cells_in + item.cells_out
    out = []
    for _ in range(reps):
        pairs = []
        for n, e in zip(item.sizes, eps, strict=True):
            hist = mechanisms.histogram_component(cells, e)
            chosen = rng.random(round(n)) < item.share
            codes = np.where(chosen, rng.integers(0, item.cells_in, round(n)),
                             rng.integers(item.cells_in, cells, round(n))).astype(np.int64)
            counts = np.asarray(hist.release(codes), dtype=np.float64)
            v = hist.noise_variance
            pairs.append((pooling.Noisy(float(counts[:item.cells_in].sum()), item.cells_in * v),
                          pooling.Noisy(float(counts[item.cells_in:cells].sum()),
                                        item.cells_out * v)))
        out.append(pooling.pooled_proportion(pairs).estimate)
    return np.array(out)


# --------------------------------------------------------------------------- printing


def compare_table(items: Sequence[P.PlanItem], hand: P.Allocation, best: P.Allocation) -> str:
    lines = [(f"{'analysis':<28} {'kind':<16} {'hand loss':>9} {'opt loss (members)':>30} "
             f"{'SE hand':>10} {'SE opt':>10} {'ratio':>6}")]
    for item in items:
        se_hand = P.predict(item, hand.losses[item.name],
                            hand.splits_of(item.name, item.members)).se
        se_best = P.predict(item, best.losses[item.name],
                            best.splits_of(item.name, item.members)).se
        opt = " ".join(f"{e:.3f}" for e in best.losses[item.name])
        unit = "rho" if item.rho else ""
        lines.append(f"{item.name:<28} {item.kind.value + '/' + item.pooling.value:<16} "
                     f"{hand.losses[item.name][0]:>6.3f}{unit:>3} {opt:>30} {se_hand:>10.4g} "
                     f"{se_best:>10.4g} {se_best / se_hand:>6.3f}")
    return "\n".join(lines)


def simulation_rows(items: Sequence[P.PlanItem], best: P.Allocation, reps: int, seed: int
                    ) -> list[str]:
    by_name = {i.name: i for i in items}
    change = by_name["a06_debt_step_change"]
    chosen = [("a02_bridge_intake", "pooled mean", False), ("a06_debt_step_change",
              "pooled paired change", False)]
    rows = []
    for name, label, _ in chosen:
        item = by_name[name]
        draws = simulate_mean(item, best, reps, seed)
        rows.append((label + f" ({name})", P.predict(item, best.losses[name],
                                                      best.splits_of(name, item.members)).se,
                     float(draws.std(ddof=1)), len(draws)))
    dz_item = replace(change, name=change.name, kind=P.Kind.D_Z)
    draws = simulate_mean(change, best, reps, seed + 1, d_z=True)
    rows.append((f"d_z (a06_debt_step_change, d = {change.planning_mean / change.planning_sd:g})",
                 P.predict(dz_item, best.losses[change.name],
                           best.splits_of(change.name, change.members)).se,
                 float(draws.std(ddof=1)), len(draws)))
    share = by_name["a05_paid_work"]
    draws = simulate_share(share, best, reps, seed + 2)
    rows.append(("proportion (a05_paid_work)", P.predict(share, best.losses[share.name]).se,
                 float(draws.std(ddof=1)), len(draws)))
    out = [(f"{'estimator':<52} {'predicted SE':>12} {'realised SD':>12} {'ratio':>6} "
           f"{'(MC +-)':>8} {'runs':>5}")]
    for label, predicted, realised, runs in rows:
        mc = 1.96 / math.sqrt(2 * (runs - 1))
        out.append(f"{label:<52} {predicted:>12.4g} {realised:>12.4g} "
                   f"{realised / predicted:>6.3f} {mc:>8.3f} {runs:>5}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reps", type=int, default=400)
    args = parser.parse_args(argv)
    items, hand, kept, rho = build(args.members, args.seed)
    budgets = budgets_of(items, hand)
    start = time.perf_counter()
    best = P.optimise(items, budgets)
    elapsed = time.perf_counter() - start
    print(f"study: {STUDY.relative_to(ROOT)}; members {args.members} (seed {args.seed}), "
          f"sizes {[round(n) for n in items[0].sizes]}")
    print(f"{len(items)} analyses planned; quantile kept at its hand loss ({kept:g} epsilon); "
          f"hand rho total {rho:g} = epsilon {rho_to_epsilon(rho, DELTA):.3f} at delta {DELTA:g}")
    print(f"budget per member (hand spend, planned analyses): {budgets[0].epsilon:.4f} epsilon; "
          f"per-query cap {CAP:g}; optimiser {elapsed:.2f} s")
    for k, b in enumerate(budgets):
        spent = P.member_spend(items, best, k, DELTA)
        assert spent <= b.epsilon * (1 + 1e-6), (k, spent, b.epsilon)
    hand_var, best_var = P.weighted_variance(items, hand), P.weighted_variance(items, best)
    print(f"\nestimators' weighted variance (SD units): hand {hand_var:.5g}, optimised "
          f"{best_var:.5g}")
    print(f"ratio optimised / hand {best_var / hand_var:.3f} ({1 - best_var / hand_var:.1%} "
          "lower; target >= 25 %)")
    shares = [(i.name, P.sd_noise_share(i, hand.losses[i.name]),
               P.sd_noise_share(i, best.losses[i.name], best.splits_of(i.name, i.members)))
              for i in items if P.constrained(i)]
    print(f"DP noise SD of the pooled s^2 / planning variance (plan target "
          f"{P.SD_SHARE_TARGET:g}; d_z flagged above {pooling.SD_DETERMINED:g}), hand -> "
          "optimised: " + "; ".join(f"{n} {h:.2f} -> {b:.2f}" for n, h, b in shares))
    split_only = P.Allocation(hand.losses, best.splits)
    same = P.uniform(items, budgets)
    for k, b in enumerate(budgets):
        assert P.member_spend(items, same, k, DELTA) <= b.epsilon * (1 + 1e-6)
    for label, alloc in (("hand losses, planner's splits", split_only),
                         ("one loss per analysis at every member (epsilon: auto)", same)):
        var = P.weighted_variance(items, alloc)
        worst = max(P.sd_noise_share(i, alloc.losses[i.name],
                                     alloc.splits_of(i.name, i.members))
                    for i in items if P.constrained(i))
        print(f"{label}: estimators {var:.5g} (ratio {var / hand_var:.3f}), largest SD share "
              f"{worst:.2f}")
    fixed = P.optimise_weighted(items, budgets)
    print(f"fixed SD weight 1/(4 sigma^2) (no constraint): estimators "
          f"{P.weighted_variance(items, fixed):.5g} (ratio "
          f"{P.weighted_variance(items, fixed) / hand_var:.3f}); its criterion "
          f"{P.objective(items, fixed):.5g} against the hand plan's {P.objective(items, hand):.5g}")
    print()
    print(compare_table(items, hand, best))
    print(f"\nsimulation under the optimised plan ({args.reps} networks, OpenDP noise; target: "
          "realised within 10 % of predicted)")
    print("\n".join(simulation_rows(items, best, args.reps, args.seed)))


if __name__ == "__main__":
    main()
