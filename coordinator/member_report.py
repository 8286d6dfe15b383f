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

from bridgestat.coordinator import figures as fg
from bridgestat.coordinator.formatting import is_ok, readable
from bridgestat.coordinator.i18n import Translator, fmt_date, render
from bridgestat.coordinator.plots import render_plot
from bridgestat.coordinator.report import write_atomically
from bridgestat.coordinator.results_doc import NETWORK, ReportError, validate_results

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
    """One analysis as a heading and a plain sentence about the member and the network."""
    title = str(analysis.get("title") or analysis["id"])
    tables = analysis.get("tables") or []
    if not tables:
        return {"title": title, "text": t("No figures were saved for this analysis.")}
    table = tables[0]
    rows = table.get("rows") or []
    own = [r for r in rows if r.get("member") == member]
    network = [r for r in rows if r.get("member") == NETWORK]
    if "category" in table.get("columns", []) or any("category" in r for r in rows):
        return {"title": title, "text": _shares_sentence(own, network, t)}
    mine = _value(analysis, table, own[0], t) if own else None
    theirs = _value(analysis, table, network[0], t) if network else None
    if own and not is_ok(own[0].get("status")):
        text = _status_sentence(str(own[0].get("status")), t)
    elif not own:
        text = t("Your organisation has no figure here: it did not answer this analysis "
                 "(not reachable, refused, or not part of it).")
    elif analysis.get("kind") == "paired_change":
        text = t("At your organisation the average change was {mine}; in the network "
                 "{network}.", mine=mine, network=theirs)
    else:
        text = t("At your organisation: {mine}; in the network: {network}.", mine=mine,
                 network=theirs)
    if own and not is_ok(own[0].get("status")) and theirs:
        text += " " + t("In the network: {network}.", network=theirs)
    return {"title": title, "text": text}


def _status_sentence(status: str, t: Translator) -> str:
    """An honest sentence for a member row without a figure."""
    if status.startswith("withheld"):
        return t("Your own policy withholds this figure (pooled only): it counts in the "
                 "network figure but is not shown separately.")
    return t("There is no reliable figure for your organisation: {reason}.",
             reason=readable(status))


def _value(analysis: Mapping[str, Any], table: Mapping[str, Any], row: Mapping[str, Any],
           t: Translator) -> str:
    """A row's estimate as words: a percentage for shares, 'too uncertain' when so."""
    if fg.finite(row.get("estimate")) is None:
        return t("no figure")
    bounds = fg.public_range(analysis, table, row)
    if not fg.readability(row, bounds).shown:
        return t("too uncertain to show")
    if bounds == fg.SHARE_RANGE:
        return t.percent(row.get("estimate"), decimals=0)
    return t.fixed(row.get("estimate"), 1)


def _shares_sentence(own: Sequence[Mapping[str, Any]], network: Sequence[Mapping[str, Any]],
                     t: Translator) -> str:
    """'Largest group at your organisation: single (38%); in the network: single (34%).'"""
    def largest(rows: Sequence[Mapping[str, Any]]) -> tuple[str, float] | None:
        usable = [r for r in rows if fg.finite(r.get("estimate")) is not None]
        if not usable:
            return None
        shares = fg.project_to_simplex([float(r["estimate"]) for r in usable])
        index = max(range(len(usable)), key=lambda i: shares[i])
        return readable(usable[index].get("category")), shares[index]

    mine, theirs = largest(own), largest(network)
    if mine is None:
        return t("There is no figure for your organisation here.")
    text = t("Largest group at your organisation: {category} ({share})",
             category=mine[0], share=t.percent(mine[1], decimals=0))
    if theirs is not None:
        text += "; " + t("in the network: {category} ({share})", category=theirs[0],
                         share=t.percent(theirs[1], decimals=0))
    return text + "."


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
            "title": str(analysis.get("title") or analysis["id"])}


def _spent(results: Mapping[str, Any], member: str, t: Translator) -> str:
    """How much of the member's privacy budget the study used, in a sentence."""
    entry = next((e for e in results.get("budget") or [] if e.get("member") == member), None)
    if entry is None:
        return ""
    return t("This study used {study} of your organisation's privacy budget of {total} "
             "(ε); {left} is left for later studies.",
             study=t.number(entry.get("epsilon_study")),
             total=t.number(entry.get("epsilon_total")),
             left=t.number(max(0.0, (fg.finite(entry.get("epsilon_total")) or 0.0)
                               - (fg.finite(entry.get("epsilon_after")) or 0.0))))


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
