"""A DP release as values, and its stored (JSON) form in the ledger."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NoisyValue:
    name: str
    value: float
    noise_scale: float
    noise_variance: float  # NaN when the mechanism has none in closed form (quantile)
    epsilon: float
    rho: float = 0.0


@dataclass(frozen=True)
class ReleasedCell:
    group: tuple[tuple[str, str], ...]
    values: tuple[NoisyValue, ...]
    suppressed: bool = False  # noisy count under the policy's min_group_size: no values


@dataclass(frozen=True)
class Release:
    cells: tuple[ReleasedCell, ...]
    center: float
    lower: float
    upper: float
    mechanism: str
    charged: float  # the epsilon charged for the query (OpenDP's maps)
    charged_rho: float = 0.0  # the rho charged (Gaussian releases)
    term_bounds: tuple[tuple[float, float], ...] = ()  # cross products: bounds per term
    min_group_size: float = 0.0  # the policy's suppression threshold applied (0: none)

    def doc(self) -> dict[str, Any]:
        """The release as plain JSON values (what `encode` writes). Built field by field:
        `asdict` deep-copies every value and was a tenth of a small release's time."""
        doc = dict(vars(self))
        doc["cells"] = [{"group": [list(pair) for pair in cell.group],
                         "values": [dict(vars(value)) for value in cell.values],
                         "suppressed": cell.suppressed} for cell in self.cells]
        doc["term_bounds"] = [list(bounds) for bounds in self.term_bounds]
        return doc

    def encode(self) -> str:
        return json.dumps(self.doc(), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Release:
        doc = json.loads(text)
        cells = tuple(
            ReleasedCell(group=tuple((c, v) for c, v in cell["group"]),
                         values=tuple(NoisyValue(**value) for value in cell["values"]),
                         suppressed=cell.get("suppressed", False))
            for cell in doc.pop("cells"))
        bounds = tuple((lo, hi) for lo, hi in doc.pop("term_bounds", ()))
        return cls(cells=cells, term_bounds=bounds, **doc)
