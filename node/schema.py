"""The public schema a node serves: tables, columns, bounds and categories.

The schema is public metadata shared by the whole network (the data matrix). Clipping
bounds and category vocabularies come only from here, never from the data. A network may
declare its own schema file; the shipped default is `schemas/data-matrix-1.0.0.yaml`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bridgestat.node.errors import ConfigError, QueryError

DEFAULT_SCHEMA_PATH = Path(__file__).parent / "schemas" / "data-matrix-1.0.0.yaml"
BOOLEAN_CATEGORIES = ("false", "true")


class ColumnType(enum.Enum):
    KEY = "key"
    INTEGER = "integer"
    REAL = "real"
    BOOLEAN = "boolean"
    CATEGORICAL = "categorical"

    @property
    def numeric(self) -> bool:
        return self in (ColumnType.INTEGER, ColumnType.REAL)

    @property
    def categorical(self) -> bool:
        return self in (ColumnType.BOOLEAN, ColumnType.CATEGORICAL)


@dataclass(frozen=True)
class Derivation:
    """How a derived per-participant column is computed from a many-rows table."""

    table: str
    aggregate: str  # "sum" of `column`, or "count" of rows
    column: str | None = None
    where: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: ColumnType
    lower: float | None = None
    upper: float | None = None
    categories: tuple[str, ...] = ()
    description: str = ""
    derived: Derivation | None = None
    declared_by_node: bool = False
    max_categories: int | None = None

    @property
    def half_width(self) -> float:
        """H = (U - L) / 2, the sensitivity of a centred sum of this column."""
        assert self.lower is not None and self.upper is not None  # numeric columns only
        return (self.upper - self.lower) / 2

    @property
    def center(self) -> float:
        assert self.lower is not None and self.upper is not None
        return (self.upper + self.lower) / 2


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    key: str
    max_rows_per_participant: int
    unique: tuple[str, ...] = ()
    sequence_column: str | None = None
    month_column: str | None = None
    description: str = ""

    @property
    def has_occasions(self) -> bool:
        return self.month_column is not None

    def find(self, name: str) -> ColumnSpec | None:
        return next((c for c in self.columns if c.name == name), None)

    def column(self, name: str, field_name: str = "query.column") -> ColumnSpec:
        found = self.find(name)
        if found is None:
            raise QueryError(field_name, f"table {self.name!r} has no column {name!r}")
        return found


@dataclass(frozen=True)
class Schema:
    name: str
    version: str
    tables: tuple[TableSpec, ...] = field(default_factory=tuple)

    def find(self, name: str) -> TableSpec | None:
        return next((t for t in self.tables if t.name == name), None)

    def table(self, name: str, field_name: str = "query.table") -> TableSpec:
        found = self.find(name)
        if found is None:
            known = ", ".join(t.name for t in self.tables)
            raise QueryError(field_name, f"unknown table {name!r} (known: {known})")
        return found

    def with_declared_categories(self, declared: Mapping[str, tuple[str, ...]]) -> Schema:
        """Fill node-declared vocabularies (e.g. participant.team) from the node config."""
        tables = tuple(_declare(t, declared) for t in self.tables)
        return replace(self, tables=tables)


def _declare(table: TableSpec, declared: Mapping[str, tuple[str, ...]]) -> TableSpec:
    columns = []
    for col in table.columns:
        values = declared.get(f"{table.name}.{col.name}")
        if values is not None:
            columns.append(replace(col, categories=tuple(values)))
        else:
            columns.append(col)
    return replace(table, columns=tuple(columns))


def load_schema(path: Path = DEFAULT_SCHEMA_PATH) -> Schema:
    """Read and validate a schema file; errors name the file and key."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(source, "(file)", f"cannot read schema: {exc}") from exc
    doc = _mapping(raw, source, "(top level)")
    tables_raw = doc.get("tables")
    if not isinstance(tables_raw, list) or not tables_raw:
        raise ConfigError(source, "tables", "must be a non-empty list")
    tables = tuple(_table(t, source, f"tables[{i}]") for i, t in enumerate(tables_raw))
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise ConfigError(source, "tables", "table names must be unique")
    schema = Schema(name=_text(doc, "name", source, ""), version=str(doc.get("version", "")),
                    tables=tables)
    for table in tables:
        for column in table.columns:
            if column.derived is not None:
                _check_derivation(schema, f"{table.name}.{column.name}", column.derived, source)
    return schema


