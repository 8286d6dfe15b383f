"""Analysis kinds: each defined once in `kinds.py`, read by the API, the study file and the
study runner. See README "Adding a statistic"."""

from bridgestat.coordinator.analyses.base import Kind, Output, Planned
from bridgestat.coordinator.analyses.kinds import REGISTRY
from bridgestat.coordinator.analyses.methods import ArgumentError, attach_async, attach_sync

__all__ = ["REGISTRY", "ArgumentError", "Kind", "Output", "Planned", "attach_async",
           "attach_sync"]
