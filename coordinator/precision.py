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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridgestat.coordinator import planning
from bridgestat.coordinator.analyses.base import ColumnFacts
from bridgestat.coordinator.planning import PlanItem, PlanningError, Prediction
from bridgestat.coordinator.results_doc import NETWORK, finite
from bridgestat.coordinator.studyfile import (
    PARTICIPANT,
    Analysis,
    MemberBudget,
    Study,
    StudyError,
    TableInfo,
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
        losses = (planning.loss_for_se(item, value) if name == "target_se"
                  else planning.loss_for_mde(item, value))
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
            ) -> tuple[Study, tuple[Precision, ...]]:
    """The study with every target precision turned into its loss, and each analysis's
    predicted precision at its loss over the reachable members (`budgets`)."""
    members = [b.member for b in budgets]
    earlier = earlier_results(study)
    resolved: list[Analysis] = []
    found: list[Precision] = []
    for a in study.analyses:
        built = plan_item(study, a, members, schema, earlier)
        if isinstance(built, str):
            if a.target is not None:
                raise StudyError(f"{study.source}: {a.label}.{a.target[0]}: {built}")
            resolved.append(a)
            found.append(Precision(a.id, reason=built))
            continue
        item, source = built
        if a.target is not None:
            a = a.with_epsilon(_target_loss(study, a, item, budgets))
        epsilon = float(a.params.epsilon)
        prediction = planning.predict(item, [epsilon] * len(members))
        resolved.append(a)
        found.append(Precision(a.id, epsilon, prediction, source))
    return Study(study.source, study.name, study.title, study.description, tuple(resolved),
                 study.occasions, study.sizes, study.expected_size, study.sizes_from,
                 study.multiplicity), tuple(found)


def describe(sources: Sequence[Precision]) -> list[str]:
    """The plan's footnote: what the figures are and where each analysis's sizes come from."""
    lines = [("network SE, MDE: the NETWORK estimate's predicted standard error and minimal "
              "detectable effect (80 % power, two-sided 5 %) from the expected sizes, the "
              "clip bounds and the loss (sampling and DP noise); —: not predicted.")]
    by_source: dict[str, list[str]] = {}
    for p in sources:
        by_source.setdefault(p.sizes_source or p.reason, []).append(p.analysis)
    for source, ids in by_source.items():
        lines.append(f"  {source}: {', '.join(ids)}")
    return lines
