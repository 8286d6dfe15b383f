"""A member's data: read a CSV folder, check it against the schema, convert it to typed frames.

Member IT points the node at a folder with one CSV file per schema table. `read_csv_folder`
reads the files as text; the other sources (Parquet, Excel, PostgreSQL: `sources.py`) produce
the same raw text frames, so that every source is checked alike. `check_tables` checks every
cell against the public schema and converts the tables to the typed frames the query engine
uses, in one vectorised pass; `load_folder` refuses data with errors. Every problem names the
file, line, column and value found, so that member IT can fix the export without reading the
code; bad values are reported, never coerced.

Line numbers: the header is line 1 and the first data row line 2. A raw frame's integer
index is the 0-based data-row number in its source, so a row's line is its index + 2
(`read_csv_folder` drops blank lines but keeps the index). A quoted cell spanning several
lines shifts the physical line numbers after it; the numbers then count records. Sources
without a header line (Parquet, a database) number rows from 1 (`RawTables.first_rows`).

Conversion (what the query engine relies on): only schema columns are kept, in schema order;
integer and real columns are float64 with NaN for missing; categorical and boolean columns
are `pd.Categorical` with exactly the schema categories (boolean: "false", "true"), so
`.cat.codes` is -1 for missing; key columns are strings; derived participant columns
(e.g. `total_sessions`) are computed from their many-rows table, 0 for participants without
rows. Out-of-bounds numbers are kept as found: the engine clips them to the public bounds.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.extensions import ExtensionArray

from bridgestat.node.errors import DataError
from bridgestat.node.schema import (
    BOOLEAN_CATEGORIES,
    ColumnSpec,
    ColumnType,
    Derivation,
    Schema,
    TableSpec,
)

__all__ = [
    "ERROR",
    "MAX_STORED_PER_KIND",
    "PROBLEM_KINDS",
    "WARNING",
    "CheckReport",
    "MemberData",
    "Problem",
    "RawTables",
    "check_folder",
    "check_raw",
    "check_tables",
    "load_folder",
    "read_csv_folder",
    "read_csv_table",
    "servable_data",
]

logger = logging.getLogger(__name__)

ERROR = "error"
WARNING = "warning"
PROBLEM_KINDS: tuple[str, ...] = (
    "missing_file", "unreadable_file", "missing_column", "unknown_column", "wrong_type",
    "not_in_vocabulary", "out_of_bounds", "missing_value", "missing_key", "duplicate_key",
    "unknown_participant", "too_many_rows",
)
# Served anyway: out-of-bounds numbers are clipped at query time, unknown columns ignored.
_WARNING_KINDS = frozenset({"unknown_column", "out_of_bounds"})
# A report keeps this many problems per (file, column, kind) and counts the rest, so that a
# wholly wrong column of millions of rows costs neither minutes nor gigabytes.
MAX_STORED_PER_KIND = 1000
# Accepted boolean spellings (lower-cased); position % 2 is the code in BOOLEAN_CATEGORIES.
_BOOLEAN_WORDS = pd.Index([*BOOLEAN_CATEGORIES, "0", "1"], dtype=object)
_SHOWN_VALUES = 20  # distinct values listed in a suggested node-config line
_FIRST_DATA_LINE = 2  # a CSV's or sheet's first data row: the line below the header
# Whitespace at either end of a value, in the values joined by NUL.
_EDGE_SPACE = re.compile(r"(?:^|\x00)\s|\s(?:\x00|$)")
_ASCII_SPACE = np.array([chr(i).isspace() for i in range(256)], dtype=bool)

GroupKey = tuple[str, str | None, str]  # (file, column, kind)
IntArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ObjectArray = npt.NDArray[np.object_]


def severity_of(kind: str) -> str:
    """The severity of a problem kind: only unknown columns and out-of-bounds are warnings."""
    return WARNING if kind in _WARNING_KINDS else ERROR


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the member's data, located as precisely as possible."""

    file: str
    # line number in the file or sheet (header = 1), or 1-based row position in a source
    # without a header line (Parquet, a database); None for file and column problems
    row: int | None
    column: str | None
    kind: str  # one of PROBLEM_KINDS
    message: str  # names the value found and what is allowed
    severity: str  # ERROR (cannot be served) or WARNING (served)

    def format(self) -> str:
        """One report line: 'assessment.csv, row 17, column debt_step: wrong_type: ...'."""
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column}")
        return f"{', '.join(where)}: {self.kind}: {self.message}"


