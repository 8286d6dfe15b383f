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

from collections.abc import Sequence

import pandas as pd

from bridgestat.coordinator import client
from bridgestat.coordinator.client import AsyncNetwork
from bridgestat.coordinator.query import INTAKE, Occasion, Query, Term
from bridgestat.coordinator.regression import RegressionResult
from bridgestat.coordinator.tables import (
    NETWORK,
    QueryResult,
    compare_table,
    count_table,
    did_table,
    histogram_table,
    mean_table,
    meta_from_table,
    paired_change_table,
    proportion_table,
    quantile_table,
    regression_fits,
    share_improved_table,
)

__all__ = ["NETWORK", "AsyncNetwork", "Network", "QueryResult", "meta_from_table"]
Where = dict[str, Sequence[str]] | None


class Network(client.Network):
    """The blocking client (see `client.Network`: it works in Jupyter, inside asyncio code and
    from several threads) with the statistics methods, each one query turned into a table."""

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
