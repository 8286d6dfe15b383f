"""A mean's own split and clip counts: on the wire, in the fingerprint, in the plan."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bridgestat.common.query import Query
from bridgestat.common.wire import query_from_pb, query_to_pb
from bridgestat.node import mechanisms
from bridgestat.node.errors import QueryError
from bridgestat.node.planner import Policy, compile_query
from bridgestat.node.query import QuerySpec, Statistic, query_doc
from bridgestat.node.schema import load_schema

SCHEMA = load_schema()
POLICY = Policy(max_epsilon_per_query=5.0)
MEAN = QuerySpec(Statistic.MEAN, "participant", "months_in_program", 1.0)


def test_split_and_clip_counts_cross_the_wire_unchanged() -> None:
    query = Query("mean", "participant", "months_in_program", 0.5, split=(0.1, 0.6, 0.3),
                  clip_counts=True)
    assert query_from_pb(query_to_pb(query)) == query
    plain = Query("mean", "participant", "months_in_program", 0.5)
    assert query_from_pb(query_to_pb(plain)).split is None


def test_unset_options_keep_the_fingerprint_a_query_always_had() -> None:
    # the canonical form has exactly the fields it had before split and clip_counts existed
    assert set(query_doc(MEAN)) == {"statistic", "table", "column", "epsilon", "filters",
                                    "group_by", "occasion", "baseline", "bin_edges", "clip",
                                    "rho", "quantile", "terms"}
    assert replace(MEAN, clip_counts=True).fingerprint() != MEAN.fingerprint()
    assert replace(MEAN, split=(0.2, 0.5, 0.3)).fingerprint() != MEAN.fingerprint()


def test_clip_counts_take_their_share_inside_the_loss() -> None:
    plan = compile_query(replace(MEAN, clip_counts=True, split=(0.1, 0.6, 0.3)), SCHEMA, POLICY)
    count, total, squares, clipped = plan.components
    rest = 1.0 - mechanisms.CLIP_SHARE
    assert count.epsilon == pytest.approx(0.1 * rest)
    assert total.epsilon == pytest.approx(0.6 * rest)
    assert squares.epsilon == pytest.approx(0.3 * rest)
    assert clipped.epsilon == pytest.approx(mechanisms.CLIP_SHARE)
    assert float(plan.loss.epsilon) <= MEAN.epsilon * (1 + 1e-12)
    assert float(plan.loss.epsilon) == pytest.approx(MEAN.epsilon, rel=1e-9)


@pytest.mark.parametrize("query, field", [
    (QuerySpec(Statistic.COUNT, "participant", "", 1.0, split=(0.2, 0.5, 0.3)), "query.split"),
    (QuerySpec(Statistic.HISTOGRAM, "participant", "gender", 1.0, clip_counts=True),
     "query.clip_counts"),
    (QuerySpec(Statistic.MEAN, "participant", "months_in_program", 1.0,
               split=(0.2, 0.5, 0.3 + 1e-8)), "query.split"),
    (QuerySpec(Statistic.MEAN, "participant", "months_in_program", 1.0,
               split=(float("nan"), 0.5, 0.5)), "query.split"),
    (QuerySpec(Statistic.MEAN, "participant", "months_in_program", 1.0,
               split=(1e308, 1e308, 0.5)), "query.split"),  # would overflow math.fsum
])
def test_misplaced_or_bad_options_are_refused_naming_the_field(query: QuerySpec,
                                                               field: str) -> None:
    with pytest.raises(QueryError) as refused:
        compile_query(query, SCHEMA, POLICY)
    assert refused.value.field == field


def test_clip_codes_put_each_value_in_one_cell() -> None:
    codes = mechanisms.clip_codes(np.array([-1.0, 0.0, 5.0, 10.0, 11.0]), 0.0, 10.0)
    assert codes.tolist() == [0, 2, 2, 2, 1]