@dataclass(frozen=True)
class CheckReport:
    """Every problem found in a member's data, and the rows read per table."""

    problems: tuple[Problem, ...]
    rows: Mapping[str, int]
    # Problems beyond MAX_STORED_PER_KIND per (file, column, kind): counted, not listed.
    omitted: Mapping[GroupKey, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def servable(self) -> bool:
        """True when there is no error-severity problem."""
        return self.error_count == 0

    @property
    def error_count(self) -> int:
        return self._count(ERROR)

    @property
    def warning_count(self) -> int:
        return self._count(WARNING)

    def _count(self, severity: str) -> int:
        listed = sum(1 for p in self.problems if p.severity == severity)
        return listed + sum(n for k, n in self.omitted.items() if severity_of(k[2]) == severity)

    def format(self, max_per_kind: int = 20) -> str:
        """A readable report: errors, then warnings, grouped by (file, column, kind)."""
        if max_per_kind < 0:
            raise ValueError("max_per_kind must be >= 0")
        lines: list[str] = []
        for severity, title in ((ERROR, "Errors (the data cannot be served until fixed):"),
                                (WARNING, "Warnings (the data is served):")):
            groups = _groups(p for p in self.problems if p.severity == severity)
            if groups:
                lines.append(title)
                for key, items in groups.items():
                    lines.extend(self._group_lines(key, items, max_per_kind))
        lines.append("Rows read: " + ", ".join(f"{t} {n}" for t, n in self.rows.items()))
        lines.append(self._summary())
        return "\n".join(lines)

    def _group_lines(self, key: GroupKey, items: list[Problem], limit: int) -> list[str]:
        shown = sorted(items, key=lambda p: -1 if p.row is None else p.row)[:limit]
        lines = ["  " + p.format() for p in shown]
        more = len(items) - len(shown) + self.omitted.get(key, 0)
        if more:
            file, column, kind = key
            where = file if column is None else f"{file}, column {column}"
            lines.append(f"  ... and {more} more {kind} problems in {where}")
        return lines

    def _summary(self) -> str:
        errors, warns = self.error_count, self.warning_count
        verdict = "data can be served" if self.servable else "data cannot be served"
        return f"{_plural(errors, 'error')}, {_plural(warns, 'warning')}: {verdict}"


@dataclass(frozen=True)
class MemberData:
    """The member's tables as typed frames (see the module docstring for the dtypes)."""

    tables: Mapping[str, pd.DataFrame]


def _groups(problems: Iterable[Problem]) -> dict[GroupKey, list[Problem]]:
    groups: dict[GroupKey, list[Problem]] = {}
    for p in problems:
        groups.setdefault((p.file, p.column, p.kind), []).append(p)
    return groups


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class RawTables:
    """What a source read: raw text frames per schema table, before any checking.

    Every source (CSV, Parquet, Excel, PostgreSQL) produces this, so that `check_raw` applies
    the same checks with the same problem kinds whatever the source.
    """

    tables: Mapping[str, pd.DataFrame]  # table -> cells as text ("" = missing)
    problems: tuple[Problem, ...]  # found while reading: missing_file, unreadable_file, ...
    files: Mapping[str, str]  # table -> its name in problems ('goal.csv', 'sheet goal', ...)
    where: str  # the whole source, for messages ("'/data/export'", "workbook ...")
    # table -> row number of the frame's index 0 (default 2: below a header line)
    first_rows: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


# --------------------------------------------------------------------------- reading


def read_csv_folder(folder: Path, schema: Schema) -> RawTables:
    """Read `<table>.csv` for every schema table as text; an empty cell means missing.

    Kept apart from checking, as the other sources are (`sources.py`): `check_raw` checks
    what any of them read.
    """
    folder = Path(folder)
    files = {t.name: _csv_name(t.name) for t in schema.tables}
    tables, problems = _read_csv_files(folder, schema)
    return RawTables(tables, tuple(problems), files, repr(str(folder)))


def _read_csv_files(folder: Path, schema: Schema
                    ) -> tuple[dict[str, pd.DataFrame], list[Problem]]:
    """The frames read, and the problems found reading the files (missing, unreadable, ...)."""
    raw: dict[str, pd.DataFrame] = {}
    problems: list[Problem] = []
    if not folder.is_dir():
        for table in schema.tables:
            problems.append(_problem(_csv_name(table.name), None, None, "missing_file",
                                     f"folder {str(folder)!r} does not exist or is not a folder"))
        return raw, problems
    present = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".csv")
    for table in schema.tables:
        name = _csv_name(table.name)
        path = folder / name
        if not path.is_file():
            problems.append(_problem(name, None, None, "missing_file",
                                     _missing_file_message(folder, name, present)))
            continue
        frame, file_problems = read_csv_table(path, name)
        problems.extend(file_problems)
        if frame is not None:
            raw[table.name] = frame
    return raw, problems


