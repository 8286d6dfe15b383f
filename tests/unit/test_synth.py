"""Synthetic networks: node CSV format, public bounds, determinism and the recorded truth.

The data-matrix YAML is read here only to cross-check the generator's own copy of it (the
coordinator never imports the node). Statistical checks use theory-based tolerances: 4 standard
errors, with fixed seeds so the tests are deterministic.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from bridgestat.coordinator.demo import synth
from bridgestat.coordinator.demo.synth import NetworkTruth, SampleTruth, write_csv, write_network

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "node" / "schemas" / "data-matrix-1.0.0.yaml"
TABLES = ("participant", "assessment", "goal", "coaching_contact")
PAID_WORK = {"paid_with_support", "paid_part_time", "paid_full_time", "self_employed"}
INTEGER = re.compile(r"^[0-9]+$")
REAL = re.compile(r"^[0-9]+(\.[0-9]{1,4})?$")
KEY = re.compile(r"^p[0-9a-f]{8}$")


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    return {table["name"]: table for table in doc["tables"]}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NetworkTruth]:
    out = tmp_path_factory.mktemp("network")
    return out, write_network(out, members=5, seed=11)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NetworkTruth]:
    out = tmp_path_factory.mktemp("large")
    return out, write_network(out, members=1, seed=3, sizes=[5000])


def read_raw(path: Path) -> pd.DataFrame:
    """Every cell as written (text), empty cells as missing."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])


def read_typed(path: Path) -> pd.DataFrame:
    """As a node would load it: numbers parsed, text columns kept as text."""
    text = {"participant_id", "arm", "household_type", "work_status", "on_social_assistance"}
    return pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False, na_values=[""])


def written_columns(table: dict[str, Any]) -> list[str]:
    return [c["name"] for c in table["columns"] if "derived" not in c]


# --- the generator's copy of the data matrix ------------------------------------------------------


def test_columns_and_vocabularies_match_the_schema(schema: dict[str, Any]) -> None:
    vocabularies = {"arm": synth.ARMS, "referral_route": synth.REFERRAL_ROUTES,
                    "age_band": synth.AGE_BANDS, "gender": synth.GENDERS,
                    "household_type": synth.HOUSEHOLD_TYPES,
                    "education_level": synth.EDUCATION_LEVELS,
                    "main_income_source_t0": synth.INCOME_SOURCES,
                    "exit_status": synth.EXIT_STATUSES, "work_status": synth.WORK_STATUSES,
                    "contract_type": synth.CONTRACT_TYPES,
                    "debt_arrangement": synth.DEBT_ARRANGEMENTS,
                    "housing_status": synth.HOUSING_STATUSES, "pillar": synth.PILLARS,
                    "status": synth.GOAL_STATUSES}
    assert set(synth.COLUMNS) == set(TABLES)
    for name in TABLES:
        assert list(synth.COLUMNS[name]) == written_columns(schema[name])
        for column in schema[name]["columns"]:
            if "categories" in column:
                assert tuple(column["categories"]) == vocabularies[column["name"]]


# --- format, bounds and keys ------------------------------------------------------------------


def test_every_value_is_inside_the_public_bounds(network: tuple[Path, NetworkTruth],
                                                 schema: dict[str, Any]) -> None:
    out, truth = network
    for member in truth.members:
        for name in TABLES:
            frame = read_raw(out / member.name / f"{name}.csv")
            assert list(frame.columns) == written_columns(schema[name])
            for column in schema[name]["columns"]:
                if "derived" not in column:
                    check_column(frame[column["name"]].dropna(), column, member.teams)


def check_column(cells: pd.Series, column: dict[str, Any], teams: tuple[str, ...]) -> None:
    kind, where = column["type"], column["name"]
    if kind == "key":
        assert cells.str.fullmatch(KEY.pattern).all(), where
    elif kind == "boolean":
        assert set(cells) <= {"true", "false"}, where
    elif kind == "categorical":
        allowed = set(teams) if column.get("declared_by_node") else set(column["categories"])
        assert set(cells) <= allowed, where
    else:
        pattern = INTEGER if kind == "integer" else REAL
        assert cells.str.fullmatch(pattern.pattern).all(), where
        values = cells.astype(float)
        assert values.between(column["lower"], column["upper"]).all(), where


