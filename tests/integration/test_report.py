"""The HTML study report: structure, self-containment, errors, and a real render in Chromium."""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import warnings
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bridgestat.coordinator.report.formatting import fmt_loss_range, fmt_number
from bridgestat.coordinator.report.html_tables import LONG_TABLE
from bridgestat.coordinator.report.member_report import write_member_report
from bridgestat.coordinator.report.study_report import (
    ReportError,
    iter_plot_keys,
    load_results,
    write_report,
)
from tests.fixtures.study_results import example_results
from tests.integration.chromium import ARTIFACTS, assert_renders_in_chromium


class _Elements(HTMLParser):
    """Collects every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _parse(path: Path) -> list[tuple[str, dict[str, str]]]:
    parser = _Elements()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.tags


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return example_results()


@pytest.fixture(scope="module")
def report(results: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(results, tmp_path_factory.mktemp("report") / "report.html")


def test_writes_one_self_contained_file(report: Path) -> None:
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]
    text = report.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "@import" not in text and "url(" not in text
    for tag, attrs in _parse(report):
        for name in ("src", "srcset", "poster", "data", "action"):
            assert not attrs.get(name) or attrs[name].startswith("data:"), (tag, name)
        assert not attrs.get("href") or attrs["href"].startswith("#"), (tag, attrs["href"])
        assert not (tag == "link" and "stylesheet" in attrs.get("rel", "")), attrs


def test_every_section_and_one_element_per_plot(results: dict[str, Any], report: Path) -> None:
    tags = _parse(report)
    ids = [attrs["id"] for _, attrs in tags if "id" in attrs]
    expected_sections = [a["id"] for a in results["analyses"]] + ["privacy-loss"]
    assert all(ids.count(i) == 1 for i in expected_sections), ids
    plots = [attrs for _, attrs in tags if "data-plot" in attrs]
    assert all("plot" in p.get("class", "").split() for p in plots)
    expected = Counter(f"{a['id']}:{s['kind']}" for a in results["analyses"]
                       for s in a["plots"]) + Counter(["privacy-loss:budget"])
    assert Counter(p["data-plot"] for p in plots) == expected
    assert Counter(iter_plot_keys(results)) == expected
    kinds = {s["kind"] for a in results["analyses"] for s in a["plots"]}
    assert kinds == {"member_vs_network", "shares", "forest", "coefficients", "transition"}


def test_report_content(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "Bridging capital after mentoring, 2026" in text
    assert "23 November 2026, 10:00 UTC" in text
    assert "differentially private" in text and "include that noise" in text
    assert 'class="network"' in text
    assert "too few records" in text  # the unestimable member is shown, not dropped
    assert "Privacy loss spent" in text and "ε remaining" in text
    assert "I² =" in text and "K = 5" in text and 'class="warn"' in text  # K < 10 warning


def test_output_is_reproducible_and_rendering_warns_about_nothing(
        results: dict[str, Any], report: Path, tmp_path: Path) -> None:
    # the fixture has long 'not estimable' reasons in narrow panels, which once made
    # matplotlib's constrained layout collapse with a UserWarning: any warning fails here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = write_report(results, tmp_path)
    assert again == tmp_path / "report.html"
    assert again.read_bytes() == report.read_bytes()


def test_optional_keys_may_be_missing(tmp_path: Path) -> None:
    doc = {"analyses": [{"id": "a01", "tables": [{"rows": [
        {"member": "amsterdam", "estimate": None, "status": "suppressed"},
        {"member": "NETWORK", "estimate": 1.5}]}],
        "plots": [{"kind": "member_vs_network"}]}]}
    text = write_report(doc, tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="a01"' in text and 'data-plot="a01:member_vs_network"' in text
    assert "No budget was recorded" in text


def _two_member_meta() -> dict[str, Any]:
    from bridgestat.coordinator.statistics.meta import meta_analysis

    return meta_analysis([1.0, 2.0], [0.1, 0.2], labels=["a", "b"]).to_dict()


EDGE_DOCUMENTS: dict[str, dict[str, Any]] = {
    "no analyses": {"analyses": []},
    "empty tables": {"analyses": [{"id": "x", "tables": [{"rows": []}], "plots": [
        {"kind": "member_vs_network"}, {"kind": "shares"}, {"kind": "transition"}]}]},
    "nothing estimable": {"analyses": [{"id": "x", "tables": [{"rows": [
        {"member": "a", "estimate": None, "status": "suppressed"},
        {"member": "NETWORK", "estimate": None}]}], "plots": [{"kind": "member_vs_network"}]}]},
    "intercept only": {"analyses": [{"id": "x", "regression": {"NETWORK": {"coefficients": [
        {"name": "(intercept)", "estimate": 1.0, "se": 0.1}]}}, "plots": [
        {"kind": "coefficients"}, {"kind": "coefficients", "regression": "NETWORK"}]}]},
    "too many facets": {"analyses": [{"id": "x", "tables": [{"rows": [
        {"member": m, "estimate": i + 0.1 * j, "se": 0.2, "category": f"c{i}"}
        for i in range(15) for j, m in enumerate(["a", "NETWORK"])]}],
        "plots": [{"kind": "member_vs_network", "facet": "category"}]}]},
    "failed fits": {"analyses": [{"id": "x", "regression": {
        "a": {"coefficients": [{"name": "age", "estimate": 0.1, "se": 0.05}]},
        "NETWORK": {"status": "not estimable: the pooled design is singular"}}, "plots": [
        {"kind": "coefficients"}, {"kind": "coefficients", "regression": "NETWORK"}]}]},
    "partial budget": {"analyses": [], "budget": [{"member": "a"}, {"member": "b",
                                                                    "epsilon_study": 1.0}]},
}


@pytest.mark.parametrize("name", sorted(EDGE_DOCUMENTS))
def test_edge_documents_render(name: str, tmp_path: Path) -> None:
    doc = EDGE_DOCUMENTS[name]
    text = write_report(doc, tmp_path / "r.html").read_text(encoding="utf-8")
    assert text.count("data-plot=") == len(list(iter_plot_keys(doc)))
    if name == "too many facets":
        assert "first 12 of 15 panels" in text
    if name == "failed fits":
        assert "the NETWORK fit is not estimable" in text


def test_two_member_forest_has_no_prediction_interval(tmp_path: Path) -> None:
    doc = {"analyses": [{"id": "x", "meta": [_two_member_meta()], "plots": [{"kind": "forest"}]}]}
    text = write_report(doc, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "K = 2" in text and "no prediction interval" in text
    assert "dashed line is the 95% prediction interval" not in text


@pytest.mark.parametrize("value, shown", [
    (None, "—"), (0, "0"), (0.5, "0.500"), (0.012345, "0.0123"), (12.345, "12.3"),
    (99.96, "100"), (412.7, "413"), (12345.6, "12,346"), (-1.5, "-1.50"), (4e-5, "4.00e-05"),
    (float("nan"), "—"), (5, "5"), (12000, "12,000"),
])
def test_number_format(value: float | None, shown: str) -> None:
    assert fmt_number(value) == shown


def _broken(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(example_results())
    bridge = next(a for a in doc["analyses"] if a["id"] == "a06_bridge_change")
    if change == "kind":
        bridge["plots"][1]["kind"] = "pie"
    elif change == "table":
        bridge["plots"][0]["table"] = 7
    elif change == "meta":
        bridge["plots"][1]["meta"] = 3
    elif change == "facet":
        bridge["plots"][0]["facet"] = "arm"
    elif change == "estimate":
        bridge["tables"][0]["rows"][2]["estimate"] = "high"
    return doc


@pytest.mark.parametrize("change, key", [
    ("kind", "plots[1].kind"), ("table", "plots[0].table"), ("meta", "plots[1].meta"),
    ("facet", "plots[0].facet"), ("estimate", "tables[0].rows[2].estimate"),
])
def test_bad_analysis_names_analysis_and_key(change: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError) as error:
        write_report(_broken(change), tmp_path / "r.html")
    assert "a06_bridge_change" in str(error.value) and key in str(error.value)
    assert not (tmp_path / "r.html").exists()


def test_missing_analyses_and_regression(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="analyses"):
        write_report({"format": "bridgestat-study-results/1"}, tmp_path / "r.html")
    doc = example_results()
    regression = next(a for a in doc["analyses"] if a["id"] == "a09_bridge_regression")
    del regression["regression"]
    with pytest.raises(ReportError, match=r"a09_bridge_regression.*regression"):
        write_report(doc, tmp_path / "r.html")


UNKNOWN_KEYS = [
    ((), "colour", "results: colour: unknown key (allowed: analyses, budget"),
    (("a06_bridge_change",), "colour", "analysis 'a06_bridge_change': colour: unknown key"),
    (("a06_bridge_change", "plots", 0), "colour",
     "analysis 'a06_bridge_change': plots[0].colour: unknown key (allowed: category, facet"),
    (("a06_bridge_change", "tables", 0), "colour",
     "analysis 'a06_bridge_change': tables[0].colour: unknown key (allowed: caption"),
    (("a06_bridge_change", "meta", 0, "fixed"), "colour",
     "analysis 'a06_bridge_change': meta[0].fixed.colour: unknown key"),
]


@pytest.mark.parametrize(("where", "key", "message"), UNKNOWN_KEYS,
                         ids=[m.split(": unknown")[0] for _, _, m in UNKNOWN_KEYS])
def test_an_unknown_key_anywhere_in_results_is_named(tmp_path: Path, where: tuple[Any, ...],
                                                      key: str, message: str) -> None:
    doc = copy.deepcopy(example_results())
    part: Any = doc
    if where:
        part = next(a for a in doc["analyses"] if a["id"] == where[0])
        for step in where[1:]:
            part = part[step]
    part[key] = 1
    with pytest.raises(ReportError) as error:
        write_report(doc, tmp_path / "r.html")
    assert str(error.value).startswith(message), str(error.value)


def test_load_results_names_file_and_key(results: dict[str, Any], tmp_path: Path) -> None:
    good = tmp_path / "results.json"
    good.write_text(json.dumps(results), encoding="utf-8")
    assert load_results(good) == results
    bad_json = tmp_path / "truncated.json"
    bad_json.write_text(json.dumps(results)[:200], encoding="utf-8")
    with pytest.raises(ReportError, match="truncated.json.*not valid JSON"):
        load_results(bad_json)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(_broken("kind")), encoding="utf-8")
    with pytest.raises(ReportError, match=r"broken\.json.*a06_bridge_change.*plots\[1\]\.kind"):
        load_results(broken)
    with pytest.raises(ReportError, match="missing.json"):
        load_results(tmp_path / "missing.json")


def test_renders_in_chromium(results: dict[str, Any], report: Path) -> None:
    plots = assert_renders_in_chromium(report, ARTIFACTS / "report.png")
    assert plots == list(iter_plot_keys(results))


# --------------------------------------------------------------------------- what the tables show


def _section(report: Path, section_id: str) -> str:
    """The HTML of one section of the report."""
    text = report.read_text(encoding="utf-8")
    start = text.index(f'<section class="analysis" id="{section_id}">')
    return text[start:text.index("</section>", start)]


def _tables(html: str) -> list[tuple[list[str], list[str]]]:
    """(header texts, <tr> class per body row) of every table in some HTML, in order."""
    found = []
    for table in re.findall(r"<table>.*?</table>", html):
        head = re.search(r"<thead><tr>(.*?)</tr></thead>", table)
        headers = re.findall(r"<th[^>]*>(.*?)</th>", head.group(1) if head else "")
        rows = re.findall(r'<tr(?: class="([^"]*)")?><td', table)
        found.append((headers, rows))
    return found


@pytest.mark.parametrize("section, labels", [
    ("a01_participants", ["Age band"]),
    ("a06_bridge_change", ["Category"]),
    ("a07_employment_transitions", ["Transition", "From", "To"]),
    ("a08_arms_compare", ["Group"]),
    ("a09_bridge_regression", ["Term"]),
    ("a10_paid_work_compare", ["Measure"]),
])
def test_label_columns_come_right_after_member(report: Path, section: str,
                                               labels: list[str]) -> None:
    # the fixture lists label columns last, as a real run does; the report moves them up
    headers, _ = _tables(_section(report, section))[0]
    assert headers[:1 + len(labels)] == ["Member", *labels], headers
    assert "Estimate" in headers and "Status" in headers


def test_long_table_shows_network_rows_then_all_rows_folded(report: Path) -> None:
    section = _section(report, "a07_employment_transitions")
    assert '<details class="all-rows"><summary>All 96 rows and all columns</summary>' in section
    assert "<script" not in section
    (network_headers, network_rows), (all_headers, all_rows) = _tables(section)
    assert network_headers == [h for h in all_headers if h not in ("SE",)]
    assert len(network_rows) == 16 and len(all_rows) == 96
    assert re.findall(r"<tbody><tr><td[^>]*>NETWORK</td>", section)  # NETWORK table first
    assert "NETWORK rows only (16 of 96)" in section
    short = _section(report, "a02_sessions")
    assert "<summary>All columns</summary>" in short and "rows</summary>" not in short
    assert len(_tables(short)[0][1]) <= LONG_TABLE


def test_regression_coefficients_are_shown_once(report: Path) -> None:
    section = _section(report, "a09_bridge_regression")
    tables = _tables(section)
    assert [headers[:2] for headers, _ in tables] == [["Member", "Term"]] * 2 + [
        ["Fit", "n (noisy)"]] * 2
    assert "<caption>Regression coefficients" not in section  # the analysis's table is it
    assert "too noisy to read" in section
    assert "groningen: the noisy design matrix" in section  # the warning stays a note


def test_unstable_member_fits_are_muted(report: Path) -> None:
    section = _section(report, "a09_bridge_regression")
    coefficients = re.findall(r'<tr(?: class="([^"]*)")?><td class="">([^<]+)</td>',
                              section.split("Fit statistics")[0])
    assert coefficients and all((css == "muted") == (member == "groningen")
                                for css, member in coefficients if member != "NETWORK")
    assert {css for css, member in coefficients if member == "NETWORK"} == {"network"}
    assert 'unstable <sup class="note-mark">[1]</sup>' in section
    assert "[1] unstable: the noisy design matrix X&#x27;X was not positive definite" in section


def test_coefficients_come_from_the_fits_without_a_table(tmp_path: Path) -> None:
    doc = example_results()
    regression = next(a for a in doc["analyses"] if a["id"] == "a09_bridge_regression")
    regression["tables"] = []
    regression["plots"] = [{"kind": "coefficients", "regression": "NETWORK"}]
    doc["analyses"] = [regression]
    section = _section(write_report(doc, tmp_path / "r.html"), "a09_bridge_regression")
    assert section.count("<caption>Regression coefficients") == 1
    assert "too noisy to read" in section
    tables = _tables(section)
    assert [headers[:2] for headers, _ in tables] == [["Fit", "Term"]] * 2 + [
        ["Fit", "n (noisy)"]] * 2
    assert tables[0][1].count("muted") == 4  # groningen's four coefficients


def test_long_statuses_are_footnotes(report: Path) -> None:
    section = _section(report, "a10_paid_work_compare")
    assert 'not estimable <sup class="note-mark">[1]</sup>' in section
    assert "[1] not estimable: noisy total -14 is too small for a proportion" in section
    assert "not estimable: noisy total -14 is too small for a proportion (need &gt;= 1)</td>" \
        not in section


def test_rho_loss_is_shown_as_rho(report: Path) -> None:
    section = _section(report, "a09_bridge_regression")
    assert '<span class="badge badge-loss">ρ 0.100 per member</span>' in section
    assert "ε 0" not in section
    spend = _section(report, "privacy-loss")
    row = re.search(r"9\. What goes with a higher bridging score</td>(.*?)</tr>", spend)
    assert row and row.group(1).count("ρ 0.100") == 5 and "ε" not in row.group(1)
    assert "ε 0.250" in _section(report, "a10_paid_work_compare")


@pytest.mark.parametrize("losses, shown", [
    ({"a": {"epsilon": 0.5, "rho": 0.0}, "b": {"epsilon": 0.5, "rho": 0.0}}, "ε 0.500 per member"),
    ({"a": {"epsilon": 0.0, "rho": 0.1}}, "ρ 0.100 per member"),
    ({"a": {"epsilon": 0.2, "rho": 0.1}, "b": {"epsilon": 0.3, "rho": 0.1}},
     "ε 0.200–0.300 + ρ 0.100 per member"),
    ({"a": {"epsilon": 0.29999999999991817}, "b": {"epsilon": 0.3}}, "ε 0.300 per member"),
    ({"a": {"epsilon": 0.0, "rho": 0.0}}, "ε 0 per member"),
    ({}, ""),
])
def test_loss_summary(losses: dict[str, dict[str, float]], shown: str) -> None:
    assert fmt_loss_range(losses) == shown


def test_report_is_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_report({"analyses": []}, tmp_path / "r.html")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


# --------------------------------------------------------------------------- languages, members


def test_dutch_report(results: dict[str, Any], tmp_path: Path) -> None:
    path = write_report(results, tmp_path / "nl.html", lang="nl")
    text = path.read_text(encoding="utf-8")
    assert '<html lang="nl">' in text and "23 november 2026, 10:00 UTC" in text
    assert "Verbruikt privacyverlies" in text and "Samenvatting voor coördinatoren" in text
    plots = assert_renders_in_chromium(path, ARTIFACTS / "report-nl.png")
    assert plots == list(iter_plot_keys(results))


def test_summary_first_per_audience(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    first = text.index('<section class="analysis"')
    assert text.index('id="summary-coordinator"') < first
    assert text.index('id="summary-researcher"') < first


def _demo_like(results: dict[str, Any]) -> dict[str, Any]:
    """The fixture with the issue's confusing figures: a goals mean of -21.6 with an SD of 0
    (clip [0, 30]), a goals mean whose interval is wider than 0-30, and a share whose
    interval is wider than 0-100 %."""
    doc = copy.deepcopy(results)
    rows = [{"member": m, "estimate": e, "se": s, "ci_low": e - 1.96 * s,
             "ci_high": e + 1.96 * s, "n": 100.0, "sd": sd, "status": "ok"}
            for m, e, s, sd in (("amsterdam", -21.6, 4.0, 0.0), ("rotterdam", 12.0, 8.0, None),
                                ("utrecht", 3.1, 0.5, 2.0), ("NETWORK", 2.9, 0.3, 2.1))]
    doc["analyses"].append({"id": "a04_goals", "title": "Goals achieved per participant",
                            "audience": "coordinator", "kind": "mean",
                            "spec": {"clip": [0, 30]},
                            "tables": [{"name": "mean", "columns": list(rows[0]),
                                        "rows": rows}],
                            "plots": [{"kind": "member_vs_network", "table": 0}]})
    shares = [{"member": m, "estimate": e, "se": s, "ci_low": e - 1.96 * s,
               "ci_high": e + 1.96 * s, "n": 100.0, "status": "ok"}
              for m, e, s in (("rotterdam", 0.4, 0.45), ("utrecht", 0.3, 0.05),
                              ("NETWORK", 0.35, 0.03))]
    doc["analyses"].append({"id": "a05_paid", "title": "Share in paid work",
                            "audience": "coordinator", "kind": "proportion",
                            "tables": [{"name": "proportion", "columns": list(shares[0]),
                                        "rows": shares}],
                            "plots": [{"kind": "member_vs_network", "table": 0}]})
    return doc


def test_too_uncertain_and_impossible_values(results: dict[str, Any], tmp_path: Path) -> None:
    doc = _demo_like(results)
    text = write_report(doc, tmp_path / "r.html").read_text(encoding="utf-8")
    section = text[text.index('id="a04_goals"'):]
    section = section[:section.index("</section>")]
    assert "outside the possible range [0, 30]" in section  # the table says so
    assert "-21.6" in section  # and keeps the raw value
    assert "wider than the whole possible range [0, 30]" in section  # rotterdam's 12.0
    assert "An SD of 0 comes from noise" in section
    member = write_member_report(doc, "rotterdam", "en", tmp_path / "m.html")
    findings = _findings(member.read_text(encoding="utf-8"))
    assert findings["Goals achieved per participant"] == (
        "At your organisation: too uncertain to show; in the network: 2.9.")
    assert findings["Share in paid work"] == (
        "At your organisation: too uncertain to show; in the network: 35%.")


def _findings(html: str) -> dict[str, str]:
    """The member report's findings: title -> sentence (HTML entities undone)."""
    import html as html_module

    return {html_module.unescape(title): html_module.unescape(text) for title, text
            in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", html)}


def test_report_of_the_standard_study_is_under_1_mb(tmp_path: Path) -> None:
    from tests.fixtures.study_results import standard_study_results

    path = write_report(standard_study_results(), tmp_path / "r.html")
    print(f"standard study report: {path.stat().st_size:,} bytes")
    assert path.stat().st_size <= 1_000_000


def _pages(pdf: Path) -> int:
    """Page count by pdfinfo when installed, else from the PDF's page objects."""
    import shutil
    import subprocess

    if shutil.which("pdfinfo"):
        out = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout
        return int(re.search(r"Pages:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    return len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))


def _others_changed(results: dict[str, Any], member: str) -> dict[str, Any]:
    """The document with every other member's figures, statuses and budget changed (the
    member's own rows and the NETWORK rows as they were)."""
    doc = copy.deepcopy(results)
    for analysis in doc["analyses"]:
        for table in analysis["tables"]:
            for row in table["rows"]:
                if row.get("member") in (member, "NETWORK"):
                    continue
                for key in ("estimate", "se", "ci_low", "ci_high", "n", "sd"):
                    if isinstance(row.get(key), float):
                        row[key] = row[key] * 1.37 + 0.011
                row["status"] = "too_few_records" if row.get("status") == "ok" else "ok"
        for fit in (analysis.get("regression") or {}).values():
            fit["n"] = 1.0
    for entry in doc["budget"]:
        if entry["member"] != member:
            entry["epsilon_study"] += 0.5
    return doc


@pytest.mark.parametrize("lang", ["nl", "en"])
def test_member_report(results: dict[str, Any], tmp_path: Path, lang: str) -> None:
    from tests.integration.chromium import require_chromium

    require_chromium()
    member = "groningen"  # the smallest member: not estimable in a02, a regression warning
    html = write_member_report(results, member, lang, tmp_path, pdf=True)
    text = html.read_text(encoding="utf-8")
    others = [m for m in results["members"] if m != member]
    assert not [m for m in others if m in text]
    # no other member's figure: the report does not change when all of them do
    changed = write_member_report(_others_changed(results, member), member, lang,
                                  tmp_path / "changed.html")
    assert changed.read_text(encoding="utf-8") == text
    findings = _findings(text)
    if lang == "nl":
        assert "Wat de privacyruis voor u betekent" in text
        assert findings["Mentoring sessions per participant"] == (
            "Er is geen betrouwbaar cijfer voor uw organisatie: te weinig records. "
            "In het netwerk: 11,8.")
    else:
        assert findings["Mentoring sessions per participant"] == (
            "There is no reliable figure for your organisation: too few records. "
            "In the network: 11.8.")
    plots = assert_renders_in_chromium(html, ARTIFACTS / f"member-report-{lang}.png")
    assert plots
    pdf = html.with_suffix(".pdf")
    assert pdf.exists() and 2 <= _pages(pdf) <= 4, _pages(pdf)
    (ARTIFACTS / f"member-report-{lang}.pdf").write_bytes(pdf.read_bytes())


def test_dutch_member_report_speaks_dutch(results: dict[str, Any], tmp_path: Path) -> None:
    """Sentences, headings and numbers in Dutch, as in the issue's example sentence."""
    doc = copy.deepcopy(results)
    change = next(a for a in doc["analyses"] if a["id"] == "a06_bridge_change")
    overall = change["tables"][1]["rows"]
    for row, estimate in zip((r for r in overall if r["member"] in ("utrecht", "NETWORK")),
                             (6.7, 7.1), strict=True):
        row.update(estimate=estimate, ci_low=estimate - 1.0, ci_high=estimate + 1.0)
    text = write_member_report(doc, "utrecht", "nl", tmp_path).read_text(encoding="utf-8")
    findings = _findings(text)
    assert findings["Change in bridging score (start to follow-up)"] == (
        "Bij uw organisatie steeg dit gemiddeld met 6,7; in het netwerk met 7,1.")
    assert findings["Who takes part: age bands"].startswith("Grootste groep bij uw organisatie")
    assert findings["Mentoring sessions per participant"].startswith("Bij uw organisatie: ")
    assert "Resultaten voor utrecht" in text and "Uw cijfers naast die van het netwerk" in text
    assert "23 november 2026" in text and "privacybudget" in text
    for english in ("At your organisation", "in the network", "Results for", "per member"):
        assert english not in text, english


def test_member_report_uses_a_members_own_catalogue(results: dict[str, Any], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """BRIDGESTAT_LOCALE_DIR reaches the templates as well as the sentences and titles."""
    own = tmp_path / "locale" / "nl" / "LC_MESSAGES"
    own.mkdir(parents=True)
    (own / "bridgestat.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Your figures beside the network"\nmsgstr "Onze cijfers en het netwerk"\n',
        encoding="utf-8")
    (own / "studies.po").write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        'msgid "Mentoring sessions per participant"\nmsgstr "Mentorgesprekken per deelnemer"\n',
        encoding="utf-8")
    write_member_report(results, "utrecht", "nl", tmp_path / "before.html")
    monkeypatch.setenv("BRIDGESTAT_LOCALE_DIR", str(tmp_path / "locale"))
    text = write_member_report(results, "utrecht", "nl", tmp_path / "m.html").read_text(
        encoding="utf-8")
    assert "Onze cijfers en het netwerk" in text  # a template text, from the member's own
    assert "<dt>Mentorgesprekken per deelnemer</dt>" in text  # a study title
    assert "Wat de privacyruis voor u betekent" in text  # the package's fills in the rest


def test_meta_analysis_shows_the_tau2_interval(tmp_path: Path) -> None:
    from bridgestat.coordinator.statistics.meta import meta_analysis

    meta = meta_analysis([1.0, 2.0, 0.2, 1.6], [0.1, 0.2, 0.1, 0.3],
                         labels=["a", "b", "c", "d"]).to_dict()
    assert meta["tau2_ci"] is not None
    doc = {"analyses": [{"id": "x", "meta": [{**meta, "label": "change"}],
                         "plots": [{"kind": "forest"}]}]}
    text = write_report(doc, tmp_path / "r.html").read_text(encoding="utf-8")
    low, high = (fmt_number(v) for v in meta["tau2_ci"])
    assert (f"change: between-member variance τ² = {fmt_number(meta['tau2'])}, 95% CI "
            f"[{low}, {high}] (Q-profile)") in text
    older = {"analyses": [{"id": "x", "meta": [{**meta, "tau2_ci": None}]}]}
    assert "no interval in these results" in write_report(
        older, tmp_path / "o.html").read_text(encoding="utf-8")


def test_a_flagged_d_z_is_noted(tmp_path: Path) -> None:
    flag = "flagged: SD not well determined: DP noise in the variance is 0.62 of ..."
    rows = [{"member": "a", "estimate": 1.0, "se": 0.5, "d_z": 0.4, "d_z_status": flag,
             "status": "ok"},
            {"member": "b", "estimate": 1.0, "se": 0.5, "d_z": 0.4, "d_z_status": "ok",
             "status": "ok"},
            {"member": "NETWORK", "estimate": 1.0, "se": 0.3, "d_z": 0.4, "d_z_status": flag,
             "status": "ok"}]
    doc = {"analyses": [{"id": "x", "tables": [{"name": "change", "rows": rows}]}]}
    text = write_report(doc, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "The network&#x27;s Cohen&#x27;s d_z is flagged" in text
    assert "1 member&#x27;s d_z is flagged" in text
    assert "SD not well determined" in text  # the status itself, in the table's notes


def test_confirmatory_analyses_show_adjusted_beside_raw_p(tmp_path: Path) -> None:
    tested = [{"id": "x", "estimate": 2.0, "se": 0.8, "pvalue": 0.0124, "adjusted": 0.0248,
               "status": "ok"},
              {"id": "y", "estimate": None, "se": None, "pvalue": None, "adjusted": None,
               "status": "NETWORK not estimable"}]
    doc = {"analyses": [{"id": "x", "title": "Bridge change"}, {"id": "y"}],
           "multiplicity": {"rule": "holm", "null": 0.0, "analyses": tested}}
    text = write_report(doc, tmp_path / "r.html").read_text(encoding="utf-8")
    section = text.split('id="multiplicity"')[1].split("</section>")[0]
    assert "Confirmatory analyses: adjusted p-values" in section
    assert "p adjusted (Holm (family-wise error rate))" in section
    assert "Bridge change" in section and "0.012" in section and "0.025" in section
    assert "NETWORK not estimable" in section
    dutch = write_report(doc, tmp_path / "nl.html", lang="nl").read_text(encoding="utf-8")
    assert "gecorrigeerde p-waarden" in dutch
    with pytest.raises(ReportError, match=r"multiplicity"):
        write_report({**doc, "multiplicity": {"rule": "holm", "analyses": [{"pvalue": 0.1}]}},
                     tmp_path / "bad.html")
