"""Open an HTML report in headless Chromium and check it renders cleanly (shared by tests).

The report must render with no console error or warning, no page error, no request for
anything but itself and data: URIs, and every plot image decoded (naturalWidth > 0) and laid
out. Chromium is Debian's /usr/bin/chromium driven by Playwright; the tests that need it skip
without it, except in CI, where its absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def require_chromium() -> None:
    """Skip without Chromium, except in CI, where its absence is a failure."""
    if CHROMIUM.exists():
        return
    message = (f"{CHROMIUM} not found; run scripts/ensure-chromium "
               "(Debian: apt-get install chromium)")
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {message}")
    pytest.skip(message)


def assert_renders_in_chromium(report: Path, screenshot: Path) -> list[str]:
    """Load `report` in Chromium, check it renders cleanly, save a full-page screenshot.

    Returns the data-plot keys of the plot images in page order, for the caller to compare
    with what the results document asks for.
    """
    require_chromium()
    from playwright.sync_api import sync_playwright  # dev dependency; only these tests need it

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
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert problems == [] and outside == []
    assert all(done and natural > 0 and shown > 0 for _, done, natural, shown in sizes), sizes
    assert screenshot.stat().st_size > 10_000
    return [str(key) for key, *_ in sizes]


def _local_only(route: Any, report: Path, outside: list[str]) -> None:
    """Let the report itself load; record and abort anything else it would fetch."""
    url = route.request.url
    if url == report.as_uri() or url.startswith("data:"):
        route.continue_()
    else:
        outside.append(url)
        route.abort()
