"""Write a saved study-results document as one self-contained HTML report.

`write_report` turns a results document (see `results_doc`) into a single HTML file for two
audiences: coordinators (each member beside the network) and researchers (pooled effects with
honest intervals). The file needs nothing else: CSS is inline, plots are SVG embedded as base64
data URIs (an `<img>` each, so the SVGs' internal ids cannot clash), there is no script and no
external URL, so it can be mailed, archived or opened offline. The same document always gives
the same bytes.

This module assembles the page: title, contents, one section per analysis (badges, plots from
`plots`, tables from `html_tables`, notes) and the privacy loss spent. `load_results` and
`ReportError` live in `results_doc` and are importable from here too.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bridgestat.coordinator.report import figures as fg
from bridgestat.coordinator.report.formatting import fmt_loss, fmt_loss_range, is_ok
from bridgestat.coordinator.report.html_tables import (
    REGRESSION_NOTE,
    coefficient_table_html,
    escape,
    fit_statistics_html,
    is_label,
    table_columns,
    table_html,
    with_fit_status,
)
from bridgestat.coordinator.report.i18n import N_, Translator, render
from bridgestat.coordinator.report.plots import (
    Plot,
    budget_rows,
    fit_names,
    render_budget_plot,
    render_plot,
)
from bridgestat.coordinator.studies.results_doc import (
    FORMAT,
    NETWORK,
    ReportError,
    Row,
    finite,
    load_results,
    validate_results,
)

__all__ = ["ReportError", "iter_plot_keys", "load_results", "report_html", "validate_results",
           "write_report"]

AUDIENCES = {"coordinator": N_("For coordinators"), "researcher": N_("For researchers")}
SUMMARY_HEADINGS = {"coordinator": N_("Summary for coordinators: the network at a glance"),
                    "researcher": N_("Summary for researchers: pooled effects")}
FILE_MODE = 0o666
"""Mode a new report is created with, before the umask (0644 under the usual umask 022)."""


def write_report(results: Mapping[str, Any], out: Path, lang: str = "en") -> Path:
    """Validate `results` and write the report in `lang` to `out` (a file, or report.html
    in a directory)."""
    validate_results(results)
    target = Path(out)
    if target.is_dir():
        target = target / "report.html"
    write_atomically(target, report_html(results, lang))
    return target


def write_atomically(path: Path, text: str) -> None:
    """Write text via a temporary file and rename, so no half-written report stays.

    The temporary file is created with `FILE_MODE` less the umask, like any file the user
    writes (tempfile.mkstemp would make it 0600, unreadable to the colleagues it is for).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def iter_plot_keys(results: Mapping[str, Any]) -> Iterable[str]:
    """The data-plot keys a report of `results` contains, in order (for checks and tests)."""
    for analysis in results.get("analyses") or []:
        for spec in analysis.get("plots") or []:
            yield f"{analysis['id']}:{spec['kind']}"
    if results.get("budget"):
        yield "privacy-loss:budget"


SECURE_BADGE = N_("secure aggregation: network figure only")
SECURE_NOTE = N_("This analysis ran with secure aggregation: each member added a share of the "
                 "noise to its sums, and only the network's sum was released, so no member's "
                 "own figure exists, not even at the coordinator.")


def is_secure(analysis: Mapping[str, Any]) -> bool:
    """Whether the analysis ran with secure aggregation (`secure: true` in the study file)."""
    return bool((analysis.get("spec") or {}).get("secure"))


