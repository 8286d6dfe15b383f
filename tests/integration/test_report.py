"""The HTML study report: structure, self-containment, errors, and a real render in Chromium."""

from __future__ import annotations

import copy
import json
import os
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bridgestat.coordinator.report import (
    ReportError,
    fmt_number,
    iter_plot_keys,
    load_results,
    write_report,
)
from tests.fixtures.study_results import example_results

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


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


def test_output_is_reproducible(results: dict[str, Any], report: Path, tmp_path: Path) -> None:
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
    from bridgestat.coordinator.meta import meta_analysis

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


def _require_chromium() -> None:
    """Skip without Chromium, except in CI, where its absence is a failure."""
    if CHROMIUM.exists():
        return
    message = (f"{CHROMIUM} not found; run scripts/ensure-chromium "
               "(Debian: apt-get install chromium)")
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)


def test_renders_in_chromium(results: dict[str, Any], report: Path) -> None:
    _require_chromium()
    from playwright.sync_api import sync_playwright  # dev dependency; only this test needs it

    problems: list[str] = []
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.route("**/*", lambda route: _local_only(route, report, outside))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(report.as_uri(), wait_until="load")
            sizes = page.eval_on_selector_all(
                "img.plot", "els => els.map(e => [e.dataset.plot, e.complete, e.naturalWidth,"
                " e.getBoundingClientRect().width])")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == [] and outside == []
    assert len(sizes) == len(list(iter_plot_keys(results)))
    assert all(done and natural > 0 and shown > 0 for _, done, natural, shown in sizes), sizes
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def _local_only(route: Any, report: Path, outside: list[str]) -> None:
    """Let the report itself load; record and abort anything else it would fetch."""
    url = route.request.url
    if url == report.as_uri() or url.startswith("data:"):
        route.continue_()
    else:
        outside.append(url)
        route.abort()
