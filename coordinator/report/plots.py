"""The report's charts, one function per plot kind of the results document, drawn as SVG.

A plot spec in an analysis names its kind and what it draws from (a table, a meta-analysis or
the regression fits). `render_plot` draws a (validated) spec as a `Plot`: SVG bytes, an alt
text and an HTML caption that says how to read it. `render_budget_plot` draws the privacy
budget of the 'Privacy loss spent' section. Style and the shared building blocks are in
`figures`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from matplotlib.ticker import PercentFormatter

from bridgestat.coordinator.report import figures as fg
from bridgestat.coordinator.report.formatting import column_name, fmt_pvalue, readable
from bridgestat.coordinator.report.i18n import N_, Translator
from bridgestat.coordinator.studies.results_doc import NETWORK, PLOT_KINDS, Row, finite, plot_table

TICK_ROTATION = 35
"""Degrees the heatmap's column labels are turned so long category names do not overlap."""


@dataclass(frozen=True)
class Plot:
    """One rendered plot: its SVG bytes, a short alt text and an HTML-safe caption."""

    kind: str
    svg: bytes
    alt: str
    caption: str


@dataclass(frozen=True)
class _Context:
    """What every plot function gets: the analysis, its spec and the network's members."""

    analysis: Mapping[str, Any]
    spec: Row
    members: tuple[str, ...]
    t: Translator

    @property
    def title(self) -> str:
        """The analysis title (its id when untitled), for alt texts."""
        return str(self.analysis.get("title") or self.analysis["id"])

    @property
    def rows(self) -> list[Row]:
        """The rows of the table the spec draws from."""
        return list(plot_table(self.analysis, self.spec).get("rows") or [])


Drawn = tuple[Figure, str, str]
"""A plot function's result: the figure, its alt text and its HTML caption."""


def render_plot(analysis: Mapping[str, Any], spec: Row, members: Sequence[str],
                lang: str = "en") -> Plot:
    """Draw one plot spec of a (validated) analysis as SVG, its texts in `lang`."""
    kind = str(spec["kind"])
    with matplotlib.rc_context(fg.RC):
        context = _Context(analysis, spec, tuple(members), Translator(lang))
        fig, alt, caption = _PLOTTERS[kind](context)
        return Plot(kind, fg.svg_bytes(fig), alt, caption)


def _empty_table(_: Translator) -> Drawn:
    """The placeholder for a plot whose table has no rows."""
    return fg.nothing_to_draw(_("Empty table"), _("Nothing to plot: the table has no rows."))


# --------------------------------------------------------------------------- member vs network


