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
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

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


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a saved results document; `ReportError` names the file and key."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{source}: cannot read results: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    try:
        validate_results(doc)
    except ReportError as exc:
        raise ReportError(f"{source}: {exc}") from exc
    return dict(doc)


def is_number(value: Any) -> bool:
    """A JSON number (bool excluded: JSON true is not 1 here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_number_or_null(value: Any) -> bool:
    """A JSON number or null."""
    return value is None or is_number(value)


def finite(value: Any) -> float | None:
    """A finite float, or None for null, NaN, infinities and non-numbers (drawn as missing)."""
    if not is_number(value):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def validate_results(results: Any) -> None:
    """Check the structure the report relies on; raise `ReportError` naming what is wrong."""
    doc = _mapping(results, "results", "(document)")
    fmt = doc.get("format")
    if fmt is not None and fmt != FORMAT:
        _fail("results", "format", f"expected {FORMAT!r}, got {fmt!r}")
    if "analyses" not in doc:
        _fail("results", "analyses", "missing (a list of analyses is required)")
    analyses = _list(doc, "analyses", "results")
    for i, member in enumerate(_list(doc, "members", "results")):
        if not isinstance(member, str):
            _fail("results", f"members[{i}]", f"must be a string, got {member!r}")
    for i, entry in enumerate(_list(doc, "budget", "results")):
        _mapping(entry, "results", f"budget[{i}]")
    seen: set[str] = set()
    for i, analysis in enumerate(analyses):
        _check_analysis(i, analysis, seen)


def _fail(where: str, key: str, problem: str) -> NoReturn:
    """Raise the one error shape of this module: '<where>: <key>: <problem>'."""
    raise ReportError(f"{where}: {key}: {problem}")


def _list(doc: Mapping[str, Any], key: str, where: str, path: str | None = None) -> list[Any]:
    """doc[key] as a list ([] when absent or null); anything else fails naming the key."""
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(where, path or key, f"must be a list, got {type(value).__name__}")
    return value


def _mapping(value: Any, where: str, key: str) -> Mapping[str, Any]:
    """value if it is a JSON object, else fail naming the key."""
    if not isinstance(value, Mapping):
        _fail(where, key, f"must be an object, got {type(value).__name__}")
    return value


def _check_analysis(index: int, analysis: Any, seen: set[str]) -> None:
    """Validate one analysis: id, tables, fits, loss, notes, plot specs and their references."""
    doc = _mapping(analysis, "results", f"analyses[{index}]")
    aid = doc.get("id")
    if not isinstance(aid, str) or not aid or any(c.isspace() for c in aid):
        _fail("results", f"analyses[{index}].id", f"must be a non-empty string without spaces, "
              f"got {aid!r}")
    if aid in seen:
        _fail("results", f"analyses[{index}].id", f"duplicate analysis id {aid!r}")
    seen.add(aid)
    where = f"analysis {aid!r}"
    for t, table in enumerate(_list(doc, "tables", where)):
        _check_table(where, t, table)
    for m, meta in enumerate(_list(doc, "meta", where)):
        _mapping(meta, where, f"meta[{m}]")
    if doc.get("regression") is not None:
        for name, fit in _mapping(doc["regression"], where, "regression").items():
            _check_fit(where, f"regression.{name}", fit)
    if doc.get("loss") is not None:
        for member, loss in _mapping(doc["loss"], where, "loss").items():
            _check_loss(where, f"loss.{member}", loss)
    for n, note in enumerate(_list(doc, "notes", where)):
        if not isinstance(note, str):
            _fail(where, f"notes[{n}]", f"must be a string, got {note!r}")
    for p, spec in enumerate(_list(doc, "plots", where)):
        _check_plot(where, doc, p, _mapping(spec, where, f"plots[{p}]"))


def _check_loss(where: str, key: str, loss: Any) -> None:
    """A member's loss is an object whose epsilon and rho, when given, are numbers."""
    doc = _mapping(loss, where, key)
    for name in ("epsilon", "rho"):
        if not is_number_or_null(doc.get(name)):
            _fail(where, f"{key}.{name}", f"must be a number or null, got {doc[name]!r}")


