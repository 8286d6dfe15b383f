"""Synthetic member networks with known true effects, for tests and benchmarks.

`write_network` writes one folder of data-matrix CSV files per member and `truth.json` beside
them: the population parameters the data were drawn from and the realised aggregates recomputed
from the written files, so statistical tests can check that DP estimates recover the truth.

The known truth is the 12-month change of `bridge_total`: for member k and arm a it is drawn as
N(mean_a + u_k, sd^2) with member effect u_k ~ N(0, tau^2); drop-out is independent of outcomes
(MCAR), so complete cases estimate the population means without bias. A network with
`NetworkParams.intake_shift_followed` != 0 has selective attrition instead: the intake Bridge
score of those with the 12-month occasion is that much higher than of those without (no extra
random draws, so the rest of the data is the same), for attrition reports to recover.

The coordinator never imports the node, so the data matrix (schema 1.0.0) is restated here;
the tests cross-check it against `node/schemas/data-matrix-1.0.0.yaml`. Draws use numpy's
Generator: this is synthetic data, not privacy noise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import ndtr

__all__ = [
    "COLUMNS",
    "DEFAULT_NETWORK",
    "ChangeStats",
    "MemberParams",
    "MemberTruth",
    "NetworkParams",
    "NetworkTruth",
    "SampleTruth",
    "draw_member_params",
    "generate_member",
    "member_names",
    "sample_truth",
    "write_csv",
    "write_network",
]

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
People = dict[str, Any]  # per-participant arrays shared by the four table builders

# --- The data matrix, schema 1.0.0 (restated: the coordinator never imports the node) -------

ARMS = ("mobility_mentoring", "comparison")
REFERRAL_ROUTES = ("social_assistance_intake", "debt_assistance", "neighbourhood_team",
                   "shelter", "self_referral", "other_agency", "unknown")
AGE_BANDS = ("18-22", "23-27", "28-35", "36-45", "46-55", "56-67", "68+", "unknown")
GENDERS = ("female", "male", "other", "unknown")
HOUSEHOLD_TYPES = ("single", "single_parent", "couple_no_children", "couple_with_children",
                   "other", "unknown")
EDUCATION_LEVELS = ("low", "middle", "high", "unknown")
INCOME_SOURCES = ("social_assistance", "other_benefit", "employment", "self_employment",
                  "student_finance", "none", "other", "unknown")
EXIT_STATUSES = ("active", "graduated", "exited_to_work", "moved", "referred", "disengaged",
                 "other", "unknown")
WORK_STATUSES = ("none", "unpaid_work", "paid_with_support", "paid_part_time", "paid_full_time",
                 "self_employed", "in_education")
PAID_WORK = ("paid_with_support", "paid_part_time", "paid_full_time", "self_employed")
CONTRACT_TYPES = ("none", "flex_or_temporary", "permanent", "self_employed")
DEBT_ARRANGEMENTS = ("none_needed", "no_arrangement", "payment_plans", "debt_assistance",
                     "statutory_debt_scheme", "guardianship", "unknown")
HOUSING_STATUSES = ("homeless_or_shelter", "temporary", "social_rent", "private_rent", "owner",
                    "unknown")
PILLARS = ("family_stability", "well_being", "financial_management", "education_training",
           "employment_career")
GOAL_STATUSES = ("achieved", "partly_achieved", "not_achieved", "ongoing", "abandoned")
STEP_COLUMNS = ("housing_step", "family_care_step", "health_step", "social_network_step",
                "debt_step", "savings_step", "education_step", "employment_step",
                "earnings_step")

COLUMNS: Mapping[str, tuple[str, ...]] = {
    "participant": ("participant_id", "arm", "team", "rollout_wave", "intake_year",
                    "intake_quarter", "referral_route", "age_band", "gender", "household_type",
                    "n_children", "education_level", "main_income_source_t0",
                    "months_on_assistance_before", "exit_status", "months_in_program"),
    "assessment": ("participant_id", "assessment_seq", "months_since_intake", *STEP_COLUMNS,
                   "bridge_total", "household_net_income_month", "earned_income_month",
                   "income_to_norm_ratio", "on_social_assistance", "work_status",
                   "hours_worked_week", "contract_type", "total_debt", "debt_arrangement",
                   "savings_amount", "housing_status", "housing_cost_ratio", "stress_score",
                   "life_satisfaction"),
    "goal": ("participant_id", "pillar", "set_month", "status", "achieved_month",
             "incentive_value"),
    "coaching_contact": ("participant_id", "month_since_intake", "n_sessions",
                         "contact_minutes"),
}
"""Written columns per table, in schema order (derived participant columns are not written)."""

DECIMALS: Mapping[str, int] = {"bridge_total": 1, "hours_worked_week": 1,
                               "income_to_norm_ratio": 3, "housing_cost_ratio": 3}
"""Decimals written per real column; every other real column gets 2 (money)."""

MAX_OCCASION = 12  # assessment_seq 0..12 = nominal months 0, 6, ..., 72
WINDOW_6M = (3, 9)
WINDOW_12M = (9, 15)

# --- Population mixes (shares loosely after Dutch social-assistance clients) -----------------

BASE_MIX: Mapping[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "referral_route": (REFERRAL_ROUTES, (0.42, 0.16, 0.18, 0.05, 0.09, 0.08, 0.02)),
    "age_band": (AGE_BANDS, (0.07, 0.13, 0.25, 0.26, 0.18, 0.09, 0.01, 0.01)),
    "gender": (GENDERS, (0.66, 0.32, 0.01, 0.01)),
    "household_type": (HOUSEHOLD_TYPES, (0.37, 0.35, 0.07, 0.15, 0.04, 0.02)),
    "education_level": (EDUCATION_LEVELS, (0.52, 0.36, 0.07, 0.05)),
    "main_income_source_t0": (INCOME_SOURCES, (0.70, 0.09, 0.09, 0.02, 0.03, 0.04, 0.02, 0.01)),
}
MIX_CONCENTRATION = 80.0  # Dirichlet concentration: members differ, but plausibly

# Intake work status (columns: WORK_STATUSES) given the main income source (rows).
WORK_BY_SOURCE = np.array([
    [0.62, 0.14, 0.07, 0.09, 0.01, 0.01, 0.06],
    [0.70, 0.15, 0.05, 0.05, 0.00, 0.00, 0.05],
    [0.00, 0.00, 0.15, 0.55, 0.30, 0.00, 0.00],
    [0.00, 0.00, 0.00, 0.00, 0.00, 1.00, 0.00],
    [0.05, 0.00, 0.00, 0.10, 0.00, 0.00, 0.85],
    [0.75, 0.15, 0.00, 0.03, 0.00, 0.00, 0.07],
    [0.60, 0.15, 0.05, 0.10, 0.05, 0.00, 0.05],
    [0.60, 0.10, 0.05, 0.10, 0.05, 0.05, 0.05],
])
NEW_JOB_MIX = np.array([0.0, 0.0, 0.30, 0.40, 0.20, 0.10, 0.0])
IDLE_MIX = np.array([0.60, 0.25, 0.0, 0.0, 0.0, 0.0, 0.15])
HOURS_RANGE = np.array([[0, 0], [0, 0], [8, 28], [12, 30], [32, 40], [8, 45], [0, 0]], float)
CONTRACT_BY_WORK = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0.75, 0.25, 0], [0, 0.6, 0.4, 0],
                             [0, 0.45, 0.55, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
NORM_BY_HOUSEHOLD = np.array([1310.0, 1310.0, 1870.0, 1870.0, 1310.0, 1310.0])  # EUR / month
DEBT_ARRANGEMENT_MIX = {  # over DEBT_ARRANGEMENTS[1:] for people in debt
    "intake": np.array([0.40, 0.25, 0.18, 0.08, 0.06, 0.03]),
    "mobility_mentoring": np.array([0.20, 0.33, 0.25, 0.12, 0.07, 0.03]),
    "comparison": np.array([0.32, 0.28, 0.22, 0.09, 0.06, 0.03]),
}
HOUSING_MIX = np.array([0.05, 0.08, 0.64, 0.18, 0.03, 0.02])
RENT_BY_HOUSING = np.array([[40, 40], [250, 90], [470, 110], [720, 160], [650, 200], [500, 150]])
STEP_SHIFT = np.array([0.3, 0.2, 0.1, 0.0, -0.3, -0.5, -0.1, -0.3, -0.4])
ITEM_MISSING = {"savings_amount": 0.04, "total_debt": 0.03, "housing_cost_ratio": 0.03,
                "stress_score": 0.02, "life_satisfaction": 0.02}
GOAL_PILLAR_MIX = np.array([0.18, 0.18, 0.30, 0.12, 0.22])
GOAL_STATUS_MIX = {"active": np.array([0.42, 0.13, 0.08, 0.27, 0.10]),
                   "closed": np.array([0.50, 0.15, 0.18, 0.0, 0.17])}
INCENTIVES = np.array([25.0, 50.0, 50.0, 75.0, 100.0, 150.0, 250.0])
DROPOUT_EXIT_MIX = np.array([0, 0, 0, 0.20, 0.12, 0.55, 0.08, 0.05])  # over EXIT_STATUSES
COMPLETED_EXIT_MIX = {False: np.array([0, 0.62, 0.05, 0.10, 0.12, 0, 0.08, 0.03]),
                      True: np.array([0, 0.40, 0.50, 0.03, 0.02, 0, 0.03, 0.02])}
INTERMITTENT_MISSING_6M = 0.03  # 6-month misses among people who stay (the rest are drop-out)


# --- Parameters and truth ---------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkParams:
    """Population parameters of the whole network (the estimands of the effect study)."""

    bridge_change_mean_mm: float = 8.0
    bridge_change_mean_comparison: float = 2.0
    bridge_change_sd: float = 12.0
    tau: float = 2.0
    intake_shift_followed: float = 0.0  # intake Bridge: with minus without 12 months (0: MCAR)


DEFAULT_NETWORK = NetworkParams()


@dataclass(frozen=True)
class MemberParams:
    """Population parameters of one member: its data are a sample from these."""

    bridge_change_mean_mm: float  # network mean + member_effect
    bridge_change_mean_comparison: float  # network mean + member_effect
    bridge_change_sd: float
    member_effect: float  # u_k ~ N(0, tau^2)
    intake_bridge_mean: float
    intake_bridge_sd: float
    comparison_share: float  # 0.0 when the member has no comparison arm
    missing_6m: float  # P(no 6-month occasion), independent of outcomes
    missing_12m: float  # P(no 12-month occasion), independent of outcomes
    paid_work_intake: float  # P(paid work at intake), implied by the income-source mix
    paid_work_stay: float  # P(paid at 12 months | paid at intake)
    paid_work_entry_mm: float  # P(paid at 12 months | not paid at intake), mobility mentoring
    paid_work_entry_comparison: float
    n_teams: int
    first_intake_month: int  # months after January 2015
    intake_span_months: int  # intakes run this long; the extract follows 15 months later
    mix: Mapping[str, Mapping[str, float]]  # participant column -> category -> probability
    intake_shift_followed: float = 0.0  # intake Bridge: with minus without 12 months


@dataclass(frozen=True)
class ChangeStats:
    """Realised 12-month change of bridge_total: count, mean and SD (ddof 1; None if undefined)."""

    n: int
    mean: float | None
    sd: float | None


@dataclass(frozen=True)
class SampleTruth:
    """Exact aggregates of the written data, as a node reads them back from the CSV files.

    The 12-month occasion is the assessment nearest month 12 within months 9..15 (earlier on a
    tie); the 6-month one likewise within 3..9; intake is assessment_seq 0. Shares at 12 months
    are among participants with a 12-month occasion.
    """

    n_participants: int
    n_6m: int
    n_12m: int
    share_6m: float | None
    share_12m: float | None
    bridge_change: Mapping[str, ChangeStats]  # "all" and each arm
    intake_bridge_mean: float | None
    intake_income_ratio_mean: float | None
    household_type_share: Mapping[str, float]
    paid_work_share_12m: float | None
    off_assistance_share_12m: float | None
    intake_bridge_mean_followed: float | None = None  # those with a 12-month occasion
    intake_bridge_mean_not_followed: float | None = None  # those without


@dataclass(frozen=True)
class MemberTruth:
    name: str
    n_participants: int
    teams: tuple[str, ...]  # the node config must declare these for participant.team
    has_comparison_arm: bool
    params: MemberParams
    sample: SampleTruth


@dataclass(frozen=True)
class NetworkTruth:
    """Everything `write_network` knows: seed, per-member truth, network truth."""

    seed: int
    members: tuple[MemberTruth, ...]
    network: NetworkParams
    network_sample: SampleTruth  # pooled over all participants (participant-weighted)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "members": [asdict(m) for m in self.members],
                "network": {**asdict(self.network), "sample": asdict(self.network_sample)}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> NetworkTruth:
        network = dict(doc["network"])
        sample = network.pop("sample")
        return cls(seed=int(doc["seed"]), members=tuple(_member_truth(m) for m in doc["members"]),
                   network=NetworkParams(**network), network_sample=_sample_truth(sample))

    @classmethod
    def from_json(cls, path: Path | str) -> NetworkTruth:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _member_truth(doc: Mapping[str, Any]) -> MemberTruth:
    return MemberTruth(name=doc["name"], n_participants=doc["n_participants"],
                       teams=tuple(doc["teams"]), has_comparison_arm=doc["has_comparison_arm"],
                       params=MemberParams(**doc["params"]), sample=_sample_truth(doc["sample"]))


def _sample_truth(doc: Mapping[str, Any]) -> SampleTruth:
    changes = {arm: ChangeStats(**stats) for arm, stats in doc["bridge_change"].items()}
    return SampleTruth(**{**doc, "bridge_change": changes})


# --- The network ------------------------------------------------------------------------------


def member_names(members: int) -> tuple[str, ...]:
    return tuple(f"member-{k:02d}" for k in range(1, members + 1))


def write_network(out: Path, members: int, seed: int,
                  sizes: Sequence[int] | None = None,
                  network: NetworkParams = DEFAULT_NETWORK) -> NetworkTruth:
    """Write out/<member>/<table>.csv for every member and out/truth.json; return the truth.

    Member parameters come from one seeded stream and each member's data from its own, so
    overriding `sizes` changes the data but not the parameters. `network` sets the population
    parameters (e.g. selective attrition, `intake_shift_followed`).
    """
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    net_seq, *member_seqs = np.random.SeedSequence(seed).spawn(members + 1)
    net_rng = np.random.default_rng(net_seq)
    drawn = _default_sizes(members, net_rng)  # always drawn, so params ignore `sizes`
    chosen = drawn if sizes is None else _checked(sizes, members)
    flags = _comparison_flags(members, net_rng)
    params = [draw_member_params(network, flag, net_rng) for flag in flags]
    out = Path(out)
    truths, outcomes = [], []
    for name, n, p, seq in zip(member_names(members), chosen, params, member_seqs, strict=True):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for table, frame in generate_member(name, n, p, np.random.default_rng(seq)).items():
            write_csv(frame, folder / f"{table}.csv")
        outcome = _read_outcomes(folder)
        outcomes.append(outcome)
        truths.append(MemberTruth(name=name, n_participants=n, teams=_teams(p.n_teams),
                                  has_comparison_arm=p.comparison_share > 0, params=p,
                                  sample=_summarise(outcome)))
    truth = NetworkTruth(seed=seed, members=tuple(truths), network=network,
                         network_sample=_summarise(pd.concat(outcomes, ignore_index=True)))
    (out / "truth.json").write_text(truth.to_json(), encoding="utf-8")
    return truth


def _default_sizes(members: int, rng: np.random.Generator) -> list[int]:
    """Log-uniform on 80..900, one draw per stratum, shuffled: spread out, never all alike."""
    strata = (rng.permutation(members) + rng.random(members)) / members
    return [int(s) for s in np.clip(np.rint(80 * (900 / 80) ** strata), 80, 900)]


def _checked(sizes: Sequence[int], members: int) -> list[int]:
    if len(sizes) != members or any(int(s) < 1 for s in sizes):
        raise ValueError(f"sizes must hold {members} counts >= 1, got {list(sizes)}")
    return [int(s) for s in sizes]


def _comparison_flags(members: int, rng: np.random.Generator) -> list[bool]:
    """About half of the members (at least one) run a comparison arm."""
    return [bool(r < (members + 1) // 2) for r in rng.permutation(members)]


def _teams(n_teams: int) -> tuple[str, ...]:
    return tuple(f"team_{t}" for t in range(1, n_teams + 1))


def draw_member_params(network: NetworkParams, has_comparison: bool,
                       rng: np.random.Generator) -> MemberParams:
    """Draw one member's population parameters around the network's."""
    effect = float(rng.normal(0.0, network.tau))
    missing_6m, missing_12m = float(rng.uniform(0.17, 0.23)), float(rng.uniform(0.32, 0.38))
    mix = {column: dict(zip(cats, _dirichlet(rng, base), strict=True))
           for column, (cats, base) in BASE_MIX.items()}
    source_mix = np.array(list(mix["main_income_source_t0"].values()))
    paid_codes = [WORK_STATUSES.index(w) for w in PAID_WORK]
    return MemberParams(
        bridge_change_mean_mm=network.bridge_change_mean_mm + effect,
        bridge_change_mean_comparison=network.bridge_change_mean_comparison + effect,
        bridge_change_sd=network.bridge_change_sd, member_effect=effect,
        intake_bridge_mean=float(rng.uniform(33.0, 40.0)), intake_bridge_sd=9.0,
        comparison_share=float(rng.uniform(0.25, 0.35)) if has_comparison else 0.0,
        missing_6m=missing_6m, missing_12m=missing_12m,
        paid_work_intake=float(source_mix @ WORK_BY_SOURCE[:, paid_codes].sum(axis=1)),
        paid_work_stay=0.85, paid_work_entry_mm=0.24, paid_work_entry_comparison=0.12,
        n_teams=int(rng.integers(2, 7)), first_intake_month=int(rng.integers(0, 73)),
        intake_span_months=int(rng.integers(24, 58)), mix=mix,
        intake_shift_followed=network.intake_shift_followed)


def _dirichlet(rng: np.random.Generator, base: Sequence[float]) -> list[float]:
    return [float(p) for p in rng.dirichlet(MIX_CONCENTRATION * np.asarray(base))]


# --- One member -------------------------------------------------------------------------------


def generate_member(name: str, n: int, params: MemberParams,
                    rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """The four tables of one member, in memory, in schema column order.

    participant_id is categorical over the member's ids (cheap at a million participants);
    categorical columns carry their full vocabulary; nullable integers use Int64.
    """
    if n < 1:
        raise ValueError(f"{name}: a member needs at least one participant, got {n}")
    people = _people(n, params, rng)
    ids = _participant_ids(n, rng)
    return {"participant": _participant_frame(people, ids, params),
            "assessment": _assessment_frame(people, ids, rng),
            "goal": _goal_frame(people, ids, rng),
            "coaching_contact": _contact_frame(people, ids, rng)}


def _participant_ids(n: int, rng: np.random.Generator) -> pd.CategoricalDtype:
    """Random-looking local keys 'p' + 8 hex digits, unique within the member."""
    keys = rng.choice(16**8, size=n, replace=False)
    return pd.CategoricalDtype([f"p{k:08x}" for k in keys.tolist()])


def _people(n: int, params: MemberParams, rng: np.random.Generator) -> People:
    people: People = {"n": n}
    people.update(_demographics(n, params, rng))
    people.update(_timeline(people, params, rng))
    people.update(_bridge(people, params, rng))
    people.update(_work(people, params, rng))
    people.update(_income(people, rng))
    people.update(_debt(people["comparison"], rng))
    people.update(_savings(people["comparison"], rng))
    people.update(_housing(people, rng))
    people.update(_wellbeing(people, rng))
    people["exit_status"] = _exit_status(people, rng)
    return people


def _demographics(n: int, params: MemberParams, rng: np.random.Generator) -> People:
    out: People = {col: _draw(rng, list(mix.values()), n) for col, mix in params.mix.items()}
    out["comparison"] = rng.random(n) < params.comparison_share
    team = _draw(rng, rng.dirichlet(np.full(params.n_teams, 4.0)), n)  # teams differ in size
    out["team"] = team
    out["rollout_wave"] = rng.permutation(params.n_teams)[team]
    household = out["household_type"]
    kids = np.where(household == 1, 1 + rng.poisson(0.9, n), 0)
    kids = np.where(household == 3, 1 + rng.poisson(1.2, n), kids)
    out["n_children"] = np.minimum(kids, 6)
    spell = np.rint(np.exp(rng.normal(np.log(24.0), 1.0, n)))
    on_assistance = out["main_income_source_t0"] == 0
    out["months_on_assistance_before"] = np.where(on_assistance, np.clip(spell, 0, 120), 0)
    return out


def _timeline(people: People, params: MemberParams, rng: np.random.Generator) -> People:
    """Intake dates, MCAR drop-out, occasion months and months in programme."""
    n: int = people["n"]
    offset = rng.integers(0, params.intake_span_months, n)
    calendar = params.first_intake_month + offset
    horizon = params.intake_span_months - offset + 15  # months from intake to the extract
    drop = rng.random(n)
    core = (params.missing_6m - INTERMITTENT_MISSING_6M) / (1 - INTERMITTENT_MISSING_6M)
    has_12m = drop >= params.missing_12m
    has_6m = (drop >= core) & (rng.random(n) >= INTERMITTENT_MISSING_6M)
    months = 6 * np.arange(MAX_OCCASION + 1) + rng.integers(-1, 2, (n, MAX_OCCASION + 1))
    months[:, 0] = 0
    months[:, 2] = rng.integers(10, 15, n)
    stay = np.rint(rng.exponential(16.0, n)).astype(np.int64)
    completed = np.minimum(np.minimum(months[:, 2] + stay, horizon), 72)
    left = np.where(has_6m, months[:, 1] + rng.integers(0, 3, n), rng.integers(0, 6, n))
    in_program = np.where(has_12m, completed, left)
    present = months <= in_program[:, None]
    present[:, 3:] &= has_12m[:, None] & (rng.random((n, MAX_OCCASION - 2)) >= 0.15)
    present[:, 0], present[:, 1], present[:, 2] = True, has_6m, has_12m
    return {"intake_year": 2015 + calendar // 12, "intake_quarter": calendar % 12 // 3 + 1,
            "active": has_12m & (in_program >= horizon), "has_12m": has_12m,
            "months_in_program": in_program, "months": months, "present": present,
            "switch_month": rng.uniform(1.0, 10.0, n)}


def _bridge(people: People, params: MemberParams, rng: np.random.Generator) -> People:
    """Intake Bridge score and its 12-month change, the known truth."""
    n: int = people["n"]
    z = rng.standard_normal(n)
    mean = np.where(people["comparison"], params.bridge_change_mean_comparison,
                    params.bridge_change_mean_mm)
    change = mean + params.bridge_change_sd * z
    # selective attrition: completers shifted up, non-completers down (mean unchanged)
    shift = params.intake_shift_followed * (people["has_12m"] - (1 - params.missing_12m))
    intake = np.clip(rng.normal(params.intake_bridge_mean, params.intake_bridge_sd, n) + shift,
                     0, 100)
    return {"change_z": z, "change": change, "bridge0": intake,
            "bridge12": np.clip(intake + change, 0, 100),
            "step_offset": rng.normal(STEP_SHIFT, 0.55, (n, len(STEP_COLUMNS)))}


def _work(people: People, params: MemberParams, rng: np.random.Generator) -> People:
    """Work status, hours, contract and earnings at intake (0) and after the switch (1)."""
    n: int = people["n"]
    work0 = _draw_rows(rng, WORK_BY_SOURCE, people["main_income_source_t0"])
    paid0 = np.isin(work0, [WORK_STATUSES.index(w) for w in PAID_WORK])
    entry = np.where(people["comparison"], params.paid_work_entry_comparison,
                     params.paid_work_entry_mm)
    p_paid = np.where(paid0, params.paid_work_stay, entry)
    latent = 0.5 * people["change_z"] + np.sqrt(0.75) * rng.standard_normal(n)
    paid1 = ndtr(latent) > 1 - p_paid  # marginally Bernoulli(p_paid), more likely if improved
    keep = rng.random(n) < 0.7
    idle = np.where(paid0, 0, np.where(keep, work0, _draw(rng, IDLE_MIX, n)))
    work1 = np.where(paid1, np.where(paid0 & keep, work0, _draw(rng, NEW_JOB_MIX, n)), idle)
    hours0 = _hours(work0, rng)
    hours1 = np.where(work1 == work0, hours0, _hours(work1, rng))
    contract0 = _draw_rows(rng, CONTRACT_BY_WORK, work0)
    contract1 = np.where(work1 == work0, contract0, _draw_rows(rng, CONTRACT_BY_WORK, work1))
    wage = rng.uniform(11.0, 15.0, n)
    return {"work0": work0, "work1": work1, "hours0": hours0, "hours1": hours1,
            "contract0": contract0, "contract1": contract1,
            "earned0": _money(hours0 * 4.33 * wage, 6000), "earned1": _money(hours1 * 4.33 * wage,
                                                                              6000)}


def _hours(work: Ints, rng: np.random.Generator) -> Floats:
    low, high = HOURS_RANGE[work, 0], HOURS_RANGE[work, 1]
    hours: Floats = np.rint((low + (high - low) * rng.random(len(work))) * 2) / 2
    return hours


def _income(people: People, rng: np.random.Generator) -> People:
    """Social assistance and household income at intake and later.

    Work ends assistance (mostly) once earnings plus other income reach the norm; until then
    assistance tops earnings up to the norm, plus the 25 % earnings exemption (at most 250).
    """
    n, source, household = people["n"], people["main_income_source_t0"], people["household_type"]
    norm = NORM_BY_HOUSEHOLD[household]
    benefit = norm * rng.normal(1.0, 0.04, n)
    other = _other_income(source, household, norm, rng)
    on0 = (source == 0) | (np.isin(source, [2, 5, 6, 7]) & (rng.random(n) < 0.2))
    self_supporting = people["earned1"] + other >= 0.95 * norm
    on1 = np.where(on0, ~(self_supporting & (rng.random(n) < 0.8)), rng.random(n) < 0.04)
    income0 = _household_income(on0, people["earned0"], benefit, other)
    income1 = _household_income(on1, people["earned1"], benefit, other)
    return {"on_assistance0": on0, "on_assistance1": on1, "income0": income0,
            "income1": income1, "ratio0": np.clip(np.round(income0 / norm, 3), 0, 4),
            "ratio1": np.clip(np.round(income1 / norm, 3), 0, 4)}


def _household_income(on_assistance: Bools, earned: Floats, benefit: Floats,
                      other: Floats) -> Floats:
    topped_up = np.maximum(benefit, earned) + np.minimum(0.25 * earned, 250.0)
    return _money(np.where(on_assistance, topped_up, earned + other))


def _other_income(source: Ints, household: Ints, norm: Floats,
                  rng: np.random.Generator) -> Floats:
    """Non-work income outside social assistance: other benefits, student finance, partner."""
    n = len(source)
    couple = (household == 2) | (household == 3)
    partner = np.where(couple & (rng.random(n) < 0.4), norm * rng.uniform(0.0, 0.7, n), 0.0)
    other = np.where(source == 1, norm * rng.uniform(0.85, 1.1, n), 150 * rng.random(n))
    return np.where(source == 4, norm * rng.uniform(0.5, 0.8, n), other) + partner


def _debt(comparison: Bools, rng: np.random.Generator) -> People:
    """Most are in debt at intake (lognormal); mentoring reduces and clears more of it."""
    n = len(comparison)
    debt0 = np.where(rng.random(n) < 0.82, np.exp(rng.normal(np.log(9000.0), 1.0, n)), 0.0)
    factor = np.exp(rng.normal(np.where(comparison, -0.08, -0.25), 0.35, n))
    cleared = rng.random(n) < np.where(comparison, 0.05, 0.10)
    fresh = np.where(rng.random(n) < 0.05, np.exp(rng.normal(np.log(800.0), 0.8, n)), 0.0)
    debt1 = np.where(debt0 > 0, np.where(cleared, 0.0, debt0 * factor), fresh)
    later = np.where(comparison[:, None], DEBT_ARRANGEMENT_MIX["comparison"],
                     DEBT_ARRANGEMENT_MIX["mobility_mentoring"])
    return {"debt0": _money(debt0, 100000), "debt1": _money(debt1, 100000),
            "arrangement0": 1 + _draw(rng, DEBT_ARRANGEMENT_MIX["intake"], n),
            "arrangement1": 1 + _draw_rows(rng, later, np.arange(n))}


def _savings(comparison: Bools, rng: np.random.Generator) -> People:
    """Small savings, often none; mentoring makes saving more common."""
    n = len(comparison)
    savings0 = np.where(rng.random(n) < 0.55, 0.0, np.exp(rng.normal(np.log(150.0), 1.0, n)))
    saved = rng.random(n) < np.where(comparison, 0.3, 0.5)
    added = np.where(saved, np.exp(rng.normal(np.log(250.0), 0.9, n)), 0.0)
    savings1 = savings0 * rng.uniform(0.5, 1.5, n) + added
    return {"savings0": _money(savings0, 15150), "savings1": _money(savings1, 15150)}


def _housing(people: People, rng: np.random.Generator) -> People:
    """Housing status (the homeless and temporarily housed get rehoused) and cost ratio."""
    n: int = people["n"]
    comparison = people["comparison"]
    housing0 = _draw(rng, HOUSING_MIX, n)
    rehoused = rng.random(n) < np.where(comparison, 0.25, 0.45)
    housing1 = np.where((housing0 <= 1) & rehoused, 2, housing0)
    rent = rng.standard_normal(n)
    return {"housing0": housing0, "housing1": housing1,
            "cost0": _cost_ratio(housing0, rent, people["income0"]),
            "cost1": _cost_ratio(housing1, rent, people["income1"])}


def _wellbeing(people: People, rng: np.random.Generator) -> People:
    """Financial stress falls and life satisfaction rises with the Bridge change."""
    n: int = people["n"]
    change = people["change"]
    stress, satisfied = rng.normal(7.0, 1.7, n), rng.normal(5.0, 1.7, n)
    return {"stress0": stress, "stress1": stress - 0.09 * change + rng.normal(0, 1.2, n),
            "satisfaction0": satisfied,
            "satisfaction1": satisfied + 0.07 * change + rng.normal(0, 1.2, n)}


def _cost_ratio(housing: Ints, rent_person: Floats, income: Floats) -> Floats:
    rent = np.maximum(RENT_BY_HOUSING[housing, 0] + RENT_BY_HOUSING[housing, 1] * rent_person, 0)
    ratio = np.round(np.clip(rent / np.maximum(income, 1.0), 0, 1), 3)
    return np.where(income > 0, ratio, np.nan)


def _exit_status(people: People, rng: np.random.Generator) -> Ints:
    n: int = people["n"]
    paid1 = np.isin(people["work1"], [WORK_STATUSES.index(w) for w in PAID_WORK])
    closed = np.where(paid1[:, None], COMPLETED_EXIT_MIX[True], COMPLETED_EXIT_MIX[False])
    completed = _draw_rows(rng, closed, np.arange(n))
    status = np.where(people["has_12m"], completed, _draw(rng, DROPOUT_EXIT_MIX, n))
    return np.where(people["active"], 0, status)


# --- Tables -----------------------------------------------------------------------------------


def _participant_frame(people: People, ids: pd.CategoricalDtype,
                       params: MemberParams) -> pd.DataFrame:
    n: int = people["n"]
    columns: dict[str, Any] = {
        "participant_id": pd.Categorical.from_codes(np.arange(n), dtype=ids),
        "arm": _categorical(people["comparison"].astype(np.int64), ARMS),
        "team": _categorical(people["team"], _teams(params.n_teams)),
    }
    for name in ("rollout_wave", "intake_year", "intake_quarter"):
        columns[name] = people[name].astype(np.int64)
    for name, (categories, _) in BASE_MIX.items():
        columns[name] = _categorical(people[name], categories)
    columns["n_children"] = people["n_children"].astype(np.int64)
    columns["months_on_assistance_before"] = people["months_on_assistance_before"].astype(
        np.int64)
    columns["exit_status"] = _categorical(people["exit_status"], EXIT_STATUSES)
    columns["months_in_program"] = people["months_in_program"].astype(np.int64)
    return pd.DataFrame(columns)[list(COLUMNS["participant"])]


def _assessment_frame(people: People, ids: pd.CategoricalDtype,
                      rng: np.random.Generator) -> pd.DataFrame:
    """One row per present occasion; states switch from intake to follow-up at a random month."""
    who, seq = np.nonzero(people["present"])
    month = people["months"][who, seq]
    after = month >= people["switch_month"][who]
    weight: Floats = np.clip(month / 12.0, 0.0, 1.0)

    def state(key: str) -> Any:
        return np.where(after, people[f"{key}1"][who], people[f"{key}0"][who])

    def blend(key: str) -> Floats:
        start: Floats = people[f"{key}0"][who]
        end: Floats = people[f"{key}1"][who]
        return start + (end - start) * weight

    bridge = _bridge_at(people, who, seq, month, rng)
    work, housing = state("work"), state("housing")
    columns: dict[str, Any] = {
        "participant_id": pd.Categorical.from_codes(who, dtype=ids),
        "assessment_seq": seq.astype(np.int64), "months_since_intake": month.astype(np.int64)}
    columns.update(_steps(people, who, bridge, work, housing, rng))
    debt = np.where(blend("debt") > 0, blend("debt"), 0.0)
    columns.update({
        "bridge_total": bridge, "household_net_income_month": state("income"),
        "earned_income_month": state("earned"), "income_to_norm_ratio": state("ratio"),
        "on_social_assistance": state("on_assistance"),
        "work_status": _categorical(work, WORK_STATUSES), "hours_worked_week": state("hours"),
        "contract_type": _categorical(state("contract"), CONTRACT_TYPES),
        "total_debt": _money(debt, 100000),
        "debt_arrangement": _categorical(np.where(debt > 0, state("arrangement"), 0),
                                         DEBT_ARRANGEMENTS),
        "savings_amount": _money(blend("savings"), 15150),
        "housing_status": _categorical(housing, HOUSING_STATUSES),
        "housing_cost_ratio": state("cost"),
        "stress_score": _score(blend("stress")),
        "life_satisfaction": _score(blend("satisfaction"))})
    return _with_item_missingness(pd.DataFrame(columns), rng)[list(COLUMNS["assessment"])]


def _bridge_at(people: People, who: Ints, seq: Ints, month: Ints,
               rng: np.random.Generator) -> Floats:
    """bridge_total per occasion: exact intake and 12-month values, noisy in between/after."""
    start, change = people["bridge0"][who], people["change"][who]
    trend = np.where(seq == 1, month / 12.0, 1.0 + 0.1 * (month - 12) / 6.0)
    between = np.clip(start + change * trend + rng.normal(0.0, 4.0, len(who)), 0, 100)
    value: Floats = np.where(seq == 0, start, np.where(seq == 2, people["bridge12"][who], between))
    return np.round(value, 1)


def _steps(people: People, who: Ints, bridge: Floats, work: Ints, housing: Ints,
           rng: np.random.Generator) -> dict[str, Ints]:
    """Bridge sub-pillar steps 1-5, consistent-ish with bridge_total, work and housing."""
    level = 1 + 4 * bridge[:, None] / 100 + people["step_offset"][who]
    steps = np.rint(level + rng.normal(0.0, 0.35, level.shape)).astype(np.int64)
    paid = np.isin(work, [WORK_STATUSES.index(w) for w in PAID_WORK])
    steps[:, 7:] += paid[:, None]  # employment_step and earnings_step
    steps = np.clip(steps, 1, 5)
    steps[:, 0] = np.where(housing == 0, 1, steps[:, 0])
    return {name: steps[:, i] for i, name in enumerate(STEP_COLUMNS)}


def _with_item_missingness(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Blank a few percent of some cells (not measured), completely at random."""
    for column, share in ITEM_MISSING.items():
        blank = rng.random(len(frame)) < share
        values = frame[column]
        if pd.api.types.is_integer_dtype(values.dtype):
            values = values.astype("Int64")  # keeps integers integral once cells are blank
        frame[column] = values.mask(blank)
    return frame


