"""Building blocks of the report's charts: style, reproducible SVG, dot-and-whisker, grids.

Plots use matplotlib's object API on an explicit Agg canvas (no pyplot, no global backend
switch) with fixed sizes, a fixed `svg.hashsalt` and no date metadata, so the same document
always gives the same bytes. Text in the SVGs is drawn as paths: it looks the same everywhere.

Every figure uses constrained layout. Text drawn inside an axes (such as 'not estimable') is
kept short and clipped to the axes, because text that sticks out of a narrow panel makes
constrained layout give the axes no room at all (matplotlib then warns and skips the layout).
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine

from bridgestat.coordinator.report.formatting import is_ok, status_head
from bridgestat.coordinator.report.formatting import readable as readable_text
from bridgestat.coordinator.report.i18n import Translator
from bridgestat.coordinator.studies.results_doc import NETWORK, Row, finite

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

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
SHORT_REASON = 24
"""Longest status shown beside 'not estimable' in a chart; longer ones say 'see table'."""

RC: dict[RcKeyType, Any] = {
    "svg.hashsalt": "bridgestat-report",
    "svg.fonttype": "none",  # text as <text>: a tenth of the bytes of glyph paths
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
"""The report's matplotlib style, applied with `rc_context` around each plot."""


@dataclass(frozen=True)
class Point:
    """One line of a dot-and-whisker chart."""

    label: str
    estimate: float | None
    low: float | None
    high: float | None
    network: bool
    status: str
    hidden: str = ""
    """Why a computed estimate is not drawn ('too uncertain to show'), or ''."""


def new_figure(height: float, width: float = FIG_WIDTH) -> Figure:
    """A figure on an explicit Agg canvas (no pyplot state), with constrained layout."""
    layout = ConstrainedLayoutEngine(w_pad=0.06, h_pad=0.06)
    fig = Figure(figsize=(width, max(1.6, height)), layout=layout)
    FigureCanvasAgg(fig)
    return fig


SVG_DECIMALS = re.compile(rb"(\d\.\d)\d{2,}")
"""Numbers with three or more decimals in an SVG (matplotlib writes six)."""


def svg_bytes(fig: Figure) -> bytes:
    """The figure as reproducible SVG (fixed hash salt, no date or creator metadata).

    Coordinates are cut to one decimal of a point (1/720 inch, invisible): it nearly halves
    the report, whose plots are most of its bytes.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return minify_svg(buffer.getvalue())


def minify_svg(svg: bytes) -> bytes:
    """Matplotlib's SVG without what no viewer uses: RDF metadata, the DOCTYPE, the ids of
    groups (nothing refers to them), indentation, and decimals past 1/10 point."""
    svg = re.sub(rb"<metadata>.*?</metadata>|<!DOCTYPE[^>]*>", b"", svg, flags=re.DOTALL)
    svg = re.sub(rb'<g id="[^"]*">', b"<g>", svg)
    svg = re.sub(rb"\s*\n\s*", b" ", SVG_DECIMALS.sub(rb"\1", svg))
    return svg.replace(b"> <", b"><")


def z_value(level: float) -> float:
    """Two-sided normal critical value for coverage `level`."""
    return NormalDist().inv_cdf((1 + level) / 2)


def interval(row: Row, level: float = 0.95) -> tuple[float | None, float | None]:
    """The row's CI: ci_low/ci_high if given, else estimate +- z se, else (None, None)."""
    low, high = finite(row.get("ci_low")), finite(row.get("ci_high"))
    if low is not None and high is not None:
        return low, high
    estimate, se = finite(row.get("estimate")), finite(row.get("se"))
    if estimate is not None and se is not None:
        return estimate - z_value(level) * se, estimate + z_value(level) * se
    return None, None


def row_label(row: Row, index: int) -> str:
    """How a chart names a row: its member, else its term or group, else its position."""
    for key in ("member", "term", "group"):
        if row.get(key) is not None:
            return str(row[key])
    return f"row {index + 1}"


def member_order(members: Sequence[str]) -> Callable[[Row], tuple[int, int]]:
    """Sort key: members in network order, then unknown labels, NETWORK last."""
    position = {m: i for i, m in enumerate(members)}

    def key(row: Row) -> tuple[int, int]:
        member = row.get("member")
        if member == NETWORK:
            return (2, 0)
        return (0, position[member]) if member in position else (1, 0)

    return key


