"""Results tables as HTML: label columns first, long tables folded, unusable rows muted.

A results table has the member, then label columns that say what a row is about (a category,
a group such as `arm`, a `measure`, a regression `term`, a transition `from`/`to`), then the
statistics. Labels come right after Member, whatever the document's column order, because a
row of numbers without its label means nothing and the statistics can make a table wider than
the page. Tables longer than `LONG_TABLE` rows show the NETWORK rows and fold all rows into a
`<details>` block (no script needed); tables without NETWORK rows are shown whole. Members'
rows whose status is not ok (not estimable, a fit flagged unstable) are muted, so a reader
does not take their numbers at face value; long statuses become footnotes.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from bridgestat.coordinator.report import figures as fg
from bridgestat.coordinator.report.formatting import column_name, is_ok, readable, status_head
from bridgestat.coordinator.report.i18n import N_, Translator
from bridgestat.coordinator.studies.results_doc import NETWORK, NUMERIC_KEYS, Row, finite, is_number

LONG_TABLE = 30
"""Tables with more rows show their NETWORK rows and fold the full table into <details>."""

STAT_COLUMNS = frozenset({
    "member", "estimate", "se", "ci", "ci_low", "ci_high", "n", "sd", "se_sampling", "se_dp",
    "se_ols", "loss", "status", "clipped_share",
})
"""Columns that are not labels: the member and the statistics every results table carries."""

STAT_SUFFIXES = ("_se", "_ci_low", "_ci_high", "_status")
"""A column ending so (d_z_se, d_z_status) is a statistic of another column, not a label."""

TECHNICAL_COLUMNS = frozenset({
    "se", "sd", "se_sampling", "se_dp", "se_ols", "loss", "d_z", "d_z_se", "d_z_ci_low",
    "d_z_ci_high", "d_z_status", "replicates", "clipped_below_se", "clipped_above_se",
})
"""Columns a researcher checks and a coordinator does not read: shown under 'All columns'."""

Bounds = Callable[[Row], "tuple[float, float] | None"]
"""The possible range of a row's estimate (see `figures.public_range`), or None."""

SHORT_STATUS = 40
"""Statuses longer than this show their head in the cell and the whole text as a footnote."""

REGRESSION_NOTE = N_(
    "SE and CI from the parametric bootstrap (they include the DP noise); SE (OLS) ignores "
    "the DP noise and is shown for contrast only. Per-member fits at this privacy loss are "
    "often too noisy to read (bootstrap SEs can be enormous): read the NETWORK fit. Muted rows "
    "are fits flagged unstable."
)
"""Caption note of a regression coefficient table."""


def escape(value: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(value), quote=True)


def is_label(column: str, columns: Collection[str]) -> bool:
    """Whether a column names what a row is about rather than holding one of its statistics."""
    if column in STAT_COLUMNS or column.endswith(STAT_SUFFIXES):
        return False
    return f"{column}_se" not in columns  # d_z has d_z_se: an estimate, not a label


def table_columns(table: Row, labels: Sequence[str] | None = None) -> list[str]:
    """Display columns: member, then label columns, then the rest, ci_low/ci_high as 'ci'.

    `labels` names the label columns explicitly (for tables the report builds itself);
    otherwise every column that `is_label` is one.
    """
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
    chosen = [c for c in merged if (c in labels if labels is not None else is_label(c, given))]
    first = [c for c in dict.fromkeys(("member", *chosen)) if c in merged]
    return first + [c for c in merged if c not in first]


def table_html(table: Row, headers: Mapping[str, str] | None = None, *,
               labels: Sequence[str] | None = None, right: Collection[str] = (),
               note: str = "", lang: str = "en", bounds: Bounds | None = None) -> str:
    """One results table; technical columns and long tables folded into <details>.

    The table first shows its label columns, estimate, CI, n and status; the technical
    columns (SEs apart, SD, loss, d_z) are in the full table under 'All columns'. Long tables
    show their NETWORK rows first and every row in the fold. `headers` overrides column
    headings, `labels` the label columns, `right` right-aligns columns of preformatted text,
    `note` is plain text added to the caption, and `bounds` gives a row's possible range so
    that raw values a chart would not show are marked (the table keeps them: unbiased).
    """
    _ = Translator(lang)
    rows: list[Row] = list(table.get("rows") or [])
    columns = table_columns(table, labels)
    compact = [c for c in columns if c not in TECHNICAL_COLUMNS]
    full = _View(table, headers or {}, columns, right, _, bounds)
    view = _View(table, headers or {}, compact, right, _, bounds)
    network = [r for r in rows if r.get("member") == NETWORK]
    long = len(rows) > LONG_TABLE and 0 < len(network) < len(rows)
    if not long and compact == columns:
        return view.html(rows, view.title(note))
    first = network if long else rows
    extra = (_("NETWORK rows only ({shown} of {total}); all rows below",
               shown=len(network), total=len(rows)),) if long else ()
    fold = (_("All {total} rows", total=len(rows)) if long else _("All columns"))
    if long and compact != columns:
        fold = _("All {total} rows and all columns", total=len(rows))
    return (view.html(first, view.title(note, *extra))
            + f'<details class="all-rows"><summary>{escape(fold)}</summary>'
            f"{full.html(rows, '')}</details>")


