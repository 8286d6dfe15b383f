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

import pandas as pd

from bridgestat.coordinator.fanout import Failure, Fanout, Success
from bridgestat.coordinator.network import Member, TlsFiles, load_network, require_tls
from bridgestat.coordinator.pooling import PoolingError
from bridgestat.coordinator.query import INTAKE, Occasion, Query, Term
from bridgestat.coordinator.regression import RegressionResult
from bridgestat.coordinator.tables import (NETWORK, QueryResult, compare_table, count_table,
                                           did_table, histogram_table, mean_table,
                                           meta_from_table, paired_change_table,
                                           proportion_table, quantile_table, regression_fits,
                                           share_improved_table)
from bridgestat.coordinator.wire import (MemberRelease, check_release, query_to_pb,
                                        release_from_pb)
from bridgestat.coordinator.witness import Witness, default_path
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

__all__ = ["NETWORK", "Network", "QueryResult", "meta_from_table"]
Where = dict[str, Sequence[str]] | None


class Network:
    """A client of every member's node; not thread-safe (one event loop of its own)."""

    def __init__(self, members: Sequence[Member], timeout: float = 10.0, *,
                 tls: TlsFiles | None = None, insecure: bool = False,
                 witness: Path | None = None) -> None:
        """Mutual TLS with `tls` (the network file's); plain text only with `insecure`.
        `witness`: the file the members' audit heads are recorded in (coordinator/witness.py)."""
        require_tls(tls, insecure, "Network")
        self.members = tuple(members)
        self.timeout = timeout
        self.tls = tls
        self._loop = asyncio.new_event_loop()
        self._fanout = Fanout(self.members, tls.channel_credentials() if tls else None,
                              Witness(witness) if witness is not None else None)

    @classmethod
    def from_file(cls, path: str | Path, timeout: float = 10.0, *,
                  insecure: bool = False, witness: Path | None = None) -> Network:
        """The network file's members; their audit heads are witnessed in `witness`
        (default: `<network file>.witness.jsonl` beside it)."""
        spec = load_network(Path(path))
        require_tls(spec.tls, insecure, str(path))
        return cls(spec.members, timeout, tls=spec.tls, insecure=insecure,
                   witness=witness or default_path(Path(path)))

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

    # -- statistics ------------------------------------------------------------------------

    def count(self, table: str = "participant", *, epsilon: float = 0.5,
              where: dict[str, Sequence[str]] | None = None,
              group_by: Sequence[str] = (), occasion: Occasion | None = None,
              key: str | None = None) -> pd.DataFrame:
        query = Query("count", table, "", epsilon, _where(where), group_by=tuple(group_by),
                      occasion=occasion)
        return count_table(self.run(query, key))

    def mean(self, table: str, column: str, *, epsilon: float = 0.5,
             where: dict[str, Sequence[str]] | None = None, group_by: Sequence[str] = (),
             occasion: Occasion | None = None, clip: tuple[float, float] | None = None,
             key: str | None = None) -> pd.DataFrame:
        """Mean of a numeric column; `clip` sets tighter public bounds (less noise)."""
        query = Query("mean", table, column, epsilon, _where(where), group_by=tuple(group_by),
                      occasion=occasion, clip=clip)
        return mean_table(self.run(query, key))

    def paired_change(self, table: str, column: str, *, occasion: Occasion,
                      baseline: Occasion = INTAKE, epsilon: float = 0.5,
                      where: dict[str, Sequence[str]] | None = None,
                      group_by: Sequence[str] = (), clip: tuple[float, float] | None = None,
                      key: str | None = None) -> pd.DataFrame:
        """Mean change post - pre with CI, and Cohen's d_z with its SE (NaN when the noisy
        SD of the change is not estimable; `d_z_status` says why)."""
        query = Query("paired_change", table, column, epsilon, _where(where),
                      group_by=tuple(group_by), occasion=occasion, baseline=baseline, clip=clip)
        return paired_change_table(self.run(query, key))

    def histogram(self, table: str, column: str, *, epsilon: float = 0.5,
                  where: dict[str, Sequence[str]] | None = None, group_by: Sequence[str] = (),
                  occasion: Occasion | None = None, bin_edges: Sequence[float] = (),
                  key: str | None = None) -> pd.DataFrame:
        """Long form: one row per member (and NETWORK), group cell and category, with shares."""
        query = Query("histogram", table, column, epsilon, _where(where),
                      group_by=tuple(group_by), occasion=occasion, bin_edges=tuple(bin_edges))
        return histogram_table(self.run(query, key))

    def proportion(self, table: str, column: str, categories: Sequence[str], *,
                   epsilon: float = 0.5, where: dict[str, Sequence[str]] | None = None,
                   group_by: Sequence[str] = (), occasion: Occasion | None = None,
                   bin_edges: Sequence[float] = (), key: str | None = None) -> pd.DataFrame:
        """Share of participants (with a known value) whose value is in `categories`."""
        query = Query("histogram", table, column, epsilon, _where(where),
                      group_by=tuple(group_by), occasion=occasion, bin_edges=tuple(bin_edges))
        return proportion_table(self.run(query, key), tuple(categories))

    def share_improved(self, table: str, column: str, *, occasion: Occasion,
                       baseline: Occasion = INTAKE, improvement: str = "increase",
                       epsilon: float = 0.5, where: Where = None,
                       group_by: Sequence[str] = (), key: str | None = None) -> pd.DataFrame:
        """Share of participants whose value moved in the `improvement` direction ("increase"
        or "decrease", e.g. debt) between the occasions; one transition histogram."""
        query = Query("histogram", table, column, epsilon, _where(where),
                      group_by=tuple(group_by), occasion=occasion, baseline=baseline)
        return share_improved_table(self.run(query, key), improvement)

    def transition(self, table: str, column: str, *, occasion: Occasion,
                   baseline: Occasion = INTAKE, epsilon: float = 0.5, where: Where = None,
                   key: str | None = None) -> QueryResult:
        """A transition histogram ("before -> after" counts) of a categorical column; turn it
        into tables with `transition_table` and `paired_difference_table`."""
        query = Query("histogram", table, column, epsilon, _where(where),
                      occasion=occasion, baseline=baseline)
        return self.run(query, key)

    def compare(self, table: str, column: str, categories: Sequence[str], *,
                group: str = "arm", groups: tuple[str, str] = ("mobility_mentoring",
                                                               "comparison"),
                epsilon: float = 0.5, where: Where = None, occasion: Occasion | None = None,
                bin_edges: Sequence[float] = (), key: str | None = None) -> pd.DataFrame:
        """Share in `categories` per group, risk difference, log risk ratio and log odds
        ratio of groups[0] against groups[1] (disjoint groups, one histogram query)."""
        query = Query("histogram", table, column, epsilon, _where(where), group_by=(group,),
                      occasion=occasion, bin_edges=tuple(bin_edges))
        return compare_table(self.run(query, key), tuple(categories), group, groups)

    def did(self, table: str, column: str, *, occasion: Occasion, baseline: Occasion = INTAKE,
            group: str = "arm", groups: tuple[str, str] = ("mobility_mentoring", "comparison"),
            epsilon: float = 0.5, clip: tuple[float, float] | None = None,
            where: Where = None, key: str | None = None) -> pd.DataFrame:
        """Difference-in-differences: mean change in groups[0] minus in groups[1], per member
        with both arms; NETWORK is the fixed-effect (inverse-variance) pool of the members'."""
        query = Query("paired_change", table, column, epsilon, _where(where),
                      group_by=(group,), occasion=occasion, baseline=baseline, clip=clip)
        return did_table(self.run(query, key), group, groups)

    def regression(self, terms: Sequence[Term], *, table: str = "assessment",
                   rho: float = 0.05, where: Where = None, occasion: Occasion | None = None,
                   replicates: int = 2000, seed: int = 0, key: str | None = None
                   ) -> dict[str, RegressionResult | str]:
        """Linear regression of the last term on the others, per member and pooled (NETWORK),
        from DP cross products; a member that failed maps to its reason."""
        query = Query("cross_products", table, "", 0.0, _where(where), occasion=occasion,
                      rho=rho, terms=tuple(terms))
        return regression_fits(self.run(query, key), replicates=replicates, seed=seed)

    def quantile(self, table: str, column: str, q: float, candidates: Sequence[float], *,
                 epsilon: float = 0.5, where: Where = None, occasion: Occasion | None = None,
                 key: str | None = None) -> pd.DataFrame:
        """A member's quantile from OpenDP's exponential mechanism over public candidates
        (no closed-form SE); the NETWORK row from a pooled histogram over the same grid, with
        a 95 % CI by inverting the CDF's interval. Each half of `epsilon` pays one query."""
        base = Query("quantile", table, column, epsilon / 2, _where(where), occasion=occasion,
                     quantile=q, bin_edges=tuple(candidates))
        edges = tuple(candidates[1:-1])
        grid = Query("histogram", table, column, epsilon / 2, _where(where),
                     occasion=occasion, bin_edges=edges)
        first = self.run(base, None if key is None else f"{key}:q")
        second = self.run(grid, None if key is None else f"{key}:grid")
        return quantile_table(first, second, q, tuple(candidates))



def _where(where: dict[str, Sequence[str]] | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((k, tuple(v)) for k, v in (where or {}).items())
