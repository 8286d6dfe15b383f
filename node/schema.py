"""The public schema a node serves: tables, columns, bounds and categories.

The schema is public metadata shared by the whole network (the data matrix). Clipping
bounds and category vocabularies come only from here, never from the data. A network may
declare its own schema file; the shipped default is `schemas/data-matrix-1.0.0.yaml`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PlainValidator, ValidationError, WithJsonSchema

from bridgestat.common.files import (
    FileModel,
    FileProblem,
    KeyProblem,
    Text,
    first_problem,
    not_null,
    number,
    read_yaml,
)
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


# -- the file, as the network writes it -------------------------------------------------------


Bound = Annotated[float, PlainValidator(number("(finite)", math.isfinite)),
                  WithJsonSchema({"type": "number"})]
NotNull = BeforeValidator(not_null)


class DerivedFile(FileModel):
    """`derived`: a per-participant column computed from a many-rows table."""

    table: Text
    aggregate: Literal["sum", "count"]
    column: Annotated[Text | None, NotNull] = None  # what a sum adds up
    where: dict[str, str] = Field(default_factory=dict)  # column == category, all of them


class ColumnFile(FileModel):
    """One column: its type, and the public bounds or categories the node clips and counts
    with."""

    name: Text
    type: Literal["key", "integer", "real", "boolean", "categorical"]
    description: str = ""
    lower: Annotated[Bound | None, NotNull] = None
    upper: Annotated[Bound | None, NotNull] = None
    categories: list[str] = Field(default_factory=list)
    declared_by_node: bool = False  # categories come from each node's config
    max_categories: Annotated[int | None, NotNull, Field(ge=1)] = None
    derived: Annotated[DerivedFile | None, NotNull] = None


class TableFile(FileModel):
    """One table: its columns, the participant key and how many rows one participant has."""

    name: Text
    description: str = ""
    key: Text
    max_rows_per_participant: Annotated[int, Field(ge=1)]
    sequence_column: Annotated[Text | None, NotNull] = None
    month_column: Annotated[Text | None, NotNull] = None
    unique: list[Text] = Field(default_factory=list)
    columns: Annotated[list[ColumnFile], Field(min_length=1)]


class SchemaFile(FileModel):
    """The schema file (`schemas/data-matrix-1.0.0.yaml` is the default)."""

    name: Text
    version: str = ""
    tables: Annotated[list[TableFile], Field(min_length=1)]


def load_schema(path: Path = DEFAULT_SCHEMA_PATH) -> Schema:
    """Read and validate a schema file; `ConfigError(file, key path, problem)`."""
    source = str(path)
    try:
        raw = read_yaml(path, "schema")
    except FileProblem as exc:
        raise ConfigError(source, "(file)", exc.problem) from exc
    try:
        doc = SchemaFile.model_validate(raw)
        schema = Schema(name=doc.name, version=doc.version,
                        tables=tuple(_table(t, f"tables[{i}]") for i, t in enumerate(doc.tables)))
        _check_references(schema, doc)
        return schema
    except (ValidationError, KeyProblem) as exc:
        raise ConfigError(source, *first_problem(exc, SchemaFile)) from None


def _table(doc: TableFile, where: str) -> TableSpec:
    columns = tuple(_column(c, f"{where}.columns[{i}]") for i, c in enumerate(doc.columns))
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise KeyProblem(f"{where}.columns", f"column names must be unique in table {doc.name!r}")
    for key in ("key", "sequence_column", "month_column"):
        ref = getattr(doc, key)
        if ref is not None and ref not in names:
            raise KeyProblem(f"{where}.{key}", f"unknown column {ref!r}")
    for i, ref in enumerate(doc.unique):
        if ref not in names:
            raise KeyProblem(f"{where}.unique[{i}]", f"unknown column {ref!r}")
    return TableSpec(name=doc.name, columns=columns, key=doc.key,
                     max_rows_per_participant=doc.max_rows_per_participant,
                     unique=tuple(doc.unique), sequence_column=doc.sequence_column,
                     month_column=doc.month_column, description=doc.description)


def _column(doc: ColumnFile, where: str) -> ColumnSpec:
    ctype = ColumnType(doc.type)
    what = f"column {doc.name!r}:"
    if ctype.numeric:
        if doc.lower is None or doc.upper is None:
            raise KeyProblem(where, f"{what} numeric columns need lower and upper")
        if not doc.lower < doc.upper:
            raise KeyProblem(f"{where}.lower", f"{what} lower must be below upper")
    elif doc.lower is not None or doc.upper is not None:
        raise KeyProblem(f"{where}.{'lower' if doc.lower is not None else 'upper'}",
                         f"{what} only integer and real columns have bounds")
    categories = BOOLEAN_CATEGORIES if ctype is ColumnType.BOOLEAN else tuple(doc.categories)
    if ctype is ColumnType.CATEGORICAL and not categories and not doc.declared_by_node:
        raise KeyProblem(f"{where}.categories", f"{what} categorical columns need categories "
                         "(or declared_by_node: true)")
    if len(set(categories)) != len(categories):
        raise KeyProblem(f"{where}.categories", f"{what} categories must be unique")
    derived = None if doc.derived is None else _derivation(doc.derived, f"{where}.derived")
    return ColumnSpec(name=doc.name, type=ctype, lower=doc.lower, upper=doc.upper,
                      categories=categories, description=doc.description, derived=derived,
                      declared_by_node=doc.declared_by_node, max_categories=doc.max_categories)


def _derivation(doc: DerivedFile, where: str) -> Derivation:
    if doc.aggregate == "sum" and doc.column is None:
        raise KeyProblem(f"{where}.column", "a sum needs a column")
    return Derivation(table=doc.table, aggregate=doc.aggregate, column=doc.column,
                      where=tuple(doc.where.items()))


def _check_references(schema: Schema, doc: SchemaFile) -> None:
    """Table names are unique; a derived column refers to an existing table, a numeric
    column and known categories."""
    names = [t.name for t in schema.tables]
    if len(set(names)) != len(names):
        raise KeyProblem("tables", "table names must be unique")
    for t, table in enumerate(schema.tables):
        for c, column in enumerate(table.columns):
            if column.derived is not None:
                _check_derivation(schema, f"tables[{t}].columns[{c}].derived",
                                  f"{table.name}.{column.name}", column.derived)


def _check_derivation(schema: Schema, key: str, name: str, derived: Derivation) -> None:
    what = f"(derives {name})"
    table = schema.find(derived.table)
    if table is None:
        raise KeyProblem(f"{key}.table", f"unknown table {derived.table!r} {what}")
    if derived.column is not None:
        column = table.find(derived.column)
        if column is None or not column.type.numeric:
            raise KeyProblem(f"{key}.column", f"{derived.table}.{derived.column} must be a "
                             f"numeric column {what}")
    for where_column, value in derived.where:
        column = table.find(where_column)
        if column is None or value not in column.categories:
            raise KeyProblem(f"{key}.where", f"{where_column} == {value!r} does not name a "
                             f"category of {derived.table} {what}")