def _check_derivation(schema: Schema, name: str, derived: Derivation, source: str) -> None:
    """A derived column must refer to an existing table, a numeric column, known categories."""
    key = f"{name}.derived"
    table = schema.find(derived.table)
    if table is None:
        raise ConfigError(source, key, f"unknown table {derived.table!r}")
    if derived.column is not None:
        column = table.find(derived.column)
        if column is None or not column.type.numeric:
            raise ConfigError(source, key, f"{derived.table}.{derived.column} must be a "
                              "numeric column")
    for where_column, value in derived.where:
        column = table.find(where_column)
        if column is None or value not in column.categories:
            raise ConfigError(source, key, f"where {where_column} == {value!r} does not name "
                              f"a category of {derived.table}")


def _mapping(value: Any, source: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(source, key, "must be a mapping")
    return value


def _text(doc: Mapping[str, Any], key: str, source: str, prefix: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(source, f"{prefix}{key}", "must be a non-empty string")
    return value


def _table(raw: Any, source: str, where: str) -> TableSpec:
    doc = _mapping(raw, source, where)
    name = _text(doc, "name", source, f"{where}.")
    cols_raw = doc.get("columns")
    if not isinstance(cols_raw, list) or not cols_raw:
        raise ConfigError(source, f"{where}.columns", "must be a non-empty list")
    columns = tuple(_column(c, source, f"{where}.columns[{i}]") for i, c in enumerate(cols_raw))
    key = _text(doc, "key", source, f"{where}.")
    names = {c.name for c in columns}
    for ref in (key, doc.get("sequence_column"), doc.get("month_column"), *doc.get("unique", [])):
        if ref is not None and ref not in names:
            raise ConfigError(source, where, f"refers to unknown column {ref!r}")
    max_rows = doc.get("max_rows_per_participant")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise ConfigError(source, f"{where}.max_rows_per_participant", "must be an integer >= 1")
    return TableSpec(name=name, columns=columns, key=key, max_rows_per_participant=max_rows,
                     unique=tuple(doc.get("unique", ())),
                     sequence_column=doc.get("sequence_column"),
                     month_column=doc.get("month_column"),
                     description=str(doc.get("description", "")))


def _column(raw: Any, source: str, where: str) -> ColumnSpec:
    doc = _mapping(raw, source, where)
    name = _text(doc, "name", source, f"{where}.")
    try:
        ctype = ColumnType(doc.get("type"))
    except ValueError:
        allowed = ", ".join(t.value for t in ColumnType)
        raise ConfigError(source, f"{where}.type", f"must be one of {allowed}") from None
    lower, upper = doc.get("lower"), doc.get("upper")
    if ctype.numeric:
        if not isinstance(lower, (int, float)) or not isinstance(upper, (int, float)):
            raise ConfigError(source, f"{where} ({name})", "numeric columns need lower and upper")
        if not lower < upper:
            raise ConfigError(source, f"{where} ({name})", "lower must be below upper")
    categories = tuple(str(c) for c in doc.get("categories", ()))
    if ctype is ColumnType.BOOLEAN:
        categories = BOOLEAN_CATEGORIES
    declared = bool(doc.get("declared_by_node", False))
    if ctype is ColumnType.CATEGORICAL and not categories and not declared:
        raise ConfigError(source, f"{where} ({name})", "categorical columns need categories")
    if len(set(categories)) != len(categories):
        raise ConfigError(source, f"{where} ({name})", "categories must be unique")
    return ColumnSpec(
        name=name, type=ctype,
        lower=float(lower) if ctype.numeric else None,
        upper=float(upper) if ctype.numeric else None,
        categories=categories, description=str(doc.get("description", "")),
        derived=_derivation(doc.get("derived"), source, f"{where}.derived"),
        declared_by_node=declared, max_categories=doc.get("max_categories"),
    )


def _derivation(raw: Any, source: str, where: str) -> Derivation | None:
    if raw is None:
        return None
    doc = _mapping(raw, source, where)
    aggregate = doc.get("aggregate")
    if aggregate not in ("sum", "count"):
        raise ConfigError(source, f"{where}.aggregate", "must be sum or count")
    if aggregate == "sum" and not doc.get("column"):
        raise ConfigError(source, f"{where}.column", "a sum needs a column")
    where_raw = _mapping(doc.get("where", {}), source, f"{where}.where")
    return Derivation(table=_text(doc, "table", source, f"{where}."), aggregate=aggregate,
                      column=doc.get("column"),
                      where=tuple((str(k), str(v)) for k, v in where_raw.items()))
