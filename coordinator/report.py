"""Render a saved study-results document as one self-contained HTML report.

A study run saves its results as JSON (format `bridgestat-study-results/1`: the study, its
members, one entry per analysis with tables, plot specs, meta-analyses and regression fits, and
the privacy budget). `write_report` turns that into a single HTML file for two audiences:
coordinators (each member beside the network) and researchers (pooled effects with honest
intervals). The file needs nothing else: CSS is inline, plots are SVG embedded as base64 data
URIs (an `<img>` each, so the SVGs' internal ids cannot clash), there is no script and no
external URL, so it can be mailed, archived or opened offline.

Plots use matplotlib's object API on an explicit Agg canvas (no pyplot, no global backend
switch) with fixed sizes, a fixed `svg.hashsalt` and no date metadata, so the same document
always gives the same bytes. Text in the SVGs is drawn as paths: it looks the same everywhere.

The document is validated before anything is drawn (`validate_results`): required structure,
known plot kinds and in-range references; a problem raises `ReportError` naming the analysis
and the key. Optional keys may be missing: the report then simply leaves that part out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, NoReturn

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Polygon
from matplotlib.ticker import PercentFormatter

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

FORMAT = "bridgestat-study-results/1"
NETWORK = "NETWORK"
MAX_PANELS = 12
"""Small multiples beyond this many panels are left out of a plot (the table has them all)."""

FIG_WIDTH = 8.0  # inches; 768 CSS px at the SVG's natural size
MEMBER_COLOR = "#486581"
NETWORK_COLOR = "#c2410c"
MUTED_COLOR = "#7b8794"
INK_COLOR = "#1f2933"
CATEGORY_COLORS = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # Tableau 10: distinguishable, colour-blind tolerant
NUMERIC_KEYS = ("estimate", "se", "ci_low", "ci_high", "n")

_RC: dict[RcKeyType, Any] = {
    "svg.hashsalt": "bridgestat-report",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9aa5b1",
    "axes.labelcolor": INK_COLOR,
    "axes.axisbelow": True,
    "axes.grid": True,
    "axes.grid.axis": "x",
    "grid.color": "#e4e7eb",
    "grid.linewidth": 0.8,
    "xtick.color": "#52606d",
    "ytick.color": INK_COLOR,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}

Row = Mapping[str, Any]


class ReportError(ValueError):
    """The results document cannot be rendered; the message names the analysis and key."""


# --------------------------------------------------------------------------- loading, checks


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


def _check_analysis(index: int, analysis: Any, seen: set[str]) -> None:
    """Validate one analysis: id, tables, plot specs and what the plots refer to."""
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
            _mapping(loss, where, f"loss.{member}")
    for n, note in enumerate(_list(doc, "notes", where)):
        if not isinstance(note, str):
            _fail(where, f"notes[{n}]", f"must be a string, got {note!r}")
    for p, spec in enumerate(_list(doc, "plots", where)):
        _check_plot(where, doc, p, _mapping(spec, where, f"plots[{p}]"))


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
            if not _is_number_or_null(cells.get(name)):
                _fail(where, f"{key}.rows[{r}].{name}",
                      f"must be a number or null, got {cells[name]!r}")


def _check_fit(where: str, key: str, fit: Any) -> None:
    """A regression fit needs a list of coefficients, each with a name and numeric fields."""
    doc = _mapping(fit, where, key)
    coefficients = doc.get("coefficients")
    if not isinstance(coefficients, list):
        _fail(where, f"{key}.coefficients", "missing or not a list")
    for c, coef in enumerate(coefficients):
        item = _mapping(coef, where, f"{key}.coefficients[{c}]")
        if not isinstance(item.get("name"), str):
            _fail(where, f"{key}.coefficients[{c}].name", "missing or not a string")
        for name in ("estimate", "se", "ci_low", "ci_high", "se_ols"):
            if not _is_number_or_null(item.get(name)):
                _fail(where, f"{key}.coefficients[{c}].{name}", "must be a number or null")


def _check_plot(where: str, analysis: Mapping[str, Any], index: int, spec: Row) -> None:
    """Known kind, and every table/meta/regression reference it makes exists."""
    key = f"plots[{index}]"
    kind = spec.get("kind")
    if kind not in _PLOTTERS:
        _fail(where, f"{key}.kind",
              f"unknown plot kind {kind!r} (known: {', '.join(sorted(_PLOTTERS))})")
    if kind in ("member_vs_network", "shares", "transition"):
        rows = _table(analysis, spec, where, key).get("rows") or []
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


def _table(analysis: Mapping[str, Any], spec: Row, where: str, key: str) -> Row:
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
        if not isinstance(meta[field], list) or not all(map(_is_number, meta[field])):
            _fail(where, f"meta[{index}].{field}", "must be a list of numbers")
    if not isinstance(meta["labels"], list) or not (
            len(meta["labels"]) == len(meta["estimates"]) == len(meta["variances"])):
        _fail(where, f"meta[{index}].labels", "must be a list as long as estimates and variances")
    prediction = meta.get("prediction")
    if prediction is not None and not (isinstance(prediction, list) and len(prediction) == 2
                                       and all(map(_is_number, prediction))):
        _fail(where, f"meta[{index}].prediction", "must be null or a list of two numbers")
    for pooled in ("fixed", "hksj"):
        for field in ("estimate", "ci_low", "ci_high"):
            if not _is_number(_mapping(meta[pooled], where, f"meta[{index}].{pooled}").get(field)):
                _fail(where, f"meta[{index}].{pooled}.{field}", "missing or not a number")


def _is_number(value: Any) -> bool:
    """A JSON number (bool excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_number_or_null(value: Any) -> bool:
    """A JSON number or null."""
    return value is None or _is_number(value)


# --------------------------------------------------------------------------- numbers


def _num(value: Any) -> float | None:
    """A finite float, or None for null, NaN, infinities and non-numbers."""
    if not _is_number(value):
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def fmt_number(value: Any) -> str:
    """Three significant digits (whole numbers from 100 on, ints as ints), '—' if missing."""
    if isinstance(value, str):
        return value
    x = _num(value)
    if x is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) < 0.001:
        return f"{x:.2e}"
    return f"{x:#.3g}".rstrip(".")


def fmt_interval(low: Any, high: Any) -> str:
    """'[low, high]' with both ends formatted, '—' if either is missing."""
    if _num(low) is None or _num(high) is None:
        return "—"
    return f"[{fmt_number(low)}, {fmt_number(high)}]"


def fmt_pvalue(p: Any) -> str:
    """'p = 0.118', or 'p < 0.001' below that."""
    x = _num(p)
    if x is None:
        return "p = —"
    return "p < 0.001" if x < 0.001 else f"p = {x:.3f}"


