"""Run a study file against the network and save every result.

`plan` checks the study against the members' schema and budgets and shows what each member
would spend; `run` refuses before spending anything when a check fails, then runs the
analyses in order, printing progress per analysis and member, and saves after every analysis
a results document (the queries, every member's release, the loss, the tables, the
meta-analyses and regressions) from which `bridgestat report` rebuilds the report without
spending budget again. Idempotency keys are `<run id>:<analysis id>:<n>`, so re-running with
the same run id (`--run-id`) replays what the nodes already answered, free.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from bridgestat.coordinator import tables
from bridgestat.coordinator.api import NETWORK, Network, QueryResult
from bridgestat.coordinator.fanout import Failure
from bridgestat.coordinator.meta import MetaError
from bridgestat.coordinator.query import Query
from bridgestat.coordinator.regression import RegressionResult
from bridgestat.coordinator.results_doc import is_number
from bridgestat.coordinator.studyfile import (Analysis, MemberBudget, MemberCost, Study,
                                              StudyError, check_affordable, check_against,
                                              check_per_query, plan_costs, schema_tables)

FORMAT = "bridgestat-study-results/1"
STANDARD_STUDY = Path(__file__).with_name("studies") / "standard-effect-study.yaml"
Printer = Callable[[str], None]


@dataclass(frozen=True)
class StudyPlan:
    study: Study
    budgets: tuple[MemberBudget, ...]
    costs: tuple[MemberCost, ...]
    unreachable: dict[str, str]

    def format(self) -> str:
        lines = [f"Study {self.study.name}: {len(self.study.analyses)} analyses", "",
                 "analysis                         statistic       loss per member"]
        for a in self.study.analyses:
            spend = a.spend()
            loss = f"rho {spend.rho:g}" if spend.rho else f"epsilon {spend.epsilon:g}"
            lines.append(f"{a.id:<32} {a.statistic:<15} {loss}")
        total = self.study.spend()
        lines += ["", f"total per member: epsilon {total.epsilon:g}"
                  + (f" + rho {total.rho:g}" if total.rho else ""), "",
                  "member        spent before   study   spent after   total   left after"]
        for c in self.costs:
            flag = "" if c.affordable else "   EXCEEDS BUDGET"
            lines.append(f"{c.member:<13} {c.before:>12.4g} {c.study:>7.4g} {c.after:>13.4g} "
                         f"{c.total:>7.4g} {c.remaining_after:>12.4g}{flag}")
        for member, reason in self.unreachable.items():
            lines.append(f"{member:<13} unreachable: {reason}")
        return "\n".join(lines)


def plan(study: Study, net: Network) -> StudyPlan:
    """Check the study against every reachable member; raise StudyError on the first fault."""
    infos = net.node_infos()
    reachable = {m: i for m, i in infos.items() if not isinstance(i, Failure)}
    unreachable = {m: f"{i.code}: {i.message}" for m, i in infos.items()
                   if isinstance(i, Failure)}
    if not reachable:
        raise StudyError(f"{study.source}: no member is reachable, nothing can be checked")
    versions = {f"{i.schema.name} {i.schema.version}" for i in reachable.values()}
    if len(versions) > 1:
        raise StudyError(f"members publish different schemas ({', '.join(sorted(versions))})")
    first = next(iter(reachable.values()))
    check_against(study, schema_tables(first.schema))
    budgets = tuple(MemberBudget(m, i.budget.total.epsilon, i.budget.spent.epsilon,
                                 i.budget.spent.rho, i.budget.total.delta or 1e-6,
                                 i.budget.max_per_query.epsilon)
                    for m, i in reachable.items())
    check_per_query(study, budgets)
    return StudyPlan(study, budgets, tuple(plan_costs(study, budgets)), unreachable)


# -- running --------------------------------------------------------------------------------


@dataclass
class Output:
    """What one analysis produced, before it is written to the results document."""

    tables: list[tuple[str, str, pd.DataFrame]] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    regression: dict[str, Any] | None = None
    results: list[QueryResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, name: str, caption: str, frame: pd.DataFrame) -> int:
        self.tables.append((name, caption, frame))
        return len(self.tables) - 1


def run(study: Study, net: Network, out: Path, run_id: str | None = None,
        echo: Printer = print) -> dict[str, Any]:
    """Run every analysis; refuse first if anything does not fit or cannot be afforded."""
    checked = plan(study, net)
    earlier = _earlier_run(out, run_id, study)
    saved = _saved_analyses(earlier)  # the nodes replay these for free
    pending = replace(study, analyses=tuple(a for a in study.analyses if a.id not in saved))
    check_affordable(pending, plan_costs(pending, checked.budgets))
    run_id = run_id or uuid.uuid4().hex[:12]
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "format": FORMAT, "run_id": run_id,
        "study": {"name": study.name, "title": study.title,
                  "description": study.description, "file": study.source},
        "created": _now(), "members": [m.name for m in net.members], "analyses": [],
        "budget": [], "budget_before": _budget_before(checked, earlier)}
    save(doc, out)  # before any query: a resumed run counts the whole study's spending
    echo(f"== Study {study.name} (run {run_id}): {len(study.analyses)} analyses, "
         f"{len(net.members)} members")
    for a in study.analyses:
        echo(f"\n-- [{a.index + 1}/{len(study.analyses)}] {a.id}: {a.title}")
        output = _RUNNERS[a.statistic](net, a, f"{run_id}:{a.id}")
        _progress(output, echo)
        doc["analyses"].append(_analysis_doc(a, output, doc["members"]))
        save(doc, out)
    doc["budget"] = _budget(checked, net, doc["budget_before"])
    save(doc, out)
    echo(f"\n== Saved {out / 'results.json'}")
    return doc


def _earlier_run(out: Path, run_id: str | None, study: Study) -> dict[str, Any] | None:
    """What an earlier (killed) run of this study with this run id saved in `out`, if any."""
    if run_id is None:
        return None
    try:
        doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(doc, dict) or doc.get("format") != FORMAT
            or doc.get("run_id") != run_id
            or not isinstance(doc.get("study"), dict)
            or doc["study"].get("name") != study.name
            or not isinstance(doc.get("analyses"), list)):
        return None
    return doc


def _saved_analyses(earlier: dict[str, Any] | None) -> set[str]:
    """The analyses the earlier run saved. Their queries are replayed by the nodes for free,
    so resuming a run needs budget only for the rest. The analysis that was in flight at the
    kill is not among them: its cost is still counted, so the check can only be cautious,
    never short."""
    if earlier is None:
        return set()
    return {a["id"] for a in earlier["analyses"] if isinstance(a, dict) and "id" in a}


def _budget_before(checked: StudyPlan, earlier: dict[str, Any] | None) -> dict[str, float]:
    """Each member's spent epsilon before the study: as the earlier run found it when this
    run resumes one (what it charged is the study's too), else as the plan found it now."""
    found = earlier.get("budget_before") if earlier is not None else None
    before = {b.member: b.spent for b in checked.budgets}
    if isinstance(found, dict):
        before.update({m: float(v) for m, v in found.items()
                       if m in before and is_number(v) and math.isfinite(v)})
    return before


def save(doc: dict[str, Any], out: Path) -> Path:
    """Write results.json atomically (a crash never leaves half a file)."""
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False), encoding="utf-8")
    tmp.replace(path)
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _progress(output: Output, echo: Printer) -> None:
    for result in output.results:
        parts = []
        for member in result.members:
            if member in result.failures:
                fail = result.failures[member]
                parts.append(f"{member} FAILED ({fail.code})")
            else:
                release = result.releases[member]
                replay = ", replayed" if release.replayed else ""
                parts.append(f"{member} ok{replay}")
        echo(f"   {result.query.statistic}: " + "; ".join(parts))
    if output.tables:
        name, _, frame = output.tables[0]
        echo(_short(frame))
    for note in output.notes:
        echo(f"   note: {note}")


