"""The saved study-results document: load it, check it, and the one error it raises.

A study run saves its results as JSON (format `bridgestat-study-results/1`, written by
`study.run`): the study, its members, one entry per analysis with tables, plot specs,
meta-analyses, regression fits and the privacy loss, and the budget. The report trusts nothing
in such a file: `validate_results` checks the structure the report relies on (required keys,
known plot kinds, in-range references, numbers where numbers are read) before anything is
drawn, so a bad file fails with one `ReportError` naming the analysis and the key instead of a
traceback from deep inside matplotlib. Optional keys may be missing; the report then leaves
that part out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

from pydantic import ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema

from bridgestat.common.files import FileModel, KeyProblem, first_problem, shown
from bridgestat.common.numbers import finite as is_finite

FORMAT = "bridgestat-study-results/1"
NETWORK = "NETWORK"
"""The member name of the pooled network row (and fit) in tables and regressions."""

NUMERIC_KEYS = ("estimate", "se", "ci_low", "ci_high", "n")
"""Row keys that must be numbers (or null) wherever they appear."""

PLOT_KINDS = ("member_vs_network", "shares", "forest", "coefficients", "transition")
"""The plot kinds a document may ask for (`plots.render_plot` draws each)."""

Row = Mapping[str, Any]


class ReportError(ValueError):
    """The results document cannot be rendered; the message names the analysis and key."""


def is_number(value: Any) -> bool:
    """A JSON number (bool excluded: JSON true is not 1 here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_number_or_null(value: Any) -> bool:
    """A JSON number or null."""
    return value is None or is_number(value)


def finite(value: Any) -> float | None:
    """A finite float, or None for null, NaN, infinities and non-numbers (drawn as missing)."""
    return float(value) if is_finite(value) else None


# -- the document, as `study.run` writes it ---------------------------------------------------


def _bounds(value: object) -> list[float] | None:
    """A column's [lower, upper] (numbers), or None when the run did not save it."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2 or not all(map(is_number, value)):
        raise ValueError(f"must be [lower, upper], two numbers, got {value!r}")
    return [float(v) for v in value]


def _analysis_id(value: object) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"must be a non-empty string without spaces, got {shown(value)}")
    return value


def _plot_kind(value: object) -> str:
    if value not in PLOT_KINDS:
        raise ValueError(f"unknown plot kind {shown(value)} (known: "
                         f"{', '.join(sorted(PLOT_KINDS))})")
    return str(value)


def _format(value: object) -> str:
    if value != FORMAT:
        raise ValueError(f"expected {FORMAT!r}, got {shown(value)}")
    return FORMAT


Number = float | None  # NaN and infinities pass: `finite` draws them as missing
Bounds = Annotated[list[float] | None, PlainValidator(_bounds)]
AnalysisId = Annotated[str, PlainValidator(_analysis_id),
                       WithJsonSchema({"type": "string", "pattern": r"^\S+$"})]
PlotKind = Annotated[str, PlainValidator(_plot_kind),
                     WithJsonSchema({"type": "string", "enum": list(PLOT_KINDS)})]
Format = Annotated[str, PlainValidator(_format), WithJsonSchema({"const": FORMAT})]


class DocModel(FileModel):
    """A part of results.json: the keys `study.run` writes, nothing else."""

    model_config = ConfigDict(allow_inf_nan=True)


class StudyDoc(DocModel):
    name: str | None = None
    title: str | None = None
    description: str | None = None
    file: str | None = None


class RowDoc(DocModel):
    """A table row: its columns are the table's (any name); the numeric ones are numbers."""

    model_config = ConfigDict(extra="allow")  # the table's own columns

    estimate: Number = None
    se: Number = None
    ci_low: Number = None
    ci_high: Number = None
    n: Number = None


class TableDoc(DocModel):
    name: str | None = None
    caption: str | None = None
    columns: list[str] = Field(default_factory=list)
    rows: list[RowDoc] = Field(default_factory=list)


class PlotDoc(DocModel):
    """A plot spec; `plots.render_plot` draws it from the analysis's tables, meta, fits."""

    kind: PlotKind
    table: int = 0  # index into the analysis's tables
    meta: int = 0  # index into its meta-analyses (forest)
    regression: str | None = None  # the fit drawn (coefficients)
    facet: str | None = None  # the column that splits member_vs_network panels
    category: str = "category"  # the column of shares
    label: str | None = None
    sharex: bool = True


class PooledDoc(DocModel):
    estimate: float
    se: Number = None
    ci_low: float
    ci_high: float
    method: str | None = None
    df: Number = None


class MetaDoc(DocModel):
    """A meta-analysis (`meta.MetaResult.to_dict`, plus the forest plot's label)."""

    k: int | None = None
    labels: list[str]
    estimates: list[float]
    variances: list[float]
    weights_fixed: list[Number] = Field(default_factory=list)
    weights_random: list[Number] = Field(default_factory=list)
    fixed: PooledDoc
    random: PooledDoc | None = None
    hksj: PooledDoc
    q: Number = None
    q_df: int | None = None
    q_pvalue: Number = None
    i2: Number = None
    h2: Number = None
    tau2: Number = None
    # Q-profile 95 % interval of tau2 (older documents have none)
    tau2_ci: Annotated[list[Number], Field(min_length=2, max_length=2)] | None = None
    prediction: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    level: Number = None
    warnings: list[str] = Field(default_factory=list)
    label: str | None = None


class CoefficientDoc(DocModel):
    name: str
    estimate: Number = None
    se: Number = None
    ci_low: Number = None
    ci_high: Number = None
    se_ols: Number = None


class FitDoc(DocModel):
    """A regression fit (`regression.RegressionResult.to_dict`), or a failed one's status."""

    coefficients: list[CoefficientDoc] | None = None
    names: list[str] = Field(default_factory=list)
    n: Number = None
    sigma: Number = None
    r2: Number = None
    replicates: int | None = None
    warnings: list[str] = Field(default_factory=list)
    level: Number = None
    status: str | None = None  # "not estimable: ..." when the fit failed


class LossDoc(DocModel):
    epsilon: Number = None
    rho: Number = None


class QueryDoc(DocModel):
    """One query the analysis asked: its key, the query, each member's release or failure
    (kept for the record; the report only counts them)."""

    key: str | None = None
    query: dict[str, Any] = Field(default_factory=dict)
    releases: dict[str, dict[str, Any]] = Field(default_factory=dict)
    failures: dict[str, str] = Field(default_factory=dict)


class AnalysisDoc(DocModel):
    id: AnalysisId
    number: int | str | None = None
    title: str | None = None
    description: str | None = None
    audience: str | None = None
    kind: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict)  # the study file's analysis, echoed
    column_bounds: Bounds = None  # the schema's [lower, upper] of `column` (figures.public_range)
    tables: list[TableDoc] = Field(default_factory=list)
    plots: list[PlotDoc] = Field(default_factory=list)
    meta: list[MetaDoc] = Field(default_factory=list)
    regression: dict[str, FitDoc] | None = None  # member (or NETWORK) -> fit
    loss: dict[str, LossDoc] | None = None  # member -> privacy loss
    notes: list[str] = Field(default_factory=list)
    queries: list[QueryDoc] = Field(default_factory=list)