def fmt_percent(share: Any) -> str:
    """A share in [0, 1] as a percentage with three significant digits."""
    x = _num(share)
    return "—" if x is None else f"{fmt_number(100 * x)}%"


# --------------------------------------------------------------------------- plot helpers


@dataclass(frozen=True)
class Plot:
    """One rendered plot: its SVG bytes, a short alt text and an HTML-safe caption."""

    kind: str
    svg: bytes
    alt: str
    caption: str


@dataclass(frozen=True)
class _Point:
    """One line of a dot-and-whisker chart."""

    label: str
    estimate: float | None
    low: float | None
    high: float | None
    network: bool
    status: str


def _new_figure(height: float, width: float = FIG_WIDTH) -> Figure:
    """A figure on an explicit Agg canvas (no pyplot state), with constrained layout."""
    layout = ConstrainedLayoutEngine(w_pad=0.06, h_pad=0.06)
    fig = Figure(figsize=(width, max(1.6, height)), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _svg_bytes(fig: Figure) -> bytes:
    """The figure as reproducible SVG (fixed hash salt, no date or creator metadata)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def _z(level: float) -> float:
    """Two-sided normal critical value for coverage `level`."""
    return NormalDist().inv_cdf((1 + level) / 2)


def _interval(row: Row, level: float = 0.95) -> tuple[float | None, float | None]:
    """The row's CI: ci_low/ci_high if given, else estimate +- z se, else (None, None)."""
    low, high = _num(row.get("ci_low")), _num(row.get("ci_high"))
    if low is not None and high is not None:
        return low, high
    estimate, se = _num(row.get("estimate")), _num(row.get("se"))
    if estimate is not None and se is not None:
        return estimate - _z(level) * se, estimate + _z(level) * se
    return None, None


def _label(row: Row, index: int) -> str:
    """How a chart names a row: its member, else its term or group, else its position."""
    for key in ("member", "term", "group"):
        if row.get(key) is not None:
            return str(row[key])
    return f"row {index + 1}"


def _member_order(members: Sequence[str]) -> Callable[[Row], tuple[int, int]]:
    """Sort key: members in network order, then unknown labels, NETWORK last."""
    position = {m: i for i, m in enumerate(members)}

    def key(row: Row) -> tuple[int, int]:
        member = row.get("member")
        if member == NETWORK:
            return (2, 0)
        return (0, position[member]) if member in position else (1, 0)

    return key


def _points(rows: Sequence[Row], members: Sequence[str]) -> list[_Point]:
    """Dot-and-whisker lines for table rows, in network order with NETWORK last."""
    ordered = sorted(rows, key=_member_order(members))
    points = []
    for i, row in enumerate(ordered):
        low, high = _interval(row)
        points.append(_Point(_label(row, i), _num(row.get("estimate")), low, high,
                             row.get("member") == NETWORK, str(row.get("status") or "")))
    return points


def _positions(points: Sequence[_Point]) -> list[float]:
    """y positions top to bottom, with a half-line gap before the NETWORK line(s)."""
    ys: list[float] = []
    y = 0.0
    for i, point in enumerate(points):
        if point.network and i > 0 and not points[i - 1].network:
            y += 0.5
        ys.append(-y)
        y += 1.0
    return ys


def _dot_whisker(ax: Axes, points: Sequence[_Point], reference: float | None,
                 zero_line: bool = False) -> None:
    """Horizontal estimates with CIs; NETWORK highlighted; unestimable lines say so."""
    ys = _positions(points)
    for y, point in zip(ys, points, strict=True):
        color = NETWORK_COLOR if point.network else MEMBER_COLOR
        if point.estimate is None:
            reason = f" ({readable(point.status)})" if point.status not in ("", "ok") else ""
            ax.text(0.01, y, f"not estimable{reason}", transform=ax.get_yaxis_transform(),
                    va="center", ha="left", fontsize=8, style="italic", color=MUTED_COLOR)
            continue
        if point.low is not None and point.high is not None:
            ax.hlines(y, point.low, point.high, color=color, linewidth=2.2 if point.network
                      else 1.6, zorder=2)
        ax.plot([point.estimate], [y], marker="D" if point.network else "o", linestyle="none",
                markersize=7.5 if point.network else 5.5, color=color, zorder=3,
                markeredgecolor="white", markeredgewidth=0.6)
    if zero_line:
        ax.axvline(0, color="#3e4c59", linewidth=0.8, zorder=1)
    if reference is not None:
        ax.axvline(reference, color=NETWORK_COLOR, linewidth=0.9, linestyle=(0, (4, 3)),
                   alpha=0.8, zorder=1)
    if any(p.network for p in points) and not all(p.network for p in points):
        first = next(i for i, p in enumerate(points) if p.network)
        ax.axhline(ys[first] + 0.75, color="#cbd2d9", linewidth=0.7, zorder=0)
    _y_labels(ax, ys, points)


def _y_labels(ax: Axes, ys: Sequence[float], points: Sequence[_Point]) -> None:
    """Row labels on the y axis, NETWORK bold in its colour among others; margins."""
    ax.set_yticks(list(ys), [p.label for p in points])
    ax.tick_params(axis="y", length=0)
    emphasise = not all(p.network for p in points)  # one fit's terms: nothing to single out
    for tick, point in zip(ax.get_yticklabels(), points, strict=True):
        if point.network and emphasise:
            tick.set_fontweight("bold")
            tick.set_color(NETWORK_COLOR)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.spines["left"].set_visible(False)


def _spans_zero(points: Iterable[_Point]) -> bool:
    """Whether zero lies inside the drawn range, so a zero line means something."""
    ends = [x for p in points for x in (p.low, p.estimate, p.high) if x is not None]
    return bool(ends) and min(ends) < 0 < max(ends)


def _reference(points: Sequence[_Point]) -> float | None:
    """The NETWORK estimate a chart draws its reference line at (None if not estimable)."""
    return next((p.estimate for p in points if p.network and p.estimate is not None), None)


def _ncols(count: int) -> int:
    """Columns of a small-multiples grid: 1 panel alone, up to 4 in two columns, else three."""
    return 1 if count == 1 else 2 if count <= 4 else 3


def _panel_grid(fig: Figure, count: int, sharex: bool) -> list[Axes]:
    """count axes in a grid of 1-3 columns; unused cells are hidden."""
    ncols = _ncols(count)
    nrows = math.ceil(count / ncols)
    grid = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    axes = [ax for line in grid for ax in line]
    for ax in axes[count:]:
        ax.set_visible(False)
    for ax in axes[:count]:
        ax.tick_params(axis="x", labelbottom=True)
    return axes[:count]


def _facets(rows: Sequence[Row], column: str | None) -> list[tuple[str | None, list[Row]]]:
    """Rows grouped by `column` in order of first appearance (one group if column is None)."""
    if column is None:
        return [(None, list(rows))]
    groups: dict[str, list[Row]] = {}
    for row in rows:
        value = row.get(column)
        groups.setdefault("—" if value is None else str(value), []).append(row)
    return list(groups.items())


def _grid_height(count: int, lines: int) -> float:
    """Figure height for `count` panels of `lines` rows each, laid out by `_panel_grid`."""
    return math.ceil(count / _ncols(count)) * (0.27 * lines + 0.95) + 0.35


def _nothing_to_draw(alt: str, message: str) -> tuple[Figure, str, str]:
    """A small placeholder plot saying why there is nothing to draw (not a silent gap)."""
    fig = _new_figure(1.0)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", style="italic", color=MUTED_COLOR)
    return fig, alt, html.escape(message)


def _truncation_note(total: int) -> str:
    """Caption text when small multiples were cut at MAX_PANELS."""
    if total <= MAX_PANELS:
        return ""
    return f" Showing the first {MAX_PANELS} of {total} panels; the table lists all of them."


# --------------------------------------------------------------------------- plot kinds


@dataclass(frozen=True)
class _Context:
    """What every plot function gets: the analysis, its spec and the network's members."""

    analysis: Mapping[str, Any]
    spec: Row
    members: tuple[str, ...]

    @property
    def title(self) -> str:
        return str(self.analysis.get("title") or self.analysis["id"])


def _plot_member_vs_network(ctx: _Context) -> tuple[Figure, str, str]:
    """Dot-and-whisker per member with NETWORK last, optionally faceted."""
    table = ctx.analysis["tables"][ctx.spec.get("table", 0)]
    facet = ctx.spec.get("facet")
    if not table.get("rows"):
        return _nothing_to_draw("Empty table", "Nothing to plot: the table has no rows.")
    groups = _facets(table["rows"], facet)
    shown = groups[:MAX_PANELS]
    lines = max([len(rows) for _, rows in shown] + [1])
    fig = _new_figure(_grid_height(len(shown), lines))
    axes = _panel_grid(fig, len(shown), sharex=True)
    label_sets = [[_label(r, i) for i, r in enumerate(sorted(rows, key=_member_order(
        ctx.members)))] for _, rows in shown]
    same_labels = all(labels == label_sets[0] for labels in label_sets)
    zero = _spans_zero(p for _, rows in shown for p in _points(rows, ctx.members))
    for i, (ax, (name, rows)) in enumerate(zip(axes, shown, strict=True)):
        points = _points(rows, ctx.members)
        _dot_whisker(ax, points, _reference(points), zero_line=zero)
        if name is not None:
            ax.set_title(name)
        if same_labels and i % _ncols(len(shown)):
            ax.tick_params(axis="y", labelleft=False)
    label = str(ctx.spec.get("label") or "Estimate")
    fig.supxlabel(label, fontsize=9)
    by = f", one panel per {html.escape(str(facet))}" if facet else ""
    caption = (f"{html.escape(label)} by member{by}: dots are estimates, whiskers their 95% "
               "confidence intervals (sampling and DP noise). The network estimate is last, "
               "as an orange diamond, and the dashed line marks it"
               f"{'; the solid line is zero' if zero else ''}.{_truncation_note(len(groups))}")
    return fig, f"{label} per member and for the network", caption


def _share_matrix(rows: Sequence[Row], column: str, bars: Sequence[str]
                  ) -> tuple[list[str], list[list[float]], bool]:
    """Categories, shares[bar][category] (negative noisy shares as 0), and whether any were."""
    categories: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for row in rows:
        category = str(row.get(column))
        if category not in categories:
            categories.append(category)
        values[(str(row.get("member")), category)] = _num(row.get("estimate")) or 0.0
    clipped = any(v < 0 for v in values.values())
    matrix = [[max(0.0, values.get((bar, c), 0.0)) for c in categories] for bar in bars]
    return categories, matrix, clipped


def _text_color(hex_color: str) -> str:
    """White or dark text, whichever reads better on the given fill."""
    r, g, b = (int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return INK_COLOR if 0.299 * r + 0.587 * g + 0.114 * b > 0.6 else "white"


def _plot_shares(ctx: _Context) -> tuple[Figure, str, str]:
    """100% stacked bar per member and NETWORK, one segment per category."""
    rows = ctx.analysis["tables"][ctx.spec.get("table", 0)].get("rows") or []
    column = str(ctx.spec.get("category", "category"))
    if not rows:
        return _nothing_to_draw("Empty table", "Nothing to plot: the table has no rows.")
    present = {str(r.get("member")) for r in rows}
    bars = [m for m in ctx.members if m in present]
    bars += sorted(present - set(bars) - {NETWORK}) + ([NETWORK] if NETWORK in present else [])
    categories, matrix, clipped = _share_matrix(rows, column, bars)
    fig = _new_figure(0.34 * len(bars) + 1.25)
    ax = fig.subplots()
    points = [_Point(b, None, None, None, b == NETWORK, "") for b in bars]
    ys = _positions(points)
    left = [0.0] * len(bars)
    for c, category in enumerate(categories):
        color = CATEGORY_COLORS[c % len(CATEGORY_COLORS)]
        widths = [line[c] for line in matrix]
        ax.barh(ys, widths, left=left, height=0.72, color=color, edgecolor="white",
                linewidth=0.8, label=category)
        for y, start, width in zip(ys, left, widths, strict=True):
            if width >= 0.06:
                ax.text(start + width / 2, y, f"{100 * width:.0f}%", ha="center",
                        va="center", fontsize=7.5, color=_text_color(color))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    _y_labels(ax, ys, points)
    ax.set_xlim(0, max([1.0] + left))
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(str(ctx.spec.get("label") or "Share"))
    fig.legend(loc="outside upper left", ncols=min(len(categories), 6),
               title=HEADERS.get(column, readable(column).capitalize()),
               title_fontsize=8.5, alignment="left")
    note = " Negative noisy shares are drawn as 0." if clipped else ""
    caption = (f"Share of each {html.escape(readable(column))} per member and for the network "
               "(last). "
               f"Shares carry DP noise, so a bar need not add up to exactly 100%.{note}")
    return fig, f"Shares by {readable(column)} per member and for the network", caption


def _forest_rows(meta: Mapping[str, Any]) -> list[tuple[str, float, float, float, float]]:
    """(label, estimate, low, high, weight) per member from a MetaResult dict."""
    level = _num(meta.get("level")) or 0.95
    labels, estimates, variances = meta["labels"], meta["estimates"], meta["variances"]
    weights = meta.get("weights_random") or [1 / len(labels)] * len(labels)
    rows = []
    for label, est, var, weight in zip(labels, estimates, variances, weights, strict=False):
        half = _z(level) * math.sqrt(max(float(var), 0.0))
        rows.append((str(label), float(est), float(est) - half, float(est) + half, float(weight)))
    return rows


def _diamond(ax: Axes, y: float, pooled: Mapping[str, Any], color: str) -> None:
    """A pooled estimate as a diamond spanning its interval."""
    est, low, high = (float(pooled[k]) for k in ("estimate", "ci_low", "ci_high"))
    ax.add_patch(Polygon([(low, y), (est, y + 0.32), (high, y), (est, y - 0.32)], closed=True,
                         facecolor=color, edgecolor=color, zorder=3))


def _forest_caption(meta: Mapping[str, Any]) -> str:
    """Heterogeneity statistics and warnings under a forest plot, as HTML."""
    stats = (f"τ² = {fmt_number(meta.get('tau2'))}, I² = {fmt_percent(meta.get('i2'))}, "
             f"Q = {fmt_number(meta.get('q'))} (df {fmt_number(meta.get('q_df'))}, "
             f"{fmt_pvalue(meta.get('q_pvalue'))}), K = {fmt_number(meta.get('k'))}.")
    warnings = "".join(f' <span class="warn">{html.escape(str(w))}</span>'
                       for w in meta.get("warnings") or [])
    prediction = ("; the dashed line is the 95% prediction interval for a new member"
                  if meta.get("prediction") else "")
    return (
        "Each member's estimate with its 95% CI (sampling and DP noise); square size shows the "
        "member's random-effects weight. Diamonds: fixed-effect and random-effects pooled "
        f"estimates (random effects with the HKSJ interval){prediction}. {stats}{warnings}"
    )


def _plot_forest(ctx: _Context) -> tuple[Figure, str, str]:
    """Forest plot of a meta-analysis: members, fixed and random effects, prediction."""
    meta = ctx.analysis["meta"][ctx.spec.get("meta", 0)]
    rows = _forest_rows(meta)
    prediction = meta.get("prediction")
    pooled_lines = 3 if prediction else 2
    fig = _new_figure(0.3 * (len(rows) + pooled_lines) + 1.5)
    ax, text_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.3, 1.0], "wspace": 0.02})
    top_weight = max([w for *_, w in rows] + [1e-12])
    labels: list[str] = []
    right: list[tuple[str, str]] = []
    for i, (label, est, low, high, weight) in enumerate(rows):
        ax.hlines(-i, low, high, color=MEMBER_COLOR, linewidth=1.4)
        ax.plot([est], [-i], marker="s", linestyle="none", color=MEMBER_COLOR,
                markersize=3 + 8 * math.sqrt(weight / top_weight))
        labels.append(label)
        right.append((f"{fmt_number(est)} {fmt_interval(low, high)}", fmt_percent(weight)))
    y = -len(rows) - 0.4
    pooled = [("Fixed effect", meta["fixed"], MUTED_COLOR),
              ("Random effects (HKSJ)", meta["hksj"], NETWORK_COLOR)]
    ys = [float(-i) for i in range(len(rows))]
    for name, result, color in pooled:
        _diamond(ax, y, result, color)
        labels.append(name)
        right.append((f"{fmt_number(result['estimate'])} "
                      f"{fmt_interval(result['ci_low'], result['ci_high'])}", ""))
        ys.append(y)
        y -= 1
    if prediction:
        low, high = float(prediction[0]), float(prediction[1])
        ax.hlines(y, low, high, color=NETWORK_COLOR, linewidth=1.3, linestyle=(0, (4, 2)))
        ax.plot([low, high], [y, y], marker="|", markersize=8, color=NETWORK_COLOR,
                linestyle="none")
        labels.append("Prediction interval")
        right.append((fmt_interval(low, high), ""))
        ys.append(y)
    ax.axvline(0, color="#3e4c59", linewidth=0.8, zorder=1)
    ax.axvline(float(meta["hksj"]["estimate"]), color=NETWORK_COLOR, linewidth=0.7,
               linestyle=":", zorder=1)
    ax.axhline(-len(rows) + 0.35, color="#cbd2d9", linewidth=0.7)
    ax.set_yticks(ys, labels)
    ax.tick_params(axis="y", length=0)
    for tick in ax.get_yticklabels()[len(rows):]:
        tick.set_fontweight("bold")
    ax.spines["left"].set_visible(False)
    ax.set_ylim(min(ys) - 0.7, 1.3)
    ax.set_xlabel(str(ctx.spec.get("label") or meta.get("label") or "Estimate"))
    _forest_text(text_ax, ys, right, (min(ys) - 0.7, 1.3))
    return fig, f"Forest plot: {meta.get('label') or ctx.title}", _forest_caption(meta)