def _short(frame: pd.DataFrame) -> str:
    columns = [c for c in ("member", "category", "measure", "term", "transition", "estimate",
                           "ci_low", "ci_high", "n", "status") if c in frame.columns]
    shown = frame[columns]
    if len(shown) > 24:
        shown = shown[shown.member == NETWORK]
    if "status" in shown:
        shown = shown.assign(status=shown.status.astype(str).str.slice(0, 40))
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3g}")


def _budget(checked: StudyPlan, net: Network, before: dict[str, float]
            ) -> list[dict[str, Any]]:
    after = {m: i for m, i in net.node_infos().items() if not isinstance(i, Failure)}
    rows = []
    for b in checked.budgets:
        info = after.get(b.member)
        spent = info.budget.spent.epsilon if info is not None else math.nan
        rows.append({"member": b.member, "epsilon_before": before[b.member],
                     "epsilon_after": spent, "epsilon_study": spent - before[b.member],
                     "epsilon_total": b.total, "delta": b.delta})
    return rows


# -- one runner per statistic -----------------------------------------------------------------


def _query(a: Analysis, statistic: str, epsilon: float, **extra: Any) -> Query:
    return Query(statistic, a.table, a.column, epsilon, a.where,
                 group_by=extra.pop("group_by", a.group_by), occasion=a.occasion,
                 baseline=extra.pop("baseline", None), bin_edges=extra.pop("bin_edges", a.bins),
                 clip=extra.pop("clip", None), **extra)


