"""Reduce a member's tables to one row per participant for a plan (the privacy unit).

A query on `participant` uses its rows directly. A query on a table with occasions
(`assessment`) picks, per participant, the occasion nearest to the target month inside
the window; participants without such an occasion do not take part. A paired change pairs
the follow-up occasion with the baseline occasion (filters and group-by then see the
baseline values of the queried table). Every step keeps at most one row per participant,
so a release over the result has the sensitivity the mechanisms assume.

Everything here is numpy on the columns of `columns.ColumnStore`: a serving node never
imports pandas (node/loader.py). A join is an index array (participant rows, and the
queried table's row at the occasion for each), not a copied frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bridgestat.node.columns import ColumnStore, ColumnTable, queryable
from bridgestat.node.planner import PARTICIPANT_TABLE, Plan, ResolvedTerm
from bridgestat.node.query import INTAKE, CategoryFilter, Occasion, Statistic
from bridgestat.node.schema import Schema, TableSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CellRows", "FloatArray", "Frames", "IntArray", "Rows", "queryable", "value_column"]

IntArray = np.ndarray[Any, np.dtype[np.int64]]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class CellRows:
    """The measured values of one group-by cell."""

    group: tuple[tuple[str, str], ...]
    # floats for means and changes, codes for histograms, a matrix (rows x terms) of
    # complete cases for cross products
    values: FloatArray | IntArray
    n_rows: int


@dataclass(frozen=True)
class Rows:
    """One row per participant taking part: participant rows `people`, and for a table
    with occasions its row at the occasion (`at`, aligned with `people`); `derived` holds
    the columns a plan computes (`_value`, `_t0`, ...), aligned with `people`."""

    participants: ColumnTable
    people: IntArray
    table: ColumnTable | None = None
    at: IntArray | None = None
    derived: Mapping[str, FloatArray | IntArray] = field(
        default_factory=lambda: MappingProxyType({}))

    def __len__(self) -> int:
        return len(self.people)

    def _source(self, column: str) -> tuple[ColumnTable, IntArray]:
        if column in self.participants:
            return self.participants, self.people
        if self.table is not None and self.at is not None and column in self.table:
            return self.table, self.at
        raise KeyError(column)

    def is_categorical(self, column: str) -> bool:
        if column in self.derived:
            return False
        table, _ = self._source(column)
        return table.is_categorical(column)

    def categories(self, column: str) -> tuple[str, ...]:
        table, _ = self._source(column)
        return table.categories[column]

    def codes(self, column: str) -> IntArray:
        """A categorical column's codes per row (-1: missing)."""
        table, rows = self._source(column)
        return table.category_codes(column, rows)

    def floats(self, column: str) -> FloatArray:
        """A numeric (or derived) column per row as float64 (NaN: missing)."""
        if column in self.derived:
            return np.asarray(self.derived[column], dtype=np.float64)
        table, rows = self._source(column)
        return table.floats(column, rows)

    def take(self, keep: npt.NDArray[np.bool_]) -> Rows:
        """The rows where `keep` is true."""
        return replace(self, people=self.people[keep],
                       at=None if self.at is None else self.at[keep],
                       derived=MappingProxyType({k: v[keep] for k, v in self.derived.items()}))

    def with_derived(self, **columns: FloatArray | IntArray) -> Rows:
        return replace(self, derived=MappingProxyType({**self.derived, **columns}))


