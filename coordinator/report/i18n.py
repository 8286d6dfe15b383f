"""Languages of the reports: gettext catalogues, Babel number/date formats, Jinja2 templates.

Every text a reader sees is an English msgid looked up in a gettext catalogue
(`coordinator/locale/<lang>/LC_MESSAGES/bridgestat.po`). The `.po` file is the only source:
it is compiled with Babel in memory the first time a language is used (and cached for the
process), so there is no `.mo` file to build, ship or forget to rebuild, and a member who adds
or rewords a translation edits one text file and nothing else. A member may also keep its own
catalogue outside the package (`BRIDGESTAT_LOCALE_DIR=/etc/bridgestat/locale`, same layout):
its entries win, and the package's catalogue fills in the rest.

Numbers and dates are formatted for the language with Babel (CLDR data): 0,35 and
6 december 2026 in Dutch, 0.35 and 6 December 2026 in English. The Jinja2 environment
(autoescape on, the i18n extension, these formats as filters) is shared by the study report,
the member report and, later, the browser pages.
"""

from __future__ import annotations

import gettext
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, get_decimal_symbol

LANGUAGES = ("en", "nl")
"""Languages a report can be written in; English is the source language of the msgids."""

DOMAIN = "bridgestat"
STUDY_DOMAIN = "studies"
"""Catalogue of the texts of shipped study files (titles, chart labels): kept by hand, apart
from the code's catalogue that `pybabel update` rewrites; looked up after it."""
LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
LOCALE_ENV = "BRIDGESTAT_LOCALE_DIR"
"""Environment variable naming a member's own catalogue folder, layered over the package's."""

MISSING = "—"


class LanguageError(ValueError):
    """An unknown language code, or a catalogue that cannot be read (names the file)."""


def check_language(lang: str) -> str:
    """`lang` if it is one of LANGUAGES, else a LanguageError naming the choices."""
    if lang not in LANGUAGES:
        raise LanguageError(f"language {lang!r} is not available; choose one of "
                            f"{', '.join(LANGUAGES)}")
    return lang


def po_path(lang: str, base: Path = LOCALE_DIR, domain: str = DOMAIN) -> Path:
    """Where the catalogue `domain` of `lang` lives under `base`."""
    return base / lang / "LC_MESSAGES" / f"{domain}.po"


def compile_po(path: Path, lang: str) -> gettext.GNUTranslations:
    """A .po file compiled in memory with Babel (fuzzy entries left out, as msgfmt does)."""
    try:
        with path.open("rb") as handle:
            catalog = read_po(handle, locale=lang, domain=DOMAIN)
    except (OSError, ValueError) as exc:
        raise LanguageError(f"{path}: cannot read the translation catalogue: {exc}") from exc
    buffer = io.BytesIO()
    write_mo(buffer, catalog, use_fuzzy=False)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


@cache
def _translations(lang: str, extra: str) -> gettext.NullTranslations:
    """The package's catalogues for lang, under a member's own ones when `extra` names them.

    Lookup order: the member's bridgestat.po and studies.po, then the package's.
    """
    found: gettext.NullTranslations = gettext.NullTranslations()
    bases = [LOCALE_DIR] + ([Path(extra)] if extra else [])
    for base in bases:
        for domain in (STUDY_DOMAIN, DOMAIN):
            path = po_path(lang, base, domain)
            if path.exists():
                layer = compile_po(path, lang)
                layer.add_fallback(found)
                found = layer
    return found


def translations(lang: str) -> gettext.NullTranslations:
    """The gettext translations of a language (compiled from .po at first use, then cached)."""
    return _translations(check_language(lang), os.environ.get(LOCALE_ENV, ""))


# --------------------------------------------------------------------------- numbers and dates


def fmt_number(value: Any, lang: str = "en") -> str:
    """Three significant digits (whole numbers from 100 on, ints as ints), '—' if missing.

    DP noise makes more digits meaningless. Separators follow the language: 12,346 and
    0.500 in English, 12.346 and 0,500 in Dutch.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    x = float(value)
    if not math.isfinite(x):
        return MISSING
    if isinstance(value, int):
        return format_decimal(value, "#,##0", locale=lang)
    if x == 0:
        return "0"
    if abs(x) < 0.001:
        return f"{x:.2e}".replace(".", get_decimal_symbol(lang))
    if abs(x) >= 100:
        return format_decimal(x, "#,##0", locale=lang)
    rounded = float(f"{x:.3g}")
    if abs(rounded) >= 100:
        return format_decimal(rounded, "#,##0", locale=lang)
    decimals = max(0, 2 - math.floor(math.log10(abs(rounded))))
    return format_decimal(rounded, "0." + "0" * decimals if decimals else "0", locale=lang)


def fmt_fixed(value: Any, decimals: int, lang: str = "en") -> str:
    """A number with a fixed count of decimals (for sentences: 'rose by 6.7 points')."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return MISSING
    pattern = "#,##0." + "0" * decimals if decimals else "#,##0"
    return format_decimal(value, pattern, locale=lang)