def report_html(results: Mapping[str, Any], lang: str = "en") -> str:
    """The whole report as one HTML string (results must be valid), rendered from
    `templates/study_report.html`: summaries per audience first, then every analysis."""
    _ = Translator(lang)
    members = _members(results)
    analyses = results.get("analyses") or []
    study = results.get("study") or {}
    counts = {a: sum(1 for x in analyses if x.get("audience") == a) for a in AUDIENCES}
    split = ", ".join(f"{n} {_.gettext(AUDIENCES[a]).lower()}" for a, n in counts.items() if n)
    secure = sum(1 for a in analyses if is_secure(a))
    if secure:
        split += (", " if split else "") + _.ngettext(
            "{n} with secure aggregation", "{n} with secure aggregation", secure).format(n=secure)
    context = {
        "format": results.get("format") or FORMAT,
        "title": study.get("title") or study.get("name") or _("Study results"),
        "study_name": study.get("name"), "description": study.get("description"),
        "created": results.get("created"), "members": members,
        "analyses_text": f"{len(analyses)}" + (f" ({split})" if split else ""),
        "dp_note": _.gettext(DP_NOTE),
        "summaries": summaries(analyses, _),
        "toc": [{"id": a["id"], "heading": _heading(a, _), "audience": a.get("audience"),
                 "audience_text": _.gettext(AUDIENCES.get(a.get("audience"), "")) if
                 a.get("audience") in AUDIENCES else a.get("audience")} for a in analyses],
        "sections": [Markup(analysis_html(a, members, lang)) for a in analyses],
        "budget": Markup(budget_html(results, members, lang)),
        "multiplicity": Markup(multiplicity_html(results, lang)),
    }
    return render("study_report.html", lang, context)


def summaries(analyses: Sequence[Mapping[str, Any]], t: Translator) -> list[dict[str, Any]]:
    """One short list per audience: each analysis's network figure in one line."""
    found = []
    for audience, heading in SUMMARY_HEADINGS.items():
        lines = [{"id": a["id"], "title": _heading(a, t), "text": headline(a, t)}
                 for a in analyses if a.get("audience", "researcher") == audience]
        if lines:
            found.append({"audience": audience, "heading": t.gettext(heading), "lines": lines})
    return found


def headline(analysis: Mapping[str, Any], t: Translator) -> str:
    """The network's figure of an analysis in a few words, or why there is none.

    The pooled random-effects estimate when there is a meta-analysis, else the NETWORK row
    of the first table (for shares: the largest category); estimates a chart would not show
    (see `figures.readability`) are called too uncertain here too.
    """
    metas = analysis.get("meta") or []
    if metas and isinstance(metas[0], Mapping) and isinstance(metas[0].get("hksj"), Mapping):
        pooled = metas[0]["hksj"]
        return t("network {estimate} {interval} (random effects, K = {k})",
                 estimate=t.number(pooled.get("estimate")),
                 interval=t.interval(pooled.get("ci_low"), pooled.get("ci_high")),
                 k=t.number(metas[0].get("k")))
    fits = analysis.get("regression") or {}
    if fits and not analysis.get("tables"):
        return t("regression, see the coefficients")
    for table in analysis.get("tables") or []:
        rows = [r for r in table.get("rows") or [] if r.get("member") == NETWORK]
        if not rows:
            continue
        if len(rows) > 1:
            usable = [r for r in rows if finite(r.get("estimate")) is not None]
            if not usable:
                return t("not estimable for the network")
            columns = table_columns(table)
            label = next((c for c in columns[1:] if is_label(c, columns)), None)
            if label is None or label in ("term", "transition", "from", "to", "measure"):
                return t("{count} network figures, see the section", count=len(rows))
            top = max(usable, key=lambda r: float(r["estimate"]))
            return t("largest: {label} {estimate}", label=t.label(top.get(label)),
                     estimate=_value(analysis, table, top, t))
        row = rows[0]
        if not is_ok(row.get("status")) or finite(row.get("estimate")) is None:
            return t("not estimable for the network")
        return t("network {estimate} {interval}", estimate=_value(analysis, table, row, t),
                 interval=t.interval(row.get("ci_low"), row.get("ci_high")))
    return t("no network figure")