def _forest_text(ax: Axes, ys: Sequence[float], cells: Sequence[tuple[str, str]],
                 ylim: tuple[float, float]) -> None:
    """The numeric columns beside a forest plot: estimate [95% CI] and weight."""
    ax.set_ylim(*ylim)
    ax.set_xlim(0, 1)
    ax.axis("off")
    ax.text(0.04, 0.85, "Estimate [95% CI]", fontweight="bold", va="center", fontsize=8)
    ax.text(1.0, 0.85, "Weight", fontweight="bold", va="center", ha="right", fontsize=8)
    for y, (interval, weight) in zip(ys, cells, strict=True):
        ax.text(0.04, y, interval, va="center", fontsize=8)
        ax.text(1.0, y, weight, va="center", ha="right", fontsize=8, color=MUTED_COLOR)


def _is_intercept(name: str) -> bool:
    """Intercept terms are left out of coefficient plots (they dwarf the slopes)."""
    return name.strip("()").lower() in ("intercept", "const", "constant")


def _fit_names(fits: Mapping[str, Any], members: Sequence[str]) -> list[str]:
    """Fit names in network order, unknown names next, NETWORK last."""
    return [str(r["member"]) for r in sorted(({"member": name} for name in fits),
                                             key=_member_order(members))]


def _coefficient_point(fit_name: str, coef: Mapping[str, Any], label: str) -> _Point:
    """One coefficient of one fit as a dot-and-whisker line."""
    low, high = _interval(coef)
    return _Point(label, _num(coef.get("estimate")), low, high, fit_name == NETWORK,
                  "" if _num(coef.get("estimate")) is not None else "no estimate")