def _plot_member_vs_network(ctx: _Context) -> Drawn:
    """Dot-and-whisker per member with NETWORK last, optionally faceted."""
    facet = ctx.spec.get("facet")
    if not ctx.rows:
        return _empty_table(ctx.t)
    groups = fg.facets(ctx.rows, facet)
    shown = groups[:fg.MAX_PANELS]
    lines = max([len(rows) for _, rows in shown] + [1])
    fig = fg.new_figure(fg.grid_height(len(shown), lines))
    # panels of one quantity (e.g. categories) share a scale; of different measures not
    axes = fg.panel_grid(fig, len(shown), sharex=bool(ctx.spec.get("sharex", True)))
    order = fg.member_order(ctx.members)
    label_sets = [[fg.row_label(r, i) for i, r in enumerate(sorted(rows, key=order))]
                  for _, rows in shown]
    same_labels = all(labels == label_sets[0] for labels in label_sets)
    _ = ctx.t
    table = plot_table(ctx.analysis, ctx.spec)
    drawn = [_readable_points(ctx, table, rows) for _name, rows in shown]
    zero = fg.spans_zero(p for points, _bounds in drawn for p in points)
    hidden = any(p.hidden for points, _bounds in drawn for p in points)
    for i, (ax, (name, _rows), (points, bounds)) in enumerate(zip(axes, shown, drawn,
                                                                   strict=True)):
        fg.dot_whisker(ax, points, fg.reference(points), zero_line=zero, bounds=bounds,
                       t=ctx.t)
        if bounds == fg.SHARE_RANGE:
            ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        if name is not None:
            ax.set_title(_.label(name))
        if same_labels and i % fg.ncols(len(shown)):
            ax.tick_params(axis="y", labelleft=False)
    label = _.gettext(str(ctx.spec.get("label") or "Estimate"))
    fig.supxlabel(label, fontsize=9)
    parts = [_("{label} by member: dots are estimates, whiskers their 95% confidence intervals "
               "(sampling and DP noise). The network estimate is last, as an orange diamond, "
               "and the dashed line marks it.", label=html.escape(label))]
    if facet:
        parts.append(_("One panel per {facet}.", facet=html.escape(
            _.gettext(column_name(str(facet))).lower())))
    if zero:
        parts.append(_("The solid line is zero."))
    if hidden:
        parts.append(_("An estimate outside its possible range, or whose interval is wider "
                       "than that whole range, is noise rather than information: the chart "
                       "says so instead of drawing it; the table keeps the raw value."))
    caption = " ".join(parts) + fg.truncation_note(len(groups), ctx.t)
    return fig, _("{label} per member and for the network", label=label), caption


def _readable_points(ctx: _Context, table: Row, rows: Sequence[Row]
                     ) -> tuple[list[fg.Point], tuple[float, float] | None]:
    """A panel's lines, with estimates a reader cannot take at face value hidden, and the
    panel's possible range (the same for all its rows, else None)."""
    _ = ctx.t
    texts = {"uncertain": _("too uncertain to show"),
             "outside": _("not shown: noise put it outside the possible range")}
    ranges = {fg.public_range(ctx.analysis, table, row) for row in rows}
    bounds = next(iter(ranges)) if len(ranges) == 1 else None
    ordered = sorted(rows, key=fg.member_order(ctx.members))
    points = []
    for point, row in zip(fg.points(rows, ctx.members), ordered, strict=True):
        verdict = fg.readability(row, fg.public_range(ctx.analysis, table, row))
        points.append(point if verdict.shown else replace(point, hidden=texts[verdict.reason]))
    return points, bounds


# --------------------------------------------------------------------------- shares


def share_matrix(rows: Sequence[Row], column: str, bars: Sequence[str]
                 ) -> tuple[list[str], list[list[float]], bool]:
    """Categories, shares[bar][category] and whether any bar had to be adjusted.

    Each bar is the projection of its noisy shares onto the simplex (`fg.project_to_simplex`):
    every share within 0-100 % and the bar adding up to exactly 100 %. A category a member
    has no row for counts as a noisy 0. Post-processing: no privacy cost; tables keep the raw
    values.
    """
    categories: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for row in rows:
        category = str(row.get(column))
        if category not in categories:
            categories.append(category)
        values[(str(row.get("member")), category)] = finite(row.get("estimate")) or 0.0
    raw = [[values.get((bar, c), 0.0) for c in categories] for bar in bars]
    matrix = [fg.project_to_simplex(line) for line in raw]
    adjusted = any(abs(a - b) > 5e-4 for line, fixed in zip(raw, matrix, strict=True)
                   for a, b in zip(line, fixed, strict=True))
    return categories, matrix, adjusted


def _bar_order(rows: Sequence[Row], members: Sequence[str]) -> list[str]:
    """Bars top to bottom: members in network order, unknown names, NETWORK last."""
    present = {str(r.get("member")) for r in rows}
    bars = [m for m in members if m in present]
    return bars + sorted(present - set(bars) - {NETWORK}) + (
        [NETWORK] if NETWORK in present else [])