def _goal_frame(people: People, ids: pd.CategoricalDtype,
                rng: np.random.Generator) -> pd.DataFrame:
    """0-15 goals per participant; mobility mentoring sets more and pays incentives."""
    n, comparison, in_program = people["n"], people["comparison"], people["months_in_program"]
    rate = np.where(comparison, 0.3 + 0.05 * in_program,
                    1.0 + 0.45 * np.minimum(in_program, 24) + 0.1 * np.maximum(in_program - 24, 0))
    who = np.repeat(np.arange(n), np.minimum(rng.poisson(np.minimum(rate, 14.0)), 15))
    set_month = np.floor(rng.random(len(who)) * (in_program[who] + 1)).astype(np.int64)
    mix = np.where(people["active"][who][:, None], GOAL_STATUS_MIX["active"],
                   GOAL_STATUS_MIX["closed"])
    status = _draw_rows(rng, mix, np.arange(len(who)))
    achieved = status == 0
    done = np.minimum(set_month + rng.geometric(0.3, len(who)), in_program[who])
    paid = achieved & ~comparison[who]
    incentive = np.where(paid, INCENTIVES[rng.integers(0, len(INCENTIVES), len(who))], 0.0)
    return pd.DataFrame({
        "participant_id": pd.Categorical.from_codes(who, dtype=ids),
        "pillar": _categorical(_draw(rng, GOAL_PILLAR_MIX, len(who)), PILLARS),
        "set_month": set_month, "status": _categorical(status, GOAL_STATUSES),
        "achieved_month": pd.arrays.IntegerArray(np.where(achieved, done, 0), ~achieved),
        "incentive_value": incentive})


