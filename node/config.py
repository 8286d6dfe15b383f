"""The node config file (YAML), validated at start-up with errors naming file and key.

Example:

    node_id: member-01
    data: {source: csv, path: ./data}      # relative paths are relative to this file
    schema: default                         # or a path to a network's own schema file
    categories: {participant.team: [team_1, team_2]}
    listen: 127.0.0.1:50051
    budget: {dataset: extract-2026, total_epsilon: 10.0, max_epsilon_per_query: 1.0}
    ledger: ./ledger.sqlite
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridgestat.node.errors import ConfigError
from bridgestat.node.schema import DEFAULT_SCHEMA_PATH, Schema, load_schema

_TOP_KEYS = {"node_id", "data", "schema", "categories", "listen", "budget", "ledger"}
_DATA_KEYS = {"source", "path"}
_BUDGET_KEYS = {"dataset", "total_epsilon", "max_epsilon_per_query", "delta"}
DEFAULT_DELTA = 1e-6
_SOURCES = ("csv",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class BudgetConfig:
    dataset: str
    total_epsilon: float
    max_epsilon_per_query: float
    delta: float = DEFAULT_DELTA  # of the (epsilon, delta) guarantee when rho is spent


@dataclass(frozen=True)
class NodeConfig:
    source: str  # the config file, for messages
    node_id: str
    data_source: str
    data_path: Path
    schema_path: Path
    categories: Mapping[str, tuple[str, ...]]
    listen: str
    budget: BudgetConfig
    ledger_path: Path

    def schema(self) -> Schema:
        """The schema with node-declared categories filled in, checked against it."""
        schema = load_schema(self.schema_path)
        for name, values in self.categories.items():
            table_name, _, column_name = name.partition(".")
            table = schema.find(table_name)
            column = table.find(column_name) if table is not None else None
            if column is None:
                raise ConfigError(self.source, f"categories.{name}", "no such schema column")
            if not column.declared_by_node:
                raise ConfigError(self.source, f"categories.{name}",
                                  "categories of this column are fixed by the schema")
            if column.max_categories is not None and len(values) > column.max_categories:
                raise ConfigError(self.source, f"categories.{name}",
                                  f"at most {column.max_categories} categories")
        return schema.with_declared_categories(self.categories)


def load_config(path: Path) -> NodeConfig:
    """Read and validate a node config file."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(source, "(file)", f"cannot read config: {exc}") from exc
    doc = _mapping(raw, source, "(top level)", _TOP_KEYS)
    base = Path(path).resolve().parent
    node_id = _string(doc, "node_id", source)
    if not _NAME.match(node_id):
        raise ConfigError(source, "node_id", "use letters, digits, '.', '_' or '-' (max 64)")
    data = _mapping(doc.get("data"), source, "data", _DATA_KEYS)
    data_source = str(data.get("source", "csv"))
    if data_source not in _SOURCES:
        raise ConfigError(source, "data.source", f"must be one of {', '.join(_SOURCES)}")
    return NodeConfig(
        source=source, node_id=node_id, data_source=data_source,
        data_path=base / _string(data, "path", source, "data."),
        schema_path=_schema_path(doc.get("schema", "default"), base, source),
        categories=_categories(doc.get("categories", {}), source),
        listen=_listen(doc.get("listen", "127.0.0.1:50051"), source),
        budget=_budget(doc.get("budget"), source, node_id),
        ledger_path=base / _string(doc, "ledger", source),
    )


def _mapping(value: Any, source: str, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(source, key, "must be a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        prefix = "" if key == "(top level)" else f"{key}."
        raise ConfigError(source, f"{prefix}{unknown[0]}",
                          f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return value


def _string(doc: Mapping[str, Any], key: str, source: str, prefix: str = "") -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, f"{prefix}{key}", "must be a non-empty string")
    return value


def _schema_path(value: Any, base: Path, source: str) -> Path:
    if value == "default":
        return DEFAULT_SCHEMA_PATH
    if not isinstance(value, str):
        raise ConfigError(source, "schema", "must be 'default' or a path to a schema file")
    path = base / value
    if not path.is_file():
        raise ConfigError(source, "schema", f"schema file {path} does not exist")
    return path


def _categories(value: Any, source: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ConfigError(source, "categories", "must map table.column to a list of categories")
    out = {}
    for name, values in value.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(source, f"categories.{name}", "must be a non-empty list")
        texts = tuple(str(v) for v in values)
        if len(set(texts)) != len(texts):
            raise ConfigError(source, f"categories.{name}", "categories must be unique")
        out[str(name)] = texts
    return out


def _listen(value: Any, source: str) -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(source, "listen", f"must be host:port, got {value!r}")
    return str(value)


def _positive(doc: Mapping[str, Any], key: str, source: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise ConfigError(source, f"budget.{key}", f"must be a number > 0, got {value!r}")
    return float(value)


def _budget(value: Any, source: str, node_id: str) -> BudgetConfig:
    doc = _mapping(value, source, "budget", _BUDGET_KEYS)
    total = _positive(doc, "total_epsilon", source)
    per_query = _positive(doc, "max_epsilon_per_query", source)
    if per_query > total:
        raise ConfigError(source, "budget.max_epsilon_per_query",
                          f"{per_query:g} exceeds total_epsilon {total:g}")
    dataset = doc.get("dataset", node_id)
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(source, "budget.dataset", "must be a non-empty string")
    delta = doc.get("delta", DEFAULT_DELTA)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1e-3:
        raise ConfigError(source, "budget.delta", f"must be a number in (0, 0.001), got {delta!r}")
    return BudgetConfig(dataset, total, per_query, float(delta))