def _legend_columns(categories: Sequence[str], t: Translator) -> int:
    """Legend columns that fit the figure's width: fewer when the labels are long."""
    longest = max([len(t.label(c)) for c in categories] + [1])
    return max(1, min(len(categories), 6, int(96 // (longest + 6))))


def _plot_shares(ctx: _Context) -> Drawn:
    """100% stacked bar per member and NETWORK, one segment per category."""
    column = str(ctx.spec.get("category", "category"))
    if not ctx.rows:
        return _empty_table(ctx.t)
    bars = _bar_order(ctx.rows, ctx.members)
    _ = ctx.t
    categories, matrix, adjusted = share_matrix(ctx.rows, column, bars)
    fig = fg.new_figure(0.34 * len(bars) + 1.25)
    ax = fig.subplots()
    lines = [fg.Point(b, None, None, None, b == NETWORK, "") for b in bars]
    ys = fg.positions(lines)
    left = [0.0] * len(bars)
    for c, category in enumerate(categories):
        color = fg.CATEGORY_COLORS[c % len(fg.CATEGORY_COLORS)]
        widths = [line[c] for line in matrix]
        ax.barh(ys, widths, left=left, height=0.72, color=color, edgecolor="white",
                linewidth=0.8, label=_.label(category))
        for y, start, width in zip(ys, left, widths, strict=True):
            if width >= 0.06:
                ax.text(start + width / 2, y, f"{100 * width:.0f}%", ha="center",
                        va="center", fontsize=7.5, color=fg.text_color(color))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    fg.y_labels(ax, ys, lines)
    ax.set_xlim(0, 1.0)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel(_.gettext(str(ctx.spec.get("label"))) if ctx.spec.get("label") else _("Share"))
    fig.legend(loc="outside upper left", ncols=_legend_columns(categories, _),
               title=_.gettext(column_name(column)), title_fontsize=8.5, alignment="left")
    caption = _("Share of each {column} per member and for the network (last).",
                column=html.escape(_.gettext(column_name(column)).lower()))
    caption += " " + _("Shares carry DP noise. Each bar shows the nearest shares that lie "
                       "between 0% and 100% and add up to exactly 100% (a correction that "
                       "costs no privacy); the table keeps the raw noisy shares.")
    if adjusted:
        caption += " " + _("Some bars needed that correction here.")
    alt = _("Shares by {column} per member and for the network",
            column=_.gettext(column_name(column)).lower())
    return fig, alt, caption


# --------------------------------------------------------------------------- forest


def _forest_rows(meta: Mapping[str, Any]) -> list[tuple[str, float, float, float, float]]:
    """(label, estimate, low, high, weight) per member from a MetaResult dict."""
    level = finite(meta.get("level")) or 0.95
    labels, estimates, variances = meta["labels"], meta["estimates"], meta["variances"]
    weights = meta.get("weights_random") or [1 / len(labels)] * len(labels)
    rows = []
    for label, est, var, weight in zip(labels, estimates, variances, weights, strict=False):
        half = fg.z_value(level) * math.sqrt(max(float(var), 0.0))
        rows.append((str(label), float(est), float(est) - half, float(est) + half, float(weight)))
    return rows


def _diamond(ax: Axes, y: float, pooled: Mapping[str, Any], color: str) -> None:
    """A pooled estimate as a diamond spanning its interval."""
    est, low, high = (float(pooled[k]) for k in ("estimate", "ci_low", "ci_high"))
    ax.add_patch(Polygon([(low, y), (est, y + 0.32), (high, y), (est, y - 0.32)], closed=True,
                         facecolor=color, edgecolor=color, zorder=3))


def _forest_caption(meta: Mapping[str, Any], _: Translator) -> str:
    """Heterogeneity statistics and warnings under a forest plot, as HTML."""
    stats = (f"τ² = {_.number(meta.get('tau2'))}, I² = {_.percent(meta.get('i2'))}, "
             f"Q = {_.number(meta.get('q'))} (df {_.number(meta.get('q_df'))}, "
             f"{fmt_pvalue(meta.get('q_pvalue'))}), K = {_.number(meta.get('k'))}.")
    warnings = "".join(f' <span class="warn">{html.escape(str(w))}</span>'
                       for w in meta.get("warnings") or [])
    text = _("Each member's estimate with its 95% CI (sampling and DP noise); square size "
             "shows the member's random-effects weight. Diamonds: fixed-effect and "
             "random-effects pooled estimates (random effects with the HKSJ interval).")
    if meta.get("prediction"):
        text += " " + _("The dashed line is the 95% prediction interval for a new member.")
    return f"{text} {stats}{warnings}"


def _plot_forest(ctx: _Context) -> Drawn:
    """Forest plot of a meta-analysis: members, fixed and random effects, prediction."""
    meta = ctx.analysis["meta"][ctx.spec.get("meta", 0)]
    rows = _forest_rows(meta)
    prediction = meta.get("prediction")
    fig = fg.new_figure(0.3 * (len(rows) + (3 if prediction else 2)) + 1.5)
    ax, text_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.3, 1.0], "wspace": 0.02})
    top_weight = max([w for *_, w in rows] + [1e-12])
    labels: list[str] = []
    right: list[tuple[str, str]] = []
    for i, (label, est, low, high, weight) in enumerate(rows):
        ax.hlines(-i, low, high, color=fg.MEMBER_COLOR, linewidth=1.4)
        ax.plot([est], [-i], marker="s", linestyle="none", color=fg.MEMBER_COLOR,
                markersize=3 + 8 * math.sqrt(weight / top_weight))
        labels.append(label)
        right.append((f"{ctx.t.number(est)} {ctx.t.interval(low, high)}",
                      ctx.t.percent(weight)))
    y = -len(rows) - 0.4
    ys = [float(-i) for i in range(len(rows))]
    for name, result, color in ((ctx.t("Fixed effect"), meta["fixed"], fg.MUTED_COLOR),
                                (ctx.t("Random effects (HKSJ)"), meta["hksj"],
                                 fg.NETWORK_COLOR)):
        _diamond(ax, y, result, color)
        labels.append(name)
        right.append(((f"{ctx.t.number(result['estimate'])} "
                      f"{ctx.t.interval(result['ci_low'], result['ci_high'])}"), ""))
        ys.append(y)
        y -= 1
    if prediction:
        low, high = float(prediction[0]), float(prediction[1])
        ax.hlines(y, low, high, color=fg.NETWORK_COLOR, linewidth=1.3, linestyle=(0, (4, 2)))
        ax.plot([low, high], [y, y], marker="|", markersize=8, color=fg.NETWORK_COLOR,
                linestyle="none")
        labels.append(ctx.t("Prediction interval"))
        right.append((ctx.t.interval(low, high), ""))
        ys.append(y)
    _forest_axes(ax, ys, labels, len(rows), float(meta["hksj"]["estimate"]))
    ax.set_xlabel(ctx.t.gettext(str(ctx.spec.get("label") or meta.get("label") or "Estimate")))
    _forest_text(text_ax, ys, right, (min(ys) - 0.7, 1.3), ctx.t)
    return (fig, ctx.t("Forest plot: {label}", label=meta.get("label") or ctx.title),
            _forest_caption(meta, ctx.t))