def points(rows: Sequence[Row], members: Sequence[str]) -> list[Point]:
    """Dot-and-whisker lines for table rows, in network order with NETWORK last."""
    ordered = sorted(rows, key=member_order(members))
    lines = []
    for i, row in enumerate(ordered):
        low, high = interval(row)
        lines.append(Point(row_label(row, i), finite(row.get("estimate")), low, high,
                           row.get("member") == NETWORK, str(row.get("status") or "")))
    return lines


def positions(lines: Sequence[Point]) -> list[float]:
    """y positions top to bottom, with a half-line gap before the NETWORK line(s)."""
    ys: list[float] = []
    y = 0.0
    for i, point in enumerate(lines):
        if point.network and i > 0 and not lines[i - 1].network:
            y += 0.5
        ys.append(-y)
        y += 1.0
    return ys


def not_estimable_text(status: str, t: Translator | None = None) -> str:
    """'not estimable', with the reason when it is short (long reasons are in the table)."""
    _ = t or Translator("en")
    reason = readable_text(status).strip()
    if reason.startswith("not estimable"):
        reason = reason.removeprefix("not estimable").lstrip(" :")
    if is_ok(status) or not reason:
        return _("not estimable")
    for text in (reason, status_head(reason)):
        if len(text) <= SHORT_REASON:
            return _("not estimable ({reason})", reason=_.gettext(text))
    return _("not estimable (see table)")


def dot_whisker(ax: Axes, lines: Sequence[Point], reference: float | None,
                zero_line: bool = False, bounds: tuple[float, float] | None = None,
                t: Translator | None = None) -> None:
    """Horizontal estimates with CIs; NETWORK highlighted; unestimable lines say so.

    With `bounds` (the estimate's possible range) whiskers are cut at the range, so a share's
    interval never reaches below 0 % or above 100 %.
    """
    ys = positions(lines)
    for y, point in zip(ys, lines, strict=True):
        color = NETWORK_COLOR if point.network else MEMBER_COLOR
        if point.estimate is None or point.hidden:
            text = point.hidden or not_estimable_text(point.status, t)
            ax.text(0.01, y, text,
                    transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=8,
                    style="italic", color=MUTED_COLOR, clip_on=True, in_layout=False)
            continue
        if point.low is not None and point.high is not None:
            low, high = point.low, point.high
            if bounds is not None:
                low, high = max(low, bounds[0]), min(high, bounds[1])
            ax.hlines(y, low, high, color=color, linewidth=2.2 if point.network
                      else 1.6, zorder=2)
        ax.plot([point.estimate], [y], marker="D" if point.network else "o", linestyle="none",
                markersize=7.5 if point.network else 5.5, color=color, zorder=3,
                markeredgecolor="white", markeredgewidth=0.6)
    if zero_line:
        ax.axvline(0, color="#3e4c59", linewidth=0.8, zorder=1)
    if reference is not None:
        ax.axvline(reference, color=NETWORK_COLOR, linewidth=0.9, linestyle=(0, (4, 3)),
                   alpha=0.8, zorder=1)
    if any(p.network for p in lines) and not all(p.network for p in lines):
        first = next(i for i, p in enumerate(lines) if p.network)
        ax.axhline(ys[first] + 0.75, color="#cbd2d9", linewidth=0.7, zorder=0)
    y_labels(ax, ys, lines)


def y_labels(ax: Axes, ys: Sequence[float], lines: Sequence[Point]) -> None:
    """Row labels on the y axis, NETWORK bold in its colour among others; margins."""
    ax.set_yticks(list(ys), [p.label for p in lines])
    ax.tick_params(axis="y", length=0)
    emphasise = not all(p.network for p in lines)  # one fit's terms: nothing to single out
    for tick, point in zip(ax.get_yticklabels(), lines, strict=True):
        if point.network and emphasise:
            tick.set_fontweight("bold")
            tick.set_color(NETWORK_COLOR)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.spines["left"].set_visible(False)


def spans_zero(lines: Iterable[Point]) -> bool:
    """Whether zero lies inside the drawn range, so a zero line means something."""
    ends = [x for p in lines for x in (p.low, p.estimate, p.high) if x is not None]
    return bool(ends) and min(ends) < 0 < max(ends)


def reference(lines: Sequence[Point]) -> float | None:
    """The NETWORK estimate a chart draws its reference line at (None if not estimable)."""
    return next((p.estimate for p in lines if p.network and p.estimate is not None), None)


