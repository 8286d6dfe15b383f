"""A DP release as values, and its stored (JSON) form in the ledger."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class NoisyValue:
    name: str
    value: float
    noise_scale: float
    noise_variance: float
    epsilon: float


@dataclass(frozen=True)
class ReleasedCell:
    group: tuple[tuple[str, str], ...]
    values: tuple[NoisyValue, ...]


@dataclass(frozen=True)
class Release:
    cells: tuple[ReleasedCell, ...]
    center: float
    lower: float
    upper: float
    mechanism: str
    charged: float  # the loss charged for the query (OpenDP's maps)

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Release:
        doc = json.loads(text)
        cells = tuple(
            ReleasedCell(group=tuple((c, v) for c, v in cell["group"]),
                         values=tuple(NoisyValue(**value) for value in cell["values"]))
            for cell in doc.pop("cells"))
        return cls(cells=cells, **doc)