def _forest_axes(ax: Axes, ys: Sequence[float], labels: Sequence[str], members: int,
                 pooled: float) -> None:
    """Zero and pooled-estimate lines, the member/pooled divider and the row labels."""
    ax.axvline(0, color="#3e4c59", linewidth=0.8, zorder=1)
    ax.axvline(pooled, color=fg.NETWORK_COLOR, linewidth=0.7, linestyle=":", zorder=1)
    ax.axhline(-members + 0.35, color="#cbd2d9", linewidth=0.7)
    ax.set_yticks(list(ys), list(labels))
    ax.tick_params(axis="y", length=0)
    for tick in ax.get_yticklabels()[members:]:
        tick.set_fontweight("bold")
    ax.spines["left"].set_visible(False)
    ax.set_ylim(min(ys) - 0.7, 1.3)


def _forest_text(ax: Axes, ys: Sequence[float], cells: Sequence[tuple[str, str]],
                 ylim: tuple[float, float], t: Translator) -> None:
    """The numeric columns beside a forest plot: estimate [95% CI] and weight."""
    ax.set_ylim(*ylim)
    ax.set_xlim(0, 1)
    ax.axis("off")
    ax.text(0.04, 0.85, t("Estimate [95% CI]"), fontweight="bold", va="center", fontsize=8)
    ax.text(1.0, 0.85, t("Weight"), fontweight="bold", va="center", ha="right", fontsize=8)
    for y, (text, weight) in zip(ys, cells, strict=True):
        ax.text(0.04, y, text, va="center", fontsize=8)
        ax.text(1.0, y, weight, va="center", ha="right", fontsize=8, color=fg.MUTED_COLOR)