class Frames:
    """Per-participant views of one member's data, cached per occasion.

    Built from the loader's `ColumnStore`, or from typed pandas frames (`data.check_tables`;
    tests and benchmarks), which are converted to the same columns first."""

    def __init__(self, tables: ColumnStore | Mapping[str, pd.DataFrame], schema: Schema) -> None:
        self.schema = schema
        store = tables if isinstance(tables, ColumnStore) else ColumnStore.from_frames(tables,
                                                                                       schema)
        # Only what a query can read: a table with many rows per participant and no
        # occasions (goal, coaching_contact) served only its derived participant columns,
        # computed at load; keeping it would hold most of a node's memory for nothing.
        self.tables = store.tables
        self.participants = self.tables[PARTICIPANT_TABLE]
        self._everyone = Rows(self.participants,
                              np.arange(len(self.participants), dtype=np.int64))
        self._occasion = lru_cache(maxsize=32)(self._select_occasion)
        self._joined = lru_cache(maxsize=32)(self._join)
        self._paired = lru_cache(maxsize=32)(self._pair)
        self._transitions = lru_cache(maxsize=32)(self._transition)
        self._terms = lru_cache(maxsize=64)(self._term_on)

    def _select_occasion(self, table_name: str, occ: Occasion) -> IntArray:
        """Per participant row, the table's row at the occasion (-1: none in the window):
        nearest the target month, then the earlier month, then the first in the file."""
        table = self.schema.table(table_name)
        month_column = table.month_column
        if month_column is None:
            raise ValueError(f"table {table_name} has no month column: no occasions")
        rows = self.tables[table_name]
        month = rows.floats(month_column)
        with np.errstate(invalid="ignore"):
            inside = np.flatnonzero((month >= occ.window_lower) & (month <= occ.window_upper))
        distance = np.abs(month[inside] - occ.target_month)
        person = rows.person[inside]
        order = np.lexsort((inside, month[inside], distance, person))  # last key first
        ordered, who = inside[order], person[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = who[1:] != who[:-1]
        pick = np.full(len(self.participants), -1, dtype=np.int64)
        pick[who[first]] = ordered[first]
        return pick

    def _join(self, table_name: str, occ: Occasion) -> Rows:
        """Participant columns plus the table's columns at the occasion (inner join)."""
        pick = self._occasion(table_name, occ)
        people = np.flatnonzero(pick >= 0)
        return Rows(self.participants, people, self.tables[table_name], pick[people])

    def _pair(self, table_name: str, baseline: Occasion, occasion: Occasion,
              column: str) -> Rows:
        """Baseline rows with `_value` = follow-up minus baseline (NaN without follow-up)."""
        base = self._joined(table_name, baseline)
        follow = self.tables[table_name].floats(column, self._occasion(table_name,
                                                                       occasion)[base.people])
        return base.with_derived(_value=follow - base.floats(column))

    def _transition(self, table_name: str, baseline: Occasion, occasion: Occasion,
                    column: str, edges: tuple[float, ...]) -> Rows:
        """Baseline rows with `_value` = the cell code of the change (-1: not measured).

        Categorical: before * k + after. Numeric: the bin of the change among `edges`, or
        without edges its sign (0 decreased, 1 unchanged, 2 increased).
        """
        base = self._joined(table_name, baseline)
        table = self.tables[table_name]
        later = self._occasion(table_name, occasion)[base.people]
        if table.is_categorical(column):
            k = len(table.categories[column])
            b = base.codes(column)
            a = table.category_codes(column, later)
            codes = np.where((b < 0) | (a < 0), -1, b * k + a)
        else:
            change = table.floats(column, later) - base.floats(column)
            binned = (np.searchsorted(np.asarray(edges), change, side="right") if edges
                      else np.sign(change) + 1)
            codes = np.where(np.isnan(change), -1, binned)
        return base.with_derived(_value=codes.astype(np.int64))

    def _present(self, rows: Rows, table_name: str, occ: Occasion, column: str
                 ) -> npt.NDArray[np.bool_]:
        """Per row of `rows`: whether the participant has a value of `column` at `occ` (the
        occasion picked as for any query), i.e. would be in a paired change to it."""
        pick = self._occasion(table_name, occ)[rows.people]
        present = pick >= 0
        if not present.any():
            return present
        values = self.tables[table_name].floats(column, np.where(present, pick, pick.max()))
        return present & ~np.isnan(values)

    def _base(self, table: TableSpec, occasion: Occasion) -> Rows:
        """The participants a cross-products query starts from (filters see these rows)."""
        return self._everyone if not table.has_occasions else self._joined(table.name,
                                                                           occasion)

    def _term_on(self, resolved: ResolvedTerm, table_name: str, occasion: Occasion
                 ) -> FloatArray:
        """One regression term's value per participant of `_base(table, occasion)` (NaN
        when missing); cached per term and base."""
        people = self._base(self.schema.table(table_name), occasion).people
        term, name = resolved.term, resolved.column.name
        if resolved.table == PARTICIPANT_TABLE:
            source, rows = self.participants, people
        else:
            source = self.tables[resolved.table]
            rows = self._occasion(resolved.table, term.occasion or INTAKE)[people]
        if term.category:
            codes = source.category_codes(name, rows)
            categories = source.categories[name]
            hit = (codes == categories.index(term.category) if term.category in categories
                   else np.zeros(len(codes), dtype=bool))
            indicator = hit.astype(np.float64)
            indicator[codes < 0] = np.nan
            return indicator
        values = source.floats(name, rows)
        if resolved.table != PARTICIPANT_TABLE and term.baseline is not None:
            before = self._occasion(resolved.table, term.baseline)[people]
            values = values - source.floats(name, before)
        return values

    def rows(self, plan: Plan) -> Rows:
        """One row per participant taking part; the measured column is `value_column(plan)`."""
        table: TableSpec = plan.table
        if plan.query.statistic is Statistic.CROSS_PRODUCTS:
            occasion = plan.occasion or INTAKE
            base = self._base(table, occasion)
            return base.with_derived(**{f"_t{i}": self._terms(t, table.name, occasion)
                                        for i, t in enumerate(plan.terms)})
        if plan.transition:
            assert plan.baseline is not None and plan.occasion is not None and plan.column
            return self._transitions(table.name, plan.baseline, plan.occasion,
                                     plan.column.name, plan.query.bin_edges)
        if not table.has_occasions:
            return self._everyone
        if plan.query.statistic is Statistic.PAIRED_CHANGE:
            assert plan.baseline is not None and plan.occasion is not None and plan.column
            return self._paired(table.name, plan.baseline, plan.occasion, plan.column.name)
        assert plan.occasion is not None
        return self._joined(table.name, plan.occasion)

    def cells(self, plan: Plan) -> Iterator[CellRows]:
        rows = _filtered(self.rows(plan), plan)
        values = _measured(rows, plan)
        if not plan.query.group_by and plan.query.split_by_presence is None:
            yield CellRows((), values, len(rows))
            return
        keys = _group_keys(rows, plan)
        split = plan.query.split_by_presence
        if split is not None:  # the presence cell is the last axis of plan.cells
            absent = ~self._present(rows, plan.table.name, split, value_column(plan))
            keys = np.where(keys < 0, -1, keys * 2 + absent)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        for index, group in enumerate(plan.cells):
            lo, hi = np.searchsorted(sorted_keys, [index, index + 1])
            picked = order[lo:hi]
            yield CellRows(group, values[picked], int(hi - lo))


def _filtered(rows: Rows, plan: Plan) -> Rows:
    if not plan.query.filters:
        return rows
    keep = np.ones(len(rows), dtype=bool)
    for flt in plan.query.filters:
        if isinstance(flt, CategoryFilter):
            categories = rows.categories(flt.column)
            wanted = [categories.index(v) for v in flt.values if v in categories]
            keep &= np.isin(rows.codes(flt.column), wanted)
        else:
            lower = -np.inf if flt.lower is None else flt.lower
            upper = np.inf if flt.upper is None else flt.upper
            number = rows.floats(flt.column)  # compared as read: 3 < 3.0000001
            with np.errstate(invalid="ignore"):
                keep &= (number >= lower) & (number <= upper)
    return rows.take(keep)


def value_column(plan: Plan) -> str:
    """The column a plan measures: `_value` where `rows` derives it (a change, a
    transition), else the table's own column."""
    if plan.transition or plan.query.statistic is Statistic.PAIRED_CHANGE:
        return "_value"
    assert plan.column is not None
    return plan.column.name


def _measured(rows: Rows, plan: Plan) -> FloatArray | IntArray:
    stat = plan.query.statistic
    if stat is Statistic.COUNT:
        return np.zeros(len(rows), dtype=np.int64)
    if stat is Statistic.CROSS_PRODUCTS:
        columns = [rows.floats(f"_t{i}") for i in range(len(plan.terms))]
        matrix: FloatArray = (np.column_stack(columns) if columns
                              else np.empty((len(rows), 0), dtype=np.float64))
        return matrix  # incomplete rows are dropped per cell by the engine
    name = value_column(plan)
    if plan.transition:
        return np.asarray(rows.derived[name], dtype=np.int64)
    if stat is Statistic.HISTOGRAM:
        if rows.is_categorical(name):
            return rows.codes(name)
        numbers = rows.floats(name)
        codes: IntArray = np.searchsorted(np.asarray(plan.query.bin_edges), numbers,
                                          side="right").astype(np.int64)
        return np.where(np.isnan(numbers), -1, codes).astype(np.int64)
    return rows.floats(name)


def _group_keys(rows: Rows, plan: Plan) -> IntArray:
    """Cell index of each row in the order of plan.cells (-1: a group value is missing)."""
    keys = np.zeros(len(rows), dtype=np.int64)
    missing = np.zeros(len(rows), dtype=bool)
    for name in plan.query.group_by:
        codes = rows.codes(name)
        missing |= codes < 0
        keys = keys * len(rows.categories(name)) + codes
    keys[missing] = -1
    return keys
