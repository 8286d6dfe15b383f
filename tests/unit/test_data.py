"""Tests for node/data.py: reading a member's CSV folder, checking it, converting it."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from bridgestat.node.data import (
    MAX_STORED_PER_KIND,
    CheckReport,
    MemberData,
    Problem,
    check_folder,
    check_tables,
    load_folder,
    read_csv_folder,
)
from bridgestat.node.errors import DataError
from bridgestat.node.schema import ColumnType, Schema, load_schema

Rows = list[dict[str, str]]
Cells = npt.NDArray[np.object_]
TEAMS = ("north", "south")


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema().with_declared_categories({"participant.team": TEAMS})


def _columns(schema: Schema, table: str) -> list[str]:
    """The CSV header of a table: its schema columns except the derived ones."""
    return [c.name for c in schema.table(table).columns if c.derived is None]


def valid_tables(schema: Schema) -> dict[str, Rows]:
    """5 participants with intake and 12-month assessments, some goals and contacts.

    Line numbers: participant p<i> is on line i + 1; assessment rows go p1 seq 0 (line 2),
    p1 seq 1 (line 3), p2 seq 0 (line 4), ...; goals p1, p1, p1, p2 (lines 2-5);
    contacts p1 month 0, p1 month 1, p2 month 0 (lines 2-4).
    """
    participants = [_participant(schema, i) for i in range(1, 6)]
    assessments = [_assessment(schema, i, seq) for i in range(1, 6) for seq in (0, 1)]
    goals = [_goal("p1", "achieved"), _goal("p1", "achieved"), _goal("p1", "ongoing"),
             _goal("p2", "not_achieved")]
    contacts = [_contact("p1", 0, 2), _contact("p1", 1, 3), _contact("p2", 0, 1)]
    return {"participant": participants, "assessment": assessments, "goal": goals,
            "coaching_contact": contacts}


def _participant(schema: Schema, i: int) -> dict[str, str]:
    row = dict.fromkeys(_columns(schema, "participant"), "")
    row.update(participant_id=f"p{i}", arm="mobility_mentoring" if i % 2 else "comparison",
               team=TEAMS[i % 2], rollout_wave=str(i), intake_year="2024",
               intake_quarter=str(1 + i % 4), referral_route="debt_assistance",
               age_band="28-35", gender="female", household_type="single_parent",
               n_children=str(i % 3), education_level="low",
               main_income_source_t0="social_assistance", months_on_assistance_before="24",
               exit_status="active", months_in_program="14")
    if i == 5:
        row.update(gender="", n_children="")  # missing = not measured
    return row


def _assessment(schema: Schema, i: int, seq: int) -> dict[str, str]:
    row = dict.fromkeys(_columns(schema, "assessment"), "")
    steps = {c: str(1 + (i + seq) % 5) for c in row if c.endswith("_step")}
    row.update(steps, participant_id=f"p{i}", assessment_seq=str(seq),
               months_since_intake=str(12 * seq), bridge_total=f"{40 + 10 * seq + i}.5",
               household_net_income_month="1500.25", earned_income_month="0",
               income_to_norm_ratio="1.1", on_social_assistance="true" if seq == 0 else "false",
               work_status="none", hours_worked_week="0", contract_type="none",
               total_debt="12000", debt_arrangement="payment_plans", savings_amount="150",
               housing_status="social_rent", housing_cost_ratio="0.35", stress_score="7",
               life_satisfaction="5")
    return row


def _goal(pid: str, status: str) -> dict[str, str]:
    return {"participant_id": pid, "pillar": "financial_management", "set_month": "1",
            "status": status, "achieved_month": "6" if status == "achieved" else "",
            "incentive_value": "50"}


def _contact(pid: str, month: int, sessions: int) -> dict[str, str]:
    return {"participant_id": pid, "month_since_intake": str(month),
            "n_sessions": str(sessions), "contact_minutes": str(45 * sessions)}


def write_folder(folder: Path, tables: dict[str, Rows]) -> Path:
    """Write each table as <name>.csv with the header taken from its first row."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


