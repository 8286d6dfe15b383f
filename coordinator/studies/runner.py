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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pandas as pd

from bridgestat.coordinator.analyses import Output
from bridgestat.coordinator.api import NETWORK, Network, QueryResult
from bridgestat.coordinator.client.fanout import Failure
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.statistics import precision, tables
from bridgestat.coordinator.statistics.meta import MetaError
from bridgestat.coordinator.statistics.multiplicity import adjust
from bridgestat.coordinator.statistics.precision import AutoShare, Precision
from bridgestat.coordinator.studies.results_doc import is_number
from bridgestat.coordinator.studies.studyfile import (
    EFFECTS,
    Analysis,
    MemberBudget,
    MemberCost,
    MultiplicitySpec,
    Study,
    StudyError,
    TableInfo,
    check_affordable,
    check_against,
    check_per_query,
    plan_costs,
    schema_tables,
)

FORMAT = "bridgestat-study-results/1"
STANDARD_STUDY = Path(__file__).with_name("standard-effect-study.yaml")
Printer = Callable[[str], None]


@dataclass(frozen=True)
class StudyPlan:
    study: Study
    budgets: tuple[MemberBudget, ...]
    costs: tuple[MemberCost, ...]
    unreachable: dict[str, str]
    tables: Mapping[str, TableInfo] = field(default_factory=dict)  # the members' schema
    precision: tuple[Precision, ...] = ()  # per analysis, in the study's order
    auto: AutoShare | None = None  # how the `epsilon: auto` analyses share

    def format(self) -> str:
        """The plan as `bridgestat study plan` prints it: per analysis its loss and predicted
        NETWORK precision, then per member what the study would spend."""
        head = (f"{'analysis':<32} {'statistic':<15} {'loss per member':<30} "
                f"{'network SE':>10} {'MDE':>10}")
        lines = [f"Study {self.study.name}: {len(self.study.analyses)} analyses", "", head]
        predicted = {p.analysis: p for p in self.precision}
        for a in self.study.analyses:
            spend = a.spend()
            loss = f"rho {spend.rho:g}" if spend.rho else f"epsilon {spend.epsilon:.4g}"
            if a.target is not None:
                loss += f" ({a.target[0]} {a.target[1]:g})"
            elif self.auto is not None and a.id in self.auto.losses:
                loss += " (auto" + (f", weight {a.weight:g})" if a.weight != 1 else ")")
            p = predicted.get(a.id)
            se, mde = (p.se, p.mde) if p is not None else (None, None)
            lines.append(f"{a.id:<32} {a.statistic:<15} {loss:<30} {_figure(se):>10} "
                         f"{_figure(mde):>10}")
        lines += ["", *precision.describe(self.precision, self.auto)]
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


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def plan(study: Study, net: Network) -> StudyPlan:
    """Check the study against every reachable member and predict each analysis's precision
    (a target precision becomes its loss); raise StudyError on the first fault. Spends
    nothing: only the members' public information is read."""
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
    schema = schema_tables(first.schema)
    check_against(study, schema)
    budgets = tuple(MemberBudget(m, i.budget.total.epsilon, i.budget.spent.epsilon,
                                 i.budget.spent.rho, i.budget.total.delta or 1e-6,
                                 i.budget.max_per_query.epsilon)
                    for m, i in reachable.items())
    study, predicted, auto = precision.resolve(study, budgets, schema)
    check_per_query(study, budgets)
    return StudyPlan(study, budgets, tuple(plan_costs(study, budgets)), unreachable, schema,
                     predicted, auto)


# -- running --------------------------------------------------------------------------------


def run(study: Study, net: Network, out: Path, run_id: str | None = None,
        echo: Printer = print) -> dict[str, Any]:
    """Run every analysis; refuse first if anything does not fit or cannot be afforded."""
    checked = plan(study, net)
    study = checked.study  # with the losses its target precisions need
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
    results = ResultsFile(out / "results.json", doc)
    results.save()  # before any query: a resumed run counts the whole study's spending
    echo(f"== Study {study.name} (run {run_id}): {len(study.analyses)} analyses, "
         f"{len(net.members)} members")
    for a in study.analyses:
        echo(f"\n-- [{a.index + 1}/{len(study.analyses)}] {a.id}: {a.title}")
        output = run_analysis(net, a, f"{run_id}:{a.id}")
        _progress(output, echo)
        bounds = column_bounds(a, checked.tables)
        results.add(_analysis_doc(a, output, doc["members"], bounds))
        results.save()
    if study.multiplicity is not None:
        doc["multiplicity"] = multiplicity_doc(study.multiplicity, doc["analyses"])
    doc["budget"] = _budget(checked, net, doc["budget_before"])
    results.save()
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