def ncols(count: int) -> int:
    """Columns of a small-multiples grid: 1 panel alone, up to 4 in two columns, else three."""
    return 1 if count == 1 else 2 if count <= 4 else 3


def panel_grid(fig: Figure, count: int, sharex: bool) -> list[Axes]:
    """count axes in a grid of 1-3 columns; unused cells are hidden."""
    columns = ncols(count)
    nrows = math.ceil(count / columns)
    grid = fig.subplots(nrows, columns, sharex=sharex, squeeze=False)
    axes = [ax for line in grid for ax in line]
    for ax in axes[count:]:
        ax.set_visible(False)
    for ax in axes[:count]:
        ax.tick_params(axis="x", labelbottom=True)
    return axes[:count]


def grid_height(count: int, lines: int) -> float:
    """Figure height for `count` panels of `lines` rows each, laid out by `panel_grid`."""
    return math.ceil(count / ncols(count)) * (0.27 * lines + 0.95) + 0.35


def facets(rows: Sequence[Row], column: str | None) -> list[tuple[str | None, list[Row]]]:
    """Rows grouped by `column` in order of first appearance (one group if column is None)."""
    if column is None:
        return [(None, list(rows))]
    groups: dict[str, list[Row]] = {}
    for row in rows:
        value = row.get(column)
        groups.setdefault("—" if value is None else str(value), []).append(row)
    return list(groups.items())


def nothing_to_draw(alt: str, message: str) -> tuple[Figure, str, str]:
    """A small placeholder plot saying why there is nothing to draw (not a silent gap)."""
    fig = new_figure(1.0)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", style="italic", color=MUTED_COLOR,
            wrap=True, in_layout=False)
    return fig, alt, html.escape(message)


def truncation_note(total: int, t: Translator | None = None) -> str:
    """Caption text when small multiples were cut at MAX_PANELS."""
    if total <= MAX_PANELS:
        return ""
    _ = t or Translator("en")
    return " " + _("Showing the first {shown} of {total} panels; the table lists all of them.",
                   shown=MAX_PANELS, total=total)


