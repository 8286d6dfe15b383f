"""Where a member's data comes from: a CSV or Parquet folder, an Excel workbook, or PostgreSQL.

Every source is read into the same raw text tables a CSV folder gives (`data.RawTables`:
"" = missing, values as text), so that `data.check_raw` checks them all alike, with the same
twelve problem kinds, and converts them to the same typed frames; the same data through any
source gives the same frames (a database's rows in key order) and the same aggregates. Typed
values become the text a CSV export would hold: whole numbers without ".0", booleans as
true/false, dates as ISO 8601.

- `csv`: `<path>/<table>.csv`; rows are numbered by line (header = line 1).
- `parquet`: `<path>/<table>.parquet`; rows are numbered from 1; NaN in a float column is
  missing (pandas writes missing numbers as NaN).
- `excel`: one .xlsx workbook, one sheet per table named as the table, the header in the
  first non-empty row; rows are the sheet's row numbers, blank rows are skipped; a formula
  counts as the value Excel last computed for it. openpyxl reads about 20,000 rows of
  ten columns a second: for millions of rows prefer CSV, Parquet or the database.
- `postgresql`: `tables` maps every schema table to a table or view (`schema.name`, resolved
  with SQL's name rules); only the schema's columns are selected by name (other columns are
  ignored), in one read-only, repeatable-read transaction (one consistent snapshot); the
  password comes from the environment variable named by `password_env`, never the config.
  A database has no row order, so rows are read ordered by the table's key and unique
  columns (then the other columns) and numbered from 1 in that order.

Problems that make a source unusable as configured (a database that cannot be reached, a
mapped table or view that does not exist or may not be read, a schema table not mapped, a
workbook that cannot be opened) raise `ConfigError` naming the config key; problems in the
data (a missing sheet or file, a missing column, bad values) are reported by the check,
naming the file, sheet, table or view, row and column. Both happen at start-up.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bridgestat.node.config import DataConfig
from bridgestat.node.data import (
    CheckReport,
    MemberData,
    Problem,
    RawTables,
    check_raw,
    read_csv_folder,
    read_csv_table,
    servable_data,
    severity_of,
)
from bridgestat.node.errors import ConfigError
from bridgestat.node.schema import Schema, TableSpec

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

__all__ = ["cell_text", "check", "check_data", "connect", "describe", "load", "read",
           "read_parquet_folder", "read_postgresql", "read_workbook"]

CONNECT_TIMEOUT_S = 10  # unless the dsn sets connect_timeout: fail fast at start-up
APPLICATION_NAME = "bridgestat-node"  # shows in pg_stat_activity, for the member's DBA
_RELATION_KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized view",
                   "f": "foreign table"}
_LISTED = 20  # names listed in a hint


# --------------------------------------------------------------------------- dispatch


def read(data: DataConfig, schema: Schema, origin: str = "(config)") -> RawTables:
    """Read the member's data from its configured source as raw text tables.

    `origin` is the config file, named in a ConfigError.
    """
    readers: dict[str, Callable[[], RawTables]] = {
        "csv": lambda: read_csv_folder(_path(data, origin), schema),
        "parquet": lambda: read_parquet_folder(_path(data, origin), schema),
        "excel": lambda: read_workbook(_path(data, origin), schema, origin),
        "postgresql": lambda: read_postgresql(data, schema, origin),
    }
    reader = readers.get(data.source)
    if reader is None:
        raise ConfigError(origin, "data.source", f"unknown source {data.source!r}")
    return reader()


def check_data(data: DataConfig, schema: Schema, origin: str = "(config)"
               ) -> tuple[CheckReport, MemberData]:
    """Read and check the member's data; the typed data must not be served unless servable."""
    return check_raw(read(data, schema, origin), schema)


def check(data: DataConfig, schema: Schema, origin: str = "(config)") -> CheckReport:
    """Every problem in the member's data, for `bridgestat-node check`."""
    report, _ = check_data(data, schema, origin)
    return report


