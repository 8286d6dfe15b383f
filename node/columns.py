"""A member's checked data as plain numpy columns: what a serving node holds, without pandas.

Loading and checking use pandas (`data.py`, `sources.py`); serving needs only the columns a
query can read. `ColumnStore.from_frames` turns the checked typed frames into this compact
form, and `save`/`load` move it between processes as one uncompressed `.npz` file (numpy's
own format, read with `allow_pickle=False`): `node/loader.py` loads and checks the data in a
child process and the serving process reads the file back, so it never imports pandas (about
41 MiB of a node's idle memory, benchmarks/node_memory.py).

Per table: `person`, the participant row (in the participant table's order) of every row,
in place of the string keys (the participant table's own is 0..n-1; rows of unknown
participants, which a servable check never leaves, are dropped: no join would keep them);
numeric columns as floats in the smallest type that holds every value exactly; categorical
and boolean columns as integer codes into their categories (-1: missing), as pandas'
`Categorical.codes`. Tables no query reads (many rows per participant, no occasions) are
left out: their columns are served as derived participant columns, computed at load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import numpy.typing as npt

from bridgestat.node.schema import Schema, TableSpec

if TYPE_CHECKING:  # only `from_frames` needs pandas, and only where frames already exist
    import pandas as pd

IntArray = np.ndarray[Any, np.dtype[np.int64]]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]
PARTICIPANT_TABLE = "participant"  # = planner.PARTICIPANT_TABLE (the planner imports opendp)
_META = "meta"  # the .npz entry holding table and column names and categories (JSON)


@dataclass(frozen=True)
class ColumnTable:
    """One table's rows: participant row per row, numbers, category codes."""

    name: str
    person: npt.NDArray[np.int32]
    numbers: Mapping[str, npt.NDArray[np.floating[Any]]]
    codes: Mapping[str, npt.NDArray[np.signedinteger[Any]]]
    categories: Mapping[str, tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.person)

    def __contains__(self, column: str) -> bool:
        return column in self.numbers or column in self.codes

    def is_categorical(self, column: str) -> bool:
        return column in self.codes

    def floats(self, column: str, rows: IntArray | None = None) -> FloatArray:
        """A numeric column as float64 (NaN: missing), at `rows` (-1: no row, NaN)."""
        values = self.numbers[column]
        if rows is None:
            return values.astype(np.float64)
        picked = values[np.maximum(rows, 0)].astype(np.float64)
        picked[rows < 0] = np.nan
        return picked

    def category_codes(self, column: str, rows: IntArray | None = None) -> IntArray:
        """A categorical column's codes as int64 (-1: missing), at `rows` (-1: no row)."""
        codes = self.codes[column]
        if rows is None:
            return codes.astype(np.int64)
        picked = codes[np.maximum(rows, 0)].astype(np.int64)
        picked[rows < 0] = -1
        return picked


