"""What an analysis kind is: parameters, the queries they make, their cost, their tables.

A kind is pure: `queries(params)` says what to ask the nodes, `output(params, results)`
turns the nodes' answers (one `QueryResult` per query, in order) into tables and plots, and
`value(params, results)` is what the Python API returns. Running the queries is somebody
else's job (the sync or async client, the study runner), so one definition serves all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pandas as pd

from bridgestat.coordinator.analyses.fields import Frozen
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.statistics.planning import PlanItem
from bridgestat.coordinator.statistics.privacy import Spend
from bridgestat.coordinator.statistics.tables import QueryResult

ColumnKind = Literal["none", "numeric", "categorical", "any"]


@dataclass(frozen=True)
class ColumnFacts:
    """What the public schema says of the measured column, as planning needs it."""

    lower: float
    upper: float
    categories: int = 0  # number of categories (a categorical column), else 0


@dataclass(frozen=True)
class Guess:
    """A researcher's planning guesses of the outcome (None: planning's defaults, the clip's
    centre and half-width / 3, a share of 0.5)."""

    mean: float | None = None
    sd: float | None = None
    share: float | None = None
    share_other: float | None = None


NO_GUESS = Guess()


@dataclass(frozen=True)
class Planned:
    """One query of an analysis: the idempotency key suffix and the parameter paying it."""

    suffix: str
    query: Query
    pays: str  # "epsilon", "share_epsilon", "rho": the field a refusal names

    def spend(self) -> Spend:
        return Spend(self.query.epsilon, self.query.rho)


@dataclass
class Output:
    """What one analysis produced: tables (name, caption, frame), plots, meta-analyses,
    regression fits, the raw results and notes, before it is written anywhere."""

    tables: list[tuple[str, str, pd.DataFrame]] = field(default_factory=list)
    plots: list[dict[str, Any]] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)
    regression: dict[str, Any] | None = None
    results: list[QueryResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, name: str, caption: str, frame: pd.DataFrame) -> int:
        self.tables.append((name, caption, frame))
        return len(self.tables) - 1

    def member_plot(self, index: int, label: str, facet: str | None = None,
                    **extra: Any) -> None:
        self.plots.append({"kind": "member_vs_network", "table": index, "facet": facet,
                           **extra, "label": label})


class Kind:
    """One analysis kind. Subclasses set the class attributes and `queries`/`output`."""

    name: ClassVar[str]
    title: ClassVar[str]  # human title for catalogues
    description: ClassVar[str]  # one line: what it estimates
    Params: ClassVar[type[Frozen]]
    positional: ClassVar[tuple[str, ...]] = ()  # API arguments before the keyword-only ones
    column_kind: ClassVar[ColumnKind] = "any"  # what `column` must be in the schema
    meta_analysable: ClassVar[bool] = False  # member estimates a meta-analysis can pool
    hints: ClassVar[dict[str, str]] = {}  # refused key -> what to write instead

    def queries(self, p: Any) -> list[Query | tuple[Query, str]]:
        """The queries to the nodes, in order; a pair names the parameter paying it."""
        raise NotImplementedError

    def output(self, p: Any, results: Sequence[QueryResult], title: str) -> Output:
        """Tables and plots from the results of `queries(p)`, in the same order."""
        raise NotImplementedError

    def value(self, p: Any, results: Sequence[QueryResult]) -> Any:
        """What the Python API returns: the first table, unless a kind says otherwise."""
        return self.output(p, results, "").tables[0][2]

    def meta_frames(self, p: Any, output: Output, title: str) -> list[tuple[str, pd.DataFrame]]:
        """(label, one row per member) pairs a meta-analysis pools."""
        return [(title, output.tables[0][2])] if self.meta_analysable else []

    def plan_item(self, p: Any, name: str, sizes: tuple[float, ...],
                  column: ColumnFacts | None, guess: Guess = NO_GUESS) -> PlanItem | None:
        """The analysis's NETWORK estimator as `planning` predicts it (`sizes`: each member's
        expected number of participants in the analysis), or None when planning does not
        cover the kind or these parameters (grouped cells, secure aggregation, ...)."""
        return None

    # -- derived from the queries: never restated ------------------------------------------

    def plan(self, p: Any) -> list[Planned]:
        """The queries with their key suffixes (`0`, `1`, ...) and the paying parameter."""
        planned = []
        for i, item in enumerate(self.queries(p)):
            query, pays = item if isinstance(item, tuple) else (item, "")
            planned.append(Planned(str(i), query, pays or ("rho" if query.rho else "epsilon")))
        return planned

    def cost(self, p: Any) -> Spend:
        """What one run charges every member: each query's loss, summed."""
        total = Spend()
        for planned in self.plan(p):
            total = total + planned.spend()
        return total

    def parse(self, **values: Any) -> Frozen:
        """The parameters from keyword arguments (pydantic errors name the field)."""
        return self.Params(**values)
