"""`bridgestat web` against real node processes over mutual TLS, driven in Debian's Chromium.

The workspace runs as the real command (a subprocess on a free loopback port); the browser
opens the printed URL with its token, looks at the members, runs a comparison from the
catalogue (the chart appears; the same confirmation submitted again charges the ledgers
once), downloads its table as CSV and Excel and reads them back, switches to Dutch, and runs
an uploaded study with live progress to its report. Requests without the token, or without
the CSRF token, are refused; a non-loopback address without TLS is refused at start-up.
Screenshots go to artifacts/web-*.png; page load times are printed (not asserted).
"""

from __future__ import annotations

import io
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.demo import local

from .chromium import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, require_chromium
from .conftest import LocalNetwork, local_network

STUDY = """\
name: web-test-study
title: Web test study
occasions: {month_12: {month: 12, window: 3}}
analyses:
  - {id: households, statistic: histogram, table: participant, column: household_type,
     epsilon: 0.3, audience: coordinator, title: Household type}
  - {id: bridge_change, statistic: paired_change, table: assessment, column: bridge_total,
     occasion: month_12, clip: [-40, 40], epsilon: 0.5, audience: researcher,
     title: Bridge change}
"""


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    root = tmp_path_factory.mktemp("webnet")
    with local_network(root, members=3, seed=21, total_epsilon=20.0, max_per_query=2.0,
                       sizes=[300, 250, 200]) as net:
        yield net