# --------------------------------------------------------------------------- coefficients


def is_intercept(name: str) -> bool:
    """Intercept terms are left out of coefficient plots (they dwarf the slopes)."""
    return name.strip("()").lower() in ("intercept", "const", "constant")


def fit_names(fits: Mapping[str, Any], members: Sequence[str]) -> list[str]:
    """Fit names in network order, unknown names next, NETWORK last."""
    return [str(r["member"]) for r in sorted(({"member": name} for name in fits),
                                             key=fg.member_order(members))]


def _coefficient_point(fit_name: str, coef: Mapping[str, Any], label: str) -> fg.Point:
    """One coefficient of one fit as a dot-and-whisker line."""
    low, high = fg.interval(coef)
    estimate = finite(coef.get("estimate"))
    return fg.Point(label, estimate, low, high, fit_name == NETWORK,
                    "" if estimate is not None else "no estimate")


def _term_points(fit: Mapping[str, Any], name: str, term: str) -> list[fg.Point]:
    """The line(s) of one term in one fit; a failed fit gets a 'not estimable' line."""
    if fit.get("coefficients") is None:
        return [fg.Point(name, None, None, None, name == NETWORK, str(fit.get("status") or ""))]
    return [_coefficient_point(name, c, name) for c in fit["coefficients"] if c["name"] == term]


COEFFICIENT_AXIS = N_("Coefficient (change in the response per unit of the term)")


def _plot_one_fit(fits: Mapping[str, Any], chosen: str, t: Translator) -> Drawn:
    """The terms of one fit (usually NETWORK), intercept left out."""
    fit = fits[chosen]
    if fit.get("coefficients") is None:
        reason = str(fit.get("status") or "no coefficients")
        return fg.nothing_to_draw(t("The {fit} fit has no coefficients", fit=chosen),
                                  t("No coefficients: the {fit} fit is {reason}.", fit=chosen,
                                    reason=readable(reason)))
    coefs = [c for c in fit["coefficients"] if not is_intercept(c["name"])]
    if not coefs:
        return fg.nothing_to_draw(t("No coefficients"),
                                  t("No coefficients besides the intercept."))
    lines = [_coefficient_point(chosen, c, c["name"]) for c in coefs]
    fig = fg.new_figure(0.3 * len(lines) + 1.2)
    ax = fig.subplots()
    fg.dot_whisker(ax, lines, None, zero_line=True, t=t)
    ax.set_xlabel(t.gettext(COEFFICIENT_AXIS))
    caption = t("Coefficients of the {fit} fit (intercept omitted) with 95% CIs from the "
                "parametric bootstrap, which includes the DP noise; the solid line is zero.",
                fit=html.escape(str(chosen)))
    return fig, t("Regression coefficients of the {fit} fit", fit=chosen), caption


