"""Reduce a member's tables to one row per participant for a plan (the privacy unit).

A query on `participant` uses its rows directly. A query on a table with occasions
(`assessment`) picks, per participant, the occasion nearest to the target month inside
the window; participants without such an occasion do not take part. A paired change pairs
the follow-up occasion with the baseline occasion (filters and group-by then see the
baseline values of the queried table). Every step keeps at most one row per participant,
so a release over the result has the sensitivity the mechanisms assume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from bridgestat.node.planner import PARTICIPANT_TABLE, Plan, ResolvedTerm
from bridgestat.node.query import INTAKE, CategoryFilter, Occasion, Statistic
from bridgestat.node.schema import Schema, TableSpec

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


class Frames:
    """Per-participant views of one member's data, cached per occasion."""

    def __init__(self, tables: dict[str, pd.DataFrame], schema: Schema) -> None:
        self.schema = schema
        # Only what a query can read: a table with many rows per participant and no
        # occasions (goal, coaching_contact) served only its derived participant columns,
        # computed at load; keeping it would hold most of a node's memory for nothing.
        self.tables = {name: _compact(frame) for name, frame in tables.items()
                       if queryable(schema.table(name))}
        participant = schema.table(PARTICIPANT_TABLE)
        self.participants = self.tables[PARTICIPANT_TABLE].set_index(participant.key, drop=True)
        self._occasion = lru_cache(maxsize=32)(self._select_occasion)
        self._joined = lru_cache(maxsize=32)(self._join)
        self._paired = lru_cache(maxsize=32)(self._pair)
        self._transitions = lru_cache(maxsize=32)(self._transition)
        self._terms = lru_cache(maxsize=64)(self._term_on)

    def _select_occasion(self, table_name: str, occ: Occasion) -> pd.DataFrame:
        table = self.schema.table(table_name)
        rows = self.tables[table_name]
        month_column = table.month_column
        if month_column is None:
            raise ValueError(f"table {table_name} has no month column: no occasions")
        month = rows[month_column].astype(np.float64)
        inside = (month >= occ.window_lower) & (month <= occ.window_upper)
        rows = rows[inside]
        distance = (month[inside] - occ.target_month).abs()
        ordered = rows.assign(_distance=distance).sort_values(
            [table.key, "_distance", month_column], kind="stable")
        first = ordered.drop_duplicates(subset=table.key, keep="first")
        selected: pd.DataFrame = first.drop(columns="_distance").set_index(table.key, drop=True)
        return selected

    def _join(self, table_name: str, occ: Occasion) -> pd.DataFrame:
        """Participant columns plus the table's columns at the occasion (inner join)."""
        at = self._occasion(table_name, occ)
        return self.participants.join(at, how="inner")

    def _pair(self, table_name: str, baseline: Occasion, occasion: Occasion,
              column: str) -> pd.DataFrame:
        """Baseline rows with `_value` = follow-up minus baseline (NaN without follow-up)."""
        base = self._joined(table_name, baseline)
        follow = self._occasion(table_name, occasion)[column].astype(np.float64)
        return base.assign(_value=follow.reindex(base.index) - base[column].astype(np.float64))

    def _transition(self, table_name: str, baseline: Occasion, occasion: Occasion,
                    column: str, edges: tuple[float, ...]) -> pd.DataFrame:
        """Baseline rows with `_value` = the cell code of the change (-1: not measured).

        Categorical: before * k + after. Numeric: the bin of the change among `edges`, or
        without edges its sign (0 decreased, 1 unchanged, 2 increased).
        """
        base = self._joined(table_name, baseline)
        before = base[column]
        after = self._occasion(table_name, occasion)[column].reindex(base.index)
        if isinstance(before.dtype, pd.CategoricalDtype):
            k = len(before.cat.categories)
            b = before.cat.codes.to_numpy(dtype=np.int64)
            a = pd.Categorical(after, dtype=before.dtype).codes.astype(np.int64)
            codes = np.where((b < 0) | (a < 0), -1, b * k + a)
        else:
            change = (after.astype(np.float64) - before.astype(np.float64)).to_numpy()
            binned = (np.searchsorted(np.asarray(edges), change, side="right") if edges
                      else np.sign(change) + 1)
            codes = np.where(np.isnan(change), -1, binned)
        return base.assign(_value=codes.astype(np.int64))

    def _present(self, frame: pd.DataFrame, table_name: str, occ: Occasion, column: str
                 ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Per row of `frame`: whether the participant has a value of `column` at `occ`
        (the occasion picked as for any query), i.e. would be in a paired change to it."""
        at = self._occasion(table_name, occ)[column]
        return at.reindex(frame.index).notna().to_numpy(dtype=bool)

    def _base(self, table: TableSpec, occasion: Occasion) -> pd.DataFrame:
        """The participants a cross-products query starts from (filters see these rows)."""
        return self.participants if not table.has_occasions else self._joined(table.name,
                                                                             occasion)

    def _term_on(self, resolved: ResolvedTerm, table_name: str, occasion: Occasion
                 ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """A term's values aligned to `_base(table, occasion)`; cached, since reindexing a
        million string keys is most of a regression query's cost."""
        frame = self._base(self.schema.table(table_name), occasion)
        return self._term(frame, resolved).to_numpy(dtype=np.float64)

    def _term(self, frame: pd.DataFrame, resolved: ResolvedTerm) -> pd.Series:
        """One regression term's value per participant of `frame` (NaN when missing)."""
        term, name = resolved.term, resolved.column.name
        if resolved.table == PARTICIPANT_TABLE:
            values = self.participants[name].reindex(frame.index)
        else:
            at = self._occasion(resolved.table, term.occasion or INTAKE)[name]
            values = at.reindex(frame.index)
            if term.baseline is not None:
                before = self._occasion(resolved.table, term.baseline)[name]
                values = (values.astype(np.float64)
                          - before.reindex(frame.index).astype(np.float64))
        if term.category:
            indicator = (values.astype(object) == term.category).astype(np.float64)
            return indicator.where(values.notna())
        return values.astype(np.float64)

    def rows(self, plan: Plan) -> pd.DataFrame:
        """One row per participant taking part; the measured column is `value_column(plan)`.
        Plain measurements are read from the table's own column, not copied into a new one:
        a copy of a million-row frame per query is the slowest step of a small release."""
        table: TableSpec = plan.table
        if plan.query.statistic is Statistic.CROSS_PRODUCTS:
            occasion = plan.occasion or INTAKE
            frame = self._base(table, occasion)
            return frame.assign(**{f"_t{i}": self._terms(t, table.name, occasion)
                                   for i, t in enumerate(plan.terms)})
        if plan.transition:
            assert plan.baseline is not None and plan.occasion is not None and plan.column
            return self._transitions(table.name, plan.baseline, plan.occasion,
                                     plan.column.name, plan.query.bin_edges)
        if not table.has_occasions:
            return self.participants
        if plan.query.statistic is Statistic.PAIRED_CHANGE:
            assert plan.baseline is not None and plan.occasion is not None and plan.column
            return self._paired(table.name, plan.baseline, plan.occasion, plan.column.name)
        assert plan.occasion is not None
        return self._joined(table.name, plan.occasion)

    def cells(self, plan: Plan) -> Iterator[CellRows]:
        frame = _filtered(self.rows(plan), plan)
        values = _measured(frame, plan)
        split = plan.query.split_by_presence
        if not plan.query.group_by and split is None:
            yield CellRows((), values, len(frame))
            return
        keys = _group_keys(frame, plan)
        if split is not None:  # the presence cell is the last axis of plan.cells
            absent = ~self._present(frame, plan.table.name, split, value_column(plan))
            keys = np.where(keys < 0, -1, keys * 2 + absent)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        for index, group in enumerate(plan.cells):
            lo, hi = np.searchsorted(sorted_keys, [index, index + 1])
            picked = order[lo:hi]
            yield CellRows(group, values[picked], int(hi - lo))


def _compact(frame: pd.DataFrame) -> pd.DataFrame:
    """Float columns in the smallest float type that holds every value exactly (float16:
    whole numbers up to 2048, e.g. steps and months; float32), a quarter or half of the
    memory. Values read back as float64 are the same numbers, and every comparison and
    difference here is taken in float64 (a bound or a change may not fit the small type)."""
    narrower: dict[str, npt.NDArray[Any]] = {}
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype != np.float64:
            continue
        for dtype in (np.float16, np.float32):
            with np.errstate(over="ignore", invalid="ignore"):
                narrow = values.astype(dtype)
            if np.array_equal(narrow.astype(np.float64), values, equal_nan=True):
                narrower[name] = narrow
                break
    return frame.assign(**narrower) if narrower else frame


def queryable(table: TableSpec) -> bool:
    """Whether queries may read `table` (the planner refuses the others: their columns are
    queried as derived participant columns)."""
    return table.max_rows_per_participant <= 1 or table.has_occasions


def _filtered(frame: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    if not plan.query.filters:
        return frame
    keep = np.ones(len(frame), dtype=bool)
    for flt in plan.query.filters:
        column = frame[flt.column]
        if isinstance(flt, CategoryFilter):
            keep &= column.astype(object).isin(flt.values).to_numpy()
        else:
            lower = -np.inf if flt.lower is None else flt.lower
            upper = np.inf if flt.upper is None else flt.upper
            number = column.astype(np.float64)  # compared as read: 3 < 3.0000001
            keep &= ((number >= lower) & (number <= upper)).fillna(False).to_numpy(dtype=bool)
    return frame[keep]


def value_column(plan: Plan) -> str:
    """The frame column a plan measures: `_value` where `rows` derives it (a change, a
    transition), else the table's own column."""
    if plan.transition or plan.query.statistic is Statistic.PAIRED_CHANGE:
        return "_value"
    assert plan.column is not None
    return plan.column.name


def _measured(frame: pd.DataFrame, plan: Plan) -> FloatArray | IntArray:
    stat = plan.query.statistic
    if stat is Statistic.COUNT:
        return np.zeros(len(frame), dtype=np.int64)
    if stat is Statistic.CROSS_PRODUCTS:
        matrix = frame[[f"_t{i}" for i in range(len(plan.terms))]].to_numpy(dtype=np.float64)
        return matrix  # incomplete rows are dropped per cell by the engine
    column = frame[value_column(plan)]
    if plan.transition:
        return column.to_numpy(dtype=np.int64)
    if stat is Statistic.HISTOGRAM:
        if isinstance(column.dtype, pd.CategoricalDtype):
            category_codes: IntArray = np.asarray(column.cat.codes, dtype=np.int64)
            return category_codes
        numbers = column.to_numpy(dtype=np.float64)
        codes: IntArray = np.searchsorted(np.asarray(plan.query.bin_edges), numbers,
                                          side="right").astype(np.int64)
        return np.where(np.isnan(numbers), -1, codes).astype(np.int64)
    return column.to_numpy(dtype=np.float64)


def _group_keys(frame: pd.DataFrame, plan: Plan) -> IntArray:
    """Cell index of each row in the order of plan.cells (-1: a group value is missing)."""
    keys = np.zeros(len(frame), dtype=np.int64)
    missing = np.zeros(len(frame), dtype=bool)
    for name in plan.query.group_by:
        column = frame[name]
        codes = column.cat.codes.to_numpy(dtype=np.int64)
        missing |= codes < 0
        keys = keys * len(column.cat.categories) + codes
    keys[missing] = -1
    return keys
