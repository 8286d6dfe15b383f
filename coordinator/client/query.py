"""Queries as the coordinator describes them: immutable values, compiled on the nodes.

The values are the shared ones (`bridgestat.common.query`), so that what the coordinator
builds is exactly what a node decodes; re-exported here for the coordinator's callers.
"""

from __future__ import annotations

from bridgestat.common.query import INTAKE, STATISTICS, Occasion, Query, Statistic, Term

__all__ = ["INTAKE", "STATISTICS", "Occasion", "Query", "Statistic", "Term"]