def _csv_name(table: str) -> str:
    return f"{table}.csv"


def _missing_file_message(folder: Path, name: str, present: list[str]) -> str:
    message = f"file {name!r} not found in {str(folder)!r}"
    same = [p for p in present if p.lower() == name.lower()]
    if same:
        return f"{message} (found {same[0]!r}; file names are case-sensitive)"
    found = ", ".join(present) if present else "none"
    return f"{message} (CSV files there: {found})"


def read_csv_table(path: Path | BinaryIO, name: str, *, drop_blank: bool = True
                   ) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read one CSV (a file, or CSV bytes from a database) as strings, `name` naming it in
    problems; what pandas cannot parse becomes an unreadable_file problem.

    `drop_blank` drops lines whose cells are all empty (blank lines of an export); a database
    row whose values are all NULL is a row, and kept.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                                index_col=False, skip_blank_lines=False, encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            return None, [_problem(name, None, None, "unreadable_file",
                                   f"the file is not UTF-8 text ({exc.reason} at byte "
                                   f"{exc.start}); export it as 'CSV UTF-8'")]
        except pd.errors.EmptyDataError:
            return None, [_problem(name, None, None, "unreadable_file",
                                   "the file is empty; it needs at least the header line")]
        except (OSError, ValueError) as exc:
            return None, [_problem(name, None, None, "unreadable_file",
                                   f"cannot read the file: {exc}")]
    problems = []
    for w in caught:
        if issubclass(w.category, pd.errors.ParserWarning):
            problems.append(_problem(name, None, None, "unknown_column",
                                     "rows have more fields than the header has column names; "
                                     "the extra fields are ignored"))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return (_drop_blank_lines(frame) if drop_blank else frame), problems[:1]


