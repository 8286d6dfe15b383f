"""The Python API for researchers and coordinators: queries in, pandas DataFrames out.

    net = Network.from_file("network.yaml")
    net.paired_change("assessment", "bridge_total", occasion=Occasion.month(12, 3))

Every result has one row per member (estimate, se with sampling and DP variance, 95 % CI,
noisy n, loss charged, status) and a pooled row with member == "NETWORK". A member that is
down, slow or refuses keeps its row with the reason in `status`; the pooled row uses the rest.
The tables are built in `tables` from the raw `QueryResult`, so a study can run a query once
and derive several tables from it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bridgestat.coordinator.analyses import attach_sync
from bridgestat.coordinator.fanout import Failure, Fanout, Success
from bridgestat.coordinator.network import Member, TlsFiles, load_network, require_tls
from bridgestat.coordinator.pooling import PoolingError
from bridgestat.coordinator.query import INTAKE, Occasion, Query, Term
from bridgestat.coordinator.tables import NETWORK, QueryResult, meta_from_table
from bridgestat.coordinator.wire import MemberRelease, check_release, query_to_pb, release_from_pb
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

__all__ = ["INTAKE", "NETWORK", "Network", "Occasion", "QueryResult", "Term", "meta_from_table"]


class Network:
    """A client of every member's node; not thread-safe (one event loop of its own)."""

    def __init__(self, members: Sequence[Member], timeout: float = 10.0, *,
                 tls: TlsFiles | None = None, insecure: bool = False) -> None:
        """Mutual TLS with `tls` (the network file's); plain text only with `insecure`."""
        require_tls(tls, insecure, "Network")
        self.members = tuple(members)
        self.timeout = timeout
        self.tls = tls
        self._loop = asyncio.new_event_loop()
        self._fanout = Fanout(self.members, tls.channel_credentials() if tls else None)

    @classmethod
    def from_file(cls, path: str | Path, timeout: float = 10.0, *,
                  insecure: bool = False) -> Network:
        spec = load_network(Path(path))
        require_tls(spec.tls, insecure, str(path))
        return cls(spec.members, timeout, tls=spec.tls, insecure=insecure)

    def close(self) -> None:
        self._loop.run_until_complete(self._fanout.close())
        self._loop.close()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw calls -------------------------------------------------------------------------

    def node_infos(self) -> dict[str, pb.GetNodeInfoResponse | Failure]:
        """Every member's GetNodeInfo answer (schema, budget), or its failure."""
        async def call(stub: pb_grpc.NodeServiceStub, timeout: float) -> pb.GetNodeInfoResponse:
            return await stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=timeout)
        outcomes = self._loop.run_until_complete(self._fanout.call_all(call, self.timeout))
        return {o.member: (o.value if isinstance(o, Success) else o) for o in outcomes}

    def info(self) -> pd.DataFrame:
        """Every member: reachable, schema version, budget spent and left."""
        rows = []
        for member, info in self.node_infos().items():
            if isinstance(info, Failure):
                rows.append({"member": member, "reachable": False,
                             "status": f"{info.code}: {info.message}"})
                continue
            budget = info.budget
            rows.append({"member": member, "reachable": True, "node_id": info.node_id,
                         "schema": f"{info.schema.name} {info.schema.version}",
                         "dataset": budget.dataset,
                         "epsilon_spent": budget.spent.epsilon,
                         "epsilon_remaining": budget.remaining.epsilon,
                         "epsilon_total": budget.total.epsilon,
                         "rho_spent": budget.spent.rho, "delta": budget.total.delta,
                         "max_epsilon_per_query": budget.max_per_query.epsilon,
                         "software": info.software_version, "status": "ok"})
        return pd.DataFrame(rows)

    def run(self, query: Query, key: str | None = None) -> QueryResult:
        """Send one query to every member; the same key makes a retry free on every node."""
        key = key or uuid.uuid4().hex
        request = pb.RunQueryRequest(idempotency_key=key, query=query_to_pb(query))

        async def call(stub: pb_grpc.NodeServiceStub, timeout: float) -> pb.RunQueryResponse:
            return await stub.RunQuery(request, timeout=timeout)
        outcomes = self._loop.run_until_complete(self._fanout.call_all(call, self.timeout))
        releases: dict[str, MemberRelease] = {}
        failures = {o.member: o for o in outcomes if isinstance(o, Failure)}
        for outcome in outcomes:
            if isinstance(outcome, Success):
                try:
                    release = release_from_pb(outcome.value)
                    check_release(query, release)
                except PoolingError as exc:  # a member answering garbage fails alone
                    failures[outcome.member] = Failure(outcome.member, "INVALID_RESPONSE",
                                                       f"malformed release: {exc}")
                    continue
                releases[outcome.member] = release
        return QueryResult(query, key, tuple(m.name for m in self.members), releases, failures)

    if TYPE_CHECKING:  # the statistics methods are attached below, one per analysis kind
        def __getattr__(self, name: str) -> Any: ...


# net.count, net.mean, ..., net.quantile: generated from the registry of analysis kinds
# (bridgestat.coordinator.analyses.kinds), with real signatures and docstrings.
attach_sync(Network)