def _simple(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    if a.statistic == "count":
        result = net.run(_query(a, "count", a.epsilon, bin_edges=()), f"{key}:0")
        frame = tables.count_table(result)
    elif a.statistic == "mean":
        result = net.run(_query(a, "mean", a.epsilon, clip=a.clip), f"{key}:0")
        frame = tables.mean_table(result)
    else:  # proportion
        result = net.run(_query(a, "histogram", a.epsilon), f"{key}:0")
        frame = tables.proportion_table(result, a.categories)
    out.results.append(result)
    index = out.table(a.statistic, a.title, frame)
    out.plots.append({"kind": "member_vs_network", "table": index,
                      "facet": a.group_by[0] if a.group_by else None, "label": a.title})
    _meta(out, a, frame)
    return out


def _histogram(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    result = net.run(_query(a, "histogram", a.epsilon), f"{key}:0")
    out.results.append(result)
    index = out.table("shares", a.title, tables.histogram_table(result))
    out.plots.append({"kind": "shares", "table": index, "category": "category"})
    return out


def _paired_change(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    result = net.run(_query(a, "paired_change", a.epsilon, baseline=a.baseline, clip=a.clip),
                     f"{key}:0")
    out.results.append(result)
    frame = tables.paired_change_table(result)
    index = out.table("change", f"Mean change with Cohen's d_z: {a.title}", frame)
    out.plots.append({"kind": "member_vs_network", "table": index, "facet": None,
                      "label": "Mean change"})
    if a.improvement:
        shares = net.run(_query(a, "histogram", a.share_epsilon, baseline=a.baseline,
                                bin_edges=()), f"{key}:1")
        out.results.append(shares)
        index = out.table("share_improved", f"Share improved ({a.improvement})",
                          tables.share_improved_table(shares, a.improvement))
        out.plots.append({"kind": "member_vs_network", "table": index, "facet": None,
                          "label": "Share improved"})
    _meta(out, a, frame)
    return out


def _follow_up(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    result = net.run(_query(a, "histogram", a.epsilon, baseline=a.baseline, bin_edges=()),
                     f"{key}:0")
    out.results.append(result)
    index = out.table("followed_up", a.title, tables.followed_up_table(result))
    out.plots.append({"kind": "member_vs_network", "table": index, "facet": None,
                      "label": "Share with a follow-up"})
    return out


def _transition(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    result = net.run(_query(a, "histogram", a.epsilon, baseline=a.baseline, group_by=(),
                            bin_edges=()), f"{key}:0")
    out.results.append(result)
    index = out.table("transitions", a.title, tables.transition_table(result))
    out.plots.append({"kind": "transition", "table": index})
    if a.categories:
        diff = tables.paired_difference_table(result, a.categories)
        index = out.table("paired_difference",
                          f"Share in {', '.join(a.categories)}: follow-up minus baseline "
                          "(same participants)", diff)
        out.plots.append({"kind": "member_vs_network", "table": index, "facet": None,
                          "label": "Change in share"})
    return out


def _compare(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    result = net.run(_query(a, "histogram", a.epsilon, group_by=(a.group,)), f"{key}:0")
    out.results.append(result)
    frame = tables.compare_table(result, a.categories, a.group, a.groups)
    index = out.table("comparison", f"{a.groups[0]} vs {a.groups[1]}: {a.title}", frame)
    out.plots.append({"kind": "member_vs_network", "table": index, "facet": "measure",
                      "sharex": False, "label": a.title})
    if a.meta:
        _meta(out, a, frame[frame.measure == "risk_difference"], "risk difference")
    return out


def _did(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    result = net.run(_query(a, "paired_change", a.epsilon, baseline=a.baseline, clip=a.clip,
                            group_by=(a.group,)), f"{key}:0")
    out.results.append(result)
    frame = tables.did_table(result, a.group, a.groups)
    index = out.table("did", f"Difference-in-differences ({a.groups[0]} minus "
                      f"{a.groups[1]}): {a.title}", frame)
    out.plots.append({"kind": "member_vs_network", "table": index, "facet": None,
                      "label": "Difference in mean change"})
    out.notes.append("NETWORK pools the members that have both arms (fixed effect, "
                     "inverse variance); members without a comparison arm are named.")
    _meta(out, a, frame)
    return out


def _regression(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    query = Query("cross_products", a.table, "", 0.0, a.where, occasion=a.occasion,
                  rho=a.rho, terms=a.terms)
    result = net.run(query, f"{key}:0")
    out.results.append(result)
    fits = tables.regression_fits(result, replicates=a.replicates, seed=0)
    index = out.table("coefficients", a.title, tables.regression_table(fits))
    out.plots.append({"kind": "coefficients", "regression": NETWORK, "table": index})
    out.regression = {m: (f.to_dict() if isinstance(f, RegressionResult) else {"status": f})
                      for m, f in fits.items()}
    out.notes.append("Standard errors from a parametric bootstrap with fresh noise at the "
                     "public scales; se_ols, which ignores the DP noise, is shown for contrast.")
    return out


def _quantile(net: Network, a: Analysis, key: str) -> Output:
    out = Output()
    first = net.run(Query("quantile", a.table, a.column, a.epsilon / 2, a.where,
                          occasion=a.occasion, quantile=a.q, bin_edges=a.candidates),
                    f"{key}:0")
    grid = net.run(Query("histogram", a.table, a.column, a.epsilon / 2, a.where,
                         occasion=a.occasion, bin_edges=a.candidates[1:-1]), f"{key}:1")
    out.results += [first, grid]
    index = out.table("quantile", a.title, tables.quantile_table(first, grid, a.q, a.candidates))
    out.plots.append({"kind": "member_vs_network", "table": index, "facet": None,
                      "label": f"Quantile {a.q:g}"})
    out.notes.append("Member values come from OpenDP's exponential mechanism (no closed-form "
                     "SE); the NETWORK value and CI from the pooled histogram.")
    return out


def _meta(out: Output, a: Analysis, frame: pd.DataFrame, label: str = "") -> None:
    if not a.meta:
        return
    try:
        result = tables.meta_from_table(frame)
    except MetaError as exc:
        out.notes.append(f"meta-analysis not possible: {exc}")
        return
    out.meta.append({**result.to_dict(), "label": label or a.title})
    out.plots.append({"kind": "forest", "meta": len(out.meta) - 1, "label": label or a.title})


_RUNNERS: dict[str, Callable[[Network, Analysis, str], Output]] = {
    "count": _simple, "mean": _simple, "proportion": _simple, "histogram": _histogram,
    "paired_change": _paired_change, "follow_up": _follow_up, "transition": _transition,
    "compare": _compare, "did": _did, "regression": _regression, "quantile": _quantile,
}


# -- the results document ---------------------------------------------------------------------


def _analysis_doc(a: Analysis, output: Output, members: list[str]) -> dict[str, Any]:
    return {
        "id": a.id, "number": a.number, "title": a.title, "description": a.description,
        "audience": a.audience, "kind": a.statistic, "spec": _plain(dict(a.spec)),
        "tables": [{"name": n, "caption": c, "columns": [str(x) for x in f.columns],
                    "rows": _records(f)} for n, c, f in output.tables],
        "plots": output.plots, "meta": output.meta, "regression": output.regression,
        "loss": _loss(output.results, members), "notes": output.notes,
        "queries": [_query_doc(r) for r in output.results],
    }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _plain(value: Any) -> Any:
    """JSON-safe values: NaN and infinities become null, tuples lists, numpy scalars Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _loss(results: list[QueryResult], members: list[str]) -> dict[str, dict[str, float]]:
    loss = {m: {"epsilon": 0.0, "rho": 0.0} for m in members}
    for result in results:
        for member, release in result.releases.items():
            pure = release.charged if not release.charged_rho else 0.0
            loss[member]["epsilon"] += pure
            loss[member]["rho"] += release.charged_rho
    return loss


def _query_doc(result: QueryResult) -> dict[str, Any]:
    return {"key": result.key, "query": _plain(asdict(result.query)),
            "releases": {m: _plain(asdict(r)) for m, r in result.releases.items()},
            "failures": {m: f"{f.code}: {f.message}" for m, f in result.failures.items()}}