def check(tmp_path: Path, schema: Schema,
          tables: dict[str, Rows]) -> tuple[CheckReport, MemberData]:
    return check_folder(write_folder(tmp_path / "data", tables), schema)


def only(report: CheckReport, kind: str) -> Problem:
    found = [p for p in report.problems if p.kind == kind]
    assert len(found) == 1, report.format()
    return found[0]


def kinds(report: CheckReport) -> set[str]:
    return {p.kind for p in report.problems}


# --------------------------------------------------------------------------- valid data


def test_valid_folder_is_servable_with_typed_frames(tmp_path: Path, schema: Schema) -> None:
    report, data = check(tmp_path, schema, valid_tables(schema))
    assert report.problems == ()
    assert report.servable
    assert dict(report.rows) == {"participant": 5, "assessment": 10, "goal": 4,
                                 "coaching_contact": 3}
    for table in schema.tables:
        assert list(data.tables[table.name].columns) == [c.name for c in table.columns]
    people = data.tables["participant"]
    assert pd.api.types.is_string_dtype(people["participant_id"].dtype)
    assert list(people["participant_id"]) == ["p1", "p2", "p3", "p4", "p5"]
    assert people["rollout_wave"].dtype == np.float64
    assert list(people["rollout_wave"]) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert np.isnan(people["n_children"].iloc[4])
    assert list(people["arm"].cat.categories) == ["mobility_mentoring", "comparison"]
    assert list(people["arm"].cat.codes) == [0, 1, 0, 1, 0]
    assert list(people["team"].cat.categories) == list(TEAMS)
    assert list(people["gender"].cat.codes) == [0, 0, 0, 0, -1]
    for col in schema.table("participant").columns:
        if col.type.categorical:
            assert people[col.name].dtype == pd.CategoricalDtype(list(col.categories))


def test_derived_columns_are_computed(tmp_path: Path, schema: Schema) -> None:
    _, data = check(tmp_path, schema, valid_tables(schema))
    people = data.tables["participant"]
    for name in ("total_sessions", "goals_set", "goals_achieved"):
        assert people[name].dtype == np.float64
    assert list(people["total_sessions"]) == [5.0, 1.0, 0.0, 0.0, 0.0]
    assert list(people["goals_set"]) == [3.0, 1.0, 0.0, 0.0, 0.0]
    assert list(people["goals_achieved"]) == [2.0, 0.0, 0.0, 0.0, 0.0]


def test_assessment_types(tmp_path: Path, schema: Schema) -> None:
    _, data = check(tmp_path, schema, valid_tables(schema))
    assessment = data.tables["assessment"]
    assert assessment["bridge_total"].tolist()[:2] == [41.5, 51.5]
    assert assessment["months_since_intake"].tolist()[:2] == [0.0, 12.0]
    social = assessment["on_social_assistance"]
    assert list(social.cat.categories) == ["false", "true"]
    assert social.tolist()[:2] == ["true", "false"]
    assert assessment["work_status"].cat.categories[0] == "none"