def fmt_percent(share: Any, lang: str = "en", decimals: int | None = None) -> str:
    """A share in [0, 1] as a percentage: three significant digits, or fixed decimals."""
    if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share):
        return MISSING
    text = (fmt_number(100 * float(share), lang) if decimals is None
            else fmt_fixed(100 * float(share), decimals, lang))
    return f"{text}%"


def fmt_datetime(value: Any, lang: str = "en") -> str:
    """'23 November 2026, 10:00 UTC' (Dutch: '23 november 2026, 10:00 UTC') from ISO text."""
    if not isinstance(value, str):
        return MISSING
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return value
    offset = stamp.utcoffset()
    zone = " UTC" if offset is not None and not offset else ""
    return format_datetime(stamp, "d MMMM y, HH:mm", tzinfo=None, locale=lang) + zone


def fmt_date(value: date | datetime | str, lang: str = "en") -> str:
    """'6 December 2026' / '6 december 2026': the day a report was made, for its reader."""
    if isinstance(value, str):
        try:
            return format_date(datetime.fromisoformat(value), "d MMMM y", locale=lang)
        except ValueError:
            return value
    return format_date(value, "d MMMM y", locale=lang)


# --------------------------------------------------------------------------- translator


@dataclass(frozen=True)
class Translator:
    """One language's texts and formats, for Python code (templates get the same as filters)."""

    lang: str

    def __post_init__(self) -> None:
        """Refuse an unknown language early, naming the choices."""
        check_language(self.lang)

    def gettext(self, message: str) -> str:
        """The translation of an English msgid (the msgid itself when untranslated)."""
        return translations(self.lang).gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        """Singular or plural translation for count n."""
        return translations(self.lang).ngettext(singular, plural, n)

    def __call__(self, message: str, **values: Any) -> str:
        """Translate and fill in named values: t('{n} members', n='5')."""
        text = self.gettext(message)
        return text.format(**values) if values else text

    def number(self, value: Any) -> str:
        """`fmt_number` in this language."""
        return fmt_number(value, self.lang)

    def percent(self, share: Any, decimals: int | None = None) -> str:
        """`fmt_percent` in this language."""
        return fmt_percent(share, self.lang, decimals)

    def fixed(self, value: Any, decimals: int) -> str:
        """`fmt_fixed` in this language."""
        return fmt_fixed(value, decimals, self.lang)

    def label(self, value: Any) -> str:
        """A value from a results document (a category, a title) in this language: its
        translation when a catalogue has one, else readable ('single_parent' -> 'single
        parent'; text with spaces stays as it is)."""
        text = str(value)
        if not text:
            return text
        translated = self.gettext(text)
        if translated != text:
            return translated
        return text if " " in text.strip() else text.replace("_", " ")

    def plain(self, value: Any) -> str:
        """A number for a sentence: whole from 100 on, one decimal from 1 on ('rose by 6.7
        points'), else two decimals; '—' if missing."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            return MISSING
        size = abs(float(value))
        return self.fixed(value, 0 if size >= 100 else 1 if size >= 1 else 2)

    def bounds(self, low: float, high: float) -> str:
        """A possible range as written in a study file: '[0, 30]' (whole bounds stay whole)."""
        def whole(x: float) -> float | int:
            return int(x) if float(x).is_integer() else x
        return self.interval(whole(low), whole(high))

    def interval(self, low: Any, high: Any) -> str:
        """'[low, high]' ('[low; high]' in Dutch, where the comma is the decimal mark)."""
        if fmt_number(low) == MISSING or fmt_number(high) == MISSING:
            return MISSING
        separator = "; " if get_decimal_symbol(self.lang) == "," else ", "
        return f"[{self.number(low)}{separator}{self.number(high)}]"


# --------------------------------------------------------------------------- templates


def environment(lang: str) -> jinja2.Environment:
    """The Jinja2 environment of one language, shared by the reports and later the web pages.

    Autoescaped, with gettext from the language's catalogue (`{{ _("...") }}` and
    `{% trans %}`), the number/date formats as filters and `lang` as a global. One environment
    per language and catalogue folder (cached), so two languages never share filters or
    translations, and the templates use the same catalogue as `Translator` even when
    BRIDGESTAT_LOCALE_DIR changes while the process runs.
    """
    return _environment(check_language(lang), os.environ.get(LOCALE_ENV, ""))


@cache
def _environment(lang: str, extra: str) -> jinja2.Environment:
    """The environment of `lang` with the catalogue of `extra` layered over the package's."""
    t = Translator(lang)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(_translations(lang, extra), newstyle=True)  # type: ignore[attr-defined]
    env.filters.update(number=t.number, percent=t.percent, fixed=t.fixed,
                       datetime=lambda v: fmt_datetime(v, lang),
                       date=lambda v: fmt_date(v, lang))
    env.globals.update(lang=lang, interval=t.interval)
    return env


def render(template: str, lang: str, context: Mapping[str, Any]) -> str:
    """Render a template of TEMPLATE_DIR in a language."""
    return environment(check_language(lang)).get_template(template).render(**context)


def N_(message: str) -> str:
    """Mark a text for translation where it is defined; translate it where it is shown."""
    return message
