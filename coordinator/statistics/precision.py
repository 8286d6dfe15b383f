"""A study's predicted precision before spending: each analysis's NETWORK SE and minimal
detectable effect, and the loss a target precision needs.

`resolve` maps every analysis that planning covers (`Kind.plan_item`) to a `planning.PlanItem`
over the reachable members and predicts its NETWORK standard error and minimal detectable
effect (80 % power, two-sided 5 %) at its loss. An analysis that gives `target_se` or
`target_mde` instead of `epsilon` gets the loss that reaches it (`planning.loss_for_se`, the
same loss at every member, since one query is fanned out to all), refused when a member's
per-query cap or remaining budget cannot pay it.

Member sizes. The noisy counts a node released earlier cost nothing to reuse, but `plan` does
not query (it spends nothing), so the sizes come, in this order, from
1. the analysis's own `expected_size` (one number, or `{member: size}`),
2. the study's `sizes: {member: size}` and `expected_size` (every other member),
3. `sizes_from: <results.json>` of an earlier run: the noisy n of the same analysis id in
   its first table (the same population), else the members' noisy participant count (an
   ungrouped, unfiltered `count` of `participant`): released figures, reused free.
The plan names the source of every analysis's sizes; without any, it shows "—".
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bridgestat.coordinator.analyses.base import ColumnFacts
from bridgestat.coordinator.statistics import planning
from bridgestat.coordinator.statistics.planning import PlanItem, PlanningError, Prediction
from bridgestat.coordinator.studies.results_doc import NETWORK, finite
from bridgestat.coordinator.studies.studyfile import (
    PARTICIPANT,
    Analysis,
    MemberBudget,
    Study,
    StudyError,
    TableInfo,
    plan_costs,
    plans_precision,
)

NO_SIZES = "no expected sizes (declare sizes or expected_size, or sizes_from)"


@dataclass(frozen=True)
class Precision:
    """One analysis's predicted NETWORK precision at its loss, or why there is none."""

    analysis: str
    epsilon: float | None = None  # the loss per member predicted at (a target's: chosen)
    prediction: Prediction | None = None
    sizes_source: str = ""
    reason: str = ""  # why there is no prediction ("" when there is one)

    @property
    def se(self) -> float | None:
        return self.prediction.se if self.prediction else None

    @property
    def mde(self) -> float | None:
        return self.prediction.mde if self.prediction else None


@dataclass(frozen=True)
class Sizes:
    """Each member's expected size for one analysis and where the figures come from."""

    values: tuple[float, ...]
    source: str


def column_facts(a: Analysis, schema: Mapping[str, TableInfo]) -> ColumnFacts | None:
    """The public bounds and category count of the analysis's column (its table, else
    `participant`), or None when it names none."""
    name = getattr(a.params, "column", "")
    for table in (schema.get(str(getattr(a.params, "table", ""))), schema.get(PARTICIPANT)):
        if table is not None and name in table.columns:
            info = table.columns[name]
            return ColumnFacts(info.lower, info.upper, len(info.categories))
    return None


