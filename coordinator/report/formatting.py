"""How the report writes numbers, intervals, privacy losses and column names for readers.

Shared by the plots and the HTML tables so a number reads the same in a caption, a chart label
and a table cell: three significant digits (DP noise makes more digits meaningless), whole
numbers from 100 on, '—' for anything missing or not finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bridgestat.coordinator.report import i18n
from bridgestat.coordinator.report.i18n import N_
from bridgestat.coordinator.studies.results_doc import finite

COLUMN_NAMES = {
    "member": N_("Member"), "estimate": N_("Estimate"), "se": N_("SE"), "n": N_("n (noisy)"),
    "status": N_("Status"), "category": N_("Category"), "group": N_("Group"), "term": N_("Term"),
    "from": N_("From"), "to": N_("To"), "arm": N_("Arm"), "period": N_("Period"), "measure": N_("Measure"),
    "transition": N_("Transition"), "sd": N_("SD"), "se_sampling": N_("SE (sampling)"),
    "se_dp": N_("SE (DP noise)"), "se_ols": N_("SE (OLS, no DP noise)"), "loss": N_("Loss"),
    "d_z": N_("Cohen's d_z"), "d_z_se": N_("d_z SE"), "d_z_status": N_("d_z status"),
    "clipped_below": N_("Clipped below (noisy)"), "clipped_above": N_("Clipped above (noisy)"),
    "clipped_below_se": N_("Clipped below SE"), "clipped_above_se": N_("Clipped above SE"),
    "clipped_share": N_("Share clipped"),
}
"""Readable headings of the result columns the study writes; others are made readable."""


def readable(key: Any) -> str:
    """A snake_case key or status as words: 'too_few_records' -> 'too few records'.

    Text that already has spaces is a sentence (a status with a reason, which may quote
    names such as H_y) and stays as it is.
    """
    text = str(key)
    return text if " " in text.strip() else text.replace("_", " ")


def status_head(status: str) -> str:
    """The gist of a status, without its reason, for places too narrow for the whole text.

    'not estimable: noisy total -14 ...' -> 'not estimable';
    'no comparison arm (noisy n < 20 or none)' -> 'no comparison arm'.
    """
    cuts = [i for i in (status.find(":"), status.find(" (")) if i > 0]
    return status[:min(cuts)].strip() if cuts else status


def column_name(column: str) -> str:
    """A column's heading: the known one, else the key made readable and capitalised."""
    return COLUMN_NAMES.get(column, readable(column).capitalize())


def fmt_number(value: Any, lang: str = "en") -> str:
    """Three significant digits (whole numbers from 100 on, ints as ints), '—' if missing."""
    return i18n.fmt_number(value, lang)


def fmt_interval(low: Any, high: Any, lang: str = "en") -> str:
    """'[low, high]' with both ends formatted ('[low; high]' in Dutch), '—' if either is missing."""
    return i18n.Translator(lang).interval(low, high)


def fmt_pvalue(p: Any) -> str:
    """'p = 0.118', or 'p < 0.001' below that."""
    x = finite(p)
    if x is None:
        return "p = —"
    return "p < 0.001" if x < 0.001 else f"p = {x:.3f}"


def fmt_percent(share: Any, lang: str = "en") -> str:
    """A share in [0, 1] as a percentage with three significant digits."""
    return i18n.fmt_percent(share, lang)


def is_ok(status: Any) -> bool:
    """Whether a row's status means a usable estimate: none, 'ok' or 'ok (how it was made)'."""
    return status is None or str(status) == "ok" or str(status).startswith("ok ")


def fmt_loss(loss: Mapping[str, Any]) -> str:
    """One member's loss as 'ε 0.1', 'ρ 0.1' or 'ε 0.1 + ρ 0.05' (regressions spend ρ).

    Shows each kind that is positive, so a zCDP-only analysis does not read 'ε 0'; 'ε 0' only
    when nothing was spent at all.
    """
    return _loss_text([loss])


def fmt_loss_range(losses: Mapping[str, Mapping[str, Any]], lang: str = "en") -> str:
    """All members' losses: 'ε 0.5 per member' when equal, else 'ε 0.2–0.5 per member'."""
    text = _loss_text(list(losses.values()))
    return i18n.Translator(lang)("{loss} per member", loss=text) if text else ""


def _loss_text(losses: list[Mapping[str, Any]]) -> str:
    """'ε a–b + ρ c–d' over the given losses, each kind only if some member spent it."""
    parts = []
    for key, symbol in (("epsilon", "ε"), ("rho", "ρ")):
        values = sorted(x for x in (finite(loss.get(key)) for loss in losses) if x is not None)
        if values and values[-1] > 0:
            parts.append(f"{symbol} {_span(values[0], values[-1])}")
    if parts:
        return " + ".join(parts)
    spent = any(finite(loss.get(k)) is not None for loss in losses for k in ("epsilon", "rho"))
    return "ε 0" if spent else ""


def _span(low: float, high: float) -> str:
    """'0.3' for one value (float noise such as 0.29999999999991817 ignored), else '0.2–0.5'."""
    if math.isclose(low, high, rel_tol=1e-9, abs_tol=1e-12):
        return fmt_number(high)
    return f"{fmt_number(low)}–{fmt_number(high)}"