def test_keys_unique_and_rows_per_participant_capped(network: tuple[Path, NetworkTruth],
                                                     schema: dict[str, Any]) -> None:
    out, truth = network
    for member in truth.members:
        assert 2 <= len(member.teams) <= 6
        frames = {name: read_raw(out / member.name / f"{name}.csv") for name in TABLES}
        ids = set(frames["participant"]["participant_id"])
        assert len(ids) == len(frames["participant"]) == member.n_participants
        for name, frame in frames.items():
            table = schema[name]
            if "unique" in table:
                assert not frame.duplicated(table["unique"]).any(), name
            rows = frame.groupby("participant_id").size()
            assert rows.max() <= table["max_rows_per_participant"], name
            assert set(frame["participant_id"]) <= ids, name


def test_derived_columns_stay_inside_their_bounds(network: tuple[Path, NetworkTruth],
                                                  schema: dict[str, Any]) -> None:
    out, truth = network
    bounds = {c["name"]: c["upper"] for c in schema["participant"]["columns"] if "derived" in c}
    for member in truth.members:
        goals = read_typed(out / member.name / "goal.csv")
        contacts = read_typed(out / member.name / "coaching_contact.csv")
        assert contacts.groupby("participant_id")["n_sessions"].sum().max() \
            <= bounds["total_sessions"]
        assert goals.groupby("participant_id").size().max() <= bounds["goals_set"]
        assert goals.groupby("participant_id").size().max() <= 15


def test_timing_is_consistent(network: tuple[Path, NetworkTruth]) -> None:
    out, truth = network
    for member in truth.members:
        folder = out / member.name
        people = read_typed(folder / "participant.csv").set_index("participant_id")
        program = people["months_in_program"]
        occasions = read_typed(folder / "assessment.csv")
        intake = occasions[occasions["assessment_seq"] == 0]
        assert set(intake["participant_id"]) == set(people.index)
        assert (intake["months_since_intake"] == 0).all()
        twelve = occasions[occasions["months_since_intake"].between(9, 15)]
        assert not twelve["participant_id"].duplicated().any()
        assert twelve["months_since_intake"].between(10, 14).all()
        six = occasions[occasions["assessment_seq"] == 1]["months_since_intake"]
        assert six.between(5, 7).all()
        for name, month in (("assessment", "months_since_intake"),
                            ("coaching_contact", "month_since_intake"), ("goal", "set_month")):
            frame = read_typed(folder / f"{name}.csv")
            assert (frame[month].to_numpy() <= program[frame["participant_id"]].to_numpy()).all()
        goals = read_typed(folder / "goal.csv")
        achieved = goals["status"] == "achieved"
        assert goals["achieved_month"].notna().eq(achieved).all()
        assert (goals.loc[achieved, "achieved_month"] >= goals.loc[achieved, "set_month"]).all()