def test_lenient_spellings_are_accepted(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    for row, value in zip(tables["assessment"], ["TRUE", "False", "1", "0", " true "],
                          strict=False):
        row["on_social_assistance"] = value
    tables["assessment"][0]["debt_step"] = "3.0"
    tables["participant"][0]["household_type"] = " single "
    report, data = check(tmp_path, schema, tables)
    assert report.problems == ()
    social = data.tables["assessment"]["on_social_assistance"].tolist()[:5]
    assert social == ["true", "false", "true", "false", "true"]
    assert data.tables["assessment"]["debt_step"].iloc[0] == 3.0
    assert data.tables["participant"]["household_type"].iloc[0] == "single"


def test_blank_lines_keep_line_numbers(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["participant"][2]["household_type"] = "xyz"  # line 4, line 5 after the blank
    folder = write_folder(tmp_path / "data", tables)
    path = folder / "participant.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([*lines[:2], "", *lines[2:], ""]) + "\n", encoding="utf-8")
    report, data = check_folder(folder, schema)
    assert only(report, "not_in_vocabulary").row == 5
    assert len(data.tables["participant"]) == 5


# --------------------------------------------------------------------------- file problems


def test_missing_file(tmp_path: Path, schema: Schema) -> None:
    folder = write_folder(tmp_path / "data", valid_tables(schema))
    (folder / "goal.csv").unlink()
    report, data = check_folder(folder, schema)
    problem = only(report, "missing_file")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "goal.csv", None, None, "error")
    assert not report.servable
    assert len(data.tables["goal"]) == 0
    assert list(data.tables["goal"].columns) == [c.name for c in schema.table("goal").columns]


def test_missing_folder(tmp_path: Path, schema: Schema) -> None:
    report, _ = check_folder(tmp_path / "nowhere", schema)
    assert [p.kind for p in report.problems] == ["missing_file"] * 4
    assert not report.servable


def test_unreadable_file_not_utf8(tmp_path: Path, schema: Schema) -> None:
    folder = write_folder(tmp_path / "data", valid_tables(schema))
    (folder / "goal.csv").write_bytes("participant_id,pillar\nb\xe9\n".encode("latin-1"))
    report, _ = check_folder(folder, schema)
    problem = only(report, "unreadable_file")
    assert (problem.file, problem.severity) == ("goal.csv", "error")
    assert "UTF-8" in problem.message
    assert "missing_file" not in kinds(report)


def test_unreadable_file_ragged_row(tmp_path: Path, schema: Schema) -> None:
    folder = write_folder(tmp_path / "data", valid_tables(schema))
    path = folder / "coaching_contact.csv"
    path.write_text(path.read_text(encoding="utf-8") + "p3,4,1,45,extra\n", encoding="utf-8")
    report, _ = check_folder(folder, schema)
    problem = only(report, "unreadable_file")
    assert problem.file == "coaching_contact.csv"
    assert "line 5" in problem.message


def test_empty_file_is_unreadable(tmp_path: Path, schema: Schema) -> None:
    folder = write_folder(tmp_path / "data", valid_tables(schema))
    (folder / "goal.csv").write_text("", encoding="utf-8")
    report, _ = check_folder(folder, schema)
    assert only(report, "unreadable_file").file == "goal.csv"


def test_header_only_file_has_no_rows(tmp_path: Path, schema: Schema) -> None:
    folder = write_folder(tmp_path / "data", valid_tables(schema))
    (folder / "goal.csv").write_text(",".join(_columns(schema, "goal")) + "\n",
                                     encoding="utf-8")
    report, data = check_folder(folder, schema)
    assert report.servable
    assert report.rows["goal"] == 0
    assert list(data.tables["participant"]["goals_set"]) == [0.0] * 5


def test_missing_participant_file_reports_only_that(tmp_path: Path, schema: Schema) -> None:
    folder = write_folder(tmp_path / "data", valid_tables(schema))
    (folder / "participant.csv").unlink()
    report, _ = check_folder(folder, schema)
    assert [(p.file, p.kind) for p in report.problems] == [("participant.csv", "missing_file")]


def test_extra_fields_without_header_are_a_warning(tmp_path: Path, schema: Schema) -> None:
    folder = write_folder(tmp_path / "data", valid_tables(schema))
    path = folder / "coaching_contact.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join([lines[0], *(f"{line}," for line in lines[1:])]) + "\n",
                    encoding="utf-8")
    report, data = check_folder(folder, schema)
    problem = only(report, "unknown_column")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "coaching_contact.csv", None, None, "warning")
    assert report.servable
    assert list(data.tables["participant"]["total_sessions"]) == [5.0, 1.0, 0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- column problems


def test_missing_column(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    for row in tables["assessment"]:
        del row["debt_step"]
    report, data = check(tmp_path, schema, tables)
    problem = only(report, "missing_column")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "assessment.csv", None, "debt_step", "error")
    assert data.tables["assessment"]["debt_step"].isna().all()


def test_unknown_column_is_a_warning(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    for row in tables["goal"]:
        row["notes"] = "free text"
    report, data = check(tmp_path, schema, tables)
    problem = only(report, "unknown_column")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "goal.csv", None, "notes", "warning")
    assert report.servable
    assert "notes" not in data.tables["goal"].columns


def test_derived_column_in_file_is_ignored(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    for row in tables["participant"]:
        row["total_sessions"] = "99"
    report, data = check(tmp_path, schema, tables)
    problem = only(report, "unknown_column")
    assert (problem.column, problem.severity) == ("total_sessions", "warning")
    assert "derived" in problem.message
    assert list(data.tables["participant"]["total_sessions"]) == [5.0, 1.0, 0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- cell problems


@pytest.mark.parametrize(("column", "value", "text"), [
    ("debt_step", "abc", "not a number"),
    ("debt_step", "3.5", "not a whole number"),
    ("bridge_total", "41,5", "decimal point"),
    ("on_social_assistance", "yes", "not a boolean"),
])
def test_wrong_type(tmp_path: Path, schema: Schema, column: str, value: str, text: str) -> None:
    tables = valid_tables(schema)
    tables["assessment"][3][column] = value  # line 5
    report, data = check(tmp_path, schema, tables)
    problem = only(report, "wrong_type")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "assessment.csv", 5, column, "error")
    assert repr(value) in problem.message
    assert text in problem.message
    assert pd.isna(data.tables["assessment"][column].iloc[3])


def test_not_in_vocabulary(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["participant"][1]["household_type"] = "xyz"  # line 3
    tables["participant"][3]["household_type"] = "Single"  # line 5
    report, _ = check(tmp_path, schema, tables)
    problems = [p for p in report.problems if p.kind == "not_in_vocabulary"]
    assert [(p.file, p.row, p.column, p.severity) for p in problems] == [
        ("participant.csv", 3, "household_type", "error"),
        ("participant.csv", 5, "household_type", "error")]
    assert "'xyz'" in problems[0].message
    assert "single, single_parent, couple_no_children" in problems[0].message
    assert "did you mean 'single'" in problems[1].message


def test_undeclared_node_categories(tmp_path: Path, schema: Schema) -> None:
    undeclared = load_schema()
    tables = valid_tables(schema)
    for row in tables["participant"][1:]:
        row["team"] = ""
    report, data = check(tmp_path, undeclared, tables)
    problem = only(report, "not_in_vocabulary")
    assert (problem.row, problem.column, problem.severity) == (2, "team", "error")
    assert "categories: participant.team: [south]" in problem.message
    assert list(data.tables["participant"]["team"].cat.codes) == [-1] * 5


def test_out_of_bounds_is_a_warning(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["participant"][2]["n_children"] = "9"  # line 4
    tables["assessment"][0]["total_debt"] = "-5"  # line 2
    report, data = check(tmp_path, schema, tables)
    problems = {p.column: p for p in report.problems if p.kind == "out_of_bounds"}
    assert (problems["n_children"].file, problems["n_children"].row) == ("participant.csv", 4)
    assert (problems["total_debt"].file, problems["total_debt"].row) == ("assessment.csv", 2)
    assert {p.severity for p in problems.values()} == {"warning"}
    assert "clipped to 6" in problems["n_children"].message
    assert "clipped to 0" in problems["total_debt"].message
    assert report.servable
    assert data.tables["participant"]["n_children"].iloc[2] == 9.0  # clipped at query time


def test_derived_out_of_bounds_is_a_warning(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["coaching_contact"] = [_contact("p4", m, 8) for m in range(16)]  # 128 > 120
    report, data = check(tmp_path, schema, tables)
    problem = only(report, "out_of_bounds")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "participant.csv", 5, "total_sessions", "warning")
    assert data.tables["participant"]["total_sessions"].iloc[3] == 128.0


@pytest.mark.parametrize("column", ["months_since_intake", "assessment_seq"])
def test_assessment_occasion_must_not_be_missing(tmp_path: Path, schema: Schema,
                                                 column: str) -> None:
    tables = valid_tables(schema)
    tables["assessment"][4][column] = ""  # line 6
    report, _ = check(tmp_path, schema, tables)
    problem = only(report, "missing_value")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "assessment.csv", 6, column, "error")


def test_missing_values_elsewhere_are_allowed(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    for column in ("debt_step", "bridge_total", "work_status", "on_social_assistance"):
        tables["assessment"][2][column] = ""
    report, data = check(tmp_path, schema, tables)
    assert report.problems == ()
    row = data.tables["assessment"].iloc[2]
    assert np.isnan(row["debt_step"])
    assert np.isnan(row["bridge_total"])
    assert data.tables["assessment"]["work_status"].cat.codes.iloc[2] == -1
    assert data.tables["assessment"]["on_social_assistance"].cat.codes.iloc[2] == -1


# --------------------------------------------------------------------------- key problems


def test_missing_key(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["goal"][2]["participant_id"] = ""  # line 4
    report, _ = check(tmp_path, schema, tables)
    problem = only(report, "missing_key")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "goal.csv", 4, "participant_id", "error")


def test_duplicate_key_names_both_lines(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["assessment"].append(_assessment(schema, 1, 0))  # line 12 repeats line 2
    report, _ = check(tmp_path, schema, tables)
    problem = only(report, "duplicate_key")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "assessment.csv", 12, "assessment_seq", "error")
    assert "row 2" in problem.message
    assert "'p1'" in problem.message


def test_duplicate_participant(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["participant"][3]["participant_id"] = "p2"  # line 5 repeats line 3
    report, _ = check(tmp_path, schema, tables)
    problem = only(report, "duplicate_key")
    assert (problem.file, problem.row, problem.column) == ("participant.csv", 5, "participant_id")
    assert "row 3" in problem.message
    assert "too_many_rows" not in kinds(report)


def test_unknown_participant(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["coaching_contact"][1]["participant_id"] = "p99"  # line 3
    report, data = check(tmp_path, schema, tables)
    problem = only(report, "unknown_participant")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "coaching_contact.csv", 3, "participant_id", "error")
    assert "'p99'" in problem.message
    assert list(data.tables["participant"]["total_sessions"]) == [2.0, 1.0, 0.0, 0.0, 0.0]


def test_too_many_rows(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["goal"] += [_goal("p5", "ongoing") for _ in range(61)]  # lines 6-66
    report, _ = check(tmp_path, schema, tables)
    problem = only(report, "too_many_rows")
    assert (problem.file, problem.row, problem.column, problem.severity) == (
        "goal.csv", 6, "participant_id", "error")
    assert "61 rows" in problem.message
    assert "at most 60" in problem.message


# --------------------------------------------------------------------------- report


def test_format_names_file_row_and_column(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["assessment"][3]["debt_step"] = "x"  # line 5
    for row in tables["goal"]:
        row["notes"] = ""
    report, _ = check(tmp_path, schema, tables)
    text = report.format()
    assert "assessment.csv, row 5, column debt_step: wrong_type: value 'x'" in text
    assert "goal.csv, column notes: unknown_column:" in text
    assert text.index("Errors") < text.index("Warnings")
    assert text.splitlines()[-1] == "1 error, 1 warning: data cannot be served"


def test_format_of_clean_report(tmp_path: Path, schema: Schema) -> None:
    report, _ = check(tmp_path, schema, valid_tables(schema))
    assert report.format().splitlines()[-1] == "0 errors, 0 warnings: data can be served"


def test_format_truncates_per_kind(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["goal"] = [_goal(f"p{1 + i % 5}", "done") for i in range(30)]
    report, _ = check(tmp_path, schema, tables)
    lines = report.format(max_per_kind=5).splitlines()
    listed = [line for line in lines if ": not_in_vocabulary:" in line]
    assert len(listed) == 5
    assert "goal.csv, row 2, column status" in listed[0]
    assert "  ... and 25 more not_in_vocabulary problems in goal.csv, column status" in lines
    assert lines[-1] == "30 errors, 0 warnings: data cannot be served"


def test_report_caps_stored_problems_but_counts_all(schema: Schema) -> None:
    n = MAX_STORED_PER_KIND + 500
    raw = {"coaching_contact": pd.DataFrame({
        "participant_id": [f"p{i}" for i in range(n)], "month_since_intake": ["0"] * n,
        "n_sessions": ["many"] * n, "contact_minutes": ["30"] * n}, dtype=str)}
    report, _ = check_tables(raw, schema)
    wrong = [p for p in report.problems if p.kind == "wrong_type"]
    assert len(wrong) == MAX_STORED_PER_KIND
    assert report.error_count == n + 3  # + missing participant, assessment and goal data
    assert f"... and {n - 20} more wrong_type" in report.format()


def test_check_tables_names_sources(schema: Schema) -> None:
    raw = {"goal": pd.DataFrame({"participant_id": ["p1"], "pillar": ["wellbeing"],
                                 "set_month": ["1"], "status": ["ongoing"],
                                 "achieved_month": [""], "incentive_value": ["0"]}, dtype=str)}
    report, _ = check_tables(raw, schema, files={"goal": "export.xlsx, sheet goal"})
    problem = only(report, "not_in_vocabulary")
    assert (problem.file, problem.row) == ("export.xlsx, sheet goal", 2)


def test_read_csv_folder_returns_strings(tmp_path: Path, schema: Schema) -> None:
    raw = read_csv_folder(write_folder(tmp_path, valid_tables(schema)), schema)
    assert raw.problems == ()
    assert raw.files["participant"] == "participant.csv"
    assert raw.tables["participant"]["n_children"].iloc[4] == ""
    assert raw.tables["participant"]["rollout_wave"].iloc[0] == "1"


# --------------------------------------------------------------------------- load_folder


def test_load_folder_returns_data(tmp_path: Path, schema: Schema) -> None:
    data = load_folder(write_folder(tmp_path, valid_tables(schema)), schema)
    assert len(data.tables["assessment"]) == 10


def test_load_folder_serves_data_with_warnings(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["participant"][0]["n_children"] = "12"
    data = load_folder(write_folder(tmp_path, tables), schema)
    assert data.tables["participant"]["n_children"].iloc[0] == 12.0


def test_load_folder_raises_on_bad_data(tmp_path: Path, schema: Schema) -> None:
    tables = valid_tables(schema)
    tables["assessment"][3]["debt_step"] = "abc"
    with pytest.raises(DataError) as caught:
        load_folder(write_folder(tmp_path, tables), schema)
    assert "assessment.csv, row 5, column debt_step: wrong_type" in str(caught.value)
    assert "data cannot be served" in str(caught.value)


# --------------------------------------------------------------------------- scale


def test_large_folder_checks_without_error(tmp_path: Path, schema: Schema) -> None:
    n_people, per_person = 200_000, 3
    write_large_folder(tmp_path, schema, n_people, per_person)
    report, data = check_folder(tmp_path, schema)
    assert report.servable, report.format()
    assert report.problems == ()
    assert dict(report.rows) == {"participant": n_people, "assessment": n_people * per_person,
                                 "goal": n_people, "coaching_contact": n_people}
    assert data.tables["participant"]["goals_set"].sum() == n_people


def write_large_folder(folder: Path, schema: Schema, n_people: int, per_person: int) -> None:
    """Write a valid folder quickly: one goal and one contact per participant."""
    rng = np.random.default_rng(7)
    ids = np.array([f"id{i}" for i in range(n_people)], dtype=object)
    n = n_people * per_person
    seq = np.tile(np.arange(per_person), n_people)
    fixed = {
        "participant": {"participant_id": ids},
        "assessment": {"participant_id": np.repeat(ids, per_person),
                       "assessment_seq": _strings(seq),
                       "months_since_intake": _strings(6 * seq)},
        "goal": {"participant_id": ids},
        "coaching_contact": {"participant_id": ids},
    }
    for table, cells in fixed.items():
        rows = n if table == "assessment" else n_people
        columns = {c: cells[c] if c in cells else _random_cells(schema, table, c, rows, rng)
                   for c in _columns(schema, table)}
        _write_arrays(folder / f"{table}.csv", columns)


def _strings(values: npt.NDArray[np.int64]) -> Cells:
    pool = np.array([str(v) for v in range(int(values.max()) + 1)], dtype=object)
    return np.asarray(pool[values], dtype=object)


def _random_cells(schema: Schema, table: str, column: str, n: int,
                  rng: np.random.Generator) -> Cells:
    """Random valid cells for a column, drawn from a pool (real columns: 50,000 values)."""
    spec = schema.table(table).column(column)
    if spec.categories:
        pool = list(spec.categories)
    elif spec.lower is None or spec.upper is None:
        pool = ["x"]
    elif spec.type is ColumnType.INTEGER:
        pool = [str(v) for v in range(int(spec.lower), int(spec.upper) + 1)]
    else:
        pool = [f"{v:.2f}" for v in rng.uniform(spec.lower, spec.upper, 50_000)]
    return np.array(pool, dtype=object)[rng.integers(0, len(pool), n)]


def _write_arrays(path: Path, columns: dict[str, Cells]) -> None:
    rows = zip(*(c.tolist() for c in columns.values()), strict=True)
    lines = [",".join(columns), *(",".join(row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_schema_with_a_broken_derivation_names_the_key(tmp_path: Path) -> None:
    from bridgestat.node.errors import ConfigError
    from bridgestat.node.schema import DEFAULT_SCHEMA_PATH, load_schema

    broken = tmp_path / "schema.yaml"
    broken.write_text(DEFAULT_SCHEMA_PATH.read_text().replace("column: n_sessions",
                                                              "column: n_sesions"))
    with pytest.raises(ConfigError, match=r"tables\[0\]\.columns\[16\]\.derived\.column: "
                                          r".*derives participant\.total_sessions"):
        load_schema(broken)


SCHEMA_PROBLEMS = [
    ("unknown top-level key", ("version: 1.0.0", "version: 1.0.0\ncolour: red"), "colour",
     "unknown key (allowed: name, tables, version)"),
    ("unknown table key", ("    key: participant_id", "    key: participant_id\n    keys: [a]"),
     "tables[0].keys", "unknown key"),
    ("unknown column key", ("{name: arm, type: categorical,", "{name: arm, typ: x, type: categorical,"),
     "tables[0].columns[1].typ", "unknown key"),
    ("comma in an unquoted flow description", ('"timing (nominal 0, 6, 12, ...)"',
                                               "timing (nominal 0, 6, 12, ...)"),
     "tables[1].columns[2][6]", "keys must be strings"),
    ("unknown column type", ("{name: arm, type: categorical,", "{name: arm, type: text,"),
     "tables[0].columns[1].type", "must be one of key, integer, real, boolean, categorical"),
    ("bounds as text", ("lower: 0, upper: 12,", "lower: '0', upper: 12,"),
     "tables[0].columns[3].lower", "must be a number"),
    ("bounds reversed", ("lower: 0, upper: 12,", "lower: 12, upper: 0,"),
     "tables[0].columns[3].lower", "lower must be below upper"),
    ("categories repeated", ("categories: [mobility_mentoring, comparison]",
                             "categories: [comparison, comparison]"),
     "tables[0].columns[1].categories", "categories must be unique"),
    ("rows per participant zero", ("max_rows_per_participant: 1", "max_rows_per_participant: 0"),
     "tables[0].max_rows_per_participant", ">= 1"),
    ("unknown key column", ("    key: participant_id", "    key: person_id"), "tables[0].key",
     "unknown column 'person_id'"),
    ("derived from an unknown table", ("{table: goal, aggregate: count}",
                                       "{table: goals, aggregate: count}"),
     "tables[0].columns[17].derived.table", "unknown table 'goals'"),
    ("null derivation", ("derived: {table: goal, aggregate: count}", "derived: null"),
     "tables[0].columns[17].derived", "has no value"),
]


@pytest.mark.parametrize(("case", "change", "key", "problem"), SCHEMA_PROBLEMS,
                         ids=[p[0] for p in SCHEMA_PROBLEMS])
def test_a_bad_schema_names_file_and_key(tmp_path: Path, case: str, change: tuple[str, str],
                                         key: str, problem: str) -> None:
    from bridgestat.node.errors import ConfigError
    from bridgestat.node.schema import DEFAULT_SCHEMA_PATH, load_schema

    text = DEFAULT_SCHEMA_PATH.read_text(encoding="utf-8")
    assert change[0] in text, case
    broken = tmp_path / "schema.yaml"
    broken.write_text(text.replace(change[0], change[1], 1), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_schema(broken)
    assert (caught.value.source, caught.value.key) == (str(broken), key), caught.value
    assert problem in caught.value.problem, caught.value