def _plot_coefficients(ctx: _Context) -> tuple[Figure, str, str]:
    """Regression coefficients with CIs: one panel per term across fits, or one fit's terms."""
    fits: Mapping[str, Any] = ctx.analysis["regression"]
    chosen = ctx.spec.get("regression")
    if chosen is not None:
        coefs = [c for c in fits[chosen]["coefficients"] if not _is_intercept(c["name"])]
        if not coefs:
            return _nothing_to_draw("No coefficients", "No coefficients besides the intercept.")
        points = [_coefficient_point(chosen, c, c["name"]) for c in coefs]
        fig = _new_figure(0.3 * len(points) + 1.2)
        ax = fig.subplots()
        _dot_whisker(ax, points, None, zero_line=True)
        ax.set_xlabel("Coefficient (change in the response per unit of the term)")
        caption = (f"Coefficients of the {html.escape(str(chosen))} fit (intercept omitted) "
                   "with 95% CIs from the parametric bootstrap, which includes the DP noise; "
                   "the solid line is zero.")
        return fig, f"Regression coefficients of the {chosen} fit", caption
    names = _fit_names(fits, ctx.members)
    terms: list[str] = []
    for name in names:
        terms += [c["name"] for c in fits[name]["coefficients"]
                  if not _is_intercept(c["name"]) and c["name"] not in terms]
    if not terms:
        return _nothing_to_draw("No coefficients", "No coefficients besides the intercept.")
    shown = terms[:MAX_PANELS]
    fig = _new_figure(_grid_height(len(shown), len(names)))
    axes = _panel_grid(fig, len(shown), sharex=False)
    for ax, term in zip(axes, shown, strict=True):
        points = [_coefficient_point(name, coef, name) for name in names
                  for coef in fits[name]["coefficients"] if coef["name"] == term]
        _dot_whisker(ax, points, _reference(points), zero_line=True)
        ax.set_title(term)
    fig.supxlabel("Coefficient (change in the response per unit of the term)", fontsize=9)
    caption = ("One panel per term (intercept omitted): each member's fit and the pooled "
               "network fit (last, orange diamond, dashed line) with 95% CIs from the "
               "parametric bootstrap, which includes the DP noise; the solid line is zero."
               f"{_truncation_note(len(terms))}")
    return fig, "Regression coefficients per member and for the network", caption


