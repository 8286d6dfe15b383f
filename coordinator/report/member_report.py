"""A member's own short report for its management and board: its figures beside the network's.

`write_member_report` writes a print-ready HTML page (and, with `pdf=True`, a PDF printed by
headless Chromium) in Dutch or English. It holds only the member's own rows and NETWORK's,
in plain sentences, two small charts and a note on what the privacy noise means: no other
member's name or figure (the network total is the only thing that pools them). A member that
was withheld, failed or did not answer an analysis gets an honest sentence instead of a number.
Estimates a reader could not take at face value (see `figures.readability`) are called too
uncertain; shares are shown after the same simplex correction as in the study report.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bridgestat.coordinator.report import figures as fg
from bridgestat.coordinator.report.formatting import is_ok, readable, status_head
from bridgestat.coordinator.report.html_tables import is_label, table_columns
from bridgestat.coordinator.report.i18n import N_, Translator, fmt_date, render
from bridgestat.coordinator.report.plots import render_plot
from bridgestat.coordinator.report.study_report import is_secure, write_atomically
from bridgestat.coordinator.studies.results_doc import (
    NETWORK,
    ReportError,
    finite,
    validate_results,
)

CHROMIUM = Path("/usr/bin/chromium")
PRINT_TIMEOUT = 120  # seconds; printing a 3-page report takes about 2 s
SHARES_CHART = "a01_household_type"
CHANGE_CHART = "a06_bridge_change"
"""The analyses drawn as charts when present (the rest are sentences)."""


def write_member_report(results: Mapping[str, Any], member: str, lang: str, out: Path,
                        pdf: bool = False) -> Path:
    """Write `member`'s report in `lang` to `out` (a file, or member-<name>.html in a
    directory); with `pdf`, also the PDF beside it. Returns the HTML path."""
    validate_results(results)
    members = [str(m) for m in results.get("members") or []]
    if member == NETWORK or (members and member not in members):
        raise ReportError(f"results: members: no member {member!r} in these results "
                          f"(members: {', '.join(members) or 'none'})")
    target = Path(out)
    if target.is_dir():
        target = target / f"member-{member}.html"
    write_atomically(target, member_report_html(results, member, lang))
    if pdf:
        print_pdf(target, target.with_suffix(".pdf"))
    return target


def member_report_html(results: Mapping[str, Any], member: str, lang: str) -> str:
    """The member report as one HTML string (rendered from templates/member_report.html)."""
    t = Translator(lang)
    analyses = [a for a in results.get("analyses") or []
                if a.get("audience") == "coordinator" or a.get("id") == CHANGE_CHART]
    study = results.get("study") or {}
    charts = [chart for a in analyses if a.get("id") in (SHARES_CHART, CHANGE_CHART)
              for chart in [_chart(a, member, lang)] if chart]
    context = {
        "format": results.get("format") or "",
        "member": member,
        "study_title": study.get("title") or study.get("name") or t("Study results"),
        "created": fmt_date(str(results.get("created") or ""), lang)
        if results.get("created") else "—",
        "findings": [finding(a, member, t) for a in analyses],
        "charts": charts,
        "spent": _spent(results, member, t),
    }
    return render("member_report.html", lang, context)


def finding(analysis: Mapping[str, Any], member: str, t: Translator) -> dict[str, str]:
    """One analysis as a heading and a plain sentence about the member and the network.

    The sentence is drawn from the first table with one row per member (a mean, a share, a
    mean change); a table with several rows per member (shares by category) says which group
    is largest; a member row without a figure says why.
    """
    title = t.label(analysis.get("title") or analysis["id"])
    tables = analysis.get("tables") or []
    if not tables:
        return {"title": title, "text": t("No figures were saved for this analysis.")}
    table = _main_table(tables)
    rows = table.get("rows") or []
    own = [r for r in rows if r.get("member") == member]
    network = [r for r in rows if r.get("member") == NETWORK]
    label = _label_column(table)
    if is_secure(analysis):
        return {"title": title, "text": _secure_sentence(analysis, table, network, t)}
    if len(own) > 1 or len(network) > 1:
        if label is not None and all(fg.public_range(analysis, table, r) == fg.SHARE_RANGE
                                     for r in rows):
            return {"title": title, "text": _shares_sentence(own, network, label, t)}
        return {"title": title, "text": _rows_sentence(analysis, table, own, network, label,
                                                       t)}
    theirs = _value(analysis, table, network[0], t) if network else t("no figure")
    if not own:
        text = t("Your organisation has no figure here: it did not answer this analysis "
                 "(not reachable, refused, or not part of it).")
        return {"title": title, "text": text + " " + t("In the network: {network}.",
                                                        network=theirs)}
    if not is_ok(own[0].get("status")) or finite(own[0].get("estimate")) is None:
        text = _status_sentence(str(own[0].get("status")), t)
        return {"title": title, "text": text + " " + t("In the network: {network}.",
                                                        network=theirs)}
    if analysis.get("kind") == "paired_change":
        return {"title": title, "text": _change_sentence(analysis, table, own[0],
                                                         network[0] if network else None, t)}
    mine = _value(analysis, table, own[0], t)
    return {"title": title, "text": t("At your organisation: {mine}; in the network: "
                                      "{network}.", mine=mine, network=theirs)}


def _secure_sentence(analysis: Mapping[str, Any], table: Mapping[str, Any],
                     network: Sequence[Mapping[str, Any]], t: Translator) -> str:
    """A secure analysis has no member rows: say why, then the network's figure."""
    text = t("This analysis ran with secure aggregation: your organisation added its figures "
             "to the network's sum with a share of the noise, and nobody, the coordinator "
             "included, saw your organisation's own figure.")
    if len(network) == 1:
        return text + " " + t("In the network: {network}.",
                              network=_value(analysis, table, network[0], t))
    return text + " " + t("The network's figures are in the study report.")


