"""The node config file (YAML), validated at start-up with errors naming file and key.

Example:

    node_id: member-01
    data: {source: csv, path: ./data}      # relative paths are relative to this file
    schema: default                         # or a path to a network's own schema file
    categories: {participant.team: [team_1, team_2]}
    listen: 127.0.0.1:50051                 # inbound mode: the coordinator calls the node
    connect: {coordinator: coord.example.org:50100, server_name: coordinator}  # connect mode
    budget: {dataset: extract-2026, total_epsilon: 10.0, max_epsilon_per_query: 1.0}
    ledger: ./ledger.sqlite
    tls: {ca: ca.pem, cert: member-01.pem, key: member-01.key, allow: [coordinator]}
    policy: ./policy.yaml                   # optional: the member's policy file
    audit: ./audit.jsonl                    # default: audit.jsonl beside the ledger
    metrics: 127.0.0.1:9464                 # optional Prometheus endpoint
    log_format: json                        # or text

Data sources: `csv` (a folder of <table>.csv), `parquet` (a folder of <table>.parquet),
`excel` (one workbook, one sheet per table), `postgresql` (`dsn`, the password from the
environment variable named by `password_env`, and `tables` mapping schema tables to the
member's tables or views).

Inbound and connect mode: `listen` is where the node accepts the coordinator's calls;
`connect` makes the node dial out to `bridgestat coordinator serve` instead (one long-lived
stream; the member's firewall needs no inbound rule) and verify that the coordinator's
certificate is for `server_name` (default `coordinator`). A node with `connect` and no
`listen` opens no port at all; with both it serves both ways; with neither it listens on
127.0.0.1:50051 as before.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridgestat.node.errors import ConfigError
from bridgestat.node.schema import DEFAULT_SCHEMA_PATH, Schema, load_schema

_TOP_KEYS = {"node_id", "data", "schema", "categories", "listen", "connect", "budget",
             "ledger", "tls", "policy", "audit", "metrics", "log_format"}
_CONNECT_KEYS = {"coordinator", "server_name"}
DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_SERVER_NAME = "coordinator"  # the coordinator's certificate name (`bridgestat ca`)
_DATA_KEYS = {"source", "path", "dsn", "password_env", "tables"}
_TLS_KEYS = {"ca", "cert", "key", "allow"}
_LOG_FORMATS = ("text", "json")
_BUDGET_KEYS = {"dataset", "total_epsilon", "max_epsilon_per_query", "delta"}
DEFAULT_DELTA = 1e-6
_SOURCES = ("csv", "parquet", "excel", "postgresql")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class BudgetConfig:
    dataset: str
    total_epsilon: float
    max_epsilon_per_query: float
    delta: float = DEFAULT_DELTA  # of the (epsilon, delta) guarantee when rho is spent


@dataclass(frozen=True)
class DataConfig:
    """Where the member's data are: a file source (path) or a database (dsn + tables)."""

    source: str  # csv | parquet | excel | postgresql
    path: Path | None = None
    dsn: str = ""
    password_env: str = ""
    tables: Mapping[str, str] = field(default_factory=dict)  # schema table -> table or view


@dataclass(frozen=True)
class TlsConfig:
    """The node's certificate and key, the network CA, and who may call it."""

    ca: Path
    cert: Path
    key: Path
    allow: tuple[str, ...]  # caller identities (certificate common names)


@dataclass(frozen=True)
class ConnectConfig:
    """Connect mode: the coordinator's service address, and the name its certificate must
    carry (checked instead of the host name, as the coordinator checks a node's)."""

    coordinator: str  # host:port of `bridgestat coordinator serve`
    server_name: str = DEFAULT_SERVER_NAME


@dataclass(frozen=True)
class NodeConfig:
    source: str  # the config file, for messages
    node_id: str
    data: DataConfig
    schema_path: Path
    categories: Mapping[str, tuple[str, ...]]
    listen: str | None  # None: no inbound port (connect mode only)
    budget: BudgetConfig
    ledger_path: Path
    tls: TlsConfig | None = None  # None: plain text, only with --insecure
    policy_path: Path | None = None
    audit_path: Path | None = None  # None: the default, audit.audit_path(config)
    metrics_listen: str | None = None
    log_format: str = "text"
    connect: ConnectConfig | None = None  # None: inbound mode only

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
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(source, "(file)", f"cannot read config: {exc}") from exc
    doc = mapping(raw, source, "(top level)", _TOP_KEYS)
    base = Path(path).resolve().parent
    node_id = _string(doc, "node_id", source)
    if not _NAME.match(node_id):
        raise ConfigError(source, "node_id", "use letters, digits, '.', '_' or '-' (max 64)")
    ledger = base / _string(doc, "ledger", source)
    log_format = doc.get("log_format", "text")
    if log_format not in _LOG_FORMATS:
        raise ConfigError(source, "log_format", f"must be one of {', '.join(_LOG_FORMATS)}")
    return NodeConfig(
        source=source, node_id=node_id, data=_data(doc.get("data"), base, source),
        schema_path=_schema_path(doc.get("schema", "default"), base, source),
        categories=_categories(doc.get("categories", {}), source),
        listen=_inbound(doc, source),
        budget=_budget(doc.get("budget"), source, node_id),
        ledger_path=ledger,
        tls=_tls(doc["tls"], base, source) if "tls" in doc else None,
        policy_path=_file(doc, "policy", base, source) if "policy" in doc else None,
        audit_path=base / _string(doc, "audit", source) if "audit" in doc else None,
        metrics_listen=_listen(doc["metrics"], source, "metrics") if "metrics" in doc else None,
        log_format=str(log_format),
        connect=_connect(doc["connect"], source) if "connect" in doc else None,
    )