def text_color(hex_color: str) -> str:
    """White or dark text, whichever reads better on the given fill."""
    r, g, b = (int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return INK_COLOR if 0.299 * r + 0.587 * g + 0.114 * b > 0.6 else "white"


# --------------------------------------------------------------------------- readable values
#
# Tables and downloads keep the raw noisy values: they are unbiased, which pooling and
# meta-analysis need. Charts and sentences are read at a glance, so they show only what a
# reader can take at face value. Everything below is post-processing of released numbers
# with public information (clip bounds, the fact that shares are parts of a whole): it costs
# no privacy.

SHARE_RANGE = (0.0, 1.0)
SHARE_KINDS = frozenset({"histogram", "proportion", "follow_up"})
"""Analysis kinds whose every estimate is a share in [0, 1]."""
SHARE_TABLES = frozenset({"shares", "proportion", "followed_up", "share_improved",
                          "transitions"})
"""Tables (by the name a study run gives them) whose estimates are shares in [0, 1]."""


@dataclass(frozen=True)
class Readable:
    """How an estimate may be shown: `shown` False with the reason ('uncertain', 'outside')."""

    shown: bool
    reason: str = ""


SHOWN = Readable(True)


def project_to_simplex(values: Sequence[float]) -> list[float]:
    """The shares nearest (least squares) to `values` that are >= 0 and add up to exactly 1.

    The Euclidean projection onto the probability simplex (sort-based, Duchi et al. 2008).
    Unlike 'clip at 0 and renormalise' it moves every share by the same amount before cutting
    at 0, so a category that noise pushed below 0 does not inflate the others in proportion
    to their size, and shares that already add up to 1 and are all >= 0 stay as they are.
    """
    if not values:
        return []
    ordered = sorted(values, reverse=True)
    total = 0.0
    theta = 0.0
    for k, value in enumerate(ordered, start=1):
        total += value
        candidate = (total - 1.0) / k
        if value - candidate > 0:
            theta = candidate
    return [max(0.0, v - theta) for v in values]


def public_range(analysis: Mapping[str, Any], table: Mapping[str, Any], row: Mapping[str, Any],
                 ) -> tuple[float, float] | None:
    """The range an estimate of this row can take by construction, or None if unknown.

    Uses only what a results document holds, all of it public: shares are in [0, 1]; a
    change in a share and a risk difference in [-1, 1]; a quantile is one of its public
    candidates (`spec.candidates` from..to); a mean lies within its clip bounds (`spec.clip`)
    and within the column's declared bounds (`column_bounds`, when the study run saved the
    schema's lower/upper); a mean change within its clip bounds, or the column's width either
    way; a difference in differences within twice that. Ratios on a log scale, and means with
    neither clip nor saved column bounds, have no range here.
    """
    name = str(table.get("name") or "")
    measure = str(row.get("measure") or "")
    spec = analysis.get("spec") or {}
    kind = str(analysis.get("kind") or spec.get("statistic") or "")
    if name == "attrition":  # the column's values (no clip), and their difference
        column = _pair(analysis.get("column_bounds"))
        if column is None or row.get("cell") != "difference":
            return column
        return (column[0] - column[1], column[1] - column[0])
    if name in SHARE_TABLES or measure.startswith("share:") or kind in SHARE_KINDS:
        return SHARE_RANGE
    if name == "paired_difference" or measure == "risk_difference":
        return (-1.0, 1.0)
    if measure:
        return None
    if kind == "quantile":
        return _candidate_range(spec.get("candidates"))
    clip = _pair(spec.get("clip"))
    column = _pair(analysis.get("column_bounds"))
    if kind in CHANGE_KINDS:
        width = None if column is None else column[1] - column[0]
        change = clip or (None if width is None else (-width, width))
        if change is None:
            return None
        return (change[0] - change[1], change[1] - change[0]) if kind == "did" else change
    if kind not in MEAN_KINDS:
        return None
    if clip is not None and column is not None:
        return (max(clip[0], column[0]), min(clip[1], column[1]))
    return clip or column


CHANGE_KINDS = frozenset({"paired_change", "did"})
MEAN_KINDS = frozenset({"mean"})
"""Kinds whose estimate is a (change in a) mean of one column, bounded by its clip or
schema bounds; estimates of other kinds (regressions, ratios) have no public range here."""


def _pair(value: Any) -> tuple[float, float] | None:
    """[low, high] of two numbers as floats, else None."""
    if (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            and value[0] <= value[1]):
        return float(value[0]), float(value[1])
    return None


def _candidate_range(candidates: Any) -> tuple[float, float] | None:
    """The span of a quantile's public candidate grid: {from, to, step} or a list."""
    if isinstance(candidates, Mapping):
        return _pair([candidates.get("from"), candidates.get("to")])
    if isinstance(candidates, list | tuple) and candidates and all(
            isinstance(c, int | float) and not isinstance(c, bool) for c in candidates):
        return float(min(candidates)), float(max(candidates))
    return None


def readability(row: Mapping[str, Any], bounds: tuple[float, float] | None) -> Readable:
    """Whether a row's estimate can be shown as a plain figure within `bounds`.

    Not shown: an estimate outside its possible range (a negative mean of a non-negative
    variable: noise, not data), and one whose 95 % interval is wider than the whole range
    ('too uncertain to show': any value in the range would fit it).
    """
    estimate = finite(row.get("estimate"))
    if estimate is None or bounds is None:
        return SHOWN
    low, high = bounds
    if not low <= estimate <= high:
        return Readable(False, "outside")
    ci_low, ci_high = finite(row.get("ci_low")), finite(row.get("ci_high"))
    if ci_low is not None and ci_high is not None and ci_high - ci_low > high - low:
        return Readable(False, "uncertain")
    return SHOWN


def estimate_words(analysis: Mapping[str, Any], table: Mapping[str, Any],
                   row: Mapping[str, Any], t: Translator, number: Callable[[Any], str]) -> str:
    """A row's estimate for a sentence: 'too uncertain to show' when it cannot be read as a
    figure (`readability`), a whole percentage for a share, else `number` of it."""
    bounds = public_range(analysis, table, row)
    if not readability(row, bounds).shown:
        return t("too uncertain to show")
    if bounds == SHARE_RANGE:
        return t.percent(row.get("estimate"), decimals=0)
    return number(row.get("estimate"))


def sd_readable(row: Mapping[str, Any]) -> bool:
    """Whether a row's SD is a figure: an SD of exactly 0 from noisy sums is noise (the noisy
    sum of squares fell below what the mean needs), not participants who are all alike."""
    sd = finite(row.get("sd"))
    return sd is None or sd > 0
