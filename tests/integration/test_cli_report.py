"""`bridgestat report`: the network's report and a member's, in both languages, from a saved
results.json (the fixture document); a bad member or results file exits 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bridgestat.coordinator.demo import local
from tests.fixtures.study_results import MEMBERS, example_results


def _bridgestat(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*local.coordinator_command(), "report", *map(str, args)],
                          capture_output=True, text=True, timeout=240, check=False)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "results.json"
    doc = example_results()
    doc["analyses"][2]["column_bounds"] = [0, 100]  # as a study run saves it
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("lang", ["en", "nl"])
def test_the_network_report(results: Path, lang: str) -> None:
    out = results.parent / f"report-{lang}.html"
    done = _bridgestat(results, "--lang", lang, "--out", out)
    assert done.returncode == 0, done.stderr
    html = out.read_text(encoding="utf-8")
    assert f'lang="{lang}"' in html and "Bridging capital after mentoring" in html


@pytest.mark.parametrize("lang", ["en", "nl"])
def test_a_members_report(results: Path, lang: str) -> None:
    done = _bridgestat(results, "--member", MEMBERS[0], "--lang", lang)
    assert done.returncode == 0, done.stderr
    page = results.parent / f"member-{MEMBERS[0]}.html"
    assert str(page) in done.stdout
    html = page.read_text(encoding="utf-8")
    assert f'lang="{lang}"' in html and MEMBERS[0] in html


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs chromium")
def test_a_members_report_as_pdf(results: Path) -> None:
    done = _bridgestat(results, "--member", MEMBERS[1], "--pdf")
    assert done.returncode == 0, done.stderr
    assert (results.parent / f"member-{MEMBERS[1]}.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize(("args", "named"), [
    (("--member", "atlantis"), "no member 'atlantis'"),
    (("--pdf",), "--pdf needs --member"),
    (("--lang", "fr"), "invalid choice: 'fr'"),
])
def test_bad_requests_exit_2(results: Path, args: tuple[str, ...], named: str) -> None:
    done = _bridgestat(results, *args)
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr


def test_a_bad_results_file_exits_2_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    doc = example_results()
    doc["analyses"][0]["column_bounds"] = [1]
    path.write_text(json.dumps(doc), encoding="utf-8")
    done = _bridgestat(path)
    assert done.returncode == 2
    assert "results.json" in done.stderr and "column_bounds" in done.stderr