def _plot_coefficients(ctx: _Context) -> Drawn:
    """Regression coefficients with CIs: one panel per term across fits, or one fit's terms."""
    fits: Mapping[str, Any] = ctx.analysis["regression"]
    chosen = ctx.spec.get("regression")
    _ = ctx.t
    if chosen is not None:
        return _plot_one_fit(fits, str(chosen), _)
    names = fit_names(fits, ctx.members)
    terms: list[str] = []
    for name in names:
        terms += [c["name"] for c in fits[name].get("coefficients") or []
                  if not is_intercept(c["name"]) and c["name"] not in terms]
    if not terms:
        return fg.nothing_to_draw(_("No coefficients"), _("No coefficients besides the intercept."))
    shown = terms[:fg.MAX_PANELS]
    fig = fg.new_figure(fg.grid_height(len(shown), len(names)))
    axes = fg.panel_grid(fig, len(shown), sharex=False)
    for ax, term in zip(axes, shown, strict=True):
        lines = [line for name in names for line in _term_points(fits[name], name, term)]
        fg.dot_whisker(ax, lines, fg.reference(lines), zero_line=True, t=_)
        ax.set_title(term)
    fig.supxlabel(_.gettext(COEFFICIENT_AXIS), fontsize=9)
    caption = _("One panel per term (intercept omitted): each member's fit and the pooled "
                "network fit (last, orange diamond, dashed line) with 95% CIs from the "
                "parametric bootstrap, which includes the DP noise; the solid line is zero."
                ) + fg.truncation_note(len(terms), _)
    return fig, _("Regression coefficients per member and for the network"), caption


# --------------------------------------------------------------------------- transition


def _transition_matrix(rows: Sequence[Row]) -> tuple[list[str], list[str], list[list[float]]]:
    """From and to categories (first-appearance order) and shares (NaN where missing)."""
    froms: list[str] = []
    tos: list[str] = []
    values: dict[tuple[str, str], float] = {}
    for row in rows:
        start, end = str(row.get("from")), str(row.get("to"))
        froms += [start] if start not in froms else []
        tos += [end] if end not in tos else []
        value = finite(row.get("estimate"))
        values[(start, end)] = math.nan if value is None else value
    matrix = [[values.get((f, t), math.nan) for t in tos] for f in froms]
    return froms, tos, matrix


def _heatmap_size(froms: Sequence[str], tos: Sequence[str]) -> tuple[float, float]:
    """(width, height) in inches: a cell per pair plus room for the turned column labels."""
    longest = max([len(t) for t in tos] + [1])
    label_height = 0.075 * longest * math.sin(math.radians(TICK_ROTATION))
    width = min(fg.FIG_WIDTH, 2.6 + 0.95 * max(len(tos), 1))
    return width, 1.3 + label_height + 0.55 * max(len(froms), 1)