def _transition_matrix(rows: Sequence[Row]) -> tuple[list[str], list[str], list[list[float]]]:
    """From and to categories (first-appearance order) and shares (NaN where missing)."""
    froms: list[str] = []
    tos: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for row in rows:
        start, end = str(row.get("from")), str(row.get("to"))
        froms += [start] if start not in froms else []
        tos += [end] if end not in tos else []
        value = _num(row.get("estimate"))
        values[(start, end)] = math.nan if value is None else value
    matrix = [[values.get((f, t), math.nan) for t in tos] for f in froms]
    return froms, tos, matrix


def _plot_transition(ctx: _Context) -> tuple[Figure, str, str]:
    """Heatmap of NETWORK from -> to shares, each cell labelled."""
    rows = ctx.analysis["tables"][ctx.spec.get("table", 0)].get("rows") or []
    if not rows:
        return _nothing_to_draw("Empty table", "Nothing to plot: the table has no rows.")
    network = [r for r in rows if r.get("member") == NETWORK]
    froms, tos, matrix = _transition_matrix(network or rows)
    width = min(FIG_WIDTH, 2.6 + 0.95 * max(len(tos), 1))
    fig = _new_figure(1.3 + 0.55 * max(len(froms), 1), width=width)
    ax = fig.subplots()
    finite = [v for line in matrix for v in line if not math.isnan(v)]
    top = max(finite + [1e-9])
    image = ax.imshow(matrix or [[math.nan]], cmap="Blues", vmin=0, vmax=top, aspect="auto")
    for i, line in enumerate(matrix):
        for j, value in enumerate(line):
            text = "n/a" if math.isnan(value) else f"{100 * value:.0f}%"
            dark = not math.isnan(value) and value > 0.55 * top
            ax.text(j, i, text, ha="center", va="center", fontsize=8.5,
                    color="white" if dark else INK_COLOR)
    ax.set_xticks(range(len(tos)), tos)
    ax.set_yticks(range(len(froms)), froms)
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("To (at follow-up)")
    ax.set_ylabel("From (at start)")
    bar = fig.colorbar(image, ax=ax, format=PercentFormatter(1.0), shrink=0.9)
    bar.set_label(str(ctx.spec.get("label") or "Share"))
    bar.outline.set_visible(False)
    who = "the network" if network else "the table"
    caption = (f"Transitions for {who}: each row is a starting category, each column the "
               "category at follow-up, and each cell the share moving from one to the other "
               "(with DP noise, so a row need not add up to exactly 100%).")
    return fig, "Transition heatmap for the network", caption


Plotter = Callable[[_Context], tuple[Figure, str, str]]
_PLOTTERS: dict[str, Plotter] = {
    "member_vs_network": _plot_member_vs_network,
    "shares": _plot_shares,
    "forest": _plot_forest,
    "coefficients": _plot_coefficients,
    "transition": _plot_transition,
}


def render_plot(analysis: Mapping[str, Any], spec: Row, members: Sequence[str]) -> Plot:
    """Draw one plot spec of a (validated) analysis as SVG."""
    kind = str(spec["kind"])
    with matplotlib.rc_context(_RC):
        fig, alt, caption = _PLOTTERS[kind](_Context(analysis, spec, tuple(members)))
        return Plot(kind, _svg_bytes(fig), alt, caption)


# --------------------------------------------------------------------------- budget plot


def _budget_rows(budget: Sequence[Row]) -> list[tuple[str, float, float, float, float]]:
    """(member, before, study, remaining, total) per budget entry, missing values as 0."""
    rows = []
    for entry in budget:
        before = _num(entry.get("epsilon_before")) or 0.0
        study = _num(entry.get("epsilon_study")) or 0.0
        after = _num(entry.get("epsilon_after"))
        total = _num(entry.get("epsilon_total")) or 0.0
        spent = before + study if after is None else after
        rows.append((str(entry.get("member")), before, study, max(0.0, total - spent), total))
    return rows