def load(data: DataConfig, schema: Schema, origin: str = "(config)") -> MemberData:
    """The member's data as typed frames for serving; DataError if it has errors."""
    raw = read(data, schema, origin)
    report, member = check_raw(raw, schema)
    return servable_data(report, member, raw.where)


def describe(data: DataConfig) -> str:
    """The source in a few words, without reading it (no password): for `check`'s output."""
    if data.source == "postgresql":
        try:
            target = _target(_conninfo(data.dsn, "(config)"))
        except ConfigError:
            target = "(connection string unreadable)"
        return (f"PostgreSQL {target} (rows numbered in the order of each table's key "
                "and unique columns)")
    kind = {"csv": "CSV folder", "parquet": "Parquet folder", "excel": "Excel workbook"}
    return f"{kind.get(data.source, data.source)} {data.path}"


def _path(data: DataConfig, origin: str) -> Path:
    if data.path is None:
        raise ConfigError(origin, "data.path", f"a {data.source} source needs a path")
    return data.path


# --------------------------------------------------------------------------- text


def cell_text(value: object) -> str:
    """A typed value as a CSV export would write it; "" for missing.

    Whole floats lose their ".0" (Excel stores every number as a float, and "3" is what the
    CSV holds); other floats use the shortest text that reads back to the same float.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return _float_text(float(value))
    if isinstance(value, Decimal):
        return "" if value.is_nan() else format(value, "f")
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _float_text(x: float) -> str:
    if math.isnan(x):
        return ""
    if x.is_integer() and abs(x) < 2.0 ** 53:
        return str(int(x))
    return repr(x)


def _unique_names(names: Iterable[str]) -> list[str]:
    """Column names made unique as pandas does for a CSV header ('a', 'a.1', ...)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}.{count}")
    return out


def _problem(file: str, column: str | None, kind: str, message: str) -> Problem:
    return Problem(file=file, row=None, column=column, kind=kind, message=message,
                   severity=severity_of(kind))


def _missing_message(what: str, name: str, where: str, present: Sequence[str]) -> str:
    message = f"{what} {name!r} not found in {where}"
    same = [p for p in present if p.lower() == name.lower()]
    if same:
        return f"{message} (found {same[0]!r}; names are case-sensitive)"
    found = ", ".join(present[:_LISTED]) if present else "none"
    return f"{message} ({what}s there: {found})"


# --------------------------------------------------------------------------- parquet


def read_parquet_folder(folder: Path, schema: Schema) -> RawTables:
    """Read `<table>.parquet` for every schema table as text; rows are numbered from 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    files = {t.name: f"{t.name}.parquet" for t in schema.tables}
    first_rows = dict.fromkeys(files, 1)
    where = repr(str(folder))
    if not folder.is_dir():
        problems = tuple(_problem(name, None, "missing_file",
                                  f"folder {where} does not exist or is not a folder")
                         for name in files.values())
        return RawTables({}, problems, files, where, first_rows)
    present = sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".parquet")
    tables: dict[str, pd.DataFrame] = {}
    found: list[Problem] = []
    for table, name in files.items():
        path = folder / name
        if not path.is_file():
            found.append(_problem(name, None, "missing_file",
                                  _missing_message("file", name, where, present)))
            continue
        try:
            arrow = pq.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            found.append(_problem(name, None, "unreadable_file",
                                  f"cannot read the file as Parquet: {exc}"))
            continue
        tables[table] = _arrow_frame(arrow)
    return RawTables(tables, tuple(found), files, where, first_rows)


def _arrow_frame(arrow: pa.Table) -> pd.DataFrame:
    """An Arrow table as text columns, without the index columns pandas may have added."""
    metadata = arrow.schema.pandas_metadata or {}
    index = {c for c in metadata.get("index_columns", []) if isinstance(c, str)}
    keep = [i for i, name in enumerate(arrow.column_names) if name not in index]
    names = _unique_names(arrow.column_names[i] for i in keep)
    return pd.DataFrame({name: _arrow_text(arrow.column(i)) for name, i in zip(names, keep,
                                                                                strict=True)},
                        index=pd.RangeIndex(arrow.num_rows), copy=False)


def _arrow_text(column: pa.ChunkedArray) -> np.ndarray[Any, np.dtype[np.object_]]:
    """One Arrow column as text cells: vectorised casts for flat types, else per value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_floating(kind):
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, kind), column)
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind) \
            or pa.types.is_string(kind) or pa.types.is_large_string(kind) \
            or pa.types.is_decimal(kind) or pa.types.is_date(kind):
        text = pc.cast(column, pa.string()).fill_null("")
        return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)
    return np.array([cell_text(v) for v in column.to_pylist()], dtype=object)


