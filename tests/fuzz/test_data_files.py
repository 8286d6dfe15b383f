"""Fuzzed member data: a valid member's CSV tables with cells, columns, rows and lines broken.

`check_folder` and `sources.check` always produce a report (never an exception), and every
problem names its file, and the row and column where it has one.
"""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bridgestat.node import sources
from bridgestat.node.config import DataConfig
from bridgestat.node.data import PROBLEM_KINDS, CheckReport, check_folder
from bridgestat.node.schema import Schema

from .conftest import Member, make_member
from .strategies import fuzz_settings

EXAMPLES = 150
SMALL_MEMBER = 25  # participants: the check is fast and every mutation is seen
ROW_KINDS = {"wrong_type", "not_in_vocabulary", "out_of_bounds", "missing_value",
             "missing_key", "duplicate_key", "unknown_participant", "too_many_rows"}
VALUE_KINDS = {"wrong_type", "not_in_vocabulary", "out_of_bounds", "missing_value"}
JUNK_CELLS = ["", " ", "NaN", "nan", "inf", "-inf", "1e400", "-1e400", "9" * 40, "0x10",
              "1,5", "true", "FALSE", "null", "None", "é", "💥", "\u200b", "=1+1", '"', "a\nb",
              "\x00", "1e-400", "-0", "0.0000001"]
cells = st.one_of(st.sampled_from(JUNK_CELLS), st.text(max_size=10))


def read_rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")


@st.composite
def mutate_folder(draw: st.DrawFn, folder: Path) -> None:
    """Apply 1 to 4 mutations to the CSV tables in `folder`, in place."""
    files = sorted(folder.glob("*.csv"))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(files))
        if not path.exists():
            continue
        try:
            rows = read_rows(path)
        except (UnicodeDecodeError, csv.Error):
            continue  # already replaced by bytes that are no CSV
        op = draw(st.sampled_from(["cell", "cell", "cell", "drop_column", "duplicate_row",
                                   "truncate_line", "drop_header", "garbage_line",
                                   "delete_file", "empty_file", "random_bytes"]))
        if op == "delete_file":
            path.unlink()
            continue
        if op == "empty_file":
            path.write_bytes(b"")
            continue
        if op == "random_bytes":
            path.write_bytes(draw(st.binary(max_size=64)))
            continue
        if len(rows) < 2:
            continue
        r = draw(st.integers(1, len(rows) - 1))
        c = draw(st.integers(0, len(rows[0]) - 1))
        if op == "cell" and c < len(rows[r]):
            rows[r][c] = draw(cells)
        elif op == "drop_column":
            rows = [row[:c] + row[c + 1:] for row in rows]
        elif op == "duplicate_row":
            rows.insert(r, list(rows[r]))
        elif op == "truncate_line":
            rows[r] = rows[r][:c]
        elif op == "drop_header":
            rows = rows[1:]
        else:
            rows.insert(r, draw(st.lists(cells, max_size=len(rows[0]) + 2)))
        write_rows(path, rows)


def check_report(report: CheckReport, schema: Schema) -> None:
    """Every problem is located: its file always, row and column where it has them."""
    files = {f"{t.name}.csv" for t in schema.tables}
    report.format()
    for p in report.problems:
        assert p.kind in PROBLEM_KINDS, p
        assert p.file in files, p
        assert p.message, p
        if p.kind in ROW_KINDS:
            assert p.row is not None and p.row >= 1, p
        if p.kind in VALUE_KINDS:
            assert p.column, p


def test_mutated_data_is_checked_not_crashed() -> None:
    root = Path(tempfile.mkdtemp(prefix="fuzz-data-"))
    try:
        member: Member = make_member(root / "member", 1.0, size=SMALL_MEMBER)
        schema = member.config.schema()
        pristine = sorted(member.folder.glob("*.csv"))
        work = root / "work"

        @fuzz_settings(EXAMPLES)
        @given(st.data())
        def check(data: st.DataObject) -> None:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            for path in pristine:
                shutil.copy(path, work / path.name)
            data.draw(mutate_folder(work))
            if data.draw(st.booleans(), label="via sources.check"):
                report = sources.check(DataConfig("csv", path=work), schema)
            else:
                report, _ = check_folder(work, schema)
            check_report(report, schema)

        check()
    finally:
        shutil.rmtree(root, ignore_errors=True)
