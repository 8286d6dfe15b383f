"""A member's policy: which queries its node answers, and how much they may spend.

The policy file (YAML) is named by the node config's `policy` key and read at start-up;
unknown keys and impossible values are a `ConfigError` naming the file and the key:

    budget:
      total_epsilon: 10                  # all queries together, at most the config's total
      per_period: {period: year, epsilon: 4}   # per calendar year (or quarter, month), UTC
      max_epsilon_per_query: 1           # one query, at most the config's per-query cap
    statistics: [count, mean, histogram, paired_change, quantile, cross_products]
    group_by: [arm, gender, household_type]    # columns that may be grouped by
    filter: [arm, gender, age_band]            # columns that may be filtered on
    comparison: true                     # false: answers only for pooling (see below)
    min_group_size: 10                   # a cell whose noisy count is below is suppressed

Every key is optional; a missing key allows everything (the node's behaviour without a
policy file). The config's `budget` is the technical ceiling and the policy may only
tighten it: a policy total or per-query cap above the config's is refused at start-up rather
than silently lowered, so that the file the member signed off is the one that applies.

- `group_by` governs the cells a query is split into: its group-by columns, the
  indicator regressors of a cross-products query (the last term, the response, is the
  measured outcome like a histogram's column and is governed by `statistics`), and the
  attrition split of a mean into those present and absent at a follow-up occasion, which a
  list allows by naming `follow_up_presence` (PRESENCE_SPLIT).
- `comparison: false` means the member's figures may be pooled into the network's but not
  shown beside other members'. A node cannot see what the coordinator does with an answer,
  so it marks every answer `pooled_only`; the coordinator then withholds the member's row
  ("withheld by member policy") and still pools it. The flag is honoured by the bridgestat
  coordinator, not enforced by cryptography: a modified coordinator could ignore it, which is
  why the audit log records every release the member's node made.
- `min_group_size: k` suppresses every released cell (a group-by cell, or the single cell of
  an ungrouped query, which filters can make small) whose *noisy* count is below k: its
  values are removed and the cell is marked suppressed. Deciding on the noisy count is
  post-processing, so it costs no privacy and the loss charged stands. Its purpose is
  small-cell disclosure control. A quantile releases no count, so a node with a
  `min_group_size` refuses quantiles.

Refusals are `PolicyError`s naming the query field and the rule ("policy rule group_by:
..."); like every refusal they depend only on the query and the policy, never on the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BeforeValidator, PlainValidator, ValidationError, WithJsonSchema

from bridgestat.common.files import (
    FileModel,
    FileProblem,
    KeyProblem,
    NonNegative,
    Positive,
    Text,
    first_problem,
    not_null,
    read_yaml,
)
from bridgestat.common.query import STATISTICS
from bridgestat.node.config import NodeConfig
from bridgestat.node.errors import ConfigError, PolicyError
from bridgestat.node.ledger import PeriodCap
from bridgestat.node.loss import Epsilon
from bridgestat.node.query import QuerySpec, Statistic
from bridgestat.node.schema import ColumnType, Schema

NotNull = BeforeValidator(not_null)


def _statistic(value: object) -> str:
    if value not in STATISTICS:
        raise ValueError(f"unknown statistic {value!r} (known: {', '.join(STATISTICS)})")
    return str(value)


StatisticName = Annotated[str, PlainValidator(_statistic),
                          WithJsonSchema({"type": "string", "enum": list(STATISTICS)})]


# -- the file, as the member writes it --------------------------------------------------------


class PeriodFile(FileModel):
    """`budget.per_period`: a cap per calendar period (UTC)."""

    period: Literal["year", "quarter", "month"]  # ledger.PERIODS
    epsilon: Positive


class PolicyBudgetFile(FileModel):
    """`budget`: each key at most the node config's; a missing key keeps the config's."""

    total_epsilon: Annotated[Positive | None, NotNull] = None
    max_epsilon_per_query: Annotated[Positive | None, NotNull] = None
    per_period: Annotated[PeriodFile | None, NotNull] = None


class PolicyFile(FileModel):
    """The policy file (see the module docstring); every key optional."""

    budget: PolicyBudgetFile = PolicyBudgetFile()
    statistics: Annotated[list[StatisticName] | None, NotNull] = None
    group_by: Annotated[list[Text] | None, NotNull] = None
    filter: Annotated[list[Text] | None, NotNull] = None
    comparison: bool = True
    min_group_size: NonNegative = 0.0

    def check(self) -> None:
        """What one key cannot say alone: lists without repeats, no quantile to suppress."""
        for key in ("statistics", "group_by", "filter"):
            names: list[str] | None = getattr(self, key)
            duplicates = sorted({v for v in names or () if names and names.count(v) > 1})
            if duplicates:
                raise KeyProblem(key, f"lists {duplicates[0]!r} twice")
        if self.statistics is not None and not self.statistics:
            raise KeyProblem("statistics", "lists no statistic, so every query would be "
                             "refused; list at least one (or stop the node)")
        if self.min_group_size > 0 and self.statistics is not None \
                and Statistic.QUANTILE.value in self.statistics:
            raise KeyProblem("min_group_size", "a quantile releases no noisy count to suppress "
                             "small groups on; remove quantile from statistics or set "
                             "min_group_size to 0")


# -- the rules the node enforces --------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The rules the planner, the ledger and the engine enforce for one node.

    The defaults allow everything, as a node without a policy file does."""

    max_epsilon_per_query: float  # on the (epsilon, delta) guarantee of one query
    delta: float = 1e-6
    total_epsilon: float = math.inf  # the ledger's cap (finite once loaded from a config)
    per_period: PeriodCap | None = None
    statistics: frozenset[Statistic] | None = None  # None: every statistic
    group_by: frozenset[str] | None = None  # None: every column
    filter: frozenset[str] | None = None  # None: every column
    comparison: bool = True  # False: answers are marked pooled_only
    min_group_size: float = 0.0  # 0: no suppression
    source: str = ""  # the policy file ("" without one)

    def check(self, query: QuerySpec) -> None:
        """Refuse a (well-formed) query the policy does not allow, naming field and rule."""
        self._check_statistic(query)
        for i, name in enumerate(query.group_by):
            self._check_group(name, f"query.group_by[{i}]", "may not be grouped by")
        if query.split_by_presence is not None:
            self._check_group(PRESENCE_SPLIT, "query.split_by_presence",
                              "is not allowed: no split into those present and absent at a "
                              "follow-up occasion (attrition)")
        for i, term in enumerate(query.terms[:-1]):
            if term.category:
                self._check_group(term.column, f"query.terms[{i}].category",
                                  "may not split a regression into groups")
        for i, flt in enumerate(query.filters):
            if self.filter is not None and flt.column not in self.filter:
                raise PolicyError(f"query.filters[{i}].column",
                                  f"policy rule filter: {flt.column!r} may not be filtered on "
                                  f"(allowed: {_names(self.filter)})")

    def _check_statistic(self, query: QuerySpec) -> None:
        stat = query.statistic
        if self.statistics is not None and stat not in self.statistics:
            raise PolicyError("query.statistic",
                              f"policy rule statistics: a {stat.value} is not allowed by this "
                              f"member (allowed: {_names(s.value for s in self.statistics)})")
        if stat is Statistic.QUANTILE and self.min_group_size > 0:
            raise PolicyError("query.statistic",
                              "policy rule min_group_size: a quantile releases no noisy count, "
                              "so this member's node (which suppresses groups under "
                              f"{self.min_group_size:g}) cannot check its group size")

    def _check_group(self, name: str, field: str, problem: str) -> None:
        if self.group_by is not None and name not in self.group_by:
            raise PolicyError(field, f"policy rule group_by: {name!r} {problem} "
                              f"(allowed: {_names(self.group_by)})")