# --------------------------------------------------------------------------- excel


def read_workbook(path: Path, schema: Schema, origin: str = "(config)") -> RawTables:
    """Read one sheet per schema table (named as the table) from an .xlsx workbook as text.

    A workbook that cannot be opened is a ConfigError on `data.path`; a missing sheet is a
    missing_file problem, like a missing CSV file.
    """
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    path = Path(path)
    book = path.name
    files = {t.name: f"{book}, sheet {t.name}" for t in schema.tables}
    if not path.is_file():
        raise ConfigError(origin, "data.path", f"workbook {path} does not exist")
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (OSError, InvalidFileException, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ConfigError(origin, "data.path", f"cannot open {path} as an Excel workbook "
                          f"(.xlsx): {exc}") from None
    try:
        sheets = list(workbook.sheetnames)
        tables: dict[str, pd.DataFrame] = {}
        problems: list[Problem] = []
        for table, name in files.items():
            if table not in sheets:
                problems.append(_problem(name, None, "missing_file", _missing_message(
                    "sheet", table, f"workbook {book!r}", sheets)))
                continue
            sheet = workbook[table]
            sheet.reset_dimensions()  # some writers record wrong dimensions; read every row
            frame, extra = _sheet_frame(sheet.iter_rows(values_only=True))
            tables[table] = frame
            if extra:
                problems.append(_problem(name, None, "unknown_column",
                                         "rows have cells right of the last column name; "
                                         "those cells are ignored"))
    finally:
        workbook.close()
    return RawTables(tables, tuple(problems), files, f"workbook {str(path)!r}")


def _sheet_frame(rows: Iterator[Sequence[object]]) -> tuple[pd.DataFrame, bool]:
    """A sheet as text: the first non-empty row is the header; the index is sheet row - 2,
    so that the check's line numbers are the sheet's row numbers. Also: whether any row has
    values beyond the header."""
    header: list[str] | None = None
    cells: list[list[str]] = []
    numbers: list[int] = []
    extra = False
    for number, row in enumerate(rows, start=1):
        texts = [cell_text(v) for v in row]
        if not any(t.strip() for t in texts):
            continue
        if header is None:
            while texts and not texts[-1].strip():
                texts.pop()
            header = _unique_names(t.strip() or f"(column {i + 1})" for i, t in enumerate(texts))
            continue
        width = len(header)
        extra = extra or any(t.strip() for t in texts[width:])
        cells.append((texts + [""] * width)[:width])
        numbers.append(number - 2)
    if header is None:
        return pd.DataFrame(), False
    index = pd.Index(numbers, dtype=np.int64)
    columns = {name: np.array([row[i] for row in cells], dtype=object)
               for i, name in enumerate(header)}
    return pd.DataFrame(columns, index=index, copy=False), extra


# --------------------------------------------------------------------------- postgresql


@dataclass(frozen=True)
class _Relation:
    """A mapped table or view, resolved in the database."""

    identifier: Any  # psycopg.sql.Identifier (schema, name)
    label: str  # 'view bridge.participant_v', for problems
    columns: tuple[str, ...]


def read_postgresql(data: DataConfig, schema: Schema, origin: str = "(config)") -> RawTables:
    """Read every schema table from its mapped table or view, in one read-only snapshot."""
    import psycopg

    mapping = _table_mapping(data, schema, origin)
    tables: dict[str, pd.DataFrame] = {}
    files: dict[str, str] = {}
    with connect(data, origin) as conn, conn.transaction(), conn.cursor() as cur:
        try:
            cur.execute("SET LOCAL extra_float_digits = 1")  # shortest exact float text
            cur.execute("SET LOCAL datestyle = 'ISO, YMD'")
        except psycopg.Error as exc:
            raise ConfigError(origin, "data.dsn", f"cannot set up the session: {exc}") from None
        for spec in schema.tables:
            relation = _resolve(cur, spec.name, mapping[spec.name], origin)
            files[spec.name] = relation.label
            tables[spec.name] = _copy(cur, spec, relation, origin)
        database = conn.info.dbname
    first_rows = dict.fromkeys(files, 1)
    return RawTables(tables, (), files, f"PostgreSQL database {database!r}", first_rows)


def connect(data: DataConfig, origin: str = "(config)") -> psycopg.Connection[Any]:
    """A read-only connection to the member's database, as the node reads with it.

    Every transaction on it is READ ONLY and REPEATABLE READ; the password comes from the
    environment variable named by `password_env`. Errors name `data.dsn` and the server,
    never the password.
    """
    import psycopg

    params = _conninfo(data.dsn, origin)
    if "password" in params:
        raise ConfigError(origin, "data.dsn", "the connection string holds a password; put it "
                          "in an environment variable and name that in data.password_env")
    password = None
    if data.password_env:
        password = os.environ.get(data.password_env)
        if password is None:
            raise ConfigError(origin, "data.password_env",
                              f"environment variable {data.password_env} is not set")
    extra: dict[str, Any] = {"application_name": APPLICATION_NAME, "client_encoding": "utf8"}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    if password is not None:
        extra["password"] = password
    try:
        conn = psycopg.connect(data.dsn, autocommit=False, **extra)
    except psycopg.Error as exc:
        reason = _scrub(str(exc).strip(), password)
        raise ConfigError(origin, "data.dsn", f"cannot connect to PostgreSQL {_target(params)}: "
                          f"{reason}") from None
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


def _conninfo(dsn: str, origin: str) -> dict[str, Any]:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        raise ConfigError(origin, "data.dsn",
                          f"not a PostgreSQL connection string: {exc}") from None


def _target(params: Mapping[str, Any]) -> str:
    """'at host:port (database d, user u)' from the connection parameters and PG* defaults."""
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") \
        or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    database = params.get("dbname") or os.environ.get("PGDATABASE")
    user = params.get("user") or os.environ.get("PGUSER")
    who = ", ".join(f"{k} {v}" for k, v in (("database", database), ("user", user)) if v)
    return f"at {host}:{port}" + (f" ({who})" if who else "")


def _scrub(text: str, secret: str | None) -> str:
    text = " ".join(text.split())
    return text.replace(secret, "***") if secret else text


def _table_mapping(data: DataConfig, schema: Schema, origin: str) -> dict[str, str]:
    """Schema table -> configured table or view; every schema table, and only those."""
    names = [t.name for t in schema.tables]
    for table in data.tables:
        if table not in names:
            raise ConfigError(origin, f"data.tables.{table}",
                              f"{table!r} is not a table of schema {schema.name} "
                              f"(its tables: {', '.join(names)})")
    unmapped = [t for t in names if t not in data.tables]
    if unmapped:
        raise ConfigError(origin, "data.tables",
                          f"no table or view given for schema table(s) {', '.join(unmapped)}; "
                          f"map each to the member's table or view, e.g. "
                          f"{unmapped[0]}: bridge.{unmapped[0]}")
    return {t: data.tables[t] for t in names}


def _resolve(cur: psycopg.Cursor[Any], table: str, name: str, origin: str) -> _Relation:
    """Find the table or view `name` (SQL name rules) and its columns; ConfigError if the
    node's role cannot read it."""
    import psycopg
    from psycopg import sql

    key = f"data.tables.{table}"
    try:
        cur.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = pg_catalog.to_regclass(%s)", (name,))
        found = cur.fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(origin, key, f"the node's database user may not read {name!r} "
                          f"({_scrub(str(exc), None)}); grant it USAGE on the schema and "
                          "SELECT on the table or view") from None
    except psycopg.Error as exc:
        raise ConfigError(origin, key, f"{name!r} is not a valid table or view name: "
                          f"{_scrub(str(exc), None)}") from None
    if found is None:
        raise ConfigError(origin, key, f"no table or view {name!r} in the database"
                          f"{_nearby(cur, name)}")
    namespace, relname, relkind = found
    kind = _RELATION_KINDS.get(relkind)
    if kind is None:
        raise ConfigError(origin, key, f"{name!r} is not a table or view")
    identifier = sql.Identifier(namespace, relname)
    label = f"{kind} {namespace}.{relname}"
    try:
        cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(identifier))
    except psycopg.errors.InsufficientPrivilege:
        raise ConfigError(origin, key, f"the node's database user may not read {label}; "
                          "grant it SELECT (and USAGE on the schema)") from None
    except psycopg.Error as exc:
        raise ConfigError(origin, key, f"cannot read {label}: {_scrub(str(exc), None)}") \
            from None
    columns = tuple(d.name for d in cur.description or ())
    return _Relation(identifier, label, columns)