def _drop_blank_lines(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop rows whose cells are all empty, keeping the index so line numbers stay right."""
    if frame.shape[1] == 0 or frame.empty:
        return frame
    candidates = np.flatnonzero(frame.iloc[:, 0].to_numpy(dtype=object) == "")
    if len(candidates) == 0:
        return frame
    blank = np.ones(len(candidates), dtype=bool)
    for name in frame.columns[1:]:
        blank &= frame[name].to_numpy(dtype=object)[candidates] == ""
    keep = np.ones(len(frame), dtype=bool)
    keep[candidates[blank]] = False
    return frame.iloc[np.flatnonzero(keep)]


# --------------------------------------------------------------------------- checking


def check_tables(
    raw: Mapping[str, pd.DataFrame],
    schema: Schema,
    *,
    files: Mapping[str, str] | None = None,
    first_rows: Mapping[str, int] | None = None,
) -> tuple[CheckReport, MemberData]:
    """Check raw string frames against the schema and convert them, in one vectorised pass.

    `files` names each table's source in problems (default '<table>.csv'); `first_rows` gives
    the row number of a frame's index 0 (default 2, the line below a header). The typed data
    is returned even when the report is not servable; callers must not serve it then.
    """
    names = {t.name: (files or {}).get(t.name, _csv_name(t.name)) for t in schema.tables}
    sink = _Sink()
    person_spec = _person_table(schema)
    checked: dict[str, _Checked] = {}
    people: _People | None = None
    for spec in sorted(schema.tables, key=lambda t: t is not person_spec):
        frame = raw.get(spec.name)
        if frame is None:
            sink.add(names[spec.name], None, None, "missing_file",
                     f"no data for table {spec.name!r}")
            continue
        first = (first_rows or {}).get(spec.name, _FIRST_DATA_LINE)
        table = _Table(spec, names[spec.name], _strip_header(frame), _line_numbers(frame, first))
        checked[spec.name] = _check_table(table, people, sink)
        if spec is person_spec and spec.key in table.frame.columns:
            people = _People(checked[spec.name].ids)
    if person_spec.name in checked:
        checked[person_spec.name] = _add_derived(person_spec, names[person_spec.name],
                                                 checked, sink)
    frames = {t.name: checked[t.name].frame if t.name in checked else _empty_frame(t)
              for t in schema.tables}
    rows = {t.name: len(raw[t.name]) if t.name in raw else 0 for t in schema.tables}
    report = CheckReport(problems=tuple(_in_file_order(sink.problems, list(names.values()))),
                         rows=MappingProxyType(rows), omitted=MappingProxyType(sink.omitted))
    return report, MemberData(tables=MappingProxyType(frames))


def check_raw(raw: RawTables, schema: Schema) -> tuple[CheckReport, MemberData]:
    """Check what a source read: its read problems, then `check_tables` on its frames.

    A table the source could not read is reported once, by the source's own problem.
    """
    files = {t.name: raw.files.get(t.name, _csv_name(t.name)) for t in schema.tables}
    report, data = check_tables(raw.tables, schema, files=files, first_rows=raw.first_rows)
    unread = {p.file for p in raw.problems if p.kind in ("missing_file", "unreadable_file")}
    checked = [p for p in report.problems if not (p.kind == "missing_file" and p.file in unread)]
    problems = tuple(_in_file_order([*raw.problems, *checked], list(files.values())))
    return replace(report, problems=problems), data


def servable_data(report: CheckReport, data: MemberData, where: str) -> MemberData:
    """The data if it can be served (warnings logged); else DataError listing the problems."""
    if not report.servable:
        raise DataError(f"the data in {where} cannot be served:\n"
                        f"{report.format(max_per_kind=20)}")
    if report.warning_count:
        logger.warning("the data in %s is served with warnings:\n%s", where, report.format())
    return data


def check_folder(folder: Path, schema: Schema) -> tuple[CheckReport, MemberData]:
    """Read and check a CSV folder: `read_csv_folder` then `check_raw`."""
    return check_raw(read_csv_folder(folder, schema), schema)


def load_folder(folder: Path, schema: Schema) -> MemberData:
    """Load a CSV folder for serving; raise DataError listing the problems if it has errors."""
    report, data = check_folder(folder, schema)
    return servable_data(report, data, repr(str(folder)))


def _in_file_order(problems: list[Problem], files: list[str]) -> list[Problem]:
    rank = {name: i for i, name in enumerate(files)}
    return sorted(problems, key=lambda p: rank.get(p.file, len(rank)))


def _person_table(schema: Schema) -> TableSpec:
    """The table with one row per participant (the privacy unit), which others refer to."""
    for table in schema.tables:
        if table.max_rows_per_participant == 1 and table.unique in ((), (table.key,)):
            return table
    return schema.tables[0]


def _problem(file: str, row: int | None, column: str | None, kind: str, message: str) -> Problem:
    return Problem(file=file, row=row, column=column, kind=kind, message=message,
                   severity=severity_of(kind))


class _Sink:
    """Collects problems, keeping at most MAX_STORED_PER_KIND per (file, column, kind)."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.omitted: dict[GroupKey, int] = {}
        self._stored: dict[GroupKey, int] = {}

    def add(self, file: str, row: int | None, column: str | None, kind: str,
            message: str) -> None:
        self._store(file, column, kind, 1, lambda _: _problem(file, row, column, kind, message))

    def add_rows(self, table: _Table, column: str | None, kind: str, positions: IntArray,
                 message: Callable[[int], str]) -> None:
        """Add one problem per row position; messages are built only for stored problems."""

        def build(i: int) -> Problem:
            pos = int(positions[i])
            return _problem(table.file, int(table.lines[pos]), column, kind, message(pos))

        self._store(table.file, column, kind, len(positions), build)

    def _store(self, file: str, column: str | None, kind: str, count: int,
               build: Callable[[int], Problem]) -> None:
        key = (file, column, kind)
        stored = self._stored.get(key, 0)
        keep = min(count, MAX_STORED_PER_KIND - stored)
        self.problems.extend(build(i) for i in range(keep))
        self._stored[key] = stored + keep
        if count > keep:
            self.omitted[key] = self.omitted.get(key, 0) + count - keep


@dataclass(frozen=True)
class _Table:
    """One raw table being checked."""

    spec: TableSpec
    file: str
    frame: pd.DataFrame  # raw strings, header names stripped
    lines: IntArray  # line number of each row


@dataclass(frozen=True)
class _People:
    """The distinct participant ids; a row's participant code is its position here."""

    ids: pd.Index


@dataclass(frozen=True)
class _Checked:
    """A converted table and, per row, its participant code (-1: no key; >= n: unknown)."""

    frame: pd.DataFrame
    person: IntArray
    ids: pd.Index  # the distinct key values the codes point into
    lines: IntArray  # line number of each row


@dataclass(frozen=True)
class _Text:
    """A raw column factorised: per-row codes into its distinct, whitespace-stripped values.

    Every check and conversion works on the few distinct values and maps back through the
    codes, which keeps a pass over millions of rows in C.
    """

    cells: ObjectArray  # the cells as read, for messages
    codes: IntArray  # -1 for an empty cell
    values: ObjectArray  # distinct non-empty values, stripped


def _strip_header(frame: pd.DataFrame) -> pd.DataFrame:
    """Strip spaces around column names, unless that would make two names equal."""
    names = [str(c).strip() for c in frame.columns]
    if len(set(names)) < len(names):
        return frame
    return frame.set_axis(names, axis=1)


def _line_numbers(frame: pd.DataFrame, first: int = _FIRST_DATA_LINE) -> IntArray:
    """Each row's number in its source: its integer index (0 = first data row) + `first`."""
    if pd.api.types.is_integer_dtype(frame.index.dtype):
        return frame.index.to_numpy(dtype=np.intp) + first
    return np.arange(len(frame), dtype=np.intp) + first


def _text(column: pd.Series) -> _Text:
    cells = column.to_numpy(dtype=object)
    codes, uniques = pd.factorize(cells)
    values = np.asarray(uniques, dtype=object)
    if _needs_strip(values):  # cells that differ only in spaces become one value
        stripped = pd.Series(values, dtype="str").str.strip().to_numpy(dtype=object)
        stripped[stripped == ""] = None
        merged, values = pd.factorize(stripped)
        codes = np.where(codes >= 0, np.append(merged, -1)[codes], -1)
        return _Text(cells, codes, np.asarray(values, dtype=object))
    empty = np.flatnonzero(values == "")
    if len(empty):
        e = empty[0]
        codes = np.where(codes == e, -1, codes - (codes > e))
        values = np.delete(values, e)
    return _Text(cells, codes, values)


def _needs_strip(values: ObjectArray) -> bool:
    """Whether a value starts or ends with whitespace (or is not a string), in one scan."""
    try:
        joined = "\x00".join(values)
    except TypeError:
        return True
    if not joined.isascii():
        return _EDGE_SPACE.search(joined) is not None
    chars = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    if len(chars) == 0:
        return False
    breaks = np.flatnonzero(chars == 0)
    edges = np.concatenate(([0], breaks + 1, breaks - 1, [len(chars) - 1]))
    edges = edges[(edges >= 0) & (edges < len(chars))]
    return bool(_ASCII_SPACE[chars[edges]].any())


def _per_row(per_value: npt.NDArray[Any], codes: IntArray, fill: object) -> npt.NDArray[Any]:
    """Map per-distinct-value results to rows; empty cells (code -1) get `fill`."""
    return np.append(per_value, np.array([fill], dtype=per_value.dtype))[codes]


def _rows_where(per_value: BoolArray, codes: IntArray) -> IntArray:
    return np.flatnonzero(_per_row(per_value, codes, False))


def _check_table(table: _Table, people: _People | None, sink: _Sink) -> _Checked:
    """Check and convert one table; `people` is None for the participant table itself."""
    spec, n = table.spec, len(table.frame)
    _check_header(table, sink)
    columns: dict[str, object] = {}
    key_text: _Text | None = None
    for col in spec.columns:
        if col.derived is not None:
            continue
        if col.name not in table.frame.columns:
            sink.add(table.file, None, col.name, "missing_column",
                     f"required column {col.name!r} is missing")
            columns[col.name] = _missing_values(col, n)
            continue
        text = _text(table.frame[col.name])
        if col.name in _required(spec):
            _check_present(table, col, text, sink)
        columns[col.name] = _convert(table, col, text, sink)
        if col.name == spec.key:
            key_text = text
    frame = pd.DataFrame(columns, copy=False)
    if key_text is None:
        return _Checked(frame, np.full(n, -1, dtype=np.intp), pd.Index([], dtype=object),
                        table.lines)
    person, ids = _link(key_text, people)
    if people is not None:
        _check_known(table, person, len(people.ids), key_text, sink)
    _check_unique(table, frame, person, sink)
    _check_row_cap(table, person, ids, sink)
    return _Checked(frame, person, ids, table.lines)


def _required(spec: TableSpec) -> set[str]:
    """Non-key columns that locate a row (occasion, month, unique parts): never empty."""
    named = {spec.sequence_column, spec.month_column, *spec.unique}
    return {c for c in named if c is not None and c != spec.key}


def _check_header(table: _Table, sink: _Sink) -> None:
    for name in table.frame.columns:
        col = table.spec.find(name)
        if col is None:
            hint = " (the file seems to use ';' as separator; use ',')" if ";" in name else ""
            sink.add(table.file, None, name, "unknown_column",
                     f"column {name!r} is not in the schema of table {table.spec.name!r}; "
                     f"it is ignored{hint}")
        elif col.derived is not None:
            sink.add(table.file, None, name, "unknown_column",
                     f"column {name!r} is derived by the node ({_describe(col.derived)}); "
                     "the column in the file is ignored")


def _describe(d: Derivation) -> str:
    what = f"sum of {d.table}.{d.column}" if d.aggregate == "sum" else f"count of {d.table} rows"
    where = " and ".join(f"{k} = {v}" for k, v in d.where)
    return f"{what} where {where}" if where else what


def _check_present(table: _Table, col: ColumnSpec, text: _Text, sink: _Sink) -> None:
    rows = np.flatnonzero(text.codes < 0)
    sink.add_rows(table, col.name, "missing_value", rows,
                  lambda _: f"{col.name} is empty; every {table.spec.name} row needs it")


def _convert(table: _Table, col: ColumnSpec, text: _Text, sink: _Sink) -> object:
    if col.type is ColumnType.KEY:
        return _keys(table, col, text, sink)
    if col.type.numeric:
        return _numbers(table, col, text, sink)
    if col.type is ColumnType.BOOLEAN:
        return _booleans(table, col, text, sink)
    return _categories(table, col, text, sink)


def _missing_values(col: ColumnSpec, n: int) -> object:
    """An all-missing typed column, standing in for a column absent from the file."""
    if col.type is ColumnType.KEY:
        return pd.array(np.full(n, None, dtype=object), dtype="str")
    if col.type.numeric:
        return np.full(n, np.nan)
    return pd.Categorical.from_codes(np.full(n, -1), dtype=_dtype(col), validate=False)


def _empty_frame(spec: TableSpec) -> pd.DataFrame:
    return pd.DataFrame({c.name: _missing_values(c, 0) for c in spec.columns}, copy=False)


def _dtype(col: ColumnSpec) -> pd.CategoricalDtype:
    return pd.CategoricalDtype(list(col.categories))


def _keys(table: _Table, col: ColumnSpec, text: _Text, sink: _Sink) -> ExtensionArray:
    rows = np.flatnonzero(text.codes < 0)
    sink.add_rows(table, col.name, "missing_key", rows,
                  lambda _: f"{col.name} is empty; every row needs a key")
    return pd.array(_per_row(text.values, text.codes, None), dtype="str")


def _numbers(table: _Table, col: ColumnSpec, text: _Text, sink: _Sink) -> FloatArray:
    """Parse numbers; wrong types are errors, values outside the bounds warnings."""
    parsed = np.asarray(pd.to_numeric(text.values, errors="coerce"), dtype=np.float64)
    not_number = ~np.isfinite(parsed)
    fraction = np.zeros(len(parsed), dtype=bool)
    if col.type is ColumnType.INTEGER:
        fraction = ~not_number & (parsed != np.round(parsed))
    span = f"{_fmt(col.lower)} to {_fmt(col.upper)}"
    holds = "whole numbers" if col.type is ColumnType.INTEGER else "numbers"

    def message(pos: int) -> str:
        cell = str(text.cells[pos])
        if fraction[text.codes[pos]]:
            return f"value {cell!r} is not a whole number; {col.name} holds {holds} from {span}"
        comma = " (use a decimal point, not a comma)" if "," in cell else ""
        return f"value {cell!r} is not a number; {col.name} holds {holds} from {span}{comma}"

    sink.add_rows(table, col.name, "wrong_type", _rows_where(not_number | fraction, text.codes),
                  message)
    parsed[not_number | fraction] = np.nan
    _check_bounds(table, col, parsed, text, sink)
    return _per_row(parsed, text.codes, np.nan)


def _check_bounds(table: _Table, col: ColumnSpec, parsed: FloatArray, text: _Text,
                  sink: _Sink) -> None:
    low, high = _bounds(col)
    outside = (parsed < low) | (parsed > high)

    def message(pos: int) -> str:
        clip = _fmt(low) if parsed[text.codes[pos]] < low else _fmt(high)
        return (f"value {str(text.cells[pos])!r} is outside the public bounds of {col.name} "
                f"({_fmt(low)} to {_fmt(high)}); it is clipped to {clip} at query time")

    sink.add_rows(table, col.name, "out_of_bounds", _rows_where(outside, text.codes), message)


def _bounds(col: ColumnSpec) -> tuple[float, float]:
    low = -np.inf if col.lower is None else col.lower
    high = np.inf if col.upper is None else col.upper
    return low, high


def _fmt(x: float | None) -> str:
    if x is None:
        return "?"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _booleans(table: _Table, col: ColumnSpec, text: _Text, sink: _Sink) -> pd.Categorical:
    """Accept true/false/1/0 in any case; anything else is a wrong type."""
    lowered = pd.Series(text.values, dtype="str").str.lower().to_numpy(dtype=object)
    found = _BOOLEAN_WORDS.get_indexer(pd.Index(lowered, dtype=object))
    per_value = np.where(found < 0, -1, found % 2)
    sink.add_rows(table, col.name, "wrong_type", _rows_where(found < 0, text.codes),
                  lambda pos: f"value {str(text.cells[pos])!r} is not a boolean; "
                              f"{col.name} holds true/false (or 1/0)")
    codes = _per_row(per_value, text.codes, -1)
    return pd.Categorical.from_codes(codes, dtype=_dtype(col), validate=False)


def _categories(table: _Table, col: ColumnSpec, text: _Text, sink: _Sink) -> pd.Categorical:
    """Map values onto the schema vocabulary; anything else is not_in_vocabulary."""
    vocabulary = pd.Index(list(col.categories), dtype=object)
    per_value = vocabulary.get_indexer(pd.Index(text.values, dtype=object))
    if col.declared_by_node and not col.categories:
        message = _undeclared_message(table, col, text)
    else:
        message = _vocabulary_message(col, text)
    sink.add_rows(table, col.name, "not_in_vocabulary", _rows_where(per_value < 0, text.codes),
                  message)
    codes = _per_row(per_value, text.codes, -1)
    return pd.Categorical.from_codes(codes, dtype=_dtype(col), validate=False)


def _vocabulary_message(col: ColumnSpec, text: _Text) -> Callable[[int], str]:
    allowed = ", ".join(col.categories)

    def message(pos: int) -> str:
        cell = str(text.cells[pos])
        return (f"value {cell!r} is not in the vocabulary of {col.name} "
                f"({allowed}){_did_you_mean(cell, col.categories)}")

    return message


def _undeclared_message(table: _Table, col: ColumnSpec, text: _Text) -> Callable[[int], str]:
    """Node-declared vocabularies (e.g. team) come from the node config, never the data."""
    found = ", ".join(sorted(str(v) for v in text.values)[:_SHOWN_VALUES])
    more = ", ..." if len(text.values) > _SHOWN_VALUES else ""
    setting = f"categories: {table.spec.name}.{col.name}: [{found}{more}]"

    def message(pos: int) -> str:
        return (f"value {str(text.cells[pos])!r} is not in the vocabulary of {col.name}: "
                f"no categories are declared; the node config must declare them ({setting})")

    return message


def _did_you_mean(cell: str, categories: tuple[str, ...]) -> str:
    folded = cell.strip().lower().replace(" ", "_")
    match = next((c for c in categories if c.lower() == folded), None)
    return f"; did you mean {match!r}?" if match is not None else ""


# --------------------------------------------------------------------------- keys


def _link(key: _Text, people: _People | None) -> tuple[IntArray, pd.Index]:
    """Per-row participant codes: 0..n-1 for known participants, n.. for unknown ones.

    For the participant table itself (`people` None) the codes are its distinct ids.
    """
    ids = pd.Index(key.values, dtype=object)
    if people is None:
        return key.codes, ids
    known = people.ids.get_indexer(pd.Index(key.values, dtype=object))
    unknown = np.flatnonzero(known < 0)
    per_value = known.copy()
    per_value[unknown] = len(people.ids) + np.arange(len(unknown))
    all_ids = people.ids.append(ids[unknown])
    return _per_row(per_value, key.codes, -1), all_ids


def _check_known(table: _Table, person: IntArray, n_people: int, key: _Text,
                 sink: _Sink) -> None:
    rows = np.flatnonzero(person >= n_people)
    sink.add_rows(table, table.spec.key, "unknown_participant", rows,
                  lambda pos: f"{table.spec.key} {str(key.cells[pos]).strip()!r} is not in "
                              "the participant data")


def _check_unique(table: _Table, frame: pd.DataFrame, person: IntArray, sink: _Sink) -> None:
    """Report rows repeating an earlier row's unique columns, naming that earlier row."""
    spec = table.spec
    if not spec.unique or any(c not in table.frame.columns for c in spec.unique):
        return
    parts = [person if c == spec.key else _value_codes(frame[c]) for c in spec.unique]
    combined = _combine(parts)
    valid = np.flatnonzero(combined >= 0)
    keys = combined[valid]
    repeat = pd.Series(keys).duplicated().to_numpy()
    if not repeat.any():
        return
    later, repeated = valid[repeat], keys[repeat]
    firsts = ~repeat & np.isin(keys, repeated)
    where_first = pd.Index(keys[firsts]).get_indexer(pd.Index(repeated))
    first_line = dict(zip(later.tolist(), table.lines[valid[firsts][where_first]].tolist(),
                          strict=True))

    def message(pos: int) -> str:
        same = " and ".join(f"{c} {str(table.frame[c].iat[pos]).strip()!r}" for c in spec.unique)
        return f"same {same} as row {first_line[pos]}"

    sink.add_rows(table, spec.unique[-1], "duplicate_key", later, message)


def _value_codes(values: pd.Series) -> IntArray:
    """Integer codes of a typed column's values (-1 = missing), for duplicate detection."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy().astype(np.intp)
    codes, _ = pd.factorize(values.to_numpy())
    return codes


def _combine(parts: list[IntArray]) -> IntArray:
    """One code per row for a tuple of codes (-1 if any part is missing)."""
    combined = parts[0].astype(np.int64)
    for part in parts[1:]:
        combined, _ = pd.factorize(combined)  # compact, so the product below stays small
        radix = int(part.max(initial=0)) + 1
        missing = (combined < 0) | (part < 0)
        combined = np.where(missing, -1, combined.astype(np.int64) * radix + part)
    return combined


def _check_row_cap(table: _Table, person: IntArray, ids: pd.Index, sink: _Sink) -> None:
    """Report participants with more rows than the table allows (the privacy bound)."""
    spec = table.spec
    if spec.unique == (spec.key,):
        return  # one row per participant: extra rows are already duplicate keys
    valid = person[person >= 0]
    counts = np.bincount(valid, minlength=len(ids))
    over = np.flatnonzero(counts > spec.max_rows_per_participant)
    if not len(over):
        return
    members = np.flatnonzero(np.isin(person, over))
    codes, first = np.unique(person[members], return_index=True)
    firsts = members[first]
    count_of = dict(zip(firsts.tolist(), counts[codes].tolist(), strict=True))

    def message(pos: int) -> str:
        return (f"{spec.key} {ids[person[pos]]!r} has {count_of[pos]} rows, from this row on; "
                f"at most {spec.max_rows_per_participant} per participant are allowed")

    sink.add_rows(table, spec.key, "too_many_rows", np.sort(firsts), message)


# --------------------------------------------------------------------------- derived


def _add_derived(spec: TableSpec, file: str, checked: Mapping[str, _Checked],
                 sink: _Sink) -> _Checked:
    """Add derived per-participant columns (e.g. total_sessions) to the participant frame."""
    target = checked[spec.name]
    derived = {}
    table = _Table(spec, file, target.frame, target.lines)
    for col in spec.columns:
        if col.derived is None:
            continue
        per_person = _aggregate(col.derived, checked.get(col.derived.table), len(target.ids))
        values = _per_row(per_person, target.person, np.nan)
        _check_derived_bounds(table, col, values, sink)
        derived[col.name] = values
    frame = target.frame.assign(**derived)[[c.name for c in spec.columns]]
    return replace(target, frame=frame)


def _aggregate(d: Derivation, source: _Checked | None, n: int) -> FloatArray:
    """Sum of a column (missing counts as 0), or count of rows (optionally where
    column == value), per participant; rows of unknown participants are left out."""
    if source is None:
        return np.full(n, np.nan)
    person = source.person
    use = (person >= 0) & (person < n)
    for column, value in d.where:
        use &= _equals(source.frame[column], value)
    if d.aggregate == "sum" and d.column is not None:
        weights = np.nan_to_num(source.frame[d.column].to_numpy(dtype=np.float64), nan=0.0)
    else:
        weights = np.ones(len(person))
    return np.bincount(person[use], weights=weights[use], minlength=n).astype(np.float64)


def _equals(values: pd.Series, value: str) -> BoolArray:
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = list(values.cat.categories)
        if value not in categories:
            return np.zeros(len(values), dtype=bool)
        return np.asarray(values.cat.codes.to_numpy() == categories.index(value), dtype=bool)
    if pd.api.types.is_numeric_dtype(values.dtype):
        return np.asarray(values.to_numpy(dtype=np.float64) == float(value), dtype=bool)
    return np.asarray(values.to_numpy(dtype=object) == value, dtype=bool)


def _check_derived_bounds(table: _Table, col: ColumnSpec, values: FloatArray,
                          sink: _Sink) -> None:
    low, high = _bounds(col)
    rows = np.flatnonzero((values < low) | (values > high))
    how = _describe(col.derived) if col.derived is not None else ""

    def message(pos: int) -> str:
        clip = _fmt(low) if values[pos] < low else _fmt(high)
        return (f"derived value {_fmt(values[pos])} of {col.name} ({how}) is outside the public "
                f"bounds ({_fmt(low)} to {_fmt(high)}); it is clipped to {clip} at query time")

    sink.add_rows(table, col.name, "out_of_bounds", rows, message)