def _value(analysis: Mapping[str, Any], table: Mapping[str, Any], row: Mapping[str, Any],
           t: Translator) -> str:
    """A row's estimate for a sentence: a percentage for shares, too uncertain if so."""
    return fg.estimate_words(analysis, table, row, t, t.number)


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


# --------------------------------------------------------------------------- analyses


def analysis_html(analysis: Mapping[str, Any], members: Sequence[str], lang: str = "en") -> str:
    """One analysis section: heading, description, plots, tables, notes."""
    t = Translator(lang)
    aid = str(analysis["id"])
    parts = [f'<section class="analysis" id="{escape(aid)}">',
             f"<h2>{escape(_heading(analysis, t))}</h2>",
             f'<p class="badges">{_badges(analysis, t)}</p>']
    if analysis.get("description"):
        parts.append(f'<p class="description">{escape(analysis["description"])}</p>')
    parts += [plot_html(render_plot(analysis, spec, members, lang), aid)
              for spec in analysis.get("plots") or []]
    parts += _tables(analysis, members, lang)
    parts += [f'<p class="heterogeneity">{escape(text)}</p>'
              for text in heterogeneity(analysis, t)]
    fits = analysis.get("regression") or {}
    notes = ([t.gettext(SECURE_NOTE)] if is_secure(analysis) else []) + (
        d_z_notes(analysis, t) + clip_notes(analysis, t)
        + attrition_notes(analysis, t)
        + [str(n) for n in analysis.get("notes") or []]
        + _regression_warnings(fits))
    if notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in notes)
        parts.append(f'<div class="notes"><h3>{escape(t("Notes"))}</h3><ul>{items}'
                     "</ul></div>")
    parts.append("</section>")
    return "\n".join(parts)


def _tables(analysis: Mapping[str, Any], members: Sequence[str], lang: str) -> list[str]:
    """The analysis's tables, and for regressions the fit statistics.

    A regression's coefficients are shown once: from the analysis's own coefficient table
    (one with a `term` column) when it has one, else built from the fits.
    """
    tables = analysis.get("tables") or []
    fits = analysis.get("regression") or {}
    coefficient_tables = [bool(fits) and "term" in table_columns(t) for t in tables]
    _ = Translator(lang)
    parts = [table_html(with_fit_status(t, fits), note=_.gettext(REGRESSION_NOTE), lang=lang)
             if is_coefficients else
             table_html(t, lang=lang, note=_.gettext(RAW_NOTE),
                        bounds=partial(fg.public_range, analysis, t))
             for t, is_coefficients in zip(tables, coefficient_tables, strict=True)]
    if fits:
        names = fit_names(fits, members)
        if not any(coefficient_tables):
            parts.append(coefficient_table_html(fits, names, lang))
        parts.append(fit_statistics_html(fits, names, lang))
    return parts


def heterogeneity(analysis: Mapping[str, Any], t: Translator) -> list[str]:
    """One sentence per meta-analysis: tau2 with its Q-profile interval, and I2."""
    found = []
    for meta in analysis.get("meta") or []:
        ci = meta.get("tau2_ci")
        level = f"{100 * (finite(meta.get('level')) or 0.95):g}"
        if isinstance(ci, list) and len(ci) == 2:
            found.append(t("{label}: between-member variance τ² = {tau2}, {level}% CI "
                           "{interval} (Q-profile); I² = {i2}.",
                           label=t.label(meta.get("label") or ""),
                           tau2=t.number(meta.get("tau2")), level=level,
                           interval=t.interval(ci[0], ci[1]), i2=t.percent(meta.get("i2"))))
        else:
            found.append(t("{label}: between-member variance τ² = {tau2} (no interval in "
                           "these results); I² = {i2}.",
                           label=t.label(meta.get("label") or ""),
                           tau2=t.number(meta.get("tau2")), i2=t.percent(meta.get("i2"))))
    return found