def _nearby(cur: psycopg.Cursor[Any], name: str) -> str:
    """A hint: the tables and views the node's role can read in the schema `name` names."""
    schema_name = name.split(".", 1)[0].strip('"') if "." in name else None
    cur.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_%%' "
        "AND (%s::text IS NULL OR n.nspname = %s) "
        "AND pg_catalog.has_table_privilege(c.oid, 'SELECT') "
        "ORDER BY 1 LIMIT %s", (schema_name, schema_name, _LISTED + 1))
    names = [row[0] for row in cur.fetchall()]
    if not names:
        return "" if schema_name is None else f" (nothing readable in schema {schema_name!r})"
    more = ", ..." if len(names) > _LISTED else ""
    return f" (readable there: {', '.join(names[:_LISTED])}{more})"


def _copy(cur: psycopg.Cursor[Any], spec: TableSpec, relation: _Relation,
          origin: str) -> pd.DataFrame:
    """The schema's columns of one relation as text, through COPY ... TO STDOUT as CSV.

    Values are cast to text in SQL (COPY writes booleans as t/f, a cast as true/false).
    Rows come ordered by the key and unique columns, then the rest as text, so that row
    numbers are the same on every read of the same data.
    """
    import psycopg
    from psycopg import sql

    wanted = [c.name for c in spec.columns if c.derived is None and c.name in relation.columns]
    if not wanted:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(relation.identifier))
        count = cur.fetchone()
        return pd.DataFrame(index=pd.RangeIndex(int(count[0]) if count else 0))
    first = [c for c in dict.fromkeys([spec.key, *spec.unique]) if c in wanted]
    order = [sql.Identifier(c) for c in first] + [
        sql.SQL("{}::text").format(sql.Identifier(c)) for c in wanted if c not in first]
    query = sql.SQL("COPY (SELECT {columns} FROM {relation} ORDER BY {order}) "
                    "TO STDOUT (FORMAT csv, HEADER true, ENCODING 'UTF8')").format(
        columns=sql.SQL(", ").join(sql.SQL("{0}::text AS {0}").format(sql.Identifier(c))
                                   for c in wanted),
        relation=relation.identifier, order=sql.SQL(", ").join(order))
    buffer = io.BytesIO()
    try:
        with cur.copy(query) as copy:
            for block in copy:
                buffer.write(block)
    except psycopg.Error as exc:
        raise ConfigError(origin, f"data.tables.{spec.name}",
                          f"cannot read {relation.label}: {_scrub(str(exc), None)}") from None
    buffer.seek(0)
    frame, problems = read_csv_table(buffer, relation.label, drop_blank=False)
    if frame is None:  # COPY always writes the header; anything else is a driver fault
        raise ConfigError(origin, f"data.tables.{spec.name}",
                          f"cannot read {relation.label}: {problems[0].message}")
    return frame.set_axis(pd.RangeIndex(len(frame)), axis=0)
