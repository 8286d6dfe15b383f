"""The workspace's live progress table speaks the reader's language."""

from __future__ import annotations

from pathlib import Path

from bridgestat.coordinator.report.i18n import Translator
from bridgestat.coordinator.web.runs import PROGRESS_WORDS, Run, Step, progress_words


def test_every_progress_word_is_dutch_in_dutch_and_itself_in_english() -> None:
    dutch, english = progress_words(Translator("nl")), progress_words(Translator("en"))
    assert dutch["running"] == "bezig" and dutch["done"] == "klaar"
    assert english["done"] == "done" and english["running"] == "running"
    assert {w for w in PROGRESS_WORDS if dutch[w] == english[w]} == {"ok"}


def test_a_run_reports_only_states_and_outcomes_the_words_cover(tmp_path: Path) -> None:
    run = Run("r1", "studies", tmp_path, "t", "u",
              [Step("a1", "A", state="running", members={"m1": "replayed"})], ("m1",))
    progress = run.progress()
    assert {s["state"] for s in progress["steps"]} <= set(PROGRESS_WORDS)
    assert {o for s in progress["steps"] for o in s["members"].values()} <= set(PROGRESS_WORDS)