def d_z_notes(analysis: Mapping[str, Any], t: Translator) -> list[str]:
    """A note per table whose d_z is flagged (`d_z_status` 'flagged: ...'): the network's,
    and how many members'."""
    notes = []
    for table in analysis.get("tables") or []:
        rows = [r for r in table.get("rows") or []
                if str(r.get("d_z_status") or "").startswith("flagged")]
        if any(r.get("member") == NETWORK for r in rows):
            notes.append(t("The network's Cohen's d_z is flagged: the DP noise in its SD is "
                           "large against the variance the clip bounds imply, so d_z and its "
                           "interval are unreliable. Read the mean change and its interval."))
        members = sum(1 for r in rows if r.get("member") != NETWORK)
        if members:
            notes.append(t.ngettext("{n} member's d_z is flagged (see d_z status).",
                                    "{n} members' d_z are flagged (see d_z status).",
                                    members).format(n=members))
    return notes


def clip_notes(analysis: Mapping[str, Any], t: Translator) -> list[str]:
    """A note per table with clip counts (issue 15): how many of the network's values the
    public clip bounds cut at each end, and their share of its noisy n."""
    notes = []
    for table in analysis.get("tables") or []:
        groups = _group_columns(table)
        for row in table.get("rows") or []:
            below, above = finite(row.get("clipped_below")), finite(row.get("clipped_above"))
            if row.get("member") != NETWORK or below is None or above is None:
                continue
            group = ", ".join(f"{k} {row[k]}" for k in groups if k in row)
            notes.append(t("Clip bounds{group}: about {below} values (SE {below_se}) were cut "
                           "below and {above} (SE {above_se}) above, {share} of the network's "
                           "n (noisy counts released at 5 % of the loss; members' counts in "
                           "the table).", group=f" ({group})" if group else "",
                           below=t.number(below), below_se=t.number(row.get("clipped_below_se")),
                           above=t.number(above), above_se=t.number(row.get("clipped_above_se")),
                           share=t.percent(row.get("clipped_share"))))
    return notes


def _group_columns(table: Mapping[str, Any]) -> list[str]:
    """The group-by columns of a mean table: the label columns."""
    columns = [str(c) for c in table.get("columns") or []]
    return [c for c in columns if c != "member" and is_label(c, columns)]


def attrition_notes(analysis: Mapping[str, Any], t: Translator) -> list[str]:
    """The attrition table's NETWORK rows in one sentence: did those with the follow-up
    occasion differ at baseline from those without?"""
    notes = []
    for table in analysis.get("tables") or []:
        if table.get("name") != "attrition":
            continue
        rows = {r.get("cell"): r for r in table.get("rows") or []
                if r.get("member") == NETWORK}
        diff = rows.get("difference") or {}
        if diff.get("status") != "ok":
            notes.append(t("Attrition: whether those with and without the follow-up occasion "
                           "differed at baseline could not be estimated ({status}).",
                           status=str(diff.get("status") or "—")))
            continue
        notes.append(t("Attrition: at baseline, those with the follow-up occasion averaged "
                       "{present} and those without {absent}; difference {difference}, 95% CI "
                       "{interval}. A difference means that the participants the change "
                       "describes are not like all who started.",
                       present=t.number((rows.get("present") or {}).get("estimate")),
                       absent=t.number((rows.get("absent") or {}).get("estimate")),
                       difference=t.number(diff.get("estimate")),
                       interval=t.interval(diff.get("ci_low"), diff.get("ci_high"))))
    return notes