@dataclass(frozen=True)
class ColumnStore:
    """The queryable tables of one member's checked data."""

    tables: Mapping[str, ColumnTable]

    @property
    def n_participants(self) -> int:
        return len(self.tables[PARTICIPANT_TABLE])

    @classmethod
    def from_frames(cls, frames: Mapping[str, pd.DataFrame], schema: Schema) -> ColumnStore:
        """From the typed frames of `data.check_tables` (or frames of the same dtypes)."""
        import pandas as pd  # a caller with frames has pandas loaded

        participant = schema.table(PARTICIPANT_TABLE)
        ids = pd.Index(frames[PARTICIPANT_TABLE][participant.key])
        tables = {}
        for name, frame in frames.items():
            spec = schema.table(name)
            if not queryable(spec):
                continue
            if name == PARTICIPANT_TABLE:
                person = np.arange(len(frame), dtype=np.int32)
            else:
                person = ids.get_indexer(pd.Index(frame[spec.key])).astype(np.int32)
            tables[name] = _table_of(name, frame, spec.key, person)
        return cls(MappingProxyType(tables))

    def save(self, target: Path | BinaryIO) -> None:
        """Write every column to one uncompressed .npz file (no pickled objects)."""
        arrays: dict[str, npt.NDArray[Any]] = {}
        meta: list[dict[str, Any]] = []
        for t, table in enumerate(self.tables.values()):
            arrays[f"t{t}_person"] = table.person
            numbers = list(table.numbers)
            codes = list(table.codes)
            arrays.update({f"t{t}_n{i}": table.numbers[c] for i, c in enumerate(numbers)})
            arrays.update({f"t{t}_c{i}": table.codes[c] for i, c in enumerate(codes)})
            meta.append({"name": table.name, "numbers": numbers, "codes": codes,
                         "categories": {c: list(table.categories[c]) for c in codes}})
        arrays[_META] = np.array(json.dumps(meta))
        if isinstance(target, Path):
            with target.open("wb") as out:
                np.savez(out, allow_pickle=False, **arrays)
        else:
            np.savez(target, allow_pickle=False, **arrays)

    @classmethod
    def load(cls, source: Path | BinaryIO) -> ColumnStore:
        """Read what `save` wrote (into memory: the file may be deleted after)."""
        with np.load(source, allow_pickle=False) as npz:
            meta = json.loads(str(npz[_META]))
            tables = {}
            for t, entry in enumerate(meta):
                tables[entry["name"]] = ColumnTable(
                    name=entry["name"], person=npz[f"t{t}_person"],
                    numbers=MappingProxyType({c: npz[f"t{t}_n{i}"]
                                              for i, c in enumerate(entry["numbers"])}),
                    codes=MappingProxyType({c: npz[f"t{t}_c{i}"]
                                            for i, c in enumerate(entry["codes"])}),
                    categories=MappingProxyType({c: tuple(v) for c, v
                                                 in entry["categories"].items()}))
        return cls(MappingProxyType(tables))


def queryable(table: TableSpec) -> bool:
    """Whether queries may read `table` (the planner refuses the others: their columns are
    queried as derived participant columns)."""
    return table.max_rows_per_participant <= 1 or table.has_occasions


def _table_of(name: str, frame: pd.DataFrame, key: str,
              person: npt.NDArray[np.int32]) -> ColumnTable:
    """One frame's columns; rows of unknown participants (person -1) left out."""
    import pandas as pd

    known = person >= 0
    numbers: dict[str, npt.NDArray[np.floating[Any]]] = {}
    codes: dict[str, npt.NDArray[np.signedinteger[Any]]] = {}
    categories: dict[str, tuple[str, ...]] = {}
    for column in frame.columns:
        if column == key:
            continue
        values = frame[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            categories[column] = tuple(str(c) for c in values.cat.categories)
            codes[column] = _small_codes(values.cat.codes.to_numpy()[known],
                                         len(categories[column]))
        elif pd.api.types.is_numeric_dtype(values.dtype):
            numbers[column] = compact(values.to_numpy(dtype=np.float64, na_value=np.nan)[known])
        # other columns (text) are keys or parts of keys: no query reads them
    return ColumnTable(name, np.ascontiguousarray(person[known]), MappingProxyType(numbers),
                       MappingProxyType(codes), MappingProxyType(categories))


def _small_codes(codes: npt.NDArray[Any], k: int) -> npt.NDArray[np.signedinteger[Any]]:
    """Category codes in the smallest signed integer type that holds 0..k-1 and -1."""
    dtype = np.int8 if k <= np.iinfo(np.int8).max else np.int16 if k <= np.iinfo(
        np.int16).max else np.int32
    return codes.astype(dtype)


def compact(values: FloatArray) -> npt.NDArray[np.floating[Any]]:
    """Floats in the smallest float type that holds every value exactly (float16: whole
    numbers up to 2048, e.g. steps and months; float32), a quarter or half of the memory.
    Values read back as float64 are the same numbers, and every comparison and difference
    is taken in float64 (a bound or a change may not fit the small type)."""
    for dtype in (np.float16, np.float32):
        with np.errstate(over="ignore", invalid="ignore"):
            narrow: npt.NDArray[np.floating[Any]] = values.astype(dtype)
        if np.array_equal(narrow.astype(np.float64), values, equal_nan=True):
            return narrow
    return np.ascontiguousarray(values)