def test_csv_writer_format(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "participant_id": ["p0000000a", "p000000ff", "p12345678"],
        "count": np.array([0, 1000, 120], dtype=np.int64),
        "maybe": pd.array([7, None, 10], dtype="Int64"),
        "money": [0.0, 1000.5, 99999.99],
        "bridge_total": [0.06, 12.0, float("nan")],
        "income_to_norm_ratio": [1.25, 0.001, 4.0],
        "flag": [True, False, True],
        "kind": pd.Categorical.from_codes([0, -1, 1], categories=["none", "paid_full_time"])})
    write_csv(frame, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text(encoding="ascii") == (
        "participant_id,count,maybe,money,bridge_total,income_to_norm_ratio,flag,kind\n"
        "p0000000a,0,7,0,0.1,1.25,true,none\n"
        "p000000ff,1000,,1000.5,12,0.001,false,\n"
        "p12345678,120,10,99999.99,,4,true,paid_full_time\n")


# --- determinism and sizes ----------------------------------------------------------------------


def file_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    write_network(tmp_path / "a", members=3, seed=5)
    write_network(tmp_path / "b", members=3, seed=5)
    write_network(tmp_path / "c", members=3, seed=6)
    first, again, other = (file_bytes(tmp_path / d) for d in "abc")
    assert len(first) == 3 * 4 + 1
    assert first == again
    assert all(first[name] != other[name] for name in first)


def test_default_sizes_are_spread_between_80_and_900(tmp_path: Path) -> None:
    for seed in (1, 2):
        truth = write_network(tmp_path / str(seed), members=10, seed=seed)
        sizes = [m.n_participants for m in truth.members]
        assert all(80 <= n <= 900 for n in sizes)
        assert max(sizes) / min(sizes) > 3
        assert sum(m.has_comparison_arm for m in truth.members) == 5
        assert [m.name for m in truth.members] == [f"member-{k:02d}" for k in range(1, 11)]


def test_sizes_override_and_validation(tmp_path: Path) -> None:
    truth = write_network(tmp_path / "n", members=2, seed=4, sizes=[3, 120])
    assert [m.n_participants for m in truth.members] == [3, 120]
    default = write_network(tmp_path / "d", members=2, seed=4)
    assert [m.params for m in truth.members] == [m.params for m in default.members]
    with pytest.raises(ValueError, match="sizes"):
        write_network(tmp_path / "x", members=2, seed=4, sizes=[100])
    with pytest.raises(ValueError, match="members"):
        write_network(tmp_path / "y", members=0, seed=4)


def test_generate_member_returns_the_tables_in_schema_order() -> None:
    params = synth.draw_member_params(synth.DEFAULT_NETWORK, True, np.random.default_rng(1))
    tables = synth.generate_member("m", 200, params, np.random.default_rng(2))
    assert list(tables) == list(TABLES)
    for name, frame in tables.items():
        assert tuple(frame.columns) == synth.COLUMNS[name]
    assert len(tables["participant"]) == 200


# --- the recorded truth ---------------------------------------------------------------------------


def test_truth_json_round_trips_and_has_the_documented_layout(
        network: tuple[Path, NetworkTruth]) -> None:
    out, truth = network
    assert NetworkTruth.from_json(out / "truth.json") == truth
    doc = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    assert set(doc) == {"seed", "members", "network"}
    assert doc["seed"] == 11
    assert set(doc["members"][0]) == {"name", "n_participants", "teams", "has_comparison_arm",
                                      "params", "sample"}
    assert {"bridge_change_mean_mm", "tau", "sample"} <= set(doc["network"])
    assert set(doc["network"]["sample"]["bridge_change"]) == {"all", "mobility_mentoring",
                                                              "comparison"}


def recompute(folders: list[Path]) -> dict[str, Any]:
    """The sample truth, recomputed from the CSV files independently of the generator."""
    rows = []
    for folder in folders:
        people = read_typed(folder / "participant.csv")
        occasions = read_typed(folder / "assessment.csv")
        intake = occasions[occasions["assessment_seq"] == 0]
        window = occasions[occasions["months_since_intake"].between(9, 15)].copy()
        window["distance"] = (window["months_since_intake"] - 12).abs()
        twelve = window.sort_values(["distance", "months_since_intake"]).groupby(
            "participant_id").head(1)
        six = occasions[occasions["months_since_intake"].between(3, 9)]
        merged = people.merge(intake, on="participant_id", how="left").merge(
            twelve, on="participant_id", how="left", suffixes=("", "_12"))
        merged["has_6m"] = merged["participant_id"].isin(six["participant_id"])
        merged["member"] = folder.name
        rows.append(merged)
    data = pd.concat(rows, ignore_index=True)
    followed = data[data["months_since_intake_12"].notna()]
    change = followed["bridge_total_12"] - followed["bridge_total"]
    n = len(data)
    return {
        "n_participants": n, "n_6m": int(data["has_6m"].sum()), "n_12m": len(followed),
        "share_6m": data["has_6m"].mean(), "share_12m": len(followed) / n,
        "change": change, "arm": followed["arm"],
        "intake_bridge_mean": data["bridge_total"].mean(),
        "intake_income_ratio_mean": data["income_to_norm_ratio"].mean(),
        "household": data["household_type"].value_counts() / n,
        "paid_work_share_12m": followed["work_status_12"].isin(PAID_WORK).mean(),
        "off_assistance_share_12m": (followed["on_social_assistance_12"] == "false").mean()}


def approx(value: float) -> Any:
    """Equal up to float summation order (pandas vs. the generator's own arithmetic)."""
    return pytest.approx(value, rel=1e-9, abs=1e-12)


def assert_sample_matches(sample: SampleTruth, expected: dict[str, Any]) -> None:
    for key in ("n_participants", "n_6m", "n_12m"):
        assert getattr(sample, key) == expected[key], key
    for key in ("share_6m", "share_12m", "intake_bridge_mean", "intake_income_ratio_mean",
                "paid_work_share_12m", "off_assistance_share_12m"):
        assert getattr(sample, key) == approx(expected[key]), key
    for arm in ("all", *synth.ARMS):
        values = expected["change"] if arm == "all" else \
            expected["change"][expected["arm"] == arm]
        stats = sample.bridge_change[arm]
        assert stats.n == len(values)
        if len(values):
            assert stats.mean == approx(values.mean())
            assert stats.sd == approx(values.std(ddof=1))
        else:
            assert stats.mean is None and stats.sd is None
    for household, share in sample.household_type_share.items():
        assert share == approx(expected["household"].get(household, 0.0))


def test_sample_truth_equals_a_recomputation_from_the_files(
        network: tuple[Path, NetworkTruth]) -> None:
    out, truth = network
    for member in truth.members:
        assert_sample_matches(member.sample, recompute([out / member.name]))
        assert member.sample == synth.sample_truth(out / member.name)
    pooled = recompute([out / m.name for m in truth.members])
    assert_sample_matches(truth.network_sample, pooled)
    assert truth.network_sample.n_participants == sum(m.n_participants for m in truth.members)


def within(value: float | None, target: float, se: float, k: float = 4.0) -> bool:
    assert value is not None
    return abs(value - target) <= k * se


def test_large_member_recovers_its_population_parameters(
        large: tuple[Path, NetworkTruth]) -> None:
    _, truth = large
    member = truth.members[0]
    params, sample = member.params, member.sample
    assert member.has_comparison_arm
    sd = params.bridge_change_sd
    for arm, mean in (("mobility_mentoring", params.bridge_change_mean_mm),
                      ("comparison", params.bridge_change_mean_comparison)):
        stats = sample.bridge_change[arm]
        assert stats.n > 500
        assert within(stats.mean, mean, sd / math.sqrt(stats.n)), arm
        assert within(stats.sd, sd, sd / math.sqrt(2 * (stats.n - 1))), arm
    n = sample.n_participants
    assert within(sample.intake_bridge_mean, params.intake_bridge_mean,
                  params.intake_bridge_sd / math.sqrt(n))
    share = params.comparison_share
    entry = (1 - share) * params.paid_work_entry_mm + share * params.paid_work_entry_comparison
    paid = params.paid_work_intake * params.paid_work_stay + (1 - params.paid_work_intake) * entry
    assert within(sample.paid_work_share_12m, paid, binomial_se(paid, sample.n_12m))
    for household, p in params.mix["household_type"].items():
        assert within(sample.household_type_share[household], p, binomial_se(p, n)), household


def binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def test_dropout_is_in_range_and_completely_at_random(large: tuple[Path, NetworkTruth]) -> None:
    out, truth = large
    member = truth.members[0]
    sample, params = member.sample, member.params
    n = sample.n_participants
    assert sample.share_6m is not None and sample.share_12m is not None
    assert 0.15 <= 1 - sample.share_6m <= 0.25
    assert 0.30 <= 1 - sample.share_12m <= 0.40
    assert within(1 - sample.share_6m, params.missing_6m, binomial_se(params.missing_6m, n))
    assert within(1 - sample.share_12m, params.missing_12m, binomial_se(params.missing_12m, n))
    occasions = read_typed(out / member.name / "assessment.csv")
    intake = occasions[occasions["assessment_seq"] == 0].set_index("participant_id")
    followed = intake.index.isin(occasions.loc[occasions["assessment_seq"] == 2, "participant_id"])
    kept, lost = intake.loc[followed, "bridge_total"], intake.loc[~followed, "bridge_total"]
    se = math.sqrt(kept.var() / len(kept) + lost.var() / len(lost))
    assert within(kept.mean(), lost.mean(), se)


def test_network_truth_records_the_population_parameters(
        network: tuple[Path, NetworkTruth]) -> None:
    _, truth = network
    net = truth.network
    assert (net.bridge_change_mean_mm, net.tau) == (8.0, 2.0)
    for member in truth.members:
        p = member.params
        assert p.bridge_change_mean_mm == pytest.approx(net.bridge_change_mean_mm
                                                        + p.member_effect)
        assert p.bridge_change_mean_comparison == pytest.approx(
            net.bridge_change_mean_comparison + p.member_effect)
        assert (p.comparison_share > 0) == member.has_comparison_arm
        assert member.sample.bridge_change["comparison"].n == 0 or member.has_comparison_arm