def multiplicity_html(results: Mapping[str, Any], lang: str = "en") -> str:
    """The confirmatory analyses' NETWORK effects with raw and adjusted p-values, or ''."""
    spec = results.get("multiplicity")
    if not isinstance(spec, Mapping) or not spec.get("analyses"):
        return ""
    t = Translator(lang)
    titles = {a["id"]: _heading(a, t) for a in results.get("analyses") or []}
    rule = t.gettext(RULES.get(str(spec.get("rule")), str(spec.get("rule"))))
    rows = [{"analysis": titles.get(r.get("id"), r.get("id")), "estimate": r.get("estimate"),
             "se": r.get("se"), "pvalue": fmt_p(r.get("pvalue")),
             "adjusted": fmt_p(r.get("adjusted")), "status": r.get("status")}
            for r in spec["analyses"]]
    table = {"name": t("Confirmatory analyses"), "rows": rows,
             "columns": ["analysis", "estimate", "se", "pvalue", "adjusted", "status"]}
    headers = {"analysis": t("Analysis"), "pvalue": t("p (raw)"),
               "adjusted": t("p adjusted ({rule})", rule=rule)}
    note = t("Two-sided p-values of each network effect against 0, from its estimate and SE "
             "(which include the DP noise), adjusted together by {rule}; an effect that could "
             "not be estimated counts as p = 1.", rule=rule)
    heading = t("Confirmatory analyses: adjusted p-values")
    return ('<section class="analysis" id="multiplicity">'
            f"<h2>{escape(heading)}</h2>"
            + table_html(table, headers, labels=["analysis"], right=["pvalue", "adjusted"],
                         note=note, lang=lang) + "</section>")


RULES = {"holm": N_("Holm (family-wise error rate)"),
         "benjamini-hochberg": N_("Benjamini-Hochberg (false discovery rate)")}


def fmt_p(p: Any) -> str:
    """'0.012', '< 0.001' or '—'."""
    x = finite(p)
    if x is None:
        return "—"
    return "< 0.001" if x < 0.001 else f"{x:.3f}"


RAW_NOTE = N_("Raw noisy values, unbiased, as used for pooling; a marked value is one the "
              "charts do not show.")


def _regression_warnings(fits: Mapping[str, Any]) -> list[str]:
    """Regression warnings as notes, prefixed by the fit they belong to."""
    return [f"{name}: {w}" for name, fit in fits.items() for w in fit.get("warnings") or []]


