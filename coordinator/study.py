"""The first effect study (analyses 1, 2, 5 and 6 of the shared data matrix)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from bridgestat.coordinator.api import NETWORK, Network
from bridgestat.coordinator.query import Occasion

MONTH_12 = Occasion.month(12, 3)  # the occasion nearest month 12 within 9-15
PAID = ("paid_with_support", "paid_part_time", "paid_full_time", "self_employed")
ARRANGED = ("payment_plans", "debt_assistance", "statutory_debt_scheme", "guardianship")
PROFILE = ("household_type", "education_level", "main_income_source_t0", "age_band",
           "referral_route")
STEPS = ("housing_step", "family_care_step", "health_step", "social_network_step", "debt_step",
         "savings_step", "education_step", "employment_step", "earnings_step")
EPSILON = 0.25
# Public clipping bounds for the 12-month Bridge change, chosen a priori (a change beyond
# 40 points in a year is rare); tighter than the schema's [-100, 100], so far less noise.
CHANGE_CLIP = (-40.0, 40.0)
STEP_CHANGE_CLIP = (-4.0, 4.0)  # the full range of a 1-5 step change

Printer = Callable[[str], None]


def _show(title: str, frame: pd.DataFrame, columns: list[str], out: Printer) -> None:
    shown = frame[[c for c in columns if c in frame.columns]]
    out(f"\n== {title}\n" + shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def who_we_serve(net: Network, out: Printer) -> None:
    """Analysis 1: shares of the intake profile, each member beside the network."""
    for column in PROFILE:
        frame = net.histogram("participant", column, epsilon=EPSILON)
        wide = frame.pivot_table(index="member", columns="category", values="estimate",
                                 sort=False)
        out(f"\n== 1. Who do we serve: {column} (share)\n"
            + wide.to_string(float_format=lambda v: f"{v:.2f}"))


def baseline_profile(net: Network, out: Printer) -> None:
    """Analysis 2: mean intake step per Bridge sub-pillar and the share at step <= 2."""
    rows = []
    for step in STEPS:
        mean = net.mean("assessment", step, epsilon=EPSILON / 2)
        low = net.proportion("assessment", step, ["[1, 3)"], bin_edges=[3], epsilon=EPSILON / 2)
        m, s = mean[mean.member == NETWORK].iloc[0], low[low.member == NETWORK].iloc[0]
        rows.append({"sub_pillar": step, "mean_step": m.estimate, "mean_ci_low": m.ci_low,
                     "mean_ci_high": m.ci_high, "share_step_le_2": s.estimate,
                     "share_ci_low": s.ci_low, "share_ci_high": s.ci_high})
    _show("2. Baseline Bridge profile (network, at intake)", pd.DataFrame(rows),
          list(rows[0]), out)


def outcomes_12m(net: Network, out: Printer) -> None:
    """Analysis 5: outcome shares at 12 months, each member beside the network."""
    outcomes = {
        "paid work": dict(column="work_status", categories=PAID),
        "off social assistance": dict(column="on_social_assistance", categories=("false",)),
        "income >= 1.2 x norm": dict(column="income_to_norm_ratio", categories=("[1.2, 4]",),
                                     bin_edges=[1.2]),
        "debt arrangement in place": dict(column="debt_arrangement", categories=ARRANGED),
        "housing cost ratio < 0.30": dict(column="housing_cost_ratio",
                                          categories=("[0, 0.3)",), bin_edges=[0.3]),
    }
    for title, spec in outcomes.items():
        frame = net.proportion("assessment", str(spec["column"]), list(spec["categories"]),
                               bin_edges=list(spec.get("bin_edges", [])), occasion=MONTH_12,
                               epsilon=EPSILON)
        _show(f"5. Outcome at 12 months: share {title}", frame,
              ["member", "estimate", "se", "ci_low", "ci_high", "n", "loss", "status"], out)


def bridge_change(net: Network, out: Printer) -> None:
    """Analysis 6: pooled Bridge change intake -> 12 months with CI and d_z; per pillar."""
    frame = net.paired_change("assessment", "bridge_total", occasion=MONTH_12, epsilon=1.0,
                              clip=CHANGE_CLIP)
    _show("6. Bridge total change, intake -> 12 months", frame,
          ["member", "estimate", "se", "se_sampling", "se_dp", "ci_low", "ci_high", "n",
           "d_z", "d_z_se", "loss", "status"], out)
    rows = []
    for step in STEPS:
        change = net.paired_change("assessment", step, occasion=MONTH_12, epsilon=EPSILON,
                                   clip=STEP_CHANGE_CLIP)
        row = change[change.member == NETWORK].iloc[0]
        rows.append({"sub_pillar": step, "change": row.estimate, "ci_low": row.ci_low,
                     "ci_high": row.ci_high, "d_z": row.d_z})
    _show("6. Change per sub-pillar (network)", pd.DataFrame(rows), list(rows[0]), out)


def run_first_study(net: Network, out: Printer = print) -> None:
    out("\n== Members\n" + net.info().to_string(index=False))
    who_we_serve(net, out)
    baseline_profile(net, out)
    outcomes_12m(net, out)
    bridge_change(net, out)
    out("\n== Budget after the study\n" + net.info()[
        ["member", "epsilon_spent", "epsilon_remaining", "status"]].to_string(index=False))
    out("\nEvery number above carries differentially private noise; the standard errors "
        "and intervals include it.")