PRESENCE_SPLIT = "follow_up_presence"
"""The name a policy's `group_by` lists to allow a mean split by presence at a follow-up
occasion (`Query.split_by_presence`, attrition): two cells, like a group-by column's."""


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


def load_policy(config: NodeConfig, schema: Schema) -> Policy:
    """The node's effective policy: the config's budget, tightened by its policy file."""
    budget = config.budget
    base = Policy(max_epsilon_per_query=budget.max_epsilon_per_query, delta=budget.delta,
                  total_epsilon=budget.total_epsilon)
    if config.policy_path is None:
        return base
    source = str(config.policy_path)
    try:
        raw = read_yaml(config.policy_path, "policy")
    except FileProblem as exc:
        raise ConfigError(source, "(file)", exc.problem) from exc
    try:
        doc = PolicyFile.model_validate({} if raw is None else raw)
        doc.check()
        total, per_query, period = _budget(doc.budget, config)
        return Policy(max_epsilon_per_query=per_query, delta=budget.delta, total_epsilon=total,
                      per_period=period,
                      statistics=None if doc.statistics is None
                      else frozenset(Statistic(name) for name in doc.statistics),
                      group_by=_columns(doc.group_by, "group_by", schema, grouping=True),
                      filter=_columns(doc.filter, "filter", schema, grouping=False),
                      comparison=doc.comparison, min_group_size=doc.min_group_size,
                      source=source)
    except (ValidationError, KeyProblem) as exc:
        raise ConfigError(source, *first_problem(exc, PolicyFile)) from None


