"""Study files: a YAML list of analyses, checked against the network's public schema and
budgets before anything is spent.

    name: standard-effect-study
    occasions: {month_12: {month: 12, window: 3}}
    analyses:
      - id: a06_bridge_change
        statistic: paired_change
        table: assessment
        column: bridge_total
        occasion: month_12
        clip: [-40, 40]
        epsilon: 1.0

The file is a pydantic model (`StudyFile`) whose analyses are a union discriminated on
`statistic`, one member per registered analysis kind: an entry's fields are the kind's
parameters (the API's keyword arguments) plus id, number, title, description, audience and
meta. `load_study` parses and checks the file on its own; `check_against` checks every
analysis against the schema the members publish (columns, types, categories, occasion
windows, clip bounds); `plan_costs` adds up what each member would spend, from the queries
each kind makes. Every refusal names the file, the analysis and the field, and comes before
any query is sent.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from bridgestat.common.files import FileProblem, key_path, problems, read_yaml
from bridgestat.coordinator.analyses import REGISTRY, Kind, Planned
from bridgestat.coordinator.analyses.base import Guess
from bridgestat.coordinator.analyses.base import Kind as BaseKind
from bridgestat.coordinator.analyses.fields import (
    Flag,
    Frozen,
    Name,
    Number,
    OptionalPositive,
    Positive,
    Share,
    TermSpec,
    Whole,
)
from bridgestat.coordinator.client.query import INTAKE, Occasion, Term
from bridgestat.coordinator.statistics.privacy import Spend
from bridgestat.v1 import node_service_pb2 as pb

STATISTICS = tuple(REGISTRY)
AUDIENCES = ("coordinator", "researcher")
LOSSES = ("epsilon", "rho")  # a study names every loss it spends: no defaults
PARTICIPANT = "participant"


class StudyError(ValueError):
    """A study file that cannot run; the message names the file, analysis and field."""


# -- the file's model -----------------------------------------------------------------------


class OccasionSpec(Frozen):
    """`{month, window}` (or explicit lower/upper): the assessment nearest `month`."""

    month: Whole
    window: Whole = 0
    lower: Whole | None = None
    upper: Whole | None = None

    @model_validator(mode="after")
    def _ordered(self) -> OccasionSpec:
        o = self.occasion()
        if not o.window_lower <= o.target_month <= o.window_upper:
            raise ValueError(f"needs lower <= month <= upper, got {o.window_lower}, "
                             f"{o.target_month}, {o.window_upper}")
        return self

    def occasion(self) -> Occasion:
        lower = max(0, self.month - self.window) if self.lower is None else self.lower
        upper = self.month + self.window if self.upper is None else self.upper
        return Occasion(self.month, lower, upper)


def _audience(value: Any) -> str:
    if value not in AUDIENCES:
        raise ValueError(f"must be one of {', '.join(AUDIENCES)}, got {value!r}")
    return str(value)


def _meta_check(kind: Kind) -> Any:
    def check(cls: type, value: bool, info: ValidationInfo) -> bool:
        if value and not kind.meta_analysable:
            able = ", ".join(n for n, k in REGISTRY.items() if k.meta_analysable)
            raise ValueError(f"a meta-analysis needs member estimates ({able}), not a "
                             f"{kind.name}")
        if value and info.data.get("secure"):
            raise ValueError(f"meta: true and secure: true exclude each other in a "
                             f"{kind.name} analysis: a meta-analysis needs each member's "
                             "estimate, and secure aggregation releases only the NETWORK "
                             "sum: drop meta or secure")
        if value and info.data.get("group_by"):
            raise ValueError("a meta-analysis pools one estimate per member; with group_by "
                             "it would pool member x group cells as if they were members: "
                             "drop group_by or run one analysis per group with where")
        return value
    return field_validator("meta")(classmethod(check))


class PlanningSpec(Frozen):
    """`planning: {mean, sd, share, share_other}`: the outcome as the researcher expects it,
    for the predicted precision (defaults: the clip's centre, half-width / 3, a share of 0.5)."""

    mean: Number | None = None
    sd: Positive | None = None
    share: Share | None = None
    share_other: Share | None = None

    def guess(self) -> Guess:
        return Guess(self.mean, self.sd, self.share, self.share_other)


def _size_map(value: Any) -> float | dict[str, float] | None:
    """One expected size for every member, or `{member: size}`."""
    if value is None or not isinstance(value, dict):
        return None if value is None else _size(value)
    return {str(k): _size(v) for k, v in value.items()}


def _size(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1:
        raise ValueError(f"an expected size must be a number > 1, got {value!r}")
    return float(value)


SizeSpec = Annotated[float | dict[str, float] | None, PlainValidator(_size_map)]
TARGETS = ("target_se", "target_mde")
AUTO = "auto"


def _loss_or_auto(value: Any) -> float | str | None:
    """A loss > 0, `auto` (the planner chooses it), or None (a target stands in for it)."""
    if value is None or value == AUTO:
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"must be a number > 0 or auto, got {value!r}")
    return float(value)


LossOrAuto = Annotated[float | str | None, PlainValidator(_loss_or_auto)]


def plans_precision(kind: Kind) -> bool:
    """Whether the kind maps its parameters to a planning item (see `Kind.plan_item`)."""
    return type(kind).plan_item is not BaseKind.plan_item


def _targets_check(kind: Kind) -> tuple[Any, Any]:
    """A target precision stands in for `epsilon`: exactly one of the three is given."""
    def before(cls: type, data: Any) -> Any:
        if isinstance(data, dict) and "epsilon" not in data \
                and any(data.get(t) is not None for t in TARGETS):
            return {**data, "epsilon": None}
        return data

    def after(self: Any) -> Any:
        given = [k for k in ("epsilon", *TARGETS) if getattr(self, k) is not None]
        if self.weight is not None and self.epsilon != AUTO:
            raise ValueError("weight: only with epsilon: auto (it weighs the analysis's "
                             "variance when the planner shares the loss)")
        if len(given) > 1:
            raise ValueError(f"give one of epsilon, {', '.join(TARGETS)}, not "
                             f"{' and '.join(given)}")
        if not given:
            raise ValueError("epsilon: must be a number > 0 (or give target_se or "
                             "target_mde)")
        return self
    return (model_validator(mode="before")(classmethod(before)),  # type: ignore[arg-type]
            model_validator(mode="after")(after))


def entry_model(kind: Kind) -> type[BaseModel]:
    """A study analysis of this kind: the kind's parameters plus the study's own fields
    (and, for kinds planning covers, the expected sizes, guesses and target precision)."""
    own: dict[str, Any] = {
        "statistic": (Literal[kind.name], ...),
        "id": (Name, ...),
        "number": (Whole | None, None),
        "title": (str, ""),
        "description": (str, ""),
        "audience": (Annotated[str, PlainValidator(_audience)], "researcher"),
        "meta": (Flag, False),
    }
    validators: dict[str, Any] = {"_meta": _meta_check(kind)}
    for loss in LOSSES:
        if loss in kind.Params.model_fields:
            own[loss] = (Positive, ...)
    if plans_precision(kind):
        own["expected_size"] = (SizeSpec, None)
        own["planning"] = (PlanningSpec | None, None)
        if "epsilon" in own:
            own["epsilon"] = (LossOrAuto, ...)
            own["weight"] = (OptionalPositive, None)
            own.update({t: (OptionalPositive, None) for t in TARGETS})
            validators["_before"], validators["_targets"] = _targets_check(kind)
    name = f"{type(kind).__name__}Analysis"
    return create_model(name, __base__=kind.Params, __validators__=validators, **own)


ENTRIES: dict[str, type[BaseModel]] = {name: entry_model(kind) for name, kind in REGISTRY.items()}
if TYPE_CHECKING:
    AnalysisEntry = Any
else:  # one union member per registered kind, told apart by `statistic`
    AnalysisEntry = Annotated[Union[tuple(ENTRIES.values())],  # noqa: UP007
                              Field(discriminator="statistic")]


MULTIPLICITY_RULES = {"holm": "holm", "bh": "benjamini-hochberg",
                      "benjamini-hochberg": "benjamini-hochberg"}
EFFECTS: dict[str, tuple[str, str | None]] = {
    "paired_change": ("change", None), "did": ("did", None),
    "compare": ("comparison", "risk_difference"), "transition": ("paired_difference", None)}
"""Kinds with an effect whose null value is 0: (the table, its `measure` row) whose NETWORK
estimate a multiplicity rule tests."""


def _rule(value: Any) -> str:
    if value not in MULTIPLICITY_RULES:
        raise ValueError(f"must be one of holm, bh (Benjamini-Hochberg), got {value!r}")
    return MULTIPLICITY_RULES[value]


class MultiplicitySpec(Frozen):
    """`multiplicity: {rule: holm|bh, analyses: [ids]}`: the confirmatory analyses whose
    NETWORK effects are tested against 0 and adjusted together."""

    rule: Annotated[str, PlainValidator(_rule)]
    analyses: Annotated[list[Name], Field(min_length=1)]


class StudyFile(Frozen):
    name: Name
    title: str = ""
    description: str = ""
    occasions: dict[str, OccasionSpec] = Field(default_factory=dict)
    sizes: dict[str, Annotated[float, PlainValidator(_size)]] = Field(default_factory=dict)
    expected_size: Annotated[float | None, PlainValidator(lambda v: None if v is None
                                                          else _size(v))] = None
    sizes_from: str | None = None
    auto_budget: OptionalPositive = None  # epsilon per member the `epsilon: auto` analyses share
    multiplicity: MultiplicitySpec | None = None
    analyses: Annotated[list[AnalysisEntry], Field(min_length=1)]


_OCCASIONS = TypeAdapter(dict[str, OccasionSpec])


# -- the checked study ----------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """One checked analysis of a study file (its raw mapping kept for the results)."""

    index: int
    entry: Any  # the StudyFile entry: an instance of its kind's Params
    spec: Mapping[str, Any]

    @property
    def id(self) -> str:
        return str(self.entry.id)

    @property
    def statistic(self) -> str:
        return str(self.entry.statistic)

    @property
    def kind(self) -> Kind:
        return REGISTRY[self.statistic]

    @property
    def params(self) -> Any:
        return self.entry

    @property
    def title(self) -> str:
        return str(self.entry.title or self.entry.id)

    @property
    def number(self) -> int | None:
        number: int | None = self.entry.number
        return number

    @property
    def description(self) -> str:
        return str(self.entry.description)

    @property
    def audience(self) -> str:
        return str(self.entry.audience)

    @property
    def meta(self) -> bool:
        return bool(self.entry.meta)

    @property
    def label(self) -> str:
        return f"analyses[{self.index}] ({self.id})"

    @property
    def target(self) -> tuple[str, float] | None:
        """(field, value) of a target precision (`target_se`, `target_mde`), if given."""
        for name in TARGETS:
            value = getattr(self.entry, name, None)
            if value is not None:
                return name, float(value)
        return None

    @property
    def auto(self) -> bool:
        """The planner chooses this analysis's loss (`epsilon: auto`)."""
        return getattr(self.entry, "epsilon", None) == AUTO

    @property
    def weight(self) -> float:
        """The weight of its variance when the planner shares the loss (default 1)."""
        weight = getattr(self.entry, "weight", None)
        return 1.0 if weight is None else float(weight)

    @property
    def expected_size(self) -> float | Mapping[str, float] | None:
        size: float | Mapping[str, float] | None = getattr(self.entry, "expected_size", None)
        return size

    @property
    def guess(self) -> Guess:
        spec = getattr(self.entry, "planning", None)
        return spec.guess() if spec is not None else Guess()

    def with_epsilon(self, epsilon: float) -> Analysis:
        """This analysis spending `epsilon` (the loss its target precision needs)."""
        return replace(self, entry=self.entry.model_copy(update={"epsilon": epsilon}))

    def plan(self) -> list[Planned]:
        return self.kind.plan(self.entry)

    def spend(self) -> Spend:
        """What this analysis charges every member (each query's loss, summed); a target
        precision must first be turned into a loss (`precision.resolve`)."""
        if getattr(self.entry, "epsilon", 0.0) in (None, AUTO):
            name = self.target[0] if self.target else "epsilon: auto"
            raise StudyError(f"{self.label}: its loss follows from {name} and the members' "
                             "sizes: plan the study against the network first")
        return self.kind.cost(self.entry)


@dataclass(frozen=True)
class Study:
    source: str
    name: str
    title: str
    description: str
    analyses: tuple[Analysis, ...]
    occasions: Mapping[str, Occasion] = field(default_factory=dict)
    sizes: Mapping[str, float] = field(default_factory=dict)  # member -> expected size
    expected_size: float | None = None  # every member not in `sizes`
    sizes_from: Path | None = None  # an earlier results.json whose released counts are reused
    multiplicity: MultiplicitySpec | None = None
    auto_budget: float | None = None  # epsilon per member the `epsilon: auto` analyses share

    def spend(self) -> Spend:
        total = Spend()
        for analysis in self.analyses:
            total = total + analysis.spend()
        return total


# -- parsing --------------------------------------------------------------------------------


def load_study(path: Path) -> Study:
    """Read and check a study file on its own (no network needed)."""
    try:
        doc = read_yaml(Path(path), "study file")
    except FileProblem as exc:
        raise StudyError(str(exc)) from None
    return parse_study(doc, str(path))


def parse_study(doc: Any, source: str) -> Study:
    try:
        model = StudyFile.model_validate(doc, context={"occasions": _occasions(doc)})
    except ValidationError as exc:
        raise StudyError(f"{source}: {_describe(exc, doc)}") from None
    occasions = {"intake": INTAKE, **{n: s.occasion() for n, s in model.occasions.items()}}
    analyses = tuple(Analysis(i, entry, dict(doc["analyses"][i]))
                     for i, entry in enumerate(model.analyses))
    ids = [a.id for a in analyses]
    for a in analyses:
        if ids.count(a.id) > 1:
            raise StudyError(f"{source}: {a.label}.id: {a.id!r} is used more than once")
    _check_multiplicity(model.multiplicity, analyses, source)
    auto = next((a for a in analyses if a.auto), None)
    if auto is not None and model.auto_budget is None:
        raise StudyError(f"{source}: {auto.label}.epsilon: auto needs the study's "
                         "auto_budget (the epsilon per member the auto analyses share)")
    sizes_from = None
    if model.sizes_from:
        sizes_from = Path(model.sizes_from)
        if not sizes_from.is_absolute():
            sizes_from = Path(source).parent / sizes_from
    return Study(source, model.name, model.title or model.name, model.description, analyses,
                 occasions, dict(model.sizes), model.expected_size, sizes_from,
                 model.multiplicity, model.auto_budget)


def _check_multiplicity(spec: MultiplicitySpec | None, analyses: Sequence[Analysis],
                        source: str) -> None:
    """Every named analysis exists, has one NETWORK effect with null 0, and is named once."""
    if spec is None:
        return
    by_id = {a.id: a for a in analyses}
    for i, ident in enumerate(spec.analyses):
        where = f"{source}: multiplicity.analyses[{i}]"
        a = by_id.get(ident)
        if a is None:
            raise StudyError(f"{where}: no analysis {ident!r} in the study")
        if spec.analyses.index(ident) != i:
            raise StudyError(f"{where}: {ident!r} is named twice")
        if a.statistic not in EFFECTS or (a.statistic == "transition"
                                          and not a.params.categories):
            raise StudyError(f"{where}: {ident!r} is a {a.statistic}, whose estimate has no "
                             "null value of 0; name effects (" + ", ".join(EFFECTS)
                             + " with categories)")
        if getattr(a.params, "group_by", ()):
            raise StudyError(f"{where}: {ident!r} has one NETWORK row per group (group_by); "
                             "name an ungrouped analysis (one per group, with where)")


def _occasions(doc: Any) -> dict[str, Occasion]:
    """The named occasions analyses may refer to (intake always); a faulty `occasions`
    section is reported by the full validation, which checks it first."""
    found = {"intake": INTAKE}
    if isinstance(doc, dict) and isinstance(doc.get("occasions"), dict):
        try:
            found.update({n: s.occasion()
                          for n, s in _OCCASIONS.validate_python(doc["occasions"]).items()})
        except ValidationError:
            pass
    return found


def _describe(exc: ValidationError, doc: Any) -> str:
    """The first problem as `key.path: problem`; an analysis is named `analyses[i] (id)`."""
    item, (path, problem) = next(zip(exc.errors(include_url=False), problems(exc),
                                     strict=True))
    loc = [p for p in item["loc"] if not _internal(p)]
    if len(loc) >= 2 and loc[0] == "analyses" and isinstance(loc[1], int):
        return _analysis_problem(item, loc[1], loc[2:], problem, doc)
    if item["type"] == "extra_forbidden":
        model: type[BaseModel] = OccasionSpec if loc[:1] == ["occasions"] else StudyFile
        return _unknown(key_path(loc[:-1]), loc[-1], model)
    return f"{path}: {problem}"


def _analysis_problem(item: Any, index: int, rest: list[int | str], problem: str,
                      doc: Any) -> str:
    raw = doc["analyses"][index]
    raw = raw if isinstance(raw, dict) else {}
    ident, tag = raw.get("id"), raw.get("statistic")
    label = f"analyses[{index}]" + (f" ({ident})" if isinstance(ident, str) and ident else "")
    kind = item["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return (f"{label}.statistic: must be one of {', '.join(STATISTICS)}, got "
                f"{raw.get('statistic')!r}")
    if isinstance(tag, str) and tag in ENTRIES and rest[:1] == [tag]:
        rest = rest[1:]
    if not rest:
        return f"{label}: must be a mapping" if kind.endswith("_type") else f"{label}: {problem}"
    if kind == "extra_forbidden" and isinstance(tag, str) and tag in ENTRIES:
        parent, key = rest[:-1], rest[-1]
        hint = REGISTRY[tag].hints.get(str(key)) if not parent else None
        if hint:
            return f"{label}.{key}: {hint}"
        model = TermSpec if "terms" in parent else ENTRIES[tag]
        return _unknown(label + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                        for p in parent), key, model)
    return f"{label}.{key_path(rest)}: {problem}"


