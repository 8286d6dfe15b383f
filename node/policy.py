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

- `group_by` governs the cells a query is split into: its group-by columns and the
  indicator regressors of a cross-products query (the last term, the response, is the
  measured outcome like a histogram's column and is governed by `statistics`).
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridgestat.node.config import NodeConfig, finite, mapping
from bridgestat.node.errors import ConfigError, PolicyError
from bridgestat.node.ledger import PERIODS, PeriodCap
from bridgestat.node.loss import Epsilon
from bridgestat.node.query import QuerySpec, Statistic
from bridgestat.node.schema import ColumnType, Schema

STATISTICS = tuple(s.value for s in Statistic if s is not Statistic.UNSPECIFIED)
_KEYS = {"budget", "statistics", "group_by", "filter", "comparison", "min_group_size"}
_BUDGET_KEYS = {"total_epsilon", "max_epsilon_per_query", "per_period"}
_PERIOD_KEYS = {"period", "epsilon"}


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
    doc = mapping(_read(config.policy_path), source, "(top level)", _KEYS)
    total, per_query, period = _budget(doc.get("budget", {}), source, config)
    statistics = _statistics(doc, source)
    min_group_size = _min_group_size(doc, source)
    if min_group_size > 0 and statistics is not None and Statistic.QUANTILE in statistics:
        raise ConfigError(source, "min_group_size", "a quantile releases no noisy count to "
                          "suppress small groups on; remove quantile from statistics or set "
                          "min_group_size to 0")
    comparison = doc.get("comparison", True)
    if not isinstance(comparison, bool):
        raise ConfigError(source, "comparison", f"must be true or false, got {comparison!r}")
    return Policy(max_epsilon_per_query=per_query, delta=budget.delta, total_epsilon=total,
                  per_period=period, statistics=statistics,
                  group_by=_columns(doc, "group_by", source, schema, grouping=True),
                  filter=_columns(doc, "filter", source, schema, grouping=False),
                  comparison=comparison, min_group_size=min_group_size, source=source)


def _read(path: Path) -> Any:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), "(file)", f"cannot read policy: {exc}") from exc
    return {} if raw is None else raw


def _positive(doc: Mapping[str, Any], key: str, source: str, default: float) -> float:
    """doc's value of the last part of `key` (the dotted name for messages), > 0."""
    value = doc.get(key.rpartition(".")[2], default)
    if not finite(value) or value <= 0:
        raise ConfigError(source, key, f"must be a number > 0, got {value!r}")
    return float(value)


def _budget(value: Any, source: str, config: NodeConfig
            ) -> tuple[float, float, PeriodCap | None]:
    """(total, per query, period cap), each at most what the config allows."""
    doc = mapping(value, source, "budget", _BUDGET_KEYS)
    ceiling = config.budget
    total = _positive(doc, "budget.total_epsilon", source, ceiling.total_epsilon)
    if total > ceiling.total_epsilon:
        raise ConfigError(source, "budget.total_epsilon",
                          f"{total:g} exceeds the node config's budget.total_epsilon "
                          f"{ceiling.total_epsilon:g} ({config.source}); a policy may only "
                          "tighten the config")
    per_query = _positive(doc, "budget.max_epsilon_per_query", source,
                          min(ceiling.max_epsilon_per_query, total))
    if per_query > ceiling.max_epsilon_per_query:
        raise ConfigError(source, "budget.max_epsilon_per_query",
                          f"{per_query:g} exceeds the node config's budget."
                          f"max_epsilon_per_query {ceiling.max_epsilon_per_query:g} "
                          f"({config.source}); a policy may only tighten the config")
    if per_query > total:
        raise ConfigError(source, "budget.max_epsilon_per_query",
                          f"{per_query:g} exceeds the total {total:g}")
    period = _period(doc["per_period"], source, total, per_query) \
        if "per_period" in doc else None
    return total, per_query, period


def _period(value: Any, source: str, total: float, per_query: float) -> PeriodCap:
    doc = mapping(value, source, "budget.per_period", _PERIOD_KEYS)
    period = doc.get("period")
    if period not in PERIODS:
        raise ConfigError(source, "budget.per_period.period",
                          f"must be one of {', '.join(PERIODS)}, got {period!r}")
    if "epsilon" not in doc:
        raise ConfigError(source, "budget.per_period.epsilon", "is required")
    epsilon = _positive(doc, "budget.per_period.epsilon", source, 0.0)
    if epsilon > total:
        raise ConfigError(source, "budget.per_period.epsilon",
                          f"{epsilon:g} exceeds the total {total:g}")
    if epsilon < per_query:
        raise ConfigError(source, "budget.per_period.epsilon",
                          f"{epsilon:g} is below the largest loss per query {per_query:g}; "
                          "lower budget.max_epsilon_per_query")
    return PeriodCap(str(period), Epsilon.of(epsilon))


def _statistics(doc: Mapping[str, Any], source: str) -> frozenset[Statistic] | None:
    if "statistics" not in doc:
        return None
    names = _list(doc["statistics"], source, "statistics")
    for i, name in enumerate(names):
        if name not in STATISTICS:
            raise ConfigError(source, f"statistics[{i}]", f"unknown statistic {name!r} "
                              f"(known: {', '.join(STATISTICS)})")
    if not names:
        raise ConfigError(source, "statistics", "lists no statistic, so every query would be "
                          "refused; list at least one (or stop the node)")
    return frozenset(Statistic(name) for name in names)


def _list(value: Any, source: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(source, key, f"must be a list of names, got {value!r}")
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        raise ConfigError(source, key, f"lists {duplicates[0]!r} twice")
    return value


def _columns(doc: Mapping[str, Any], key: str, source: str, schema: Schema,
             grouping: bool) -> frozenset[str] | None:
    """Column names the schema has (categorical ones with public categories to group by)."""
    if key not in doc:
        return None
    names = _list(doc[key], source, key)
    columns = {c.name: c for t in schema.tables for c in t.columns}
    for i, name in enumerate(names):
        column = columns.get(name)
        if column is None or column.type is ColumnType.KEY:
            raise ConfigError(source, f"{key}[{i}]", f"{name!r} is not a column of schema "
                              f"{schema.name} {schema.version} that queries may use")
        if grouping and not (column.type.categorical and column.categories):
            raise ConfigError(source, f"{key}[{i}]", f"{name!r} is not a categorical column "
                              "with public categories, so no query can group by it")
    return frozenset(names)


def _min_group_size(doc: Mapping[str, Any], source: str) -> float:
    value = doc.get("min_group_size", 0)
    if not finite(value) or value < 0:
        raise ConfigError(source, "min_group_size",
                          f"must be a number >= 0 (0: no suppression), got {value!r}")
    return float(value)