def _contact_frame(people: People, ids: pd.CategoricalDtype,
                   rng: np.random.Generator) -> pd.DataFrame:
    """Months with coaching contact; sessions capped so total_sessions stays within 0..120."""
    last = np.minimum(people["months_in_program"], 71)
    who = np.repeat(np.arange(people["n"]), last + 1)
    month = np.arange(len(who)) - np.repeat(np.cumsum(last + 1) - (last + 1), last + 1)
    comparison = people["comparison"][who]
    p_contact = np.where(comparison, np.select([month < 6, month < 12], [0.45, 0.35], 0.25),
                         np.select([month < 6, month < 12], [0.92, 0.75], 0.55))
    keep = (month == 0) | (rng.random(len(who)) < p_contact)
    who, month, comparison = who[keep], month[keep], comparison[keep]
    extra = rng.poisson(np.where(comparison, 0.2, np.where(month < 6, 0.9, 0.5)))
    sessions = np.where(rng.random(len(who)) < 0.08, 0, np.minimum(1 + extra, 8))
    sessions = _cap_running_total(who, sessions, 120)
    minutes = np.where(sessions > 0, sessions * rng.normal(55.0, 15.0, len(who)),
                       rng.uniform(10.0, 45.0, len(who)))
    return pd.DataFrame({
        "participant_id": pd.Categorical.from_codes(who, dtype=ids),
        "month_since_intake": month.astype(np.int64), "n_sessions": sessions.astype(np.int64),
        "contact_minutes": np.clip(np.rint(minutes), 0, 600).astype(np.int64)})