def _main_table(tables: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The first table with at most one row per member (the headline figure), else the first."""
    for table in tables:
        members = [str(r.get("member")) for r in table.get("rows") or []]
        if members and len(members) == len(set(members)):
            return table
    return tables[0]


def _label_column(table: Mapping[str, Any]) -> str | None:
    """The column that tells a member's rows apart (category, age band, domain), or None."""
    columns = table_columns(table)
    return next((c for c in columns[1:] if is_label(c, columns)), None)


CHANGES = {
    (True, True): N_("At your organisation this rose by {mine} on average; in the network "
                     "by {network}."),
    (True, False): N_("At your organisation this rose by {mine} on average; in the network "
                      "it fell by {network}."),
    (False, True): N_("At your organisation this fell by {mine} on average; in the network "
                      "it rose by {network}."),
    (False, False): N_("At your organisation this fell by {mine} on average; in the network "
                       "by {network}."),
}
"""Sentences of a mean change by the direction at the member and in the network (rose?)."""
CHANGE_ALONE = {True: N_("At your organisation this rose by {mine} on average."),
                False: N_("At your organisation this fell by {mine} on average.")}
"""The member's half of those sentences, when the network has no readable figure."""


def _change_sentence(analysis: Mapping[str, Any], table: Mapping[str, Any],
                     own: Mapping[str, Any], network: Mapping[str, Any] | None,
                     t: Translator) -> str:
    """'At your organisation this rose by 6.7 on average; in the network by 7.1.'"""
    mine = float(own["estimate"])
    if not fg.readability(own, fg.public_range(analysis, table, own)).shown:
        return t("At your organisation the change is too uncertain to show; in the network: "
                 "{network}.", network=_value(analysis, table, network, t)
                 if network else t("no figure"))
    usable = (network is not None and is_ok(network.get("status"))
              and finite(network.get("estimate")) is not None
              and fg.readability(network, fg.public_range(analysis, table, network)).shown)
    if network is None or not usable:
        return t(CHANGE_ALONE[mine >= 0], mine=t.plain(abs(mine))) + " " + t(
            "There is no readable network figure.")
    theirs = float(network["estimate"])
    return t(CHANGES[(mine >= 0, theirs >= 0)], mine=t.plain(abs(mine)),
             network=t.plain(abs(theirs)))


def _status_sentence(status: str, t: Translator) -> str:
    """An honest sentence for a member row without a figure."""
    if status.startswith("withheld"):
        return t("Your own policy withholds this figure (pooled only): it counts in the "
                 "network figure but is not shown separately.")
    return t("There is no reliable figure for your organisation: {reason}.",
             reason=t.label(status_head(readable(status))))


STATUS_TEXTS = (N_("too few records"), N_("not estimable"), N_("failed"), N_("refused"),
                N_("unreachable"))
"""The gist of the statuses a member row can have, so catalogues translate them."""


def _value(analysis: Mapping[str, Any], table: Mapping[str, Any], row: Mapping[str, Any],
           t: Translator) -> str:
    """A row's estimate as words: a percentage for shares, 'too uncertain' when so."""
    if not is_ok(row.get("status")) or finite(row.get("estimate")) is None:
        return t("no figure")
    return fg.estimate_words(analysis, table, row, t, t.plain)


def _shares_sentence(own: Sequence[Mapping[str, Any]], network: Sequence[Mapping[str, Any]],
                     label: str, t: Translator) -> str:
    """'Largest group at your organisation: single (38%); in the network: single (34%).'

    Shares are first corrected onto the simplex (0-100 %, adding up to 100 %), as in charts.
    """
    def largest(rows: Sequence[Mapping[str, Any]]) -> tuple[str, float] | None:
        usable = [r for r in rows if finite(r.get("estimate")) is not None
                  and is_ok(r.get("status"))]
        if not usable:
            return None
        shares = fg.project_to_simplex([float(r["estimate"]) for r in usable])
        index = max(range(len(usable)), key=lambda i: shares[i])
        return t.label(usable[index].get(label)), shares[index]

    mine, theirs = largest(own), largest(network)
    if mine is None:
        return t("There is no figure for your organisation here.")
    text = t("Largest group at your organisation: {category} ({share})",
             category=mine[0], share=t.percent(mine[1], decimals=0))
    if theirs is not None:
        text += "; " + t("in the network: {category} ({share})", category=theirs[0],
                         share=t.percent(theirs[1], decimals=0))
    return text + "."


def _rows_sentence(analysis: Mapping[str, Any], table: Mapping[str, Any],
                   own: Sequence[Mapping[str, Any]], network: Sequence[Mapping[str, Any]],
                   label: str | None, t: Translator) -> str:
    """Several figures per member (a mean per domain): 'work: 4.1 (network 3.9); ...'."""
    if label is None:
        return t("Several figures per member: see the study report.")
    theirs = {str(r.get(label)): r for r in network}
    parts = [t("{label}: {mine} (network {network})", label=t.label(r.get(label)),
               mine=_value(analysis, table, r, t),
               network=_value(analysis, table, theirs[str(r.get(label))], t)
               if str(r.get(label)) in theirs else t("no figure"))
             for r in own]
    if not parts:
        return t("There is no figure for your organisation here.")
    return t("At your organisation: {figures}.", figures="; ".join(parts))


def _chart(analysis: Mapping[str, Any], member: str, lang: str) -> dict[str, Any] | None:
    """A plot of the analysis with only the member's and NETWORK's rows, or None."""
    specs = analysis.get("plots") or []
    if not specs or not analysis.get("tables"):
        return None
    spec = specs[0]
    index = int(spec.get("table") or 0)
    tables = [dict(table, rows=[r for r in table.get("rows") or []
                                if r.get("member") in (member, NETWORK)])
              for table in analysis["tables"]]
    if not tables[index]["rows"]:
        return None
    mine = {**analysis, "tables": tables, "meta": [], "regression": None}
    plot = render_plot(mine, spec, [member], lang)
    data = base64.b64encode(plot.svg).decode("ascii")
    return {"src": f"data:image/svg+xml;base64,{data}", "alt": plot.alt,
            "caption": Markup(plot.caption), "key": f"{analysis['id']}:{plot.kind}",
            "title": Translator(lang).label(analysis.get("title") or analysis["id"])}


def _spent(results: Mapping[str, Any], member: str, t: Translator) -> str:
    """How much of the member's privacy budget the study used, in a sentence."""
    entry = next((e for e in results.get("budget") or [] if e.get("member") == member), None)
    if entry is None:
        return ""
    return t("This study used {study} of your organisation's privacy budget of {total} "
             "(ε); {left} is left for later studies.",
             study=t.number(entry.get("epsilon_study")),
             total=t.number(entry.get("epsilon_total")),
             left=t.number(max(0.0, (finite(entry.get("epsilon_total")) or 0.0)
                               - (finite(entry.get("epsilon_after")) or 0.0))))


def print_pdf(html: Path, pdf: Path) -> Path:
    """Print an HTML file to PDF with Debian's headless Chromium (no network, no sandbox).

    Chromium writes into a fresh temporary profile, so nothing of a user's browser is used
    and two prints do not collide. A missing Chromium or a failed print raises ReportError.
    """
    if not CHROMIUM.exists():
        raise ReportError(f"{CHROMIUM} not found: install it (scripts/ensure-chromium, or "
                          "apt-get install chromium) to print the PDF; the HTML is written")
    with tempfile.TemporaryDirectory(prefix="bridgestat-print-") as profile:
        tmp = Path(profile) / "out.pdf"
        command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                   "--no-first-run", "--disable-background-networking",
                   "--disable-component-update", f"--user-data-dir={profile}/user",
                   "--no-pdf-header-footer", f"--print-to-pdf={tmp}", html.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=PRINT_TIMEOUT)
        if done.returncode != 0 or not tmp.exists():
            raise ReportError(f"{html}: Chromium could not print the PDF (exit "
                              f"{done.returncode}): {done.stderr.strip()[-500:]}")
        pdf.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp), pdf)
    return pdf