def _plot_transition(ctx: _Context) -> Drawn:
    """Heatmap of NETWORK from -> to shares, each cell labelled."""
    if not ctx.rows:
        return _empty_table(ctx.t)
    network = [r for r in ctx.rows if r.get("member") == NETWORK]
    froms, tos, matrix = _transition_matrix(network or ctx.rows)
    width, height = _heatmap_size(froms, tos)
    fig = fg.new_figure(height, width=width)
    ax = fig.subplots()
    finite_values = [v for line in matrix for v in line if not math.isnan(v)]
    top = max(finite_values + [1e-9])
    image = ax.imshow(matrix or [[math.nan]], cmap="Blues", vmin=0, vmax=top, aspect="auto")
    for i, line in enumerate(matrix):
        for j, value in enumerate(line):
            text = ctx.t("n/a") if math.isnan(value) else f"{round(100 * value)}%"  # no -0%
            dark = not math.isnan(value) and value > 0.55 * top
            ax.text(j, i, text, ha="center", va="center", fontsize=8.5,
                    color="white" if dark else fg.INK_COLOR)
    ax.set_xticks(range(len(tos)), tos, rotation=TICK_ROTATION, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks(range(len(froms)), froms)
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel(ctx.t("To (at follow-up)"))
    ax.set_ylabel(ctx.t("From (at start)"))
    bar = fig.colorbar(image, ax=ax, format=PercentFormatter(1.0), shrink=0.9)
    bar.set_label(ctx.t.gettext(str(ctx.spec.get("label") or "Share")))
    bar.outline.set_visible(False)
    caption = ctx.t(TRANSITION_CAPTIONS[bool(network)])
    return fig, ctx.t("Transition heatmap for the network"), caption


TRANSITION_CAPTIONS = {
    True: N_("Transitions for the network: each row is a starting category, each column the "
             "category at follow-up, and each cell the share moving from one to the other "
             "(with DP noise, so a row need not add up to exactly 100%)."),
    False: N_("Transitions for the table: each row is a starting category, each column the "
              "category at follow-up, and each cell the share moving from one to the other "
              "(with DP noise, so a row need not add up to exactly 100%)."),
}


Plotter = Callable[[_Context], Drawn]
_PLOTTERS: dict[str, Plotter] = {
    "member_vs_network": _plot_member_vs_network,
    "shares": _plot_shares,
    "forest": _plot_forest,
    "coefficients": _plot_coefficients,
    "transition": _plot_transition,
}
assert set(_PLOTTERS) == set(PLOT_KINDS), "every plot kind the document allows is drawn"


# --------------------------------------------------------------------------- budget


def budget_rows(budget: Sequence[Row]) -> list[tuple[str, float, float, float, float]]:
    """(member, before, study, remaining, total) per budget entry, missing values as 0."""
    rows = []
    for entry in budget:
        before = finite(entry.get("epsilon_before")) or 0.0
        study = finite(entry.get("epsilon_study")) or 0.0
        after = finite(entry.get("epsilon_after"))
        total = finite(entry.get("epsilon_total")) or 0.0
        spent = before + study if after is None else after
        rows.append((str(entry.get("member")), before, study, max(0.0, total - spent), total))
    return rows


def render_budget_plot(budget: Sequence[Row], lang: str = "en") -> Plot:
    """Stacked bar per member: spent before, spent by this study, remaining."""
    _ = Translator(lang)
    with matplotlib.rc_context(fg.RC):
        rows = budget_rows(budget)
        fig = fg.new_figure(0.34 * len(rows) + 1.25)
        ax = fig.subplots()
        ys = [-float(i) for i in range(len(rows))]
        parts = [(_("Spent before this study"), "#9aa5b1", 1),
                 (_("Spent by this study"), fg.NETWORK_COLOR, 2),
                 (_("Remaining"), "#d9e2ec", 3)]
        left = [0.0] * len(rows)
        for name, color, column in parts:
            widths = [float(row[column]) for row in rows]
            ax.barh(ys, widths, left=left, height=0.62, color=color, label=name,
                    edgecolor="white", linewidth=0.8)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        for y, row in zip(ys, rows, strict=True):
            ax.text(max(row[4], row[1] + row[2]), y, "  " + _("total {value}", value=_.number(row[4])),
                    va="center", fontsize=8, color=fg.MUTED_COLOR)
        ax.set_yticks(ys, [row[0] for row in rows])
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        ax.set_xlim(0, max([r[4] for r in rows] + [r[1] + r[2] for r in rows] + [1e-9]) * 1.15)
        ax.set_xlabel(_("Privacy loss ε"))
        fig.legend(loc="outside upper left", ncols=3)
        caption = _("Each member's total ε budget: what earlier studies spent (grey), what "
                    "this study spent (orange) and what remains (light).")
        return Plot("budget", fg.svg_bytes(fig), _("Privacy budget per member"), caption)