def _cap_running_total(group: Ints, values: Ints, cap: int) -> Ints:
    """Trim values (rows sorted by group) so each group's running total stays <= cap."""
    if len(values) == 0:
        return values
    total = np.cumsum(values)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    before = np.repeat(total[starts] - values[starts], np.diff(np.r_[starts, len(group)]))
    running = total - before
    return np.clip(values - np.maximum(running - cap, 0), 0, None)


# --- Small helpers ----------------------------------------------------------------------------


def _draw(rng: np.random.Generator, probs: Sequence[float] | Floats, size: int) -> Ints:
    p = np.asarray(probs, dtype=np.float64)
    return rng.choice(len(p), size=size, p=p / p.sum())


def _draw_rows(rng: np.random.Generator, table: Floats, row: Ints) -> Ints:
    """One category per element, from the probability row table[row[i]]."""
    cdf = np.cumsum(table, axis=1)
    cdf = cdf / cdf[:, -1:]
    u = rng.random(len(row))
    drawn: Ints = (u[:, None] >= cdf[row]).sum(axis=1).astype(np.int64)
    return drawn


def _categorical(codes: Ints, categories: Sequence[str]) -> pd.Categorical:
    labels = pd.Index(list(categories), dtype=object)
    out: pd.Categorical = pd.Categorical.from_codes(codes, categories=labels)
    return out