class ResultsFile:
    """results.json, saved after every analysis without encoding the earlier ones again.

    Each analysis is encoded once, when it is added, on one line of its own (json's C
    encoder: an indented encoding runs in pure Python and took 1.4 s of a 25-member study);
    a save encodes the small rest of the document, indented, and joins the parts, so saving
    is linear in the study rather than quadratic. The document is the same JSON as before;
    every save is atomic (a temporary file renamed over the old one): a crash never leaves
    half a file.
    """

    _HOLE = f"analyses-{uuid.uuid4().hex}"

    def __init__(self, path: Path, doc: dict[str, Any]) -> None:
        self.path, self.doc = path, doc
        self.parts = [_nested(a) for a in doc["analyses"]]

    def add(self, analysis: dict[str, Any]) -> None:
        self.doc["analyses"].append(analysis)
        self.parts.append(_nested(analysis))

    def text(self) -> str:
        rest = json.dumps({**self.doc, "analyses": self._HOLE}, indent=1, allow_nan=False)
        listed = "[\n" + ",\n".join(self.parts) + "\n ]" if self.parts else "[]"
        return rest.replace(json.dumps(self._HOLE), listed, 1)

    def save(self) -> Path:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(self.text(), encoding="utf-8")
        tmp.replace(self.path)
        return self.path


def _nested(analysis: dict[str, Any]) -> str:
    """One analysis, compact on one line, indented as an item of the analyses list."""
    return "  " + json.dumps(analysis, allow_nan=False)


def save(doc: dict[str, Any], out: Path) -> Path:
    """Write a whole results document atomically (a crash never leaves half a file)."""
    return ResultsFile(out / "results.json", doc).save()


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
        _, _, frame = output.tables[0]
        echo(_short(frame))
    for note in output.notes:
        echo(f"   note: {note}")


def _short(frame: pd.DataFrame) -> str:
    """The main columns of an analysis's first table (only its NETWORK rows when long), as
    right-aligned text columns. Formatted here: pandas' `to_string` took a tenth of the
    coordinator's CPU in a study."""
    columns = [c for c in ("member", "category", "measure", "term", "transition", "estimate",
                           "ci_low", "ci_high", "n", "status") if c in frame.columns]
    values = [frame[c].tolist() for c in columns]
    rows: Sequence[int] = range(len(frame))
    if len(frame) > 24:
        rows = [i for i, member in enumerate(frame["member"].tolist()) if member == NETWORK]
    texts = [[str(c), *(_shown(column[i], 40 if c == "status" else None) for i in rows)]
             for c, column in zip(columns, values, strict=True)]
    widths = [max(map(len, column)) for column in texts]
    return "\n".join(" ".join(column[i].rjust(width) for column, width in zip(texts, widths,
                                                                                strict=True))
                     for i in range(len(rows) + 1))


def _shown(value: Any, limit: int | None) -> str:
    """One cell of `_short`: floats to 3 significant digits, text cut at `limit`."""
    text = f"{value:.3g}" if isinstance(value, float) and math.isfinite(value) else \
        "NaN" if isinstance(value, float) else str(value)
    return text[:limit] if limit is not None else text


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


# -- one analysis: the kind's queries, then its tables -----------------------------------------


def run_analysis(net: Network, a: Analysis, key: str) -> Output:
    """Run the analysis's queries (keys `<key>:0`, `<key>:1`, ...) and build its output; with
    `meta: true`, meta-analyse the members' estimates."""
    calls = [(planned.query, f"{key}:{planned.suffix}") for planned in a.plan()]
    results: list[Any]
    if getattr(a.params, "secure", False):
        results = [net.run_secure(query, k) for query, k in calls]
    else:
        results = _run_together(net, calls)
    output = a.kind.output(a.params, results, a.title)
    if a.meta:
        for label, frame in a.kind.meta_frames(a.params, output, a.title):
            _meta(output, frame, label)
    return output


def _run_together(net: Network, calls: list[tuple[Query, str]]) -> list[QueryResult]:
    """An analysis's queries, sent at once and answered in order: they are independent (each
    its own key), so the nodes answer one while the next is on the wire. All belong to the
    analysis in flight, so a crash still loses at most that one analysis."""
    if len(calls) == 1:
        return [net.run(*calls[0])]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="study-query") as pool:
        futures = [pool.submit(net.run, query, key) for query, key in calls]
        return [future.result() for future in futures]


def _meta(out: Output, frame: pd.DataFrame, label: str) -> None:
    try:
        result = tables.meta_from_table(frame)
    except MetaError as exc:
        out.notes.append(f"meta-analysis not possible: {exc}")
        return
    out.meta.append({**result.to_dict(), "label": label})
    out.plots.append({"kind": "forest", "meta": len(out.meta) - 1, "label": label})


# -- multiplicity ------------------------------------------------------------------------------