def plot_html(plot: Plot, analysis_id: str) -> str:
    """A figure holding the plot as an embedded SVG image, with its caption."""
    data = base64.b64encode(plot.svg).decode("ascii")
    return (f'<figure><img class="plot" data-plot="{escape(analysis_id)}:{escape(plot.kind)}" '
            f'alt="{escape(plot.alt)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{plot.caption}</figcaption></figure>")


def _badges(analysis: Mapping[str, Any], t: Translator) -> str:
    """Audience, kind, query count and privacy loss (ε, ρ or both) as small labels."""
    badges = []
    audience = analysis.get("audience")
    if audience:
        badges.append((f"badge-{escape(audience)}",
                       t.gettext(AUDIENCES[audience]) if audience in AUDIENCES
                       else str(audience)))
    if analysis.get("kind"):
        badges.append(("", str(analysis["kind"]).replace("_", " ")))
    if is_secure(analysis):
        badges.append(("badge-secure", t.gettext(SECURE_BADGE)))
    queries = analysis.get("queries")
    if isinstance(queries, list) and queries:
        badges.append(("", t.ngettext("{n} query", "{n} queries", len(queries)).format(
            n=len(queries))))
    loss = fmt_loss_range(analysis.get("loss") or {}, t.lang)
    if loss:
        badges.append(("badge-loss", loss))
    return "".join(f'<span class="badge {css}">{escape(text)}</span>' for css, text in badges)


def _heading(analysis: Mapping[str, Any], t: Translator | None = None) -> str:
    """'6. Title' (number optional, title defaults to the id; translated when a catalogue
    has the title, see `i18n.STUDY_DOMAIN`)."""
    number = analysis.get("number")
    title = analysis.get("title") or analysis["id"]
    if t is not None:
        title = t.label(title)
    return f"{number}. {title}" if number is not None else str(title)


# --------------------------------------------------------------------------- privacy loss


BUDGET_HEADERS = {
    "epsilon_before": N_("ε spent before"), "epsilon_study": N_("ε this study"),
    "epsilon_after": N_("ε spent after"), "epsilon_total": N_("ε total budget"),
    "remaining": N_("ε remaining"), "delta": "δ", "analysis": N_("Analysis"),
    "member": N_("Member"),
}
LOSS_KINDS_NOTE = N_(
    "ε: pure differential privacy. ρ: zero-concentrated DP (regressions); a member's budget "
    "above counts all its ρ together as one (ε, δ) equivalent."
)


def budget_html(results: Mapping[str, Any], members: Sequence[str], lang: str = "en") -> str:
    """The 'Privacy loss spent' section: table and chart per member, spend per analysis."""
    _ = Translator(lang)
    budget = results.get("budget") or []
    headers = {k: _.gettext(v) for k, v in BUDGET_HEADERS.items()}
    parts = ['<section class="analysis" id="privacy-loss">',
             f"<h2>{escape(_('Privacy loss spent'))}</h2>",
             '<p class="description">' + escape(_(
                 "How much of each member's differential-privacy budget (ε, lower is more "
                 "private) this study used, what earlier studies had used, and what is left "
                 "for future studies.")) + "</p>"]
    if budget:
        parts.append(plot_html(render_budget_plot(budget, lang), "privacy-loss"))
        parts.append(table_html(_budget_table(budget), headers, labels=["member"], lang=lang))
    else:
        parts.append('<p class="empty">'
                     + escape(_("No budget was recorded with these results.")) + "</p>")
    parts.append(_spend_by_analysis(results.get("analyses") or [], members, _))
    parts.append("</section>")
    return "\n".join(parts)


def _spend_by_analysis(analyses: Sequence[Mapping[str, Any]], members: Sequence[str],
                       t: Translator) -> str:
    """Table of the loss (ε, ρ or both) each analysis spent per member."""
    rows = []
    for analysis in analyses:
        loss = analysis.get("loss") or {}
        if loss:
            row: dict[str, Any] = {"analysis": _heading(analysis, t)}
            row.update({m: fmt_loss(loss[m]) if m in loss else None for m in members})
            rows.append(row)
    if not rows:
        return ""
    table = {"name": t("Privacy loss per analysis"), "columns": ["analysis", *members],
             "rows": rows}
    return table_html(table, {"analysis": t("Analysis"), **{m: m for m in members}},
                      labels=["analysis"], right=members, note=t.gettext(LOSS_KINDS_NOTE),
                      lang=t.lang)


def _budget_table(budget: Sequence[Row]) -> dict[str, Any]:
    """The budget entries as a table, with ε remaining worked out."""
    rows = []
    for entry, (member, before, study, remaining, total) in zip(budget, budget_rows(budget),
                                                                strict=True):
        rows.append({"member": member, "epsilon_before": before, "epsilon_study": study,
                     "epsilon_after": finite(entry.get("epsilon_after")) or before + study,
                     "epsilon_total": total, "remaining": remaining,
                     "delta": entry.get("delta")})
    columns = ["member", "epsilon_before", "epsilon_study", "epsilon_after", "epsilon_total",
               "remaining", "delta"]
    return {"name": "Budget per member", "columns": columns, "rows": rows}  # not translated:
    # the caption of a table the report builds; see budget_html for the shown texts


# --------------------------------------------------------------------------- page furniture


DP_NOTE = N_(
    "Every number in this report is a differentially "
    "private release: each member's node added random noise to its results before they left "
    "the member, so no figure reveals an individual participant. The standard errors (SE) and "
    "confidence intervals (CI) include that noise as well as ordinary sampling error, so they "
    "are honest but wider than without privacy protection. Counts (n) are noisy too and need "
    "not be whole numbers, shares need not add up to exactly 100%, and an estimate can fall "
    "slightly outside its possible range. Where a member's data were too sparse, its result is "
    "shown as not estimable."
)