def _check_table(where: str, index: int, table: Any) -> None:
    """A table is an object with a list of row objects whose numeric columns are numbers."""
    key = f"tables[{index}]"
    doc = _mapping(table, where, key)
    for c, column in enumerate(_list(doc, "columns", where, f"{key}.columns")):
        if not isinstance(column, str):
            _fail(where, f"{key}.columns[{c}]", f"must be a string, got {column!r}")
    for r, row in enumerate(_list(doc, "rows", where, f"{key}.rows")):
        cells = _mapping(row, where, f"{key}.rows[{r}]")
        for name in NUMERIC_KEYS:
            if not is_number_or_null(cells.get(name)):
                _fail(where, f"{key}.rows[{r}].{name}",
                      f"must be a number or null, got {cells[name]!r}")


def _check_fit(where: str, key: str, fit: Any) -> None:
    """A fit has a list of coefficients, each with a name and numeric fields.

    A fit that failed (the study saves {"status": "not estimable: ..."}) has only a status.
    """
    doc = _mapping(fit, where, key)
    coefficients = doc.get("coefficients")
    if coefficients is None and isinstance(doc.get("status"), str):
        return
    if not isinstance(coefficients, list):
        _fail(where, f"{key}.coefficients", "missing or not a list")
    for c, coef in enumerate(coefficients):
        item = _mapping(coef, where, f"{key}.coefficients[{c}]")
        if not isinstance(item.get("name"), str):
            _fail(where, f"{key}.coefficients[{c}].name", "missing or not a string")
        for name in ("estimate", "se", "ci_low", "ci_high", "se_ols"):
            if not is_number_or_null(item.get(name)):
                _fail(where, f"{key}.coefficients[{c}].{name}", "must be a number or null")


def _check_plot(where: str, analysis: Mapping[str, Any], index: int, spec: Row) -> None:
    """Known kind, and every table/meta/regression reference it makes exists."""
    key = f"plots[{index}]"
    kind = spec.get("kind")
    if kind not in PLOT_KINDS:
        _fail(where, f"{key}.kind",
              f"unknown plot kind {kind!r} (known: {', '.join(sorted(PLOT_KINDS))})")
    if kind in ("member_vs_network", "shares", "transition"):
        rows = plot_table(analysis, spec, where, key).get("rows") or []
        needed = {"member_vs_network": [("facet", spec.get("facet"))],
                  "shares": [("category", spec.get("category", "category"))],
                  "transition": [("table", "from"), ("table", "to")]}[kind]
        for field, column in needed:
            if column is not None and rows and not any(column in row for row in rows):
                _fail(where, f"{key}.{field}", f"column {column!r} is in no row of the table")
    elif kind == "forest":
        _check_meta(where, analysis, spec, key)
    elif kind == "coefficients":
        fits = analysis.get("regression")
        if not fits:
            _fail(where, "regression", f"missing, but {key} draws coefficients from it")
        name = spec.get("regression")
        if name is not None and name not in fits:
            _fail(where, f"{key}.regression", f"no fit named {name!r} in regression")


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


def _check_meta(where: str, analysis: Mapping[str, Any], spec: Row, key: str) -> None:
    """The meta-analysis a forest plot draws exists and has the fields the plot reads."""
    index = spec.get("meta", 0)
    metas = analysis.get("meta") or []
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(metas):
        _fail(where, f"{key}.meta",
              f"index {index!r} out of range (the analysis has {len(metas)} meta-analyses)")
    meta = metas[index]
    for field in ("labels", "estimates", "variances", "fixed", "hksj"):
        if field not in meta:
            _fail(where, f"meta[{index}].{field}", "missing (needed for the forest plot)")
    for field in ("estimates", "variances"):
        if not isinstance(meta[field], list) or not all(map(is_number, meta[field])):
            _fail(where, f"meta[{index}].{field}", "must be a list of numbers")
    if not isinstance(meta["labels"], list) or not (
            len(meta["labels"]) == len(meta["estimates"]) == len(meta["variances"])):
        _fail(where, f"meta[{index}].labels", "must be a list as long as estimates and variances")
    prediction = meta.get("prediction")
    if prediction is not None and not (isinstance(prediction, list) and len(prediction) == 2
                                       and all(map(is_number, prediction))):
        _fail(where, f"meta[{index}].prediction", "must be null or a list of two numbers")
    for pooled in ("fixed", "hksj"):
        for field in ("estimate", "ci_low", "ci_high"):
            if not is_number(_mapping(meta[pooled], where, f"meta[{index}].{pooled}").get(field)):
                _fail(where, f"meta[{index}].{pooled}.{field}", "missing or not a number")