@pytest.fixture(scope="module")
def workspace(network: LocalNetwork, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[str]:
    """The URL (with token) that `bridgestat web` printed."""
    data = tmp_path_factory.mktemp("webdata")
    process = subprocess.Popen(
        [*local.coordinator_command(), "web", "--network", str(network.network), "--port", "0",
         "--data-dir", str(data), "--user", "test-coordinator"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = _printed_url(process)
        _wait_answering(url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


def _printed_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        found = re.search(r"(https?://\S+\?token=\S+)", line)
        if found:
            return found.group(1)
    raise AssertionError(f"bridgestat web printed no URL: {''.join(seen)}")


def _wait_answering(url: str) -> None:
    base = url.split("/?")[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/members", timeout=5)
        except urllib.error.HTTPError:
            return  # 401: it answers
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the workspace did not answer within 60 s")


def _status(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _spent(network: LocalNetwork) -> dict[str, float]:
    with Network.from_file(network.network) as net:
        return {m: float(i.budget.spent.epsilon) for m, i in net.node_infos().items()
                if not isinstance(i, Exception) and hasattr(i, "budget")}


# -- secure by default ------------------------------------------------------------------------


def test_requests_without_the_token_are_refused(workspace: str) -> None:
    base = workspace.split("/?token=")[0]
    for path in ("/", "/members", "/compare", "/studies", "/static/workspace.js",
                 "/compare?entry=kind:mean"):
        assert _status(base + path) == 401, path
        assert _status(f"{base}{path}{'&' if '?' in path else '?'}token=wrong") == 401, path
    assert _status(base + "/compare/run", b"run_id=abc&csrf=x") == 401
    # with the session the token opens, a POST still needs the session's CSRF token
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(workspace, timeout=30) as reply:
        assert reply.status == 200 and reply.url.endswith("/members")
        assert "token=" not in reply.url  # the token leaves the address bar
    refused = urllib.request.Request(base + "/compare/run", data=b"run_id=abc&csrf=forged")
    with pytest.raises(urllib.error.HTTPError) as caught:
        opener.open(refused, timeout=30)
    assert caught.value.code == 403


def test_non_loopback_address_without_tls_is_refused(network: LocalNetwork) -> None:
    done = subprocess.run([*local.coordinator_command(), "web", "--network",
                           str(network.network), "--host", "0.0.0.0", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--host 0.0.0.0" in done.stderr and "TLS" in done.stderr and "--certfile" in \
        done.stderr


# -- in the browser ---------------------------------------------------------------------------


def test_workspace_in_chromium(workspace: str, network: LocalNetwork, tmp_path: Path) -> None:
    require_chromium()
    from playwright.sync_api import sync_playwright

    base = workspace.split("/?token=")[0]
    problems: list[str] = []
    outside: list[str] = []
    loads: dict[str, float] = {}
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900},
                                          accept_downloads=True)
            page = context.new_page()
            page.route("**/*", lambda route: _same_origin(route, base, outside))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            def visit(name: str, url: str) -> None:
                start = time.perf_counter()
                page.goto(url, wait_until="load")
                loads[name] = time.perf_counter() - start

            # Members: every member, reachable, its budget as numbers and a bar
            visit("members (opens the session)", workspace)
            assert page.url == base + "/members"
            rows = page.locator("tr[data-member]")
            assert rows.count() == 3
            assert page.locator("tr.up .bar").count() == 3
            assert "member-01" in page.inner_text("table.members")
            page.screenshot(path=str(ARTIFACTS / "web-members.png"), full_page=True)

            # Compare: the standard Bridge change, cost per member before confirming
            visit("compare form", base + "/compare?entry=std:a06_bridge_change")
            assert page.input_value("#f-clip") == "-40, 40"
            assert page.locator("#f-column option[value=bridge_total]").count() == 1
            page.screenshot(path=str(ARTIFACTS / "web-compare-form.png"), full_page=True)
            before = _spent(network)
            page.click("#plan")
            page.wait_for_selector("#confirm")
            assert "0.800" in page.inner_text("table.costs")  # 0.6 + the share's 0.2
            assert _spent(network) == before  # planning spends nothing
            page.screenshot(path=str(ARTIFACTS / "web-confirm.png"), full_page=True)
            run_id = page.input_value("input[name=run_id]")
            csrf = page.input_value("input[name=csrf]")
            start = time.perf_counter()
            page.click("#confirm")
            page.wait_for_selector("img.plot")
            loads["comparison run to chart"] = time.perf_counter() - start
            assert page.url == f"{base}/compare/{run_id}"
            assert page.locator("img.plot").first.evaluate("e => e.naturalWidth") > 0
            page.screenshot(path=str(ARTIFACTS / "web-compare-result.png"), full_page=True)
            after = _spent(network)
            # the same confirmation again (a double click, a resubmitted form), and a reload
            again = page.request.post(base + "/compare/run",
                                      form={"run_id": run_id, "csrf": csrf})
            assert again.ok and again.url == f"{base}/compare/{run_id}"
            page.reload(wait_until="load")
            assert _spent(network) == after
            for member, spent in after.items():
                assert spent == pytest.approx(before[member] + 0.8, abs=1e-9), member

            # Downloads open as tables
            with page.expect_download() as csv_download:
                page.click("#csv-0")
            frame = pd.read_csv(csv_download.value.path())
            assert {"member", "estimate", "ci_low", "ci_high"} <= set(frame.columns)
            assert "NETWORK" in set(frame.member)
            with page.expect_download() as xlsx_download:
                page.click("#xlsx")
            sheets = pd.read_excel(io.BytesIO(Path(xlsx_download.value.path()).read_bytes()),
                                   sheet_name=None)
            first = next(iter(sheets.values()))
            assert "NETWORK" in set(first.member) and "about" in sheets

            # The language switch
            page.click("#lang-nl")
            page.wait_for_load_state("load")
            assert page.inner_text("header nav").split()[:1] == ["Leden"]
            visit("compare form (nl)", base + "/compare?entry=kind:mean")
            assert "Leden vergelijken" in page.inner_text("h1")
            page.screenshot(path=str(ARTIFACTS / "web-compare-nl.png"), full_page=True)
            page.click("#lang-en")
            page.wait_for_load_state("load")

            # Studies: upload a study file, confirm, follow its progress, open its report
            study = tmp_path / "web-study.yaml"
            study.write_text(STUDY)
            visit("studies", base + "/studies")
            page.set_input_files("#upload", str(study))
            page.click("#plan-study")
            page.wait_for_selector("#confirm")
            page.click("#confirm")
            page.wait_for_selector("#progress")
            page.wait_for_selector("#open-report", timeout=120_000)
            assert "finished" in page.inner_text("#run-state")
            states = page.locator("#progress td.state").all_inner_texts()
            assert states and set(states) == {"done"}, states  # words from the catalogue
            page.screenshot(path=str(ARTIFACTS / "web-study-run.png"), full_page=True)
            start = time.perf_counter()
            page.click("#open-report")
            page.wait_for_load_state("load")
            loads["study report"] = time.perf_counter() - start
            assert page.locator("img.plot").count() >= 2
            visit("studies (listed)", base + "/studies")
            assert page.locator("table.runs tbody tr").count() == 1
            assert "Web test study" in page.inner_text("table.runs")
            page.screenshot(path=str(ARTIFACTS / "web-studies.png"), full_page=True)
        finally:
            browser.close()
    print("\npage load times (s): " + ", ".join(f"{k} {v:.3f}" for k, v in loads.items()))
    assert problems == [] and outside == []


def _same_origin(route: Any, base: str, outside: list[str]) -> None:
    """Let the workspace's own URLs and data: URIs load; record and abort anything else."""
    url = route.request.url
    if url.startswith((base, "data:")):
        route.continue_()
    else:
        outside.append(url)
        route.abort()