class _View:
    """How one table is drawn: its columns, headings and alignment; rows are drawn on demand."""

    def __init__(self, table: Row, headers: Mapping[str, str], columns: list[str],
                 right: Collection[str], t: Translator, bounds: Bounds | None) -> None:
        """Right-align the numeric columns (any number in them), the CI and `right`."""
        self.t = t
        self.bounds = bounds
        self.table = table
        self.headers = headers
        self.columns = columns
        self.level = finite(table.get("level")) or 0.95
        rows = table.get("rows") or []
        numeric = {c for c in columns if any(is_number(r.get(c)) for r in rows)}
        self.right = numeric | {"ci", *NUMERIC_KEYS} | set(right)

    def title(self, note: str, *extra: str) -> str:
        """The caption's HTML: 'name — caption', then extra and the note in normal weight."""
        name = " — ".join(escape(x) for x in (self.table.get("name"),
                                               self.table.get("caption")) if x)
        small = "".join(f'<span class="caption-note">{escape(x)}</span>' for x in
                        (*extra, note) if x)
        return name + small

    def html(self, rows: Sequence[Row], title: str) -> str:
        """The table element for these rows, captioned `title` (no caption when empty).

        NETWORK rows stand out among members' rows; in a table of NETWORK rows only there
        is nothing to single out. Long statuses are footnotes below the table.
        """
        head = "".join(f'<th scope="col"{self._align(c)}>{escape(self._heading(c))}</th>'
                       for c in self.columns)
        emphasise = any(r.get("member") != NETWORK for r in rows)
        footnotes: dict[str, int] = {}
        body = "".join(self._row(row, emphasise, footnotes) for row in rows)
        caption = f"<caption>{title}</caption>" if title else ""
        return (f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>{_footnotes_html(footnotes)}</div>")

    def _align(self, column: str) -> str:
        """The class attribute of a right-aligned (numeric) column's heading."""
        return ' class="num"' if column in self.right else ""

    def _heading(self, column: str) -> str:
        """Readable heading: the CI level, the table's own, or the known/readable name."""
        if column == "ci":
            return self.t("{level}% CI", level=f"{100 * self.level:g}")
        return self.headers.get(column) or self.t.gettext(column_name(column))

    def _flag(self, row: Row, column: str) -> str:
        """Why a raw value in this cell is not to be read at face value, or ''."""
        _ = self.t
        if column == "sd" and not fg.sd_readable(row):
            return _("An SD of 0 comes from noise (the noisy sum of squares was too small), "
                     "not from participants who are all alike: read it as unknown.")
        if column != "estimate" or self.bounds is None:
            return ""
        bounds = self.bounds(row)
        verdict = fg.readability(row, bounds)
        if verdict.shown or bounds is None:
            return ""
        span = _.bounds(*bounds)
        if verdict.reason == "outside":
            return _("Raw noisy value outside the possible range {span}: noise, not data. "
                     "Kept unbiased for pooling; charts do not show it.", span=span)
        return _("Its 95% interval is wider than the whole possible range {span}: too "
                 "uncertain to read. Kept unbiased for pooling; charts do not show it.",
                 span=span)

    def _row(self, row: Row, emphasise: bool, footnotes: dict[str, int]) -> str:
        """One <tr>: NETWORK rows emphasised, members' rows whose status is not ok muted.

        A NETWORK row is never muted: it is the one to read, and its status cell says what
        is wrong with it.
        """
        network = row.get("member") == NETWORK
        muted = not network and not is_ok(row.get("status"))
        classes = [name for name, wanted in (("network", emphasise and network),
                                             ("muted", muted)) if wanted]
        css = f' class="{" ".join(classes)}"' if classes else ""
        cells = "".join(f'<td class="{k}">{v}</td>'
                        for k, v in (self._cell(row, c, footnotes) for c in self.columns))
        return f"<tr{css}>{cells}</tr>"

    def _cell(self, row: Row, column: str, footnotes: dict[str, int]) -> tuple[str, str]:
        """(CSS class, HTML text) of one table cell."""
        if column == "ci":
            return "num", escape(self.t.interval(row.get("ci_low"), row.get("ci_high")))
        value = row.get(column)
        if column.endswith("status") and not is_ok(value):
            return "status-flag", _status_html(readable(value), footnotes)
        flag = self._flag(row, column)
        if flag:
            return "num raw-flag", (escape(self.t.number(value))
                                    + _mark(flag, footnotes))
        if is_number(value) or (value is None and column in self.right):
            return "num", escape(self.t.number(value))
        return ("num" if column in self.right else ""), escape("—" if value is None else value)


def _status_html(status: str, footnotes: dict[str, int]) -> str:
    """A status that fits a cell as it is; a long one as its head and a footnote mark.

    'not estimable: noisy total -14 is too small ...' shows 'not estimable [1]' and the whole
    text under the table, so a row stays one line high and nothing is lost.
    """
    if len(status) <= SHORT_STATUS:
        return escape(status)
    head = status_head(status)
    number = footnotes.setdefault(status, len(footnotes) + 1)
    shown = head if len(head) <= SHORT_STATUS else "see note"
    return f'{escape(shown)} <sup class="note-mark">[{number}]</sup>'


def _mark(text: str, footnotes: dict[str, int]) -> str:
    """A footnote mark for `text` (numbered with the table's other notes)."""
    number = footnotes.setdefault(text, len(footnotes) + 1)
    return f' <sup class="note-mark">[{number}]</sup>'


def _footnotes_html(footnotes: Mapping[str, int]) -> str:
    """The long statuses of a table, numbered as their marks in the cells."""
    if not footnotes:
        return ""
    items = "".join(f"<li>[{n}] {escape(text)}</li>" for text, n in footnotes.items())
    return f'<ol class="table-notes">{items}</ol>'


# --------------------------------------------------------------------------- regression fits


REGRESSION_HEADERS = {"member": N_("Fit"), "sigma": N_("Residual SD"), "r2": "R²",
                      "replicates": N_("Bootstrap replicates")}


def fit_status(fit: Mapping[str, Any]) -> str:
    """A fit's status as the study writes it: its own, 'unstable: <first warning>', or 'ok'."""
    if fit.get("status"):
        return str(fit["status"])
    warnings = fit.get("warnings") or []
    return f"unstable: {warnings[0]}" if warnings else "ok"


def with_fit_status(table: Row, fits: Mapping[str, Any]) -> Row:
    """A coefficient table whose rows say 'ok' while their fit carries warnings, corrected.

    Older documents wrote 'ok' for every coefficient of a fitted model; the study now writes
    the fit's status ('unstable: <first warning>'), and this gives older tables the same.
    """
    def fixed(row: Row) -> Row:
        fit = fits.get(str(row.get("member")))
        if fit is None or not is_ok(row.get("status")) or is_ok(fit_status(fit)):
            return row
        return {**row, "status": fit_status(fit)}

    return {**table, "rows": [fixed(row) for row in table.get("rows") or []]}


def coefficient_table_html(fits: Mapping[str, Any], names: Sequence[str], lang: str = "en"
                           ) -> str:
    """The coefficients of every fit, for documents whose analysis has no coefficient table."""
    rows = []
    for name in names:
        fit = fits[name]
        rows += [{"member": name, "term": c.get("name"), "estimate": c.get("estimate"),
                  "se": c.get("se"), "ci_low": c.get("ci_low"), "ci_high": c.get("ci_high"),
                  "se_ols": c.get("se_ols"), "status": fit_status(fit)}
                 for c in fit.get("coefficients") or []] or [
                     {"member": name, "term": None, "status": fit_status(fit)}]
    table = {"name": "Regression coefficients",
             "columns": ["member", "term", "estimate", "se", "ci_low", "ci_high", "se_ols",
                         "status"], "rows": rows}
    t = Translator(lang)
    return table_html(table, {k: t.gettext(v) for k, v in REGRESSION_HEADERS.items()},
                      note=t.gettext(REGRESSION_NOTE), lang=lang)


def fit_statistics_html(fits: Mapping[str, Any], names: Sequence[str], lang: str = "en"
                        ) -> str:
    """n, residual SD, R² and bootstrap replicates per fit, with its status."""
    rows = [{"member": name, "n": fits[name].get("n"), "sigma": fits[name].get("sigma"),
             "r2": fits[name].get("r2"), "replicates": fits[name].get("replicates"),
             "status": _warned(fit_status(fits[name]))} for name in names]
    table = {"name": "Fit statistics",
             "columns": ["member", "n", "sigma", "r2", "replicates", "status"], "rows": rows}
    t = Translator(lang)
    return table_html(table, {k: t.gettext(v) for k, v in REGRESSION_HEADERS.items()},
                      labels=["member"], lang=lang)


def _warned(status: str) -> str:
    """'unstable (see the notes)' for a fit with warnings: the notes list every warning."""
    return "unstable (see the notes)" if status.startswith("unstable:") else status
