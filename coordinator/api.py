"""The Python API for researchers and coordinators: queries in, pandas DataFrames out.

    net = Network.from_file("network.yaml")
    net.paired_change("assessment", "bridge_total", occasion=Occasion.month(12, 3))

`Network` works in a script, a Jupyter kernel, inside asyncio code and from several threads;
in asyncio code, `AsyncNetwork` (`await net.run(query)`) is the native client (`client`).

Every result has one row per member (estimate, se with sampling and DP variance, 95 % CI,
noisy n, loss charged, status) and a pooled row with member == "NETWORK". A member that is
down, slow or refuses keeps its row with the reason in `status`; the pooled row uses the rest.
The tables are built in `tables` from the raw `QueryResult`, so a study can run a query once
and derive several tables from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridgestat.coordinator.analyses import attach_async, attach_sync
from bridgestat.coordinator.client import network_client as client
from bridgestat.coordinator.client.query import INTAKE, Occasion, Query, Term
from bridgestat.coordinator.statistics.tables import NETWORK, QueryResult, meta_from_table

__all__ = ["INTAKE", "NETWORK", "AsyncNetwork", "Network", "Occasion", "Query", "QueryResult",
           "Term", "meta_from_table"]


class AsyncNetwork(client.AsyncNetwork):
    """The asyncio client (`await net.mean(...)`, `asyncio.gather` of several) with the
    statistics methods; see `client.AsyncNetwork` for the transport."""

    if TYPE_CHECKING:  # the statistics methods are attached below, one per analysis kind
        def __getattr__(self, name: str) -> Any: ...


class Network(client.Network):
    """The blocking client (see `client.Network`: it works in Jupyter, inside asyncio code and
    from several threads) with the statistics methods, each one query turned into a table."""

    asynchronous = AsyncNetwork  # what runs on its private loop: `net.aio` has the methods too

    if TYPE_CHECKING:  # the statistics methods are attached below, one per analysis kind
        def __getattr__(self, name: str) -> Any: ...


# net.count, net.mean, ..., net.quantile: generated from the registry of analysis kinds
# (bridgestat.coordinator.analyses.kinds), with real signatures and docstrings.
attach_sync(Network)
attach_async(AsyncNetwork)