class BudgetDoc(DocModel):
    member: str
    epsilon_before: Number = None
    epsilon_after: Number = None
    epsilon_study: Number = None
    epsilon_total: Number = None
    delta: Number = None


class ConfirmatoryDoc(DocModel):
    """One confirmatory analysis's NETWORK effect, its raw and adjusted p-value."""

    id: str
    estimate: Number = None
    se: Number = None
    pvalue: Number = None
    adjusted: Number = None
    status: str | None = None


class MultiplicityDoc(DocModel):
    """The study's multiplicity rule over its confirmatory analyses (`study.multiplicity_doc`)."""

    rule: str
    null: Number = 0.0
    analyses: list[ConfirmatoryDoc] = Field(default_factory=list)


class ResultsDoc(DocModel):
    """results.json (format `bridgestat-study-results/1`)."""

    format: Format | None = None
    run_id: str | None = None
    study: StudyDoc | None = None
    created: str | None = None
    members: list[str] = Field(default_factory=list)
    analyses: list[AnalysisDoc]
    budget: list[BudgetDoc] = Field(default_factory=list)
    budget_before: dict[str, Number] | None = None  # member -> epsilon spent before the run
    multiplicity: MultiplicityDoc | None = None  # adjusted p-values of confirmatory analyses


# -- loading and checking ---------------------------------------------------------------------


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a saved results document; `ReportError` names the file and key."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"{source}: cannot read results: not UTF-8 text") from exc
    except OSError as exc:
        raise ReportError(f"{source}: cannot read results: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    except RecursionError as exc:
        raise ReportError(f"{source}: not valid JSON: nested too deeply") from exc
    try:
        validate_results(doc)
    except ReportError as exc:
        raise ReportError(f"{source}: {exc}") from exc
    return dict(doc)


def validate_results(results: Any) -> None:
    """Check the structure the report relies on; raise `ReportError` naming what is wrong:
    `results: <key path>: <problem>`, or `analysis '<id>': <key path>: <problem>` inside an
    analysis."""
    try:
        ResultsDoc.model_validate(results)
    except ValidationError as exc:
        key, problem = first_problem(exc, ResultsDoc)
        _fail(*_where(results, key), problem)
    seen: set[str] = set()
    for i, analysis in enumerate(results["analyses"]):
        if analysis["id"] in seen:
            _fail("results", f"analyses[{i}].id", f"duplicate analysis id {analysis['id']!r}")
        seen.add(analysis["id"])
        where = f"analysis {analysis['id']!r}"
        try:
            for p, spec in enumerate(analysis.get("plots") or []):
                _check_plot(analysis, p, spec)
        except KeyProblem as exc:
            _fail(where, exc.key, exc.problem)


def _where(results: Any, key: str) -> tuple[str, str]:
    """('results', key), or the analysis's name and the key inside it for `analyses[i]...`."""
    head, dot, rest = key.partition("].")
    if head.startswith("analyses[") and dot and head[9:].isdigit():
        analyses = results.get("analyses") if isinstance(results, Mapping) else None
        index = int(head[9:])
        analysis = analyses[index] if isinstance(analyses, list) and index < len(analyses) \
            else None
        aid = analysis.get("id") if isinstance(analysis, Mapping) else None
        if isinstance(aid, str) and aid and rest != "id":
            return f"analysis {aid!r}", rest
    return "results", key


def _fail(where: str, key: str, problem: str) -> NoReturn:
    """Raise the one error shape of this module: '<where>: <key>: <problem>'."""
    raise ReportError(f"{where}: {key}: {problem}")


def _check_plot(analysis: Mapping[str, Any], index: int, spec: Row) -> None:
    """Every table/meta/regression reference a (well-typed) plot spec makes exists."""
    key = f"plots[{index}]"
    kind = spec["kind"]
    if kind in ("member_vs_network", "shares", "transition"):
        rows = _table(analysis, spec, key).get("rows") or []
        needed = {"member_vs_network": [("facet", spec.get("facet"))],
                  "shares": [("category", spec.get("category", "category"))],
                  "transition": [("table", "from"), ("table", "to")]}[kind]
        for field, column in needed:
            if column is not None and rows and not any(column in row for row in rows):
                raise KeyProblem(f"{key}.{field}", f"column {column!r} is in no row of the table")
    elif kind == "forest":
        _meta(analysis, spec, key)
    elif kind == "coefficients":
        fits = analysis.get("regression")
        if not fits:
            raise KeyProblem("regression", f"missing, but {key} draws coefficients from it")
        name = spec.get("regression")
        if name is not None and name not in fits:
            raise KeyProblem(f"{key}.regression", f"no fit named {name!r} in regression")


def _table(analysis: Mapping[str, Any], spec: Row, key: str) -> Row:
    try:
        return plot_table(analysis, spec, key=key)
    except ReportError as exc:
        raise KeyProblem(f"{key}.table", str(exc).split(": ", 2)[-1]) from None


def _meta(analysis: Mapping[str, Any], spec: Row, key: str) -> None:
    """The meta-analysis a forest plot draws exists, its labels as long as its estimates."""
    index = spec.get("meta", 0)
    metas = analysis.get("meta") or []
    if not 0 <= index < len(metas):
        raise KeyProblem(f"{key}.meta", f"index {index!r} out of range (the analysis has "
                         f"{len(metas)} meta-analyses)")
    meta = metas[index]
    if not len(meta["labels"]) == len(meta["estimates"]) == len(meta["variances"]):
        raise KeyProblem(f"meta[{index}].labels",
                         "must be a list as long as estimates and variances")


def plot_table(analysis: Mapping[str, Any], spec: Row, where: str = "analysis",
               key: str = "plot") -> Row:
    """The table a plot spec refers to (index `table`, default 0), checked to exist."""
    index = spec.get("table", 0)
    tables = analysis.get("tables") or []
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(tables):
        _fail(where, f"{key}.table",
              f"index {index!r} out of range (the analysis has {len(tables)} table(s))")
    table: Row = tables[index]
    return table