def earlier_results(study: Study) -> dict[str, Any] | None:
    """The results document `sizes_from` names, or None; a StudyError names the key."""
    if study.sizes_from is None:
        return None
    try:
        doc = json.loads(study.sizes_from.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StudyError(f"{study.source}: sizes_from: cannot read {study.sizes_from}: "
                         f"{exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("analyses"), list):
        raise StudyError(f"{study.source}: sizes_from: {study.sizes_from} is not a study's "
                         "results.json (no analyses)")
    return doc


def _member_n(analysis: Mapping[str, Any], column: str) -> dict[str, float]:
    """member -> the `column` of its one ok row in the analysis's first table."""
    tables = analysis.get("tables") or []
    rows = tables[0].get("rows") or [] if tables and isinstance(tables[0], dict) else []
    found: dict[str, list[float]] = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("member") in (None, NETWORK):
            continue
        value = finite(row.get(column))
        if row.get("status") == "ok" and value is not None:
            found.setdefault(str(row["member"]), []).append(value)
    return {m: v[0] for m, v in found.items() if len(v) == 1}


def _released(doc: Mapping[str, Any], a: Analysis, members: Sequence[str]
              ) -> tuple[dict[str, float], str] | None:
    """Sizes from an earlier run: the same analysis's noisy n, else the participant count."""
    analyses = [x for x in doc.get("analyses") or [] if isinstance(x, dict)]
    same = next((x for x in analyses if x.get("id") == a.id), None)
    if same is not None:
        found = _member_n(same, "n")
        if all(m in found for m in members):
            return found, f"noisy n of {a.id} released earlier"
    for x in analyses:
        spec: dict[str, Any] = x["spec"] if isinstance(x.get("spec"), dict) else {}
        if (x.get("kind") == "count" and spec.get("table", PARTICIPANT) == PARTICIPANT
                and not any(spec.get(k) for k in ("where", "group_by", "occasion"))):
            found = _member_n(x, "estimate")
            if all(m in found for m in members):
                return found, f"noisy participant count ({x.get('id')}) released earlier"
    return None


def member_sizes(study: Study, a: Analysis, members: Sequence[str],
                 earlier: Mapping[str, Any] | None) -> Sizes | str:
    """Each member's expected size for `a` (module docstring's order), or why none."""
    own = a.expected_size
    if isinstance(own, (int, float)):
        return Sizes(tuple(float(own) for _ in members), "expected_size of the analysis")
    if isinstance(own, Mapping):
        missing = [m for m in members if m not in own]
        if missing:
            return f"expected_size of the analysis names no size for {missing[0]}"
        return Sizes(tuple(own[m] for m in members), "expected_size of the analysis")
    declared = {m: study.sizes.get(m, study.expected_size) for m in members}
    if all(v is not None for v in declared.values()):
        return Sizes(tuple(float(declared[m] or 0) for m in members),
                     "sizes declared in the study file")
    if earlier is not None:
        found = _released(earlier, a, members)
        if found is not None:
            return Sizes(tuple(found[0][m] for m in members),
                         f"{found[1]} ({study.sizes_from})")
    return NO_SIZES


def plan_item(study: Study, a: Analysis, members: Sequence[str],
              schema: Mapping[str, TableInfo], earlier: Mapping[str, Any] | None
              ) -> tuple[PlanItem, str] | str:
    """The analysis's planning item and its sizes' source, or why it has none."""
    if not plans_precision(a.kind):
        return f"planning does not cover a {a.statistic}"
    sizes = member_sizes(study, a, members, earlier)
    if isinstance(sizes, str):
        return sizes
    if any(not n > 1 for n in sizes.values):
        return f"an expected size is not above 1 ({sizes.source})"
    try:
        item = a.kind.plan_item(a.params, a.id, sizes.values, column_facts(a, schema),
                                a.guess)
    except PlanningError as exc:
        return str(exc)
    if item is None:
        return "planning does not cover these parameters (group_by, secure)"
    return item, sizes.source


def _target_loss(study: Study, a: Analysis, item: PlanItem,
                 budgets: Sequence[MemberBudget]) -> float:
    """The loss per member that reaches the analysis's target, refused (naming the analysis
    and field) when no loss reaches it or a member's cap or remaining budget cannot pay it."""
    assert a.target is not None
    name, value = a.target
    where = f"{study.source}: {a.label}.{name}"
    try:
        losses = (planning.loss_for_se(item, value, splits=split_of(a)) if name == "target_se"
                  else planning.loss_for_mde(item, value, splits=split_of(a)))
    except PlanningError as exc:
        raise StudyError(f"{where}: {exc}") from None
    loss = losses[0]
    for b in budgets:
        if loss > b.max_per_query * (1 + 1e-12):
            raise StudyError(f"{where}: {value:g} needs epsilon {loss:.4g} per member, more "
                             f"than {b.member}'s largest loss per query ({b.max_per_query:g})")
        if loss > b.total - b.spent:
            raise StudyError(f"{where}: {value:g} needs epsilon {loss:.4g} per member, more "
                             f"than {b.member} has left ({b.total - b.spent:.4g})")
    return loss


def resolve(study: Study, budgets: Sequence[MemberBudget], schema: Mapping[str, TableInfo]
            ) -> tuple[Study, tuple[Precision, ...], AutoShare | None]:
    """The study with every target precision and every `epsilon: auto` turned into a loss
    (and a mean's split), each paired change's planning `sd` as its d_z flag's reference,
    and each analysis's predicted precision at its loss over the reachable members."""
    members = [b.member for b in budgets]
    earlier = earlier_results(study)
    analyses: list[Analysis] = []
    items: dict[str, tuple[PlanItem, str] | str] = {}
    for a in study.analyses:
        built = plan_item(study, a, members, schema, earlier)
        items[a.id] = built
        if isinstance(built, str) and (a.target is not None or a.auto):
            key = a.target[0] if a.target is not None else "epsilon"
            raise StudyError(f"{study.source}: {a.label}.{key}: {built}")
        if a.target is not None and not isinstance(built, str):
            a = a.with_epsilon(_target_loss(study, a, built[0], budgets))
        analyses.append(a)
    share = auto_share(replace(study, analyses=tuple(analyses)), budgets,
                       {k: v[0] for k, v in items.items() if not isinstance(v, str)})
    chosen = share.losses if share is not None else {}
    splits = share.splits if share is not None else {}
    analyses = [with_split(a.with_epsilon(chosen[a.id]), splits.get(a.id))
                if a.id in chosen else a for a in analyses]
    analyses = [with_reference_sd(a) for a in analyses]
    found: list[Precision] = []
    for a in analyses:
        built = items[a.id]
        if isinstance(built, str):
            found.append(Precision(a.id, reason=built))
            continue
        epsilon = float(a.params.epsilon)
        found.append(Precision(a.id, epsilon, planning.predict(
            built[0], [epsilon] * len(members), split_of(a)), built[1]))
    return replace(study, analyses=tuple(analyses)), tuple(found), share


def split_of(a: Analysis) -> planning.Split:
    """The split of a mean's loss the analysis sends (its own, else the node's default)."""
    own = getattr(a.params, "split", None)
    return planning.Split(*own) if own is not None else planning.HAND_SPLIT


def with_split(a: Analysis, split: planning.Split | None) -> Analysis:
    """The analysis sending `split` with its mean (None: unchanged)."""
    if split is None:
        return a
    shares = (split.count, split.sum, split.sum_squares)
    return replace(a, entry=a.entry.model_copy(update={"split": shares}))


def with_reference_sd(a: Analysis) -> Analysis:
    """A paired change whose study states a planning `sd` judges its d_z flag against it
    (`reference_sd`), unless the analysis sets reference_sd itself: the SD the researcher
    planned with is a better reference than the clip's half-width / 3."""
    sd = a.guess.sd
    if sd is None or "reference_sd" not in type(a.params).model_fields \
            or getattr(a.params, "reference_sd", None) is not None:
        return a
    return replace(a, entry=a.entry.model_copy(update={"reference_sd": sd}))


@dataclass(frozen=True)
class AutoShare:
    """What the `epsilon: auto` analyses share per member and the objective it reaches."""

    pool: float  # epsilon per member the auto analyses' own queries share
    losses: Mapping[str, float]
    weighted: float  # sum w_a Var_a / scale_a^2 at the chosen losses and splits
    weighted_equal: float  # ... at an equal split of the pool and the node's default split
    splits: Mapping[str, planning.Split] = field(default_factory=dict)  # chosen mean splits
    sd_shares: tuple[float, float] = (0.0, 0.0)  # largest SD share (planning.sd_noise_share)
    sd_weights: Mapping[str, float] = field(default_factory=dict)  # calibrated, per mean


def auto_share(study: Study, budgets: Sequence[MemberBudget],
               items: Mapping[str, PlanItem]) -> AutoShare | None:
    """The losses of the study's `epsilon: auto` analyses (None when it has none).

    One query carries one loss to every member, so each auto analysis gets one loss a_e for
    all members. Its pooled variance is V_a + C_a / e_a^2 with C_a the DP variance summed over
    members at loss 1; minimising sum w_a (V_a + C_a / e_a^2) / scale_a^2 under sum e_a <=
    pool gives the cube-root rule e_a ~ (w_a C_a / scale_a^2)^(1/3), water-filled under the
    tightest per-query cap (`planning.water_fill`). The pool is the study's `auto_budget`, no
    more than the tightest member has left after every other analysis, less the auto
    analyses' other queries (a paired change's `share_epsilon`). A mean's (or change's) split
    of its loss is chosen too (`planning.best_split`, the same at every member for pooled
    sums) unless the analysis names its own; the query carries it (`Query.split`), and C_a
    is then the DP variance with the planner's SD term (`Prediction.criterion`) at that
    split. The SD terms' weights are the multipliers that hold each pooled mean's SD noise at
    `planning.SD_SHARE_TARGET` (`planning.calibrate`), so the rule minimises the estimators'
    variances with every mean's SD determined. A loss is rounded down to four significant
    digits (never more than the rule's)."""
    auto = [a for a in study.analyses if a.auto]
    if not auto:
        return None
    assert study.auto_budget is not None  # parse_study refuses auto without it
    others = replace(study, analyses=tuple(a for a in study.analyses if not a.auto))
    left = min(c.total - c.after for c in plan_costs(others, budgets)) \
        if others.analyses else min(b.total - b.spent for b in budgets)
    extra = sum(a.with_epsilon(0.0).spend().epsilon for a in auto)
    pool = min(study.auto_budget, left) - extra
    first = auto[0]
    if not pool > 0:
        raise StudyError(f"{study.source}: {first.label}.epsilon: auto has nothing to share: "
                         f"auto_budget {study.auto_budget:g}, the tightest member has "
                         f"{left:.4g} left after the other analyses, their other queries "
                         f"take {extra:g}")
    cap = min(b.max_per_query for b in budgets)

    def solve(chosen: tuple[PlanItem, ...]) -> planning.Allocation:
        splits = {a.id: _chosen_split(a, i) for a, i in zip(auto, chosen, strict=True)}
        coefficients = [i.weight * _dp_at_one(i, splits[i.name]) / i.scale**2 for i in chosen]
        return _allocation(chosen, planning.water_fill(coefficients, pool, [cap] * len(auto),
                                                       1 / 3), splits)

    chosen, best = planning.calibrate([replace(items[a.id], weight=a.weight) for a in auto],
                                      solve)
    splits = {a.id: _chosen_split(a, i) for a, i in zip(auto, chosen, strict=True)}
    losses = [_round_down(best.losses[i.name][0]) for i in chosen]
    equal = [min(pool / len(auto), cap)] * len(auto)
    found, hand = _allocation(chosen, losses, splits), _allocation(chosen, equal, {})
    return AutoShare(pool, {a.id: e for a, e in zip(auto, losses, strict=True)},
                     planning.weighted_variance(chosen, found),
                     planning.weighted_variance(chosen, hand),
                     {k: v for k, v in splits.items() if v is not None},
                     (_largest_sd_share(chosen, found), _largest_sd_share(chosen, hand)),
                     {i.name: i.sd_weight for i in chosen if planning.constrained(i)})


def _largest_sd_share(items: Sequence[PlanItem], allocation: planning.Allocation) -> float:
    """The largest predicted SD share of the constrained means at the allocation (0: none)."""
    return max((planning.sd_noise_share(i, allocation.losses[i.name],
                                        allocation.splits_of(i.name, i.members))
                for i in items if planning.constrained(i)), default=0.0)


def _chosen_split(a: Analysis, item: PlanItem) -> planning.Split | None:
    """The planner's split for an auto mean without its own (None: not a mean, or set)."""
    if item.kind not in (planning.Kind.MEAN, planning.Kind.D_Z) \
            or getattr(a.params, "split", None) is not None or "split" not in type(a.params).model_fields:
        return None
    return planning.best_split(item)


def _dp_at_one(item: PlanItem, split: planning.Split | None) -> float:
    """The item's DP variance (with the means' SD term) at loss 1 per member."""
    found = planning.predict(item, [1.0] * item.members, split or planning.HAND_SPLIT)
    return found.criterion - found.sampling


def _allocation(items: Sequence[PlanItem], losses: Sequence[float],
                splits: Mapping[str, planning.Split | None]) -> planning.Allocation:
    return planning.Allocation(
        {i.name: (e,) * i.members for i, e in zip(items, losses, strict=True)},
        {i.name: (split,) * i.members for i in items
         if (split := splits.get(i.name)) is not None})


def _round_down(loss: float) -> float:
    """Four significant digits, rounded down (a loss that reads well and stays within)."""
    step = 10.0 ** (math.floor(math.log10(loss)) - 3)
    return math.floor(loss / step) * step


def describe(sources: Sequence[Precision], auto: AutoShare | None = None) -> list[str]:
    """The plan's footnote: what the figures are, where each analysis's sizes come from and
    how the `epsilon: auto` analyses share their loss."""
    lines = [("network SE, MDE: the NETWORK estimate's predicted standard error and minimal "
              "detectable effect (80 % power, two-sided 5 %) from the expected sizes, the "
              "clip bounds and the loss (sampling and DP noise); —: not predicted.")]
    by_source: dict[str, list[str]] = {}
    for p in sources:
        by_source.setdefault(p.sizes_source or p.reason, []).append(p.analysis)
    for source, ids in by_source.items():
        lines.append(f"  {source}: {', '.join(ids)}")
    if auto is not None:
        gain = 1 - auto.weighted / auto.weighted_equal if auto.weighted_equal > 0 else 0.0
        versus = f"{100 * gain:.1f} % lower" if gain >= 0 else f"{-100 * gain:.1f} % higher"
        lines.append(f"epsilon: auto: {len(auto.losses)} analyses share epsilon "
                     f"{auto.pool:.4g} per member by the cube-root rule; their weighted "
                     f"variance sum w Var / sd^2 is {auto.weighted:.4g} against "
                     f"{auto.weighted_equal:.4g} for an equal split at the node's default "
                     f"mean split ({versus}), with each mean's SD noise at "
                     f"most {auto.sd_shares[0]:.2f} of its planning variance against "
                     f"{auto.sd_shares[1]:.2f} (target {planning.SD_SHARE_TARGET:g}; d_z is "
                     "flagged above 0.3)")
        for name, split in auto.splits.items():
            lines.append(f"  {name}: mean split count/sum/sum_squares {split.count:.3f} / "
                         f"{split.sum:.3f} / {split.sum_squares:.3f} (sent with the query)")
    return lines