def network_effect(analysis: Mapping[str, Any]) -> tuple[float, float] | str:
    """(estimate, SE) of the NETWORK row of an analysis's effect table (`EFFECTS`), or why
    there is none."""
    name, measure = EFFECTS.get(str(analysis.get("kind")), ("", None))
    table = next((t for t in analysis.get("tables") or [] if t.get("name") == name), None)
    rows = [r for r in (table or {}).get("rows") or [] if r.get("member") == NETWORK
            and (measure is None or r.get("measure") == measure)]
    if len(rows) != 1:
        return f"no single NETWORK row in its {name or 'effect'} table"
    row = rows[0]
    estimate, se = row.get("estimate"), row.get("se")
    if row.get("status") != "ok" or not (is_number(estimate) and is_number(se) and se > 0):
        return f"NETWORK {row.get('status') or 'not estimable'}"
    return float(estimate), float(se)


def multiplicity_doc(spec: MultiplicitySpec, analyses: list[dict[str, Any]]
                     ) -> dict[str, Any]:
    """Raw two-sided p-values of the named analyses' NETWORK effects against 0 (normal, from
    the estimate and its SE, which includes the DP noise) and their adjusted values under the
    rule. An effect that could not be estimated is named, and counts as p = 1 in the family
    (its size stays as the study declared it: the adjustment is never made smaller by a
    failed analysis)."""
    by_id = {a["id"]: a for a in analyses}
    rows: list[dict[str, Any]] = []
    for ident in spec.analyses:
        found = network_effect(by_id.get(ident, {}))
        if isinstance(found, str):
            rows.append({"id": ident, "estimate": None, "se": None, "pvalue": None,
                         "status": found})
            continue
        estimate, se = found
        p = 2 * NormalDist().cdf(-abs(estimate / se))
        rows.append({"id": ident, "estimate": estimate, "se": se, "pvalue": p,
                     "status": "ok"})
    adjusted = adjust([r["pvalue"] if r["pvalue"] is not None else 1.0 for r in rows],
                      spec.rule)
    for r, a in zip(rows, adjusted, strict=True):
        r["adjusted"] = a if r["pvalue"] is not None else None
    return {"rule": spec.rule, "null": 0.0, "analyses": rows}


# -- the results document ---------------------------------------------------------------------


def column_bounds(a: Analysis, schema: Mapping[str, TableInfo]) -> list[float] | None:
    """The schema's [lower, upper] of the analysis's numeric column (public; the report hides
    estimates whose interval is wider than the range they can take), or None."""
    table = schema.get(str(getattr(a.params, "table", "")))
    column = table.columns.get(str(getattr(a.params, "column", ""))) if table else None
    if column is None or not column.numeric or not column.lower < column.upper:
        return None
    return [float(column.lower), float(column.upper)]


def _analysis_doc(a: Analysis, output: Output, members: list[str],
                  bounds: list[float] | None = None) -> dict[str, Any]:
    extra = {} if bounds is None else {"column_bounds": bounds}
    return {
        "id": a.id, "number": a.number, "title": a.title, "description": a.description,
        "audience": a.audience, "kind": a.statistic, "spec": _plain(dict(a.spec)), **extra,
        "tables": [{"name": n, "caption": c, "columns": [str(x) for x in f.columns],
                    "rows": _records(f)} for n, c, f in output.tables],
        "plots": output.plots, "meta": output.meta, "regression": output.regression,
        "loss": _loss(output.results, members), "notes": output.notes,
        "queries": [_query_doc(r) for r in output.results],
    }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The table's rows as JSON-safe mappings. Column by column (`tolist` gives Python
    scalars), then zipped into rows: `to_dict("records")` boxes every cell one by one."""
    names = [str(c) for c in frame.columns]
    columns = [[_plain(v) for v in frame.iloc[:, i].tolist()] for i in range(len(names))]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


_FIELDS: dict[type, tuple[str, ...]] = {}  # a dataclass's field names, looked up once


def _plain(value: Any) -> Any:
    """JSON-safe values: NaN and infinities become null, tuples lists, numpy scalars Python,
    dataclasses mappings (one pass, without `asdict`'s deep copies of every leaf). The
    exact built-in types are dispatched first: a study converts some 100,000 values."""
    kind = type(value)
    if value is None or kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if kind is dict:
        return {str(k): _plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    names = _FIELDS.get(kind)
    if names is None and is_dataclass(kind):
        names = _FIELDS[kind] = tuple(f.name for f in fields(kind))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    return _plain_other(value)


def _plain_other(value: Any) -> Any:
    """`_plain` of subclasses of the built-in types, pandas' missing values and numpy
    scalars."""
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "item") and not isinstance(value, bytes):
        return _plain(value.item())
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
    return {"key": result.key, "query": _plain(result.query),
            "releases": {m: _plain(r) for m, r in result.releases.items()},
            "failures": {m: f"{f.code}: {f.message}" for m, f in result.failures.items()}}