def _money(values: Floats, upper: float = 6000.0) -> Floats:
    rounded: Floats = np.round(np.clip(values, 0.0, upper), 2).astype(np.float64)
    return rounded


def _score(values: Floats) -> Ints:
    return np.clip(np.rint(values), 0, 10).astype(np.int64)


# --- CSV ----------------------------------------------------------------------------------------
# pandas' to_csv needs ~30 s for a million participants' assessments. Here every cell is laid out
# as fixed-width 4-byte words padded with NUL bytes (numpy lookups); the padding is then dropped.

_CHUNK_ROWS = 1 << 15  # rows per block: a few MB, cache-friendly
Words = npt.NDArray[np.uint32]
CellWriter = Callable[[int, int], Words]


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write the node's CSV format: header, `,`, empty = missing, true/false, plain numbers."""
    writers = [_cell_writer(frame[name], DECIMALS.get(str(name), 2)) for name in frame.columns]
    with Path(path).open("wb") as handle:
        handle.write((",".join(map(str, frame.columns)) + "\n").encode("ascii"))
        for start in range(0, len(frame), _CHUNK_ROWS):
            stop = min(start + _CHUNK_ROWS, len(frame))
            handle.write(_lay_out([writer(start, stop) for writer in writers]))


def _lay_out(cells: list[Words]) -> bytes:
    """Join cell blocks with commas into lines, then drop the NUL padding."""
    widths = [cell.shape[1] + 1 for cell in cells]
    matrix = np.empty((cells[0].shape[0], sum(widths)), np.uint32)
    end = 0
    for cell, width in zip(cells, widths, strict=True):
        matrix[:, end:end + width - 1] = cell
        matrix[:, end + width - 1] = _COMMA
        end += width
    matrix[:, -1] = _NEWLINE
    flat = matrix.view(np.uint8).ravel()
    return np.compress(flat != 0, flat).tobytes()