def render_budget_plot(budget: Sequence[Row]) -> Plot:
    """Stacked bar per member: spent before, spent by this study, remaining."""
    with matplotlib.rc_context(_RC):
        rows = _budget_rows(budget)
        fig = _new_figure(0.34 * len(rows) + 1.25)
        ax = fig.subplots()
        ys = [-float(i) for i in range(len(rows))]
        parts = [("Spent before this study", "#9aa5b1", 1),
                 ("Spent by this study", NETWORK_COLOR, 2),
                 ("Remaining", "#d9e2ec", 3)]
        left = [0.0] * len(rows)
        for name, color, column in parts:
            widths = [float(row[column]) for row in rows]
            ax.barh(ys, widths, left=left, height=0.62, color=color, label=name,
                    edgecolor="white", linewidth=0.8)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        for y, row in zip(ys, rows, strict=True):
            ax.text(max(row[4], row[1] + row[2]), y, f"  total {fmt_number(row[4])}",
                    va="center", fontsize=8, color=MUTED_COLOR)
        ax.set_yticks(ys, [row[0] for row in rows])
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        ax.set_xlim(0, max([r[4] for r in rows] + [r[1] + r[2] for r in rows] + [1e-9]) * 1.15)
        ax.set_xlabel("Privacy loss ε")
        fig.legend(loc="outside upper left", ncols=3)
        caption = ("Each member's total ε budget: what earlier studies spent (grey), what this "
                   "study spent (orange) and what remains (light).")
        return Plot("budget", _svg_bytes(fig), "Privacy budget per member", caption)


# --------------------------------------------------------------------------- HTML pieces


def _e(value: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(value), quote=True)


HEADERS = {
    "member": "Member", "estimate": "Estimate", "se": "SE", "n": "n (noisy)",
    "status": "Status", "category": "Category", "group": "Group", "term": "Term",
    "from": "From", "to": "To", "arm": "Arm", "period": "Period",
}


def readable(key: Any) -> str:
    """A snake_case key or status as words: 'too_few_records' -> 'too few records'."""
    return str(key).replace("_", " ")


def _header(column: str, level: float, extra: Mapping[str, str]) -> str:
    """Readable column heading: the table's own, a known one, or the key made readable."""
    if column == "ci":
        return f"{100 * level:g}% CI"
    if column in extra:
        return extra[column]
    return HEADERS.get(column, readable(column).capitalize())


def _columns(table: Row) -> list[str]:
    """Display columns: the table's (or its rows' keys), with ci_low/ci_high merged to 'ci'."""
    given = [str(c) for c in table.get("columns") or []]
    if not given:
        for row in table.get("rows") or []:
            given += [k for k in row if k not in given]
    merged: list[str] = []
    for column in given:
        if column in ("ci_low", "ci_high") and {"ci_low", "ci_high"} <= set(given):
            column = "ci"
        if column not in merged:
            merged.append(column)
    return merged


def _cell(row: Row, column: str) -> tuple[str, str]:
    """(CSS class, HTML text) of one table cell."""
    if column == "ci":
        return "num", _e(fmt_interval(row.get("ci_low"), row.get("ci_high")))
    value = row.get(column)
    if column == "status" and value not in (None, "ok"):
        return "status-flag", _e(readable(value))
    if _is_number(value) or (value is None and column in NUMERIC_KEYS):
        return "num", _e(fmt_number(value))
    return "", _e("—" if value is None else value)


