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

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, PlainValidator, ValidationError, WithJsonSchema

from bridgestat.common.files import (
    Address,
    BindAddress,
    CertificateName,
    FileModel,
    FileProblem,
    KeyProblem,
    Name,
    Positive,
    Text,
    first_problem,
    not_null,
    number,
    read_yaml,
)
from bridgestat.common.names import COORDINATOR
from bridgestat.node.errors import ConfigError
from bridgestat.node.schema import DEFAULT_SCHEMA_PATH, Schema, load_schema

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_SERVER_NAME = COORDINATOR  # the coordinator's certificate name (`bridgestat ca`)
DEFAULT_DELTA = 1e-6
_DATABASE_KEYS = ("dsn", "password_env", "tables")

Delta = Annotated[float, PlainValidator(number("in (0, 0.001)", lambda x: 0 < x < 1e-3)),
                  WithJsonSchema({"type": "number", "exclusiveMinimum": 0,
                                  "exclusiveMaximum": 1e-3})]
NotNull = BeforeValidator(not_null)


# -- the file, as the member writes it --------------------------------------------------------


class DataFile(FileModel):
    """`data`: a folder or workbook (`path`), or a PostgreSQL database (`dsn`, `tables`)."""

    source: Literal["csv", "parquet", "excel", "postgresql"] = "csv"
    path: Annotated[Text | None, NotNull] = None
    dsn: Annotated[Text | None, NotNull] = None
    password_env: str = ""  # the environment variable holding the database password
    tables: dict[str, Text] = Field(default_factory=dict)  # schema table -> the member's table or view

    def check(self) -> None:
        """A file source has a path and nothing of a database's; a database the reverse."""
        if self.source != "postgresql":
            for key in _DATABASE_KEYS:
                if key in self.model_fields_set:
                    raise KeyProblem(f"data.{key}", f"only a postgresql source has {key}")
            if self.path is None:
                raise KeyProblem("data.path", "missing (required: the folder or workbook of "
                                 f"the {self.source} source)")
        elif self.path is not None:
            raise KeyProblem("data.path", "a postgresql source takes dsn and tables")
        elif self.dsn is None:
            raise KeyProblem("data.dsn", "missing (required for a postgresql source)")


class BudgetFile(FileModel):
    """`budget`: the node's technical ceiling on privacy loss."""

    dataset: Annotated[Text | None, NotNull] = None  # default: the node_id
    total_epsilon: Positive
    max_epsilon_per_query: Positive
    delta: Delta = DEFAULT_DELTA  # of the (epsilon, delta) guarantee when rho is spent

    def check(self) -> None:
        if self.max_epsilon_per_query > self.total_epsilon:
            raise KeyProblem("budget.max_epsilon_per_query",
                             f"{self.max_epsilon_per_query:g} exceeds total_epsilon "
                             f"{self.total_epsilon:g}")


class TlsFile(FileModel):
    """`tls`: the node's certificate and key, the network CA, and who may call it."""

    ca: Text
    cert: Text
    key: Text
    allow: list[Name]  # caller certificate names
    probe: list[Name] = Field(default_factory=list)  # may call health and reflection only

    def check(self) -> None:
        if not self.allow:
            raise KeyProblem("tls.allow", "must list the caller identities allowed "
                             "(certificate names), e.g. [coordinator]")
        both = sorted(set(self.allow) & set(self.probe))
        if both:
            raise KeyProblem("tls.probe", f"{', '.join(both)} also on tls.allow: a probe "
                             "identity may only call health and reflection, so it cannot "
                             "also be allowed to query")


class ConnectFile(FileModel):
    """`connect`: dial out to the coordinator's hub instead of (or besides) listening."""

    coordinator: Address
    server_name: CertificateName = DEFAULT_SERVER_NAME


class NodeFile(FileModel):
    """The node config file (see the module docstring)."""

    node_id: Name
    data: DataFile
    schema_file: str = Field("default", alias="schema")  # 'default' or a path
    categories: dict[str, Annotated[list[str], Field(min_length=1)]] = Field(default_factory=dict)
    listen: Annotated[BindAddress | None, NotNull] = None
    connect: Annotated[ConnectFile | None, NotNull] = None
    budget: BudgetFile
    ledger: Text
    tls: Annotated[TlsFile | None, NotNull] = None
    policy: Annotated[Text | None, NotNull] = None
    audit: Annotated[Text | None, NotNull] = None
    metrics: Annotated[BindAddress | None, NotNull] = None
    log_format: Literal["text", "json"] = "text"

    def check(self) -> None:
        """What one key cannot say alone: the data source's keys, the budget's order."""
        self.data.check()
        self.budget.check()
        if self.tls is not None:
            self.tls.check()
        for name, values in self.categories.items():
            if len(set(values)) != len(values):
                raise KeyProblem(f"categories.{name}", "categories must be unique")


# -- the values the node runs with ------------------------------------------------------------


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
    probe: tuple[str, ...] = ()  # identities that may call health and reflection only


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
    """Read and validate a node config file; `ConfigError(file, key path, problem)`."""
    source = str(path)
    try:
        raw = read_yaml(path, "config")
    except FileProblem as exc:
        raise ConfigError(source, "(file)", exc.problem) from exc
    try:
        doc = NodeFile.model_validate(raw)
        doc.check()
        return _config(doc, source, Path(path).resolve().parent)
    except (ValidationError, KeyProblem) as exc:
        raise ConfigError(source, *first_problem(exc, NodeFile)) from None


def _config(doc: NodeFile, source: str, base: Path) -> NodeConfig:
    """The values a node runs with: paths resolved beside the file, files checked to exist."""
    listen = doc.listen if doc.listen is not None or doc.connect is not None \
        else DEFAULT_LISTEN
    return NodeConfig(
        source=source, node_id=doc.node_id, data=_data(doc.data, base),
        schema_path=_schema_path(doc.schema_file, base),
        categories={name: tuple(values) for name, values in doc.categories.items()},
        listen=listen,
        budget=BudgetConfig(doc.budget.dataset or doc.node_id, doc.budget.total_epsilon,
                            doc.budget.max_epsilon_per_query, doc.budget.delta),
        ledger_path=base / doc.ledger,
        tls=_tls(doc.tls, base) if doc.tls is not None else None,
        policy_path=_existing(base / doc.policy, "policy") if doc.policy is not None else None,
        audit_path=base / doc.audit if doc.audit is not None else None,
        metrics_listen=doc.metrics, log_format=doc.log_format,
        connect=ConnectConfig(doc.connect.coordinator, doc.connect.server_name)
        if doc.connect is not None else None)


def _data(doc: DataFile, base: Path) -> DataConfig:
    if doc.source != "postgresql":
        return DataConfig(doc.source, path=base / str(doc.path))
    return DataConfig(doc.source, dsn=str(doc.dsn), password_env=doc.password_env,
                      tables=dict(doc.tables))


def _tls(doc: TlsFile, base: Path) -> TlsConfig:
    ca, cert, key = (_existing(base / getattr(doc, k), f"tls.{k}") for k in ("ca", "cert", "key"))
    return TlsConfig(ca, cert, key, allow=tuple(doc.allow), probe=tuple(doc.probe))


def _existing(path: Path, key: str) -> Path:
    if not path.is_file():
        raise KeyProblem(key, f"file {path} does not exist")
    return path


def _schema_path(value: str, base: Path) -> Path:
    if value == "default":
        return DEFAULT_SCHEMA_PATH
    path = base / value
    if not value.strip() or not path.is_file():
        raise KeyProblem("schema", f"must be 'default' or a path to a schema file; {path} "
                         "does not exist")
    return path
