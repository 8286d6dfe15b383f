"""Study files: a YAML list of analyses, checked against the network's public schema and
budgets before anything is spent.

    name: standard-effect-study
    occasions: {intake: {month: 0}, month_12: {month: 12, window: 3}}
    analyses:
      - id: a06_bridge_change
        statistic: paired_change
        table: assessment
        column: bridge_total
        occasion: month_12
        clip: [-40, 40]
        epsilon: 1.0

`load_study` parses and checks the file on its own; `check_against` checks every analysis
against the schema the members publish (columns, types, categories, occasion windows, clip
bounds); `plan_costs` adds up what each member would spend and what it would have left.
Every refusal names the file, the analysis and the field, and comes before any query is sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridgestat.coordinator.privacy import Spend
from bridgestat.coordinator.query import INTAKE, Occasion, Term
from bridgestat.v1 import node_service_pb2 as pb

STATISTICS = ("count", "mean", "histogram", "proportion", "paired_change", "follow_up",
              "transition", "compare", "did", "regression", "quantile")
AUDIENCES = ("coordinator", "researcher")
_TOP_KEYS = {"name", "title", "description", "occasions", "analyses"}
_COMMON = {"id", "number", "title", "description", "audience", "statistic", "table", "where",
           "epsilon", "meta"}
_KEYS: dict[str, set[str]] = {
    "count": {"occasion", "group_by"},
    "mean": {"column", "occasion", "clip", "group_by"},
    "histogram": {"column", "occasion", "bins", "group_by"},
    "proportion": {"column", "categories", "occasion", "bins", "group_by"},
    "paired_change": {"column", "occasion", "baseline", "clip", "improvement",
                      "share_epsilon"},
    "follow_up": {"column", "occasion", "baseline"},
    "transition": {"column", "occasion", "baseline", "categories"},
    "compare": {"column", "categories", "occasion", "bins", "group", "groups"},
    "did": {"column", "occasion", "baseline", "clip", "group", "groups"},
    "regression": {"terms", "rho", "occasion", "replicates"},
    "quantile": {"column", "q", "candidates", "occasion"},
}
_META = {"mean", "proportion", "paired_change", "compare", "did"}
_TERM_KEYS = {"column", "occasion", "baseline", "category", "clip"}
PARTICIPANT = "participant"


class StudyError(ValueError):
    """A study file that cannot run; the message names the file, analysis and field."""


@dataclass(frozen=True)
class Analysis:
    """One checked analysis of a study file (its raw mapping kept for the results)."""

    index: int
    id: str
    number: int | None
    title: str
    description: str
    audience: str
    statistic: str
    spec: Mapping[str, Any]
    table: str
    column: str = ""
    epsilon: float = 0.0
    rho: float = 0.0
    occasion: Occasion | None = None
    baseline: Occasion | None = None
    clip: tuple[float, float] | None = None
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()
    group_by: tuple[str, ...] = ()
    bins: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    group: str = "arm"
    groups: tuple[str, str] = ("mobility_mentoring", "comparison")
    improvement: str = ""
    share_epsilon: float = 0.0
    terms: tuple[Term, ...] = ()
    q: float = 0.5
    candidates: tuple[float, ...] = ()
    replicates: int = 1000
    meta: bool = False

    @property
    def label(self) -> str:
        return f"analyses[{self.index}] ({self.id})"

    def spend(self) -> Spend:
        """What this analysis charges every member (each query's loss, summed)."""
        extra = self.share_epsilon if self.improvement else 0.0
        return Spend(self.epsilon + extra, self.rho)


@dataclass(frozen=True)
class Study:
    source: str
    name: str
    title: str
    description: str
    analyses: tuple[Analysis, ...]
    occasions: Mapping[str, Occasion] = field(default_factory=dict)

    def spend(self) -> Spend:
        total = Spend()
        for analysis in self.analyses:
            total = total + analysis.spend()
        return total


# -- parsing --------------------------------------------------------------------------------


def load_study(path: Path) -> Study:
    """Read and check a study file on its own (no network needed)."""
    source = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"{source}: cannot read the study file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise StudyError(f"{source}: not valid YAML: {exc}") from exc
    return parse_study(doc, source)


def parse_study(doc: Any, source: str) -> Study:
    if not isinstance(doc, dict):
        raise StudyError(f"{source}: must be a mapping with name and analyses")
    _no_unknown(doc, _TOP_KEYS, f"{source}")
    name = _text(doc, "name", source, required=True)
    occasions = _occasions(doc.get("occasions", {}), source)
    raw = doc.get("analyses")
    if not isinstance(raw, list) or not raw:
        raise StudyError(f"{source}: analyses: must be a non-empty list")
    analyses = tuple(_analysis(item, i, occasions, source) for i, item in enumerate(raw))
    ids = [a.id for a in analyses]
    for a in analyses:
        if ids.count(a.id) > 1:
            raise StudyError(f"{source}: {a.label}.id: {a.id!r} is used more than once")
    return Study(source, name, _text(doc, "title", source) or name,
                 _text(doc, "description", source), analyses, occasions)


def _no_unknown(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise StudyError(f"{where}: unknown key {unknown[0]!r} (allowed: "
                         f"{', '.join(sorted(allowed))})")


def _text(doc: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise StudyError(f"{where}: {key}: must be {'a non-empty' if required else 'a'} string")
    return value


def _occasions(doc: Any, source: str) -> dict[str, Occasion]:
    if not isinstance(doc, dict):
        raise StudyError(f"{source}: occasions: must map names to {{month, window}}")
    found = {"intake": INTAKE}
    for name, spec in doc.items():
        where = f"{source}: occasions.{name}"
        if not isinstance(spec, dict):
            raise StudyError(f"{where}: must be a mapping {{month, window}}")
        _no_unknown(spec, {"month", "window", "lower", "upper"}, where)
        month = _int(spec, "month", where)
        window = _int(spec, "window", where, default=0)
        lower = _int(spec, "lower", where, default=max(0, month - window))
        upper = _int(spec, "upper", where, default=month + window)
        if not lower <= month <= upper:
            raise StudyError(f"{where}: needs lower <= month <= upper, got {lower}, {month}, "
                             f"{upper}")
        found[str(name)] = Occasion(month, lower, upper)
    return found


def _int(doc: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StudyError(f"{where}.{key}: must be a whole number >= 0, got {value!r}")
    return value


def _finite(value: Any) -> bool:
    """A finite int or float (a huge YAML integer overflows float: not finite here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _number(doc: Mapping[str, Any], key: str, where: str, positive: bool = True) -> float:
    value = doc.get(key)
    if not _finite(value) or (positive and value <= 0):
        raise StudyError(f"{where}.{key}: must be a number{' > 0' if positive else ''}, "
                         f"got {value!r}")
    return float(value)


def _analysis(item: Any, index: int, occasions: Mapping[str, Occasion],
              source: str) -> Analysis:
    if not isinstance(item, dict):
        raise StudyError(f"{source}: analyses[{index}]: must be a mapping")
    ident = item.get("id")
    if not isinstance(ident, str) or not ident:
        raise StudyError(f"{source}: analyses[{index}].id: must be a non-empty string")
    where = f"{source}: analyses[{index}] ({ident})"
    statistic = item.get("statistic")
    if statistic not in STATISTICS:
        raise StudyError(f"{where}.statistic: must be one of {', '.join(STATISTICS)}, "
                         f"got {statistic!r}")
    _no_unknown(item, _COMMON | _KEYS[statistic], where)
    return Analysis(index=index, id=ident, statistic=statistic, spec=dict(item),
                    **_fields(item, statistic, occasions, where))


def _fields(item: Mapping[str, Any], statistic: str, occasions: Mapping[str, Occasion],
            where: str) -> dict[str, Any]:
    f: dict[str, Any] = {
        "number": item.get("number"), "title": _text(item, "title", where) or item["id"],
        "description": _text(item, "description", where),
        "audience": item.get("audience", "researcher"),
        "table": _text(item, "table", where, required=True),
        "column": _text(item, "column", where),
    }
    if f["audience"] not in AUDIENCES:
        raise StudyError(f"{where}.audience: must be one of {', '.join(AUDIENCES)}")
    if statistic == "regression":
        f["rho"] = _number(item, "rho", where)
        f["terms"] = _terms(item.get("terms"), occasions, where)
        f["replicates"] = _int(item, "replicates", where, default=1000)
        if "epsilon" in item:
            raise StudyError(f"{where}.epsilon: a regression spends rho (zCDP), not epsilon")
    else:
        f["epsilon"] = _number(item, "epsilon", where)
    needs_column = statistic not in ("count", "regression")
    if needs_column and not f["column"]:
        raise StudyError(f"{where}.column: a {statistic} needs a column")
    for key in ("occasion", "baseline"):
        if key in item:
            f[key] = _occasion_ref(item[key], occasions, f"{where}.{key}")
    paired = statistic in ("paired_change", "follow_up", "transition", "did")
    if paired and f.get("occasion") is None:
        raise StudyError(f"{where}.occasion: a {statistic} needs the follow-up occasion")
    if paired:
        f["baseline"] = f.get("baseline") or INTAKE
    f.update(_options(item, statistic, where))
    return f


def _options(item: Mapping[str, Any], statistic: str, where: str) -> dict[str, Any]:
    f: dict[str, Any] = {}
    if "clip" in item:
        f["clip"] = _pair(item["clip"], f"{where}.clip")
    if "where" in item:
        f["where"] = _where(item["where"], f"{where}.where")
    if "group_by" in item:
        f["group_by"] = _strings(item["group_by"], f"{where}.group_by")
    if "bins" in item:
        f["bins"] = tuple(_numbers(item["bins"], f"{where}.bins"))
    if "categories" in item:
        f["categories"] = _strings(item["categories"], f"{where}.categories")
    elif statistic in ("proportion", "compare"):
        raise StudyError(f"{where}.categories: a {statistic} needs the categories counted in")
    if "group" in item:
        f["group"] = _text(item, "group", where, required=True)
    if "groups" in item:
        groups = _strings(item["groups"], f"{where}.groups")
        if len(groups) != 2 or groups[0] == groups[1]:
            raise StudyError(f"{where}.groups: must name two different groups")
        f["groups"] = groups
    if "improvement" in item:
        if item["improvement"] not in ("increase", "decrease"):
            raise StudyError(f"{where}.improvement: must be increase or decrease")
        f["improvement"] = item["improvement"]
        f["share_epsilon"] = _number(item, "share_epsilon", where)
    elif "share_epsilon" in item:
        raise StudyError(f"{where}.share_epsilon: only with improvement")
    if statistic == "quantile":
        f["q"] = _number(item, "q", where)
        if not 0 < f["q"] < 1:
            raise StudyError(f"{where}.q: must lie in (0, 1), got {f['q']:g}")
        f["candidates"] = _candidates(item.get("candidates"), f"{where}.candidates")
    if "meta" in item:
        if not isinstance(item["meta"], bool):
            raise StudyError(f"{where}.meta: must be true or false")
        if item["meta"] and statistic not in _META:
            raise StudyError(f"{where}.meta: a meta-analysis needs member estimates "
                             f"({', '.join(sorted(_META))}), not a {statistic}")
        f["meta"] = item["meta"]
    return f


def _occasion_ref(value: Any, occasions: Mapping[str, Occasion], where: str) -> Occasion:
    if not isinstance(value, str) or value not in occasions:
        raise StudyError(f"{where}: unknown occasion {value!r} (defined: "
                         f"{', '.join(occasions)})")
    return occasions[value]


def _pair(value: Any, where: str) -> tuple[float, float]:
    numbers = _numbers(value, where)
    if len(numbers) != 2 or not numbers[0] < numbers[1]:
        raise StudyError(f"{where}: must be [lower, upper] with lower < upper, got {value!r}")
    return numbers[0], numbers[1]


def _numbers(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or not all(_finite(v) for v in value):
        raise StudyError(f"{where}: must be a list of numbers, got {value!r}")
    return [float(v) for v in value]


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, str) and v for v in value):
        raise StudyError(f"{where}: must be a non-empty list of names, got {value!r}")
    return tuple(value)


def _where(value: Any, where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, dict) or not value:
        raise StudyError(f"{where}: must map columns to lists of categories")
    return tuple((str(k), _strings(v, f"{where}.{k}")) for k, v in value.items())


def _candidates(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, dict):
        _no_unknown(value, {"from", "to", "step"}, where)
        start, stop, step = (_number(value, k, where, positive=False) for k in
                             ("from", "to", "step"))
        if step <= 0 or stop <= start or (stop - start) / step > 10_000:
            raise StudyError(f"{where}: needs from < to and 0 < step, at most 10,000 steps")
        count = int(round((stop - start) / step))
        return tuple(start + i * step for i in range(count + 1))
    numbers = _numbers(value, where)
    if len(numbers) < 2 or numbers != sorted(set(numbers)):
        raise StudyError(f"{where}: must be at least two increasing numbers")
    return tuple(numbers)


def _terms(value: Any, occasions: Mapping[str, Occasion], where: str) -> tuple[Term, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise StudyError(f"{where}.terms: must list regressors then the response (>= 2)")
    terms = []
    for i, item in enumerate(value):
        at = f"{where}.terms[{i}]"
        if not isinstance(item, dict):
            raise StudyError(f"{at}: must be a mapping with a column")
        _no_unknown(item, _TERM_KEYS, at)
        occasion = _occasion_ref(item["occasion"], occasions, f"{at}.occasion") \
            if "occasion" in item else None
        baseline = _occasion_ref(item["baseline"], occasions, f"{at}.baseline") \
            if "baseline" in item else None
        clip = _pair(item["clip"], f"{at}.clip") if "clip" in item else None
        terms.append(Term(_text(item, "column", at, required=True), occasion, baseline,
                          _text(item, "category", at), clip))
    return tuple(terms)


# -- checks against the network's public schema --------------------------------------------------


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    kind: str  # integer | real | boolean | categorical | key
    lower: float
    upper: float
    categories: tuple[str, ...]

    @property
    def numeric(self) -> bool:
        return self.kind in ("integer", "real")

    @property
    def categorical(self) -> bool:
        return self.kind in ("boolean", "categorical")


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: Mapping[str, ColumnInfo]
    month_column: str


_KINDS = {pb.COLUMN_TYPE_KEY: "key", pb.COLUMN_TYPE_INTEGER: "integer",
          pb.COLUMN_TYPE_REAL: "real", pb.COLUMN_TYPE_BOOLEAN: "boolean",
          pb.COLUMN_TYPE_CATEGORICAL: "categorical"}


def schema_tables(schema: pb.Schema) -> dict[str, TableInfo]:
    """The public schema a node publishes, as the study checks need it."""
    return {t.name: TableInfo(t.name, {c.name: ColumnInfo(c.name, _KINDS.get(c.type, "key"),
                                                          c.lower, c.upper,
                                                          tuple(c.categories))
                                       for c in t.columns}, t.month_column)
            for t in schema.tables}


def check_against(study: Study, tables: Mapping[str, TableInfo]) -> None:
    """Refuse the first analysis whose table, columns, categories, occasions or bounds do not
    fit the schema the members publish."""
    for analysis in study.analyses:
        _Checker(analysis, tables, f"{study.source}: {analysis.label}").run()


class _Checker:
    def __init__(self, a: Analysis, tables: Mapping[str, TableInfo], where: str) -> None:
        self.a, self.tables, self.where = a, tables, where

    def fail(self, key: str, problem: str) -> StudyError:
        return StudyError(f"{self.where}.{key}: {problem}")

    def run(self) -> None:
        a = self.a
        if a.table not in self.tables:
            raise self.fail("table", f"unknown table {a.table!r} (tables: "
                            f"{', '.join(self.tables)})")
        table = self.tables[a.table]
        for key in ("occasion", "baseline"):
            occ = getattr(a, key)
            if occ is not None:
                self.occasion(table, occ, key)
        if a.column:
            self.measured(self.column(table, a.column, "column"))
        for name, values in a.where:
            self.categories(self.grouping(table, name, f"where.{name}"), values,
                            f"where.{name}")
        for i, name in enumerate(a.group_by):
            self.grouping(table, name, f"group_by[{i}]")
        if a.statistic in ("compare", "did"):
            self.categories(self.grouping(table, a.group, "group"), a.groups, "groups")
        for i, term in enumerate(a.terms):
            self.term(table, term, f"terms[{i}]")

    def column(self, table: TableInfo, name: str, key: str) -> ColumnInfo:
        for candidate in (table, self.tables.get(PARTICIPANT)):
            if candidate is not None and name in candidate.columns:
                info = candidate.columns[name]
                if info.kind == "key":
                    raise self.fail(key, f"{name!r} is a local key and cannot be queried")
                return info
        raise self.fail(key, f"unknown column {name!r} in table {table.name!r}"
                        + (f" or {PARTICIPANT!r}" if table.name != PARTICIPANT else ""))

    def grouping(self, table: TableInfo, name: str, key: str) -> ColumnInfo:
        info = self.column(table, name, key)
        if not info.categorical:
            raise self.fail(key, f"{name!r} is {info.kind}; group and filter columns must be "
                            "categorical")
        return info

    def categories(self, info: ColumnInfo, values: Sequence[str], key: str) -> None:
        for value in values:
            if value not in info.categories:
                raise self.fail(key, f"{value!r} is not a category of {info.name!r} "
                                f"({', '.join(info.categories)})")

    def occasion(self, table: TableInfo, occ: Occasion, key: str) -> None:
        if not table.month_column:
            raise self.fail(key, f"table {table.name!r} has no occasions")
        month = table.columns[table.month_column]
        if occ.window_lower < month.lower or occ.window_upper > month.upper:
            raise self.fail(key, f"window {occ.window_lower}-{occ.window_upper} lies outside "
                            f"{month.name} [{month.lower:g}, {month.upper:g}]")

    def measured(self, info: ColumnInfo) -> None:
        a = self.a
        numeric = ("mean", "paired_change", "did", "quantile", "follow_up")
        if a.statistic in numeric and not info.numeric:
            raise self.fail("column", f"a {a.statistic} needs a numeric column; "
                            f"{info.name!r} is {info.kind}")
        if a.statistic == "transition" and not info.categorical:
            raise self.fail("column", f"a transition needs a categorical column; "
                            f"{info.name!r} is {info.kind}")
        if a.statistic in ("histogram", "proportion", "compare") and info.numeric \
                and not a.bins:
            raise self.fail("bins", f"{info.name!r} is numeric: give public bin edges")
        if a.categories and a.statistic != "transition" and info.categorical:
            self.categories(info, a.categories, "categories")
        if a.categories and a.statistic == "transition":
            self.categories(info, a.categories, "categories")
        if a.clip is not None:
            self.inside(info, a.clip, "clip", change=a.baseline is not None)
        if a.candidates and (a.candidates[0] < info.lower or a.candidates[-1] > info.upper):
            raise self.fail("candidates", f"must lie in [{info.lower:g}, {info.upper:g}] for "
                            f"{info.name!r}")

    def inside(self, info: ColumnInfo, clip: tuple[float, float], key: str,
               change: bool) -> None:
        lower, upper = info.lower, info.upper
        if change:
            lower, upper = -(upper - lower), upper - lower
        if not lower <= clip[0] < clip[1] <= upper:
            raise self.fail(key, f"must lie inside [{lower:g}, {upper:g}] for {info.name!r}")

    def term(self, table: TableInfo, term: Term, key: str) -> None:
        info = self.column(table, term.column, f"{key}.column")
        owner = table if term.column in table.columns else self.tables[PARTICIPANT]
        for name in ("occasion", "baseline"):
            occ = getattr(term, name)
            if occ is not None:
                if not owner.month_column:
                    raise self.fail(f"{key}.{name}", f"{term.column!r} belongs to "
                                    f"{owner.name!r}, which has no occasions")
                self.occasion(owner, occ, f"{key}.{name}")
        if term.category:
            if not info.categorical:
                raise self.fail(f"{key}.category", f"{term.column!r} is {info.kind}")
            self.categories(info, (term.category,), f"{key}.category")
        elif not info.numeric:
            raise self.fail(f"{key}.column", f"{term.column!r} is {info.kind}: name a "
                            "category for an indicator term")
        elif term.clip is not None:
            self.inside(info, term.clip, f"{key}.clip", change=term.baseline is not None)


# -- costs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberBudget:
    """What a member published about its budget (GetNodeInfo)."""

    member: str
    total: float  # epsilon of the (epsilon, delta) guarantee
    spent: float
    spent_rho: float
    delta: float
    max_per_query: float


@dataclass(frozen=True)
class MemberCost:
    member: str
    before: float  # spent epsilon (guarantee) before the study
    after: float  # after the study
    total: float

    @property
    def study(self) -> float:
        return self.after - self.before

    @property
    def remaining_after(self) -> float:
        return self.total - self.after

    @property
    def affordable(self) -> bool:
        return self.after <= self.total


def plan_costs(study: Study, budgets: Sequence[MemberBudget]) -> list[MemberCost]:
    """Each member's spent epsilon before and after the whole study (rho composes in zCDP on
    the node, so the study's rho is added to the member's rho before converting)."""
    spend = study.spend()
    costs = []
    for b in budgets:
        pure_before = b.spent - Spend(0.0, b.spent_rho).guarantee(b.delta)
        after = Spend(pure_before + spend.epsilon, b.spent_rho + spend.rho).guarantee(b.delta)
        costs.append(MemberCost(b.member, b.spent, after, b.total))
    return costs


def check_per_query(study: Study, budgets: Sequence[MemberBudget]) -> None:
    """Refuse an analysis whose single query exceeds a member's largest loss per query."""
    for a in study.analyses:
        for b in budgets:
            losses = [("epsilon", a.epsilon)] if not a.rho else \
                [("rho", Spend(0.0, a.rho).guarantee(b.delta))]
            if a.statistic == "quantile":
                losses = [("epsilon", a.epsilon / 2)]
            if a.improvement:
                losses.append(("share_epsilon", a.share_epsilon))
            for key, loss in losses:
                if loss > b.max_per_query * (1 + 1e-12):
                    shown = f"rho {a.rho:g} is epsilon {loss:.4g} at delta {b.delta:g}, which" \
                        if key == "rho" else f"{loss:g}"
                    raise StudyError(f"{study.source}: {a.label}.{key}: {shown} exceeds "
                                     f"{b.member}'s largest loss per query "
                                     f"({b.max_per_query:g})")


def check_affordable(study: Study, costs: Sequence[MemberCost]) -> None:
    short = [c for c in costs if not c.affordable]
    if short:
        c = short[0]
        raise StudyError(
            f"{study.source}: the study's total loss is more than {c.member} has left: it "
            f"would bring spent epsilon from {c.before:.4g} to {c.after:.4g} of {c.total:.4g}"
            f" ({len(short)} member(s) short); nothing was spent. Per analysis: "
            + ", ".join(f"{a.id} {_spend_text(a)}" for a in study.analyses))


def _spend_text(a: Analysis) -> str:
    spend = a.spend()
    return f"rho {spend.rho:g}" if spend.rho else f"eps {spend.epsilon:g}"
