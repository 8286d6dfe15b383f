"""The report shows a mean's clip counts: table columns and a note, in English and Dutch."""

from __future__ import annotations

from typing import Any

from bridgestat.coordinator.report.html_tables import table_html
from bridgestat.coordinator.report.i18n import Translator
from bridgestat.coordinator.report.study_report import clip_notes

COLUMNS = ["member", "arm", "estimate", "se", "ci_low", "ci_high", "n", "loss", "status",
           "clipped_below", "clipped_below_se", "clipped_above", "clipped_above_se",
           "clipped_share"]


def _row(member: str, below: float, above: float, n: float) -> dict[str, Any]:
    return {"member": member, "arm": "comparison", "estimate": 17.0, "se": 0.6,
            "ci_low": 15.8, "ci_high": 18.2, "n": n, "loss": 1.0, "status": "ok",
            "clipped_below": below, "clipped_below_se": 28.3, "clipped_above": above,
            "clipped_above_se": 28.3, "clipped_share": (below + above) / n}


ANALYSIS = {"id": "a1", "tables": [{"name": "mean", "columns": COLUMNS, "rows": [
    _row("member-01", 80.0, 60.0, 400.0), _row("NETWORK", 150.0, 90.0, 800.0)]}]}


def test_the_note_names_the_networks_clipped_counts_and_group() -> None:
    [note] = clip_notes(ANALYSIS, Translator("en"))
    assert note.startswith("Clip bounds (arm comparison): about 150 values (SE 28.3) were cut "
                           "below and 90.0 (SE 28.3) above, 30")
    [dutch] = clip_notes(ANALYSIS, Translator("nl"))
    assert dutch.startswith("Afkapgrenzen (arm comparison): ongeveer 150 waarden")


def test_a_table_without_clip_counts_has_no_note() -> None:
    rows = [{k: v for k, v in r.items() if not k.startswith("clipped")}
            for r in ANALYSIS["tables"][0]["rows"]]  # type: ignore[index]
    assert clip_notes({"tables": [{"columns": COLUMNS[:9], "rows": rows}]},
                      Translator("en")) == []


def test_the_table_heads_the_clipped_columns_and_keeps_arm_as_the_label() -> None:
    page = table_html(ANALYSIS["tables"][0], lang="nl")  # type: ignore[index]
    assert "Afgekapt onder (met ruis)" in page and "Aandeel afgekapt" in page
    assert page.index("Arm") < page.index("Afgekapt onder")
