"""Edit one cell of a member's CSV export, as a person fixing (or breaking) it would."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def edit_cell(folder: Path, table: str, row: int, column: str, value: str) -> int:
    """Set one cell (0-based data row); return its line number in the file."""
    path = folder / f"{table}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)
    return row + 2