def _unknown(where: str, key: int | str, model: type[BaseModel]) -> str:
    allowed = sorted(model.model_fields)
    place = f"{where}: " if where and where != "(top level)" else ""
    return f"{place}unknown key {key!r} (allowed: {', '.join(allowed)})"


def _internal(part: int | str) -> bool:
    """Pydantic's names for validators and union members in a location (not the file's)."""
    return isinstance(part, str) and (part.startswith(("function-", "tagged-union["))
                                      or "[" in part)


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
        self.a, self.p, self.tables, self.where = a, a.params, tables, where

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self.p, name, default)

    def fail(self, key: str, problem: str) -> StudyError:
        return StudyError(f"{self.where}.{key}: {problem}")

    def run(self) -> None:
        p = self.p
        if p.table not in self.tables:
            raise self.fail("table", f"unknown table {p.table!r} (tables: "
                            f"{', '.join(self.tables)})")
        table = self.tables[p.table]
        for key in ("occasion", "baseline"):
            occ = self.get(key)
            if occ is not None:
                self.occasion(table, occ, key)
        if self.get("column"):
            self.measured(self.column(table, p.column, "column"))
        for name, values in p.where:
            self.categories(self.grouping(table, name, f"where.{name}"), values,
                            f"where.{name}")
        for i, name in enumerate(self.get("group_by", ())):
            self.grouping(table, name, f"group_by[{i}]")
        if self.get("groups") is not None:
            self.categories(self.grouping(table, p.group, "group"), p.groups, "groups")
        for i, term in enumerate(self.get("terms", ())):
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
        kind = self.a.kind
        if kind.column_kind == "numeric" and not info.numeric:
            raise self.fail("column", f"a {kind.name} needs a numeric column; "
                            f"{info.name!r} is {info.kind}")
        if kind.column_kind == "categorical" and not info.categorical:
            raise self.fail("column", f"a {kind.name} needs a categorical column; "
                            f"{info.name!r} is {info.kind}")
        if kind.column_kind == "any" and info.numeric and not self.get("bin_edges"):
            key = "bins" if "bins" in self.a.spec else "bin_edges"
            raise self.fail(key, f"{info.name!r} is numeric: give public bin edges")
        categories = self.get("categories")
        if categories and info.categorical:
            self.categories(info, categories, "categories")
        clip = self.get("clip")
        if clip is not None:
            self.inside(info, clip, "clip", change=self.get("baseline") is not None)
        candidates = self.get("candidates")
        if candidates and (candidates[0] < info.lower or candidates[-1] > info.upper):
            raise self.fail("candidates", f"must lie in [{info.lower:g}, {info.upper:g}] for "
                            f"{info.name!r}")

    def inside(self, info: ColumnInfo, clip: tuple[float, float], key: str,
               change: bool) -> None:
        lower, upper = info.lower, info.upper
        if change:
            lower, upper = -(upper - lower), upper - lower
        if not lower <= clip[0] < clip[1] <= upper:
            raise self.fail(key, f"must lie inside [{lower:g}, {upper:g}] for {info.name!r}")

    def term(self, table: TableInfo, term: Term | TermSpec, key: str) -> None:
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
        pure_before = b.spent - _guarantee(Spend(0.0, b.spent_rho), b.delta)
        after = _guarantee(Spend(pure_before + spend.epsilon, b.spent_rho + spend.rho),
                           b.delta)
        costs.append(MemberCost(b.member, b.spent, after, b.total))
    return costs


def check_per_query(study: Study, budgets: Sequence[MemberBudget]) -> None:
    """Refuse an analysis one of whose queries exceeds a member's largest loss per query; the
    refusal names the field that pays that query."""
    for a in study.analyses:
        for planned in a.plan():
            for b in budgets:
                loss = _guarantee(planned.spend(), b.delta)
                if loss > b.max_per_query * (1 + 1e-12):
                    rho = planned.query.rho
                    shown = f"rho {rho:g} is epsilon {loss:.4g} at delta {b.delta:g}, which" \
                        if rho else f"{loss:g}"
                    raise StudyError(f"{study.source}: {a.label}.{planned.pays}: {shown} "
                                     f"exceeds {b.member}'s largest loss per query "
                                     f"({b.max_per_query:g})")


@functools.lru_cache(maxsize=4096)
def _guarantee(spend: Spend, delta: float) -> float:
    """`spend.guarantee(delta)`, remembered: OpenDP's rho conversion takes milliseconds and
    a plan asks it for every member and query, mostly with the same arguments."""
    return spend.guarantee(delta)


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