def _data(value: Any, base: Path, source: str) -> DataConfig:
    data = mapping(value, source, "data", _DATA_KEYS)
    kind = str(data.get("source", "csv"))
    if kind not in _SOURCES:
        raise ConfigError(source, "data.source", f"must be one of {', '.join(_SOURCES)}")
    if kind != "postgresql":
        for key in ("dsn", "password_env", "tables"):
            if key in data:
                raise ConfigError(source, f"data.{key}", f"only a postgresql source has {key}")
        return DataConfig(kind, path=base / _string(data, "path", source, "data."))
    if "path" in data:
        raise ConfigError(source, "data.path", "a postgresql source takes dsn and tables")
    tables = data.get("tables", {})
    if not isinstance(tables, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in tables.items()):
        raise ConfigError(source, "data.tables", "must map schema tables to table or view names")
    password_env = data.get("password_env", "")
    if not isinstance(password_env, str):
        raise ConfigError(source, "data.password_env", "must name an environment variable")
    return DataConfig(kind, dsn=_string(data, "dsn", source, "data."),
                      password_env=password_env, tables=dict(tables))


def _inbound(doc: Mapping[str, Any], source: str) -> str | None:
    """The `listen` address; without one, the default unless the node connects out."""
    if "listen" in doc:
        return _listen(doc["listen"], source)
    return None if "connect" in doc else DEFAULT_LISTEN


def _connect(value: Any, source: str) -> ConnectConfig:
    doc = mapping(value, source, "connect", _CONNECT_KEYS)
    coordinator = _listen(_string(doc, "coordinator", source, "connect."), source,
                          "connect.coordinator")
    server_name = doc.get("server_name", DEFAULT_SERVER_NAME)
    if not isinstance(server_name, str) or not _NAME.match(server_name):
        raise ConfigError(source, "connect.server_name", "must be the name on the "
                          f"coordinator's certificate, e.g. {DEFAULT_SERVER_NAME}")
    return ConnectConfig(coordinator, server_name)


def _tls(value: Any, base: Path, source: str) -> TlsConfig:
    doc = mapping(value, source, "tls", _TLS_KEYS)
    allow = doc.get("allow")
    if not isinstance(allow, list) or not allow or not all(
            isinstance(a, str) and a for a in allow):
        raise ConfigError(source, "tls.allow", "must list the caller identities allowed "
                          "(certificate common names), e.g. [coordinator]")
    return TlsConfig(*(_file(doc, k, base, source, "tls.") for k in ("ca", "cert", "key")),
                     allow=tuple(allow))


def _file(doc: Mapping[str, Any], key: str, base: Path, source: str, prefix: str = "") -> Path:
    path = base / _string(doc, key, source, prefix)
    if not path.is_file():
        raise ConfigError(source, f"{prefix}{key}", f"file {path} does not exist")
    return path


def mapping(value: Any, source: str, key: str, allowed: set[str]) -> dict[str, Any]:
    """`value` as a mapping with only `allowed` keys, else a ConfigError naming the key
    (config and policy files share this check)."""
    if not isinstance(value, dict):
        raise ConfigError(source, key, "must be a mapping")
    unknown = sorted(set(value) - allowed, key=str)  # YAML keys need not be strings
    if unknown:
        prefix = "" if key == "(top level)" else f"{key}."
        name = str(unknown[0]) if str(unknown[0]).strip() else repr(unknown[0])
        raise ConfigError(source, f"{prefix}{name}",
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


def _listen(value: Any, source: str, key: str = "listen") -> str:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(source, key, f"must be host:port, got {value!r}")
    return str(value)


def finite(value: Any) -> bool:
    """A finite int or float (a huge YAML integer overflows float: not finite here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _positive(doc: Mapping[str, Any], key: str, source: str) -> float:
    value = doc.get(key)
    if not finite(value) or value <= 0:
        raise ConfigError(source, f"budget.{key}", f"must be a number > 0, got {value!r}")
    return float(value)


def _budget(value: Any, source: str, node_id: str) -> BudgetConfig:
    doc = mapping(value, source, "budget", _BUDGET_KEYS)
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
