"""The node's few named exceptions; `service.py` maps each to one gRPC status code.

Every error names what is wrong (a query field, a config key, a file/row/column) so that
member IT and researchers can act on it without reading the code.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError):
    """A node config or schema file is unusable; names the file and key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source, self.key, self.problem = source, key, problem
        super().__init__(f"{source}: {key}: {problem}")


class DataError(NodeError):
    """The member's data cannot be served (see `bridgestat-node check` for every problem)."""


class QueryError(NodeError):
    """A query does not fit the schema or the statistic; names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


class PolicyError(NodeError):
    """The query is well formed but the node's policy does not allow it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


class BudgetExhausted(NodeError):
    """Charging the query would exceed the dataset's privacy budget."""


class IdempotencyConflict(NodeError):
    """The idempotency key was already used for a different query."""


class QueryInProgress(NodeError):
    """A query with the same idempotency key is being answered right now; retry later."""


class AuditError(NodeError):
    """The audit log cannot be appended to (unwritable, or its last line is incomplete).

    The node fails closed: a query whose audit entry cannot be written is not answered."""
