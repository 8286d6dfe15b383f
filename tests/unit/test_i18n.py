"""Languages: every msgid has a Dutch translation; numbers and dates per language."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from bridgestat.coordinator.report import i18n

COORDINATOR = Path(i18n.__file__).resolve().parent.parent
METHODS = [("**/templates/**.html", "jinja2"), ("**.py", "python")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None, "t": None}


def _msgids() -> set[str]:
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
            str(COORDINATOR), METHODS, keywords=KEYWORDS,
            options_map={"**/templates/**.html": {"trim_blocks": "true",
                                                   "lstrip_blocks": "true"}}):
        found.add(message[0] if isinstance(message, tuple) else message)
    return {m for m in found if m}


def test_extraction_finds_the_report_texts() -> None:
    ids = _msgids()
    assert "too uncertain to show" in ids and "Privacy loss spent" in ids
    assert "Results for %(member)s" in ids  # from the member template


def test_every_msgid_has_a_dutch_translation() -> None:
    with i18n.po_path("nl").open("rb") as handle:
        catalog = read_po(handle, locale="nl")
    missing = sorted(m for m in _msgids() if not catalog.get(m) or not catalog[m].string
                     or catalog[m].fuzzy)
    assert missing == [], f"add these to {i18n.po_path('nl')}: {missing}"


def test_dutch_translation_is_used() -> None:
    t = i18n.Translator("nl")
    assert t("too uncertain to show") == "te onzeker om te tonen"
    assert i18n.Translator("en")("too uncertain to show") == "too uncertain to show"


@pytest.mark.parametrize("value, en, nl", [
    (0.35, "0.350", "0,350"), (12345.6, "12,346", "12.346"), (-1.5, "-1.50", "-1,50"),
    (4e-5, "4.00e-05", "4,00e-05"), (12000, "12,000", "12.000"), (None, "—", "—"),
])
def test_numbers_per_language(value: float | None, en: str, nl: str) -> None:
    assert i18n.fmt_number(value, "en") == en
    assert i18n.fmt_number(value, "nl") == nl


def test_dates_percent_and_intervals_per_language() -> None:
    assert i18n.fmt_date(date(2026, 12, 6), "nl") == "6 december 2026"
    assert i18n.fmt_date(date(2026, 12, 6), "en") == "6 December 2026"
    assert i18n.fmt_datetime("2026-11-23T10:00:00Z", "nl") == "23 november 2026, 10:00 UTC"
    assert i18n.fmt_fixed(6.7, 1, "nl") == "6,7"
    assert i18n.fmt_percent(0.35, "nl", decimals=0) == "35%"
    assert i18n.Translator("nl").interval(0.1, 0.25) == "[0,100; 0,250]"
    assert i18n.Translator("en").interval(0.1, 0.25) == "[0.100, 0.250]"


def test_member_catalogue_is_layered_over_the_package(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    own = i18n.po_path("nl", tmp_path)
    own.parent.mkdir(parents=True)
    own.write_text('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                   'msgid "Contents"\nmsgstr "Inhoudsopgave"\n', encoding="utf-8")
    monkeypatch.setenv(i18n.LOCALE_ENV, str(tmp_path))
    t = i18n.Translator("nl")
    assert t("Contents") == "Inhoudsopgave"  # the member's own wording
    assert t("Analyses") == "Analyses" and t("Share") == "Aandeel"  # the package's


def test_unknown_language_is_refused() -> None:
    with pytest.raises(i18n.LanguageError, match="'fr'.*en, nl"):
        i18n.Translator("fr")


def test_study_texts_come_from_their_own_catalogue(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    t = i18n.Translator("nl")
    assert t.label("Who do we serve: household type") == "Wie bedienen we: huishoudtype"
    assert t.label("single_parent") == "alleenstaande ouder"
    assert t.label("a_value_nobody_translated") == "a value nobody translated"
    assert i18n.Translator("en").label("single_parent") == "single parent"
    own = i18n.po_path("nl", tmp_path, i18n.STUDY_DOMAIN)
    own.parent.mkdir(parents=True)
    own.write_text('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
                   'msgid "single_parent"\nmsgstr "eenoudergezin"\n', encoding="utf-8")
    monkeypatch.setenv(i18n.LOCALE_ENV, str(tmp_path))
    assert i18n.Translator("nl").label("single_parent") == "eenoudergezin"
    assert i18n.Translator("nl").label("single") == "alleenstaand"  # the package's


def test_numbers_for_sentences() -> None:
    nl = i18n.Translator("nl")
    assert [nl.plain(x) for x in (6.7, 7.14, 0.053, 1234.5, None)] == [
        "6,7", "7,1", "0,05", "1.234", "—"]
    assert nl.bounds(0.0, 30.0) == "[0; 30]" and nl.bounds(-0.5, 1.0) == "[-0,500; 1]"