def _budget(doc: PolicyBudgetFile, config: NodeConfig
            ) -> tuple[float, float, PeriodCap | None]:
    """(total, per query, period cap), each at most what the config allows."""
    ceiling = config.budget
    total = ceiling.total_epsilon if doc.total_epsilon is None else doc.total_epsilon
    if total > ceiling.total_epsilon:
        raise KeyProblem("budget.total_epsilon",
                         f"{total:g} exceeds the node config's budget.total_epsilon "
                         f"{ceiling.total_epsilon:g} ({config.source}); a policy may only "
                         "tighten the config")
    per_query = min(ceiling.max_epsilon_per_query, total) \
        if doc.max_epsilon_per_query is None else doc.max_epsilon_per_query
    if per_query > ceiling.max_epsilon_per_query:
        raise KeyProblem("budget.max_epsilon_per_query",
                         f"{per_query:g} exceeds the node config's budget."
                         f"max_epsilon_per_query {ceiling.max_epsilon_per_query:g} "
                         f"({config.source}); a policy may only tighten the config")
    if per_query > total:
        raise KeyProblem("budget.max_epsilon_per_query",
                         f"{per_query:g} exceeds the total {total:g}")
    if doc.per_period is None:
        return total, per_query, None
    epsilon = doc.per_period.epsilon
    if epsilon > total:
        raise KeyProblem("budget.per_period.epsilon", f"{epsilon:g} exceeds the total {total:g}")
    if epsilon < per_query:
        raise KeyProblem("budget.per_period.epsilon",
                         f"{epsilon:g} is below the largest loss per query {per_query:g}; "
                         "lower budget.max_epsilon_per_query")
    return total, per_query, PeriodCap(doc.per_period.period, Epsilon.of(epsilon))


def _columns(names: list[str] | None, key: str, schema: Schema,
             grouping: bool) -> frozenset[str] | None:
    """Column names the schema has (categorical ones with public categories to group by)."""
    if names is None:
        return None
    columns = {c.name: c for t in schema.tables for c in t.columns}
    for i, name in enumerate(names):
        if grouping and name == PRESENCE_SPLIT:
            continue
        column = columns.get(name)
        if column is None or column.type is ColumnType.KEY:
            raise KeyProblem(f"{key}[{i}]", f"{name!r} is not a column of schema "
                             f"{schema.name} {schema.version} that queries may use")
        if grouping and not (column.type.categorical and column.categories):
            raise KeyProblem(f"{key}[{i}]", f"{name!r} is not a categorical column "
                             "with public categories, so no query can group by it")
    return frozenset(names)