def table_html(table: Row, headers: Mapping[str, str] | None = None) -> str:
    """One results table; NETWORK rows bold. `headers` overrides column headings."""
    level = _num(table.get("level")) or 0.95
    columns = _columns(table)
    numeric = {c for c in columns if any(_is_number(r.get(c)) for r in table.get("rows") or [])}
    head = "".join(
        f'<th scope="col" class="{"num" if c in numeric | {"ci", *NUMERIC_KEYS} else ""}">'
        f"{_e(_header(c, level, headers or {}))}</th>" for c in columns)
    body = []
    for row in table.get("rows") or []:
        css = ' class="network"' if row.get("member") == NETWORK else ""
        cells = "".join(f'<td class="{k}">{v}</td>' for k, v in (_cell(row, c) for c in columns))
        body.append(f"<tr{css}>{cells}</tr>")
    name, caption = table.get("name"), table.get("caption")
    title = " — ".join(_e(x) for x in (name, caption) if x)
    return (f'<div class="table-wrap"><table><caption>{title}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def plot_html(plot: Plot, analysis_id: str) -> str:
    """A figure holding the plot as an embedded SVG image, with its caption."""
    data = base64.b64encode(plot.svg).decode("ascii")
    return (f'<figure><img class="plot" data-plot="{_e(analysis_id)}:{_e(plot.kind)}" '
            f'alt="{_e(plot.alt)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{plot.caption}</figcaption></figure>")


def _regression_tables(fits: Mapping[str, Any], members: Sequence[str]) -> str:
    """Coefficient and fit-statistics tables for an analysis's regression fits."""
    names = _fit_names(fits, members)
    coefficients = [{"member": name, "term": c.get("name"), "estimate": c.get("estimate"),
                     "se": c.get("se"), "ci_low": c.get("ci_low"), "ci_high": c.get("ci_high"),
                     "se_ols": c.get("se_ols")}
                    for name in names for c in fits[name]["coefficients"]]
    stats = [{"member": name, "n": fits[name].get("n"), "sigma": fits[name].get("sigma"),
              "r2": fits[name].get("r2"), "replicates": fits[name].get("replicates")}
             for name in names]
    coefficient_table = {
        "name": "Regression coefficients",
        "caption": "SE and CI from the parametric bootstrap (they include the DP noise); "
                   "SE (OLS) is the textbook SE that ignores the DP noise, for comparison only",
        "columns": ["member", "term", "estimate", "se", "ci_low", "ci_high", "se_ols"],
        "rows": coefficients,
    }
    stats_table = {"name": "Fit statistics", "columns": ["member", "n", "sigma", "r2",
                                                         "replicates"], "rows": stats}
    return table_html(coefficient_table, REGRESSION_HEADERS) + table_html(
        stats_table, REGRESSION_HEADERS)


REGRESSION_HEADERS = {"member": "Fit", "se_ols": "SE (OLS, no DP noise)",
                      "sigma": "Residual SD", "r2": "R²", "replicates": "Bootstrap replicates"}


def _regression_warnings(fits: Mapping[str, Any]) -> list[str]:
    """Regression warnings as notes, prefixed by the fit they belong to."""
    return [f"{name}: {w}" for name, fit in fits.items() for w in fit.get("warnings") or []]


def _loss_summary(loss: Mapping[str, Any]) -> str:
    """'ε 0.5 per member' when all members spent the same, else 'ε 0.2–0.5'."""
    eps = sorted(x for x in (_num(v.get("epsilon")) for v in loss.values()) if x is not None)
    if not eps:
        return ""
    if eps[0] == eps[-1]:
        return f"ε {fmt_number(eps[0])} per member"
    return f"ε {fmt_number(eps[0])}–{fmt_number(eps[-1])} per member"


AUDIENCES = {"coordinator": "For coordinators", "researcher": "For researchers"}


def _badges(analysis: Mapping[str, Any]) -> str:
    """Audience, kind, query count and privacy loss as small labels."""
    badges = []
    audience = analysis.get("audience")
    if audience:
        badges.append((f"badge-{_e(audience)}", AUDIENCES.get(audience, str(audience))))
    if analysis.get("kind"):
        badges.append(("", str(analysis["kind"]).replace("_", " ")))
    queries = analysis.get("queries")
    if isinstance(queries, list) and queries:
        badges.append(("", f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'}"))
    loss = _loss_summary(analysis.get("loss") or {})
    if loss:
        badges.append(("", loss))
    return "".join(f'<span class="badge {css}">{_e(text)}</span>' for css, text in badges)


def _heading(analysis: Mapping[str, Any]) -> str:
    """'6. Title' (number optional, title defaults to the id)."""
    number = analysis.get("number")
    title = analysis.get("title") or analysis["id"]
    return f"{number}. {title}" if number is not None else str(title)


def analysis_html(analysis: Mapping[str, Any], members: Sequence[str]) -> str:
    """One analysis section: heading, description, plots, tables, notes."""
    aid = str(analysis["id"])
    parts = [f'<section class="analysis" id="{_e(aid)}">',
             f"<h2>{_e(_heading(analysis))}</h2>",
             f'<p class="badges">{_badges(analysis)}</p>']
    if analysis.get("description"):
        parts.append(f'<p class="description">{_e(analysis["description"])}</p>')
    parts += [plot_html(render_plot(analysis, spec, members), aid)
              for spec in analysis.get("plots") or []]
    parts += [table_html(table) for table in analysis.get("tables") or []]
    fits = analysis.get("regression") or {}
    if fits:
        parts.append(_regression_tables(fits, members))
    notes = [str(n) for n in analysis.get("notes") or []] + _regression_warnings(fits)
    if notes:
        items = "".join(f"<li>{_e(n)}</li>" for n in notes)
        parts.append(f'<div class="notes"><h3>Notes</h3><ul>{items}</ul></div>')
    parts.append("</section>")
    return "\n".join(parts)


def _spend_by_analysis(analyses: Sequence[Mapping[str, Any]], members: Sequence[str]) -> str:
    """Table of ε each analysis spent per member (from each analysis's 'loss')."""
    rows = []
    for analysis in analyses:
        loss = analysis.get("loss") or {}
        if loss:
            row: dict[str, Any] = {"analysis": _heading(analysis)}
            row.update({m: (loss.get(m) or {}).get("epsilon") for m in members})
            rows.append(row)
    if not rows:
        return ""
    table = {"name": "ε spent per analysis", "columns": ["analysis", *members], "rows": rows}
    return table_html(table, {"analysis": "Analysis", **{m: m for m in members}})


def budget_html(results: Mapping[str, Any], members: Sequence[str]) -> str:
    """The 'Privacy loss spent' section: table and chart per member, spend per analysis."""
    budget = results.get("budget") or []
    parts = ['<section class="analysis" id="privacy-loss">', "<h2>Privacy loss spent</h2>",
             '<p class="description">How much of each member\'s differential-privacy budget '
             "(ε, lower is more private) this study used, what earlier studies had used, and "
             "what is left for future studies.</p>"]
    if budget:
        parts.append(plot_html(render_budget_plot(budget), "privacy-loss"))
        parts.append(table_html(_budget_table(budget), BUDGET_HEADERS))
    else:
        parts.append('<p class="empty">No budget was recorded with these results.</p>')
    parts.append(_spend_by_analysis(results.get("analyses") or [], members))
    parts.append("</section>")
    return "\n".join(parts)


def _budget_table(budget: Sequence[Row]) -> dict[str, Any]:
    """The budget entries as a table, with ε remaining worked out."""
    rows = []
    for entry, (member, before, study, remaining, total) in zip(budget, _budget_rows(budget),
                                                                strict=True):
        rows.append({"member": member, "epsilon_before": before, "epsilon_study": study,
                     "epsilon_after": _num(entry.get("epsilon_after")) or before + study,
                     "epsilon_total": total, "remaining": remaining,
                     "delta": entry.get("delta")})
    columns = ["member", "epsilon_before", "epsilon_study", "epsilon_after", "epsilon_total",
               "remaining", "delta"]
    return {"name": "Budget per member", "columns": columns, "rows": rows}


BUDGET_HEADERS = {
    "epsilon_before": "ε spent before", "epsilon_study": "ε this study",
    "epsilon_after": "ε spent after", "epsilon_total": "ε total budget",
    "remaining": "ε remaining", "delta": "δ", "analysis": "Analysis",
}


def _created(value: Any) -> str:
    """'23 November 2026, 10:00 UTC' from an ISO timestamp; other text as given."""
    if not isinstance(value, str):
        return "—"
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return value
    zone = " UTC" if stamp.utcoffset() is not None and not stamp.utcoffset() else ""
    return f"{stamp.day} {stamp:%B %Y, %H:%M}{zone}"


def _members(results: Mapping[str, Any]) -> list[str]:
    """The network's members: as listed, else from the budget, else from the tables."""
    listed = [str(m) for m in results.get("members") or []]
    if listed:
        return listed
    found = [str(e.get("member")) for e in results.get("budget") or [] if e.get("member")]
    for analysis in results.get("analyses") or []:
        for table in analysis.get("tables") or []:
            found += [str(r["member"]) for r in table.get("rows") or []
                      if r.get("member") not in (None, NETWORK)]
    return list(dict.fromkeys(found))


def title_html(results: Mapping[str, Any], members: Sequence[str]) -> str:
    """Title block: study title and name, date, members, analyses by audience."""
    study = results.get("study") or {}
    analyses = results.get("analyses") or []
    title = study.get("title") or study.get("name") or "Study results"
    counts = {a: sum(1 for x in analyses if x.get("audience") == a) for a in AUDIENCES}
    split = ", ".join(f"{n} {AUDIENCES[a].lower()}" for a, n in counts.items() if n)
    facts = [("Created", _created(results.get("created"))),
             (f"Members ({len(members)})", ", ".join(members) or "—"),
             ("Analyses", f"{len(analyses)}" + (f" ({split})" if split else ""))]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    name = f'<p class="study-name">{_e(study["name"])}</p>' if study.get("name") else ""
    about = f'<p class="lead">{_e(study["description"])}</p>' if study.get("description") else ""
    return (f'<header class="title"><div class="page"><p class="kicker">bridgestat study '
            f"report</p><h1>{_e(title)}</h1>{name}{about}<dl class=\"facts\">{rows}</dl>"
            "</div></header>")


DP_NOTE = (
    "<strong>About the numbers.</strong> Every number in this report is a differentially "
    "private release: each member's node added random noise to its results before they left "
    "the member, so no figure reveals an individual participant. The standard errors (SE) and "
    "confidence intervals (CI) include that noise as well as ordinary sampling error, so they "
    "are honest but wider than without privacy protection. Counts (n) are noisy too and need "
    "not be whole numbers, shares need not add up to exactly 100%, and an estimate can fall "
    "slightly outside its possible range. Where a member's data were too sparse, its result is "
    "shown as not estimable."
)


def toc_html(analyses: Sequence[Mapping[str, Any]]) -> str:
    """Table of contents linking every section."""
    items = []
    for analysis in analyses:
        audience = analysis.get("audience")
        badge = (f' <span class="badge badge-{_e(audience)}">'
                 f"{_e(AUDIENCES.get(audience, audience))}</span>") if audience else ""
        items.append(f'<li><a href="#{_e(analysis["id"])}">{_e(_heading(analysis))}</a>'
                     f"{badge}</li>")
    items.append('<li><a href="#privacy-loss">Privacy loss spent</a></li>')
    return (f'<nav class="toc" aria-label="Contents"><h2>Contents</h2><ol>{"".join(items)}'
            "</ol></nav>")


CSS = """
:root { --ink: #1f2933; --muted: #52606d; --line: #d9e2ec; --accent: #c2410c; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: #f5f7fa; color: var(--ink);
  font: 15px/1.55 system-ui, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans",
  sans-serif; }
.page { max-width: 1040px; margin: 0 auto; padding: 0 24px; }
header.title { background: #102a43; color: #f0f4f8; padding: 28px 0 22px; }
header.title h1 { font-size: 28px; line-height: 1.25; margin: 2px 0 4px; }
.kicker { margin: 0; text-transform: uppercase; letter-spacing: .08em; font-size: 12px;
  color: #9fb3c8; }
.study-name { margin: 0 0 10px; font-family: ui-monospace, "DejaVu Sans Mono", monospace;
  color: #bcccdc; font-size: 13px; }
.lead { margin: 0 0 14px; max-width: 75ch; color: #d9e2ec; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 18px; margin: 0;
  font-size: 14px; }
dl.facts dt { color: #9fb3c8; }
dl.facts dd { margin: 0; }
main { padding-bottom: 40px; }
.dp-note { background: #fffbea; border: 1px solid #f7d070; border-left: 5px solid #f0b429;
  border-radius: 6px; padding: 12px 16px; margin: 22px 0 0; font-size: 14px; }
nav.toc { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 14px 22px; margin: 22px 0 0; }
nav.toc h2 { font-size: 17px; margin: 0 0 6px; }
nav.toc ol { margin: 0; padding-left: 0; list-style: none; columns: 2 320px; column-gap: 32px; }
nav.toc li { display: flex; justify-content: space-between; align-items: baseline; gap: 10px;
  padding: 3px 0; break-inside: avoid; }
nav.toc li .badge { flex: none; margin: 0; }
nav.toc a { color: #243b53; text-decoration: none; border-bottom: 1px solid #bcccdc; }
section.analysis { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 20px 26px 12px; margin: 22px 0 0; }
section.analysis h2 { font-size: 21px; line-height: 1.3; margin: 0 0 6px; color: #102a43; }
h3 { font-size: 15px; margin: 14px 0 4px; }
.badges { margin: 0 0 8px; }
.badge { display: inline-block; font-size: 12px; line-height: 1.6; padding: 0 9px;
  margin: 0 6px 2px 0; border-radius: 999px; background: #e4e7eb; color: #323f4b;
  white-space: nowrap; }
.badge-coordinator { background: #c6f7e2; color: #014d40; }
.badge-researcher { background: #dceefb; color: #0b4f8a; }
.description { margin: 0 0 8px; max-width: 80ch; }
figure { margin: 16px 0 18px; }
img.plot { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 13px; color: var(--muted); margin: 8px auto 0; max-width: 768px; }
.warn { color: #8d2b0b; }
.table-wrap { overflow-x: auto; margin: 14px 0; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0 0 6px;
  color: #243b53; }
th, td { padding: 4px 12px; border-bottom: 1px solid var(--line); text-align: left;
  white-space: nowrap; }
th { background: #f0f4f8; font-weight: 600; border-bottom: 2px solid #bcccdc; }
td.num, th.num { text-align: right; }
tbody tr:nth-child(even) td { background: #fafbfc; }
tbody tr.network td { font-weight: 700; background: #fff3eb; border-top: 1px solid #f5c9a9; }
td.status-flag { color: #b44d12; font-style: italic; }
.notes { font-size: 13.5px; color: var(--muted); }
.notes ul { margin: 4px 0 8px; padding-left: 20px; }
.empty { color: var(--muted); font-style: italic; }
footer { color: var(--muted); font-size: 12.5px; padding: 8px 0 32px; }
@media print {
  body { background: #fff; }
  header.title { background: #fff; color: var(--ink); border-bottom: 2px solid var(--ink); }
  .kicker, .study-name, .lead, dl.facts dt { color: var(--muted); }
  section.analysis, nav.toc { border: none; padding: 0; }
  figure, table { break-inside: avoid; }
}
"""


def report_html(results: Mapping[str, Any]) -> str:
    """The whole report as one HTML string (results must be valid)."""
    members = _members(results)
    analyses = results.get("analyses") or []
    study = results.get("study") or {}
    title = study.get("title") or study.get("name") or "Study results"
    budget = budget_html(results, members)
    body = "\n".join(analysis_html(a, members) for a in analyses)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="bridgestat report ({FORMAT})">\n'
        f"<title>{_e(title)} — bridgestat report</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{title_html(results, members)}\n<main class=\"page\">\n"
        f'<aside class="dp-note" role="note">{DP_NOTE}</aside>\n{toc_html(analyses)}\n'
        f"{body}\n{budget}\n</main>\n"
        '<footer class="page">Generated by bridgestat from a saved study-results document '
        f"({_e(results.get('format') or FORMAT)}). Every number carries differential-privacy "
        "noise.</footer>\n</body>\n</html>\n"
    )


def _write_atomically(path: Path, text: str) -> None:
    """Write text to path via a temporary file and rename, so no half-written report stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(results: Mapping[str, Any], out: Path) -> Path:
    """Validate `results` and write the report to `out` (a file, or report.html in a dir)."""
    validate_results(results)
    target = Path(out)
    if target.is_dir():
        target = target / "report.html"
    _write_atomically(target, report_html(results))
    return target


def iter_plot_keys(results: Mapping[str, Any]) -> Iterable[str]:
    """The data-plot keys a report of `results` contains, in order (for checks and tests)."""
    for analysis in results.get("analyses") or []:
        for spec in analysis.get("plots") or []:
            yield f"{analysis['id']}:{spec['kind']}"
    if results.get("budget"):
        yield "privacy-loss:budget"