def _cell_writer(series: pd.Series, decimals: int) -> CellWriter:
    """Padded cells of rows [start, stop) of one column, by its dtype."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return _label_writer(series.cat.codes.to_numpy(), series.cat.categories)
    if pd.api.types.is_bool_dtype(series.dtype):
        return _label_writer(series.to_numpy(dtype=np.int8, na_value=-1), ["false", "true"])
    if pd.api.types.is_integer_dtype(series.dtype):
        values = series.to_numpy(dtype=np.int64, na_value=0)
        missing = series.isna().to_numpy()
        return lambda a, b: _blank(_int_cells(values[a:b]), missing[a:b])
    if pd.api.types.is_float_dtype(series.dtype):
        reals = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return lambda a, b: _real_cells(reals[a:b], decimals)
    codes, uniques = pd.factorize(series)
    return _label_writer(codes, uniques)


def _label_writer(codes: npt.NDArray[np.integer[Any]], labels: Any) -> CellWriter:
    table = _label_table(labels)
    return lambda a, b: table[codes[a:b]]  # code -1 (missing) picks the empty last row


def _label_table(labels: Any) -> Words:
    """One NUL-padded row of ASCII bytes per label, plus an empty last row."""
    encoded = np.append(np.asarray(labels, dtype=object).astype(np.bytes_), b"")
    width = -(-encoded.dtype.itemsize // 4) * 4
    return np.frombuffer(encoded.astype(f"S{width}").tobytes(), np.uint32).reshape(-1, width // 4)


def _words(strings: list[str]) -> Words:
    """Each string (at most 4 ASCII bytes) right-aligned in one NUL-padded word."""
    return np.frombuffer(b"".join(s.encode("ascii").rjust(4, b"\0") for s in strings), np.uint32)


# Three-digit groups: 0..999 zero-filled, 1000..1999 unpadded (leading group), 2000 empty.
_GROUPS = _words([f"{i:03d}" for i in range(1000)] + [str(i) for i in range(1000)] + [""])
_FRACTIONS = {d: _words([("." + f"{f:0{d}d}".rstrip("0")) if f else "" for f in range(10**d)])
              for d in (1, 2, 3)}
_COMMA, _NEWLINE = _words([",", "\n"])


def _int_cells(values: Ints) -> Words:
    """Decimal digits of non-negative integers, three digits per word."""
    if len(values) and values.min() < 0:
        raise ValueError("negative values are outside every public bound of the data matrix")
    top = int(values.max()) if len(values) else 0
    n_groups = max(1, (len(str(top)) + 2) // 3)
    cells = np.empty((len(values), n_groups), np.uint32)
    rest = values
    for k in range(n_groups):
        rest, group = np.divmod(rest, 1000)
        lead = np.where((group > 0) | (k == 0), 1000 + group, 2000)
        cells[:, n_groups - 1 - k] = _GROUPS[np.where(rest > 0, group, lead)]
    return cells


def _real_cells(values: Floats, decimals: int) -> Words:
    """Fixed-point digits with at most `decimals` decimals and no trailing zeros."""
    missing = np.isnan(values)
    scaled = np.rint(np.where(missing, 0.0, values) * 10**decimals).astype(np.int64)
    whole, fraction = np.divmod(scaled, 10**decimals)
    fraction_cells = _FRACTIONS[decimals][fraction][:, None]
    return _blank(np.hstack([_int_cells(whole), fraction_cells]), missing)


def _blank(cells: Words, missing: Bools) -> Words:
    cells[missing] = 0
    return cells


# --- Realised truth, read back as a node sees the files -------------------------------------


def sample_truth(folder: Path) -> SampleTruth:
    """The realised aggregates of one member folder (as written to truth.json)."""
    return _summarise(_read_outcomes(Path(folder)))


def _read_outcomes(folder: Path) -> pd.DataFrame:
    """One row per participant: arm, household type, intake and 12-month values."""
    read: dict[str, Any] = {"keep_default_na": False, "na_values": [""],
                            "dtype": {"participant_id": str, "arm": str, "household_type": str,
                                      "work_status": str, "on_social_assistance": str}}
    people = pd.read_csv(folder / "participant.csv", **read,
                         usecols=["participant_id", "arm", "household_type"])
    occasions = pd.read_csv(folder / "assessment.csv", **read, usecols=[
        "participant_id", "assessment_seq", "months_since_intake", "bridge_total",
        "income_to_norm_ratio", "on_social_assistance", "work_status"])
    row = pd.Index(people["participant_id"]).get_indexer(occasions["participant_id"])
    month = occasions["months_since_intake"].to_numpy()
    intake = _pick(row, occasions["assessment_seq"].to_numpy() == 0, month, 0, len(people))
    m6 = _pick(row, (month >= WINDOW_6M[0]) & (month <= WINDOW_6M[1]), month, 6, len(people))
    m12 = _pick(row, (month >= WINDOW_12M[0]) & (month <= WINDOW_12M[1]), month, 12,
                len(people))
    return pd.DataFrame({
        "arm": people["arm"], "household_type": people["household_type"],
        "has_6m": m6 >= 0, "has_12m": m12 >= 0,
        "bridge0": _take(occasions["bridge_total"], intake),
        "ratio0": _take(occasions["income_to_norm_ratio"], intake),
        "bridge12": _take(occasions["bridge_total"], m12),
        "work12": _take(occasions["work_status"], m12),
        "assistance12": _take(occasions["on_social_assistance"], m12)})


def _pick(row: Ints, eligible: Bools, month: Ints, target: int, n: int) -> Ints:
    """Per participant, the eligible occasion nearest `target` months (earlier on a tie);
    -1 if none."""
    candidates = np.flatnonzero(eligible & (row >= 0))
    order = candidates[np.lexsort((month[candidates], np.abs(month[candidates] - target)))]
    owners, first = np.unique(row[order], return_index=True)
    chosen = np.full(n, -1, np.int64)
    chosen[owners] = order[first]
    return chosen


def _take(column: pd.Series, chosen: Ints) -> pd.Series:
    """column[chosen] with missing where chosen is -1."""
    values = column.iloc[np.maximum(chosen, 0)].reset_index(drop=True)
    return values.mask(chosen < 0)


def _summarise(outcomes: pd.DataFrame) -> SampleTruth:
    n = len(outcomes)
    followed = outcomes[outcomes["has_12m"]]
    change = outcomes["bridge12"] - outcomes["bridge0"]
    by_arm = {arm: _change_stats(change[outcomes["arm"] == arm]) for arm in ARMS}
    household = outcomes["household_type"].value_counts()
    work = followed["work12"].dropna()
    assistance = followed["assistance12"].dropna()
    return SampleTruth(
        n_participants=n, n_6m=int(outcomes["has_6m"].sum()), n_12m=len(followed),
        share_6m=_ratio(int(outcomes["has_6m"].sum()), n), share_12m=_ratio(len(followed), n),
        bridge_change={"all": _change_stats(change), **by_arm},
        intake_bridge_mean=_mean(outcomes["bridge0"]),
        intake_income_ratio_mean=_mean(outcomes["ratio0"]),
        household_type_share={h: _ratio(int(household.get(h, 0)), n) or 0.0
                              for h in HOUSEHOLD_TYPES},
        paid_work_share_12m=_ratio(int(work.isin(PAID_WORK).sum()), len(work)),
        off_assistance_share_12m=_ratio(int((assistance == "false").sum()), len(assistance)),
        intake_bridge_mean_followed=_mean(followed["bridge0"]),
        intake_bridge_mean_not_followed=_mean(outcomes.loc[~outcomes["has_12m"], "bridge0"]))


def _change_stats(change: pd.Series) -> ChangeStats:
    values = change.dropna()
    sd = float(values.std(ddof=1)) if len(values) > 1 else None
    return ChangeStats(n=len(values), mean=_mean(values), sd=sd)


def _mean(values: pd.Series) -> float | None:
    present = values.dropna()
    return float(present.mean()) if len(present) else None


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None
