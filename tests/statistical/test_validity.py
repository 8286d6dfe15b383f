"""95 % CI coverage of the coordinator's estimates on 300 simulated networks with known truth.

Runs the simulation core of benchmarks/validity.py (real node engines, OpenDP noise, the
coordinator's own estimators; see its docstring for the data model and the truth each interval
targets) on fewer networks, with a fixed data seed (OpenDP noise cannot be seeded). 300 rather
than 150 networks: at 150 the coverage of one fixed set of networks also varies with how far its
sample truths happen to fall from the population truths, and the paired change with data seed 1
fell below the band in about 1 % of runs, too often for CI; 300 halves that variance.

Tolerances come from the binomial: a correctly calibrated 95 % interval covers in
Binomial(300, 0.95) networks, so its coverage lies in 0.95 +- 4 sqrt(0.95 * 0.05 / 300)
= 0.95 +- 0.050 except with probability ~1e-4. Intervals that theory says fall short are not
held to that band:
- DerSimonian-Laird Wald random effects with few members (K = 5, and still at K = 12) is known
  to under-cover (tau2 is poorly estimated and the normal quantile ignores it; two 1,000-network
  runs measured 0.86-0.87 and 0.89-0.91). The statement tested is the one theory makes: the
  HKSJ interval is nominal and not worse than the Wald one on the same networks (McNemar).
- Intervals without the DP variance terms are held to "lower than with them" only where the
  shortfall is detectable at 300 networks. Test: McNemar's statistic z = (b - c)/sqrt(b + c)
  on the same networks (b: covered with the DP terms only, c: without them only) must reach 2
  (one-sided p 0.023), asserted where its expected value is >= 4, so that a false failure has
  probability ~1e-3 or less. Expected from two 1,000-network runs (coverage without / with the
  DP terms; z at 150 networks, sqrt(2) times that at 300): pooled mean at epsilon 0.1, 0.32 /
  0.93-0.96, z ~ 9.5; d_z, 0.73 / 0.95, z ~ 5.5; fixed effect weighted by sampling variances
  only, 0.80 / 0.94, z ~ 4.3
  (on the ~87 % of networks where every member's noisy sampling variance is > 0, which a
  sampling-only weight needs); regression slope with the textbook OLS SE, 0.82 / 0.95,
  z ~ 4.4. Not asserted: the pooled mean at epsilon 1, 0.93 / 0.94-0.96, z ~ 2 (sampling
  variance dominates a pooled mean of ~1,800 participants at epsilon 1; ~2.8 at 300).

Attrition and optimised budgets (issue 15) run on their own networks (`--parts attrition,
optimised` of the benchmark; EXTRA_NETWORKS of them, band 0.95 +- 4 sqrt(0.95 * 0.05 / 200) =
+- 0.062): the pooled attrition difference (completers minus leavers at intake) with members
of the main sizes at epsilon 0.3, and the pooled mean and change at the planner's unequal
per-member losses (epsilon 0.3 per analysis on average) with the node's split and with the
planner's own split (`planning.best_split`), with members of 40 and of the main sizes. With members of 40 the attrition difference is not estimable in about
11 % of networks (the pooled noisy count of the ~70 leavers at a count loss of 0.06 per
member) and its interval is conservative where it exists (0.993 in 500 networks: a noisy small
count inflates the SE), so there the band is held among the networks that have it and tests
only that the interval does not fall short.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from benchmarks import validity
from bridgestat.node.data import check_tables

NETWORKS = 300
TOLERANCE = 4 * math.sqrt(0.95 * 0.05 / NETWORKS)
SETTINGS = validity.Settings(networks=NETWORKS, seed=1, workers=2, parts=("main",))
EXTRA_NETWORKS = 200
EXTRA = validity.Settings(networks=EXTRA_NETWORKS, seed=1, workers=2,
                          parts=("attrition", "optimised"))
EXTRA_NOMINAL = ("attr", "opt_tiny_mean", "opt_tiny_change", "opt_mean", "opt_change",
                 "opt_tiny_split_mean", "opt_tiny_split_change", "opt_split_mean",
                 "opt_split_change")
EXTRA_AMONG_ESTIMABLE = ("attr_tiny",)
NOMINAL = ("mean", "mean_low", "change", "d_z", "share", "rd", "fe", "re_hksj",
           f"re{SETTINGS.members_re}_hksj", "slope")
# Held among the networks that have the estimate: the unflagged d_z at 2 x 150 and epsilon 1
# is not estimable (the pooled noisy s^2 <= 0) in 27 of 1,000 networks (RESULTS.md) and in 9
# and 16 of two 300-network runs, which alone takes "not estimable counts as not covered" to
# about 0.92 (0.883 in the CI run with 16): asserted that way it failed about 1 run in 14.
AMONG_ESTIMABLE = ("dz_pilot_eps1_unflagged",)
# Its not-estimable share: the runs' 52 of 1,600 (3.3 %) plus 5 binomial SEs at 300 networks,
# 0.033 + 5 sqrt(0.033 * 0.967 / 300) = 0.084, rounded up.
MAX_NOT_ESTIMABLE = 0.09
FLAGGED_REGIMES = ("dz_pilot", "dz_tiny")  # epsilon 0.3: 2 x 150 and 5 x 40 members
FEW_MEMBERS = ("re", f"re{SETTINGS.members_re}")  # prefixes of the Wald / HKSJ pairs
DP_TERMS_MATTER = (("mean_low", "mean_low_nodp"), ("d_z", "d_z_nodp"), ("fe", "fe_nodp"),
                   ("slope", "slope_ols"))
MCNEMAR_MIN = 2.0
# The module's 300 networks (now with three small networks each for the d_z flag and tau2)
# take about 2 minutes on an idle 2-core machine and 7+ on a shared one, above the suite's
# default 300 s: the fixture runs inside the first test's time limit.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def results() -> tuple[validity.NetworkResult, ...]:
    """The networks, simulated once for the module (about 70 s on 2 cores)."""
    return validity.simulate(SETTINGS)


@pytest.fixture(scope="module")
def extra() -> tuple[validity.NetworkResult, ...]:
    """The attrition and optimised-budget networks, simulated once (small members: fast)."""
    return validity.simulate(EXTRA)


def quantity(key: str, settings: validity.Settings = SETTINGS) -> validity.Quantity:
    return next(q for q in validity.quantities(settings) if q.key == key)


def covered(results: tuple[validity.NetworkResult, ...], key: str) -> dict[int, bool]:
    """Per network index: did the interval of `key` hold the truth (estimable ones only)."""
    return {r.index: o.covered for r in results for o in r.outcomes
            if o.key == key and o.estimate is not None}


def mcnemar(first: dict[int, bool], second: dict[int, bool]) -> tuple[float, int, int]:
    """(z, b, c): b networks covered by `first` only, c by `second` only, z = (b-c)/sqrt(b+c)."""
    both = first.keys() & second.keys()
    b = sum(first[i] and not second[i] for i in both)
    c = sum(second[i] and not first[i] for i in both)
    return ((b - c) / math.sqrt(b + c) if b + c else 0.0), b, c


@pytest.mark.slow
@pytest.mark.parametrize("key", NOMINAL)
def test_coverage_with_dp_terms_is_nominal(results: tuple[validity.NetworkResult, ...],
                                           key: str) -> None:
    """Intervals with the DP variance terms cover at 0.95 within the binomial tolerance. A
    network where the estimate is not available counts as not covered (no interval cannot
    hold the truth): DP noise makes that possible, e.g. d_z when the noisy sum of squares
    truncates the SD to 0 (seen once in 300 networks), so it is no reason to fail alone."""
    row = validity.summarise(results, quantity(key))
    coverage = row.covered / (row.runs + row.failed)
    assert abs(coverage - 0.95) <= TOLERANCE, \
        f"{row.quantity.label}: coverage {coverage:.3f} ({row.failed} networks not " \
        f"estimable) outside 0.95 +- {TOLERANCE:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("key", AMONG_ESTIMABLE)
def test_coverage_among_estimable_networks_is_nominal(
        results: tuple[validity.NetworkResult, ...], key: str) -> None:
    """Where an estimate is not available in a few % of networks, its interval covers at 0.95
    among the networks that have it, and the networks without it stay that few."""
    row = validity.summarise(results, quantity(key))
    tolerance = 4 * math.sqrt(0.95 * 0.05 / row.runs)
    assert abs(row.covered / row.runs - 0.95) <= tolerance, \
        f"{row.quantity.label}: coverage {row.covered / row.runs:.3f} over {row.runs} " \
        f"networks outside 0.95 +- {tolerance:.3f}"
    share = row.failed / (row.runs + row.failed)
    assert share <= MAX_NOT_ESTIMABLE, \
        f"{row.quantity.label}: not estimable in {row.failed} networks ({share:.3f})"


@pytest.mark.slow
@pytest.mark.parametrize("key", EXTRA_NOMINAL + EXTRA_AMONG_ESTIMABLE)
def test_attrition_and_optimised_budgets_cover_nominally(
        extra: tuple[validity.NetworkResult, ...], key: str) -> None:
    """As above, on the extra networks: a network without the estimate counts as not covered,
    except for the attrition difference with members of 40, held among those that have it."""
    row = validity.summarise(extra, quantity(key, EXTRA))
    runs = row.runs if key in EXTRA_AMONG_ESTIMABLE else row.runs + row.failed
    tolerance = 4 * math.sqrt(0.95 * 0.05 / runs)
    assert runs >= EXTRA_NETWORKS / 2, f"{row.quantity.label}: only {runs} networks"
    assert abs(row.covered / runs - 0.95) <= tolerance, \
        f"{row.quantity.label}: coverage {row.covered / runs:.3f} over {runs} networks " \
        f"({row.failed} not estimable) outside 0.95 +- {tolerance:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("prefix", FEW_MEMBERS)
def test_hksj_is_not_worse_than_dl_wald_with_few_members(
        results: tuple[validity.NetworkResult, ...], prefix: str) -> None:
    """Paired non-inferiority of HKSJ against DL-Wald (which may fall short at K < 10)."""
    hksj, wald = covered(results, f"{prefix}_hksj"), covered(results, f"{prefix}_wald")
    z, b, c = mcnemar(hksj, wald)
    assert z >= -4, f"{prefix}: only Wald covered {c} networks, only HKSJ {b} (z = {z:.2f})"
    wald_row = validity.summarise(results, quantity(f"{prefix}_wald"))
    assert wald_row.coverage <= 0.95 + TOLERANCE  # it may fall short, never over-cover here


@pytest.mark.slow
@pytest.mark.parametrize(("with_dp", "without"), DP_TERMS_MATTER)
def test_leaving_the_dp_terms_out_under_covers_where_dp_noise_is_material(
        results: tuple[validity.NetworkResult, ...], with_dp: str, without: str) -> None:
    """Leaving the DP variance out loses coverage (McNemar z >= 2) where it is material."""
    z, b, c = mcnemar(covered(results, with_dp), covered(results, without))
    assert z >= MCNEMAR_MIN, \
        f"{without}: covered {b} networks fewer than {with_dp}, {c} more (z = {z:.2f})"
    assert validity.summarise(results, quantity(without)).coverage < 0.95


@pytest.mark.slow
@pytest.mark.parametrize("prefix", FLAGGED_REGIMES)
def test_d_z_flag_marks_the_small_networks_that_under_cover(
        results: tuple[validity.NetworkResult, ...], prefix: str) -> None:
    """At epsilon 0.3 with 2 x 150 or 5 x 40 members the noisy SD is not well determined: the
    flag (public metadata and the noisy count only) is set on every network, and their d_z
    covers clearly less than 0.95 when a network without a d_z counts as not covered (s^2 <= 0
    in 15-45 % of them). Where the flag is not set (2 x 150 at epsilon 1) coverage is nominal
    among the networks that have a d_z (`dz_pilot_eps1_unflagged` in AMONG_ESTIMABLE)."""
    unflagged = validity.summarise(results, quantity(f"{prefix}_unflagged"))
    flagged = validity.summarise(results, quantity(f"{prefix}_flagged"))
    assert unflagged.runs + unflagged.failed == 0
    assert flagged.runs + flagged.failed == NETWORKS
    coverage = flagged.covered / NETWORKS
    assert coverage < 0.95 - TOLERANCE, f"{prefix}: flagged coverage {coverage:.3f}"


def test_truths_match_the_generator_on_a_large_member() -> None:
    """The exact truths (scipy's truncated-normal moments) agree with the generated data."""
    rng = np.random.default_rng(5)
    draws = tuple(replace(d, expected_size=d.expected_size * 200)
                  for d in validity.draw_network(rng, 3, heterogeneous=True))
    truth = validity.network_truth(draws)
    tables = [validity.member_tables(d, rng) for d in draws]
    intake = pd.concat([t["assessment"][t["assessment"].assessment_seq == 0] for t in tables])
    ratio = intake.income_to_norm_ratio.to_numpy()
    change = np.concatenate([_changes(t["assessment"]) for t in tables])
    n_ratio, n_change = len(ratio), len(change)
    sd_change = truth.change / truth.d_z
    assert abs(ratio.mean() - truth.mean) < 5 * truth.sd / math.sqrt(n_ratio)
    assert abs(ratio.std() / truth.sd - 1) < 5 / math.sqrt(2 * n_ratio) + 0.01
    assert abs(change.mean() - truth.change) < 5 * sd_change / math.sqrt(n_change)
    assert abs(change.std() / sd_change - 1) < 5 / math.sqrt(2 * n_change) + 0.01
    assert change.min() >= validity.CHANGE_CLIP[0] and change.max() <= validity.CHANGE_CLIP[1]


def _changes(assessment: pd.DataFrame) -> np.ndarray:
    rows = assessment.set_index(["participant_id", "assessment_seq"]).bridge_total
    wide = rows.unstack("assessment_seq").dropna()
    return np.asarray(wide[1.0] - wide[0.0], dtype=np.float64)


def test_tables_are_what_the_node_loader_delivers() -> None:
    """Our in-memory tables equal node.data's conversion of the same data as CSV text
    (coaching_contact rows whose n_sessions sum to total_sessions, the derived column)."""
    rng = np.random.default_rng(11)
    tables = validity.member_tables(validity.draw_network(rng, 1, heterogeneous=True)[0], rng)
    report, data = check_tables(raw_text(tables), validity.SCHEMA)
    assert report.servable and report.warning_count == 0, report.format()
    for name, frame in tables.items():
        for column in frame.columns:
            pd.testing.assert_series_equal(frame[column], data.tables[name][column],
                                           check_names=True)


def raw_text(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Every schema table as CSV text cells ("" = missing), total_sessions as contacts."""
    raw = {"coaching_contact": contacts(tables["participant"])}
    for table in validity.SCHEMA.tables:
        frame = tables.get(table.name, raw.get(table.name, pd.DataFrame()))
        raw[table.name] = pd.DataFrame({
            c.name: text(frame[c.name]) if c.name in frame else [""] * len(frame)
            for c in table.columns if c.derived is None})
    return raw


def contacts(participant: pd.DataFrame) -> pd.DataFrame:
    """Monthly contact rows of at most 8 sessions (the schema's bound) summing to the total."""
    total = participant.total_sessions.to_numpy().astype(np.int64)
    months = -(-total // 8)
    who = np.repeat(np.arange(len(total)), months)
    month = np.arange(len(who)) - np.repeat(np.cumsum(months) - months, months)
    sessions = np.minimum(8, total[who] - 8 * month)
    return pd.DataFrame({"participant_id": participant.participant_id.to_numpy()[who],
                         "month_since_intake": month.astype(np.float64),
                         "n_sessions": sessions.astype(np.float64)})


def text(values: pd.Series) -> list[str]:
    """Cells as text: floats exactly (repr), whole numbers without a fraction, missing empty."""
    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object or \
            pd.api.types.is_string_dtype(values.dtype):
        return ["" if pd.isna(v) else str(v) for v in values]
    return ["" if math.isnan(v) else str(int(v)) if float(v).is_integer() else repr(float(v))
            for v in values.to_numpy(dtype=np.float64)]
