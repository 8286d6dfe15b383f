"""The shared vocabulary: one query encoding both ways, one rho-to-epsilon conversion, one
set of certificate checks, the same names on both sides."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridgestat.common import certs, labels, wire
from bridgestat.common.headers import MEMBER_HEADER, SESSION_HEADER
from bridgestat.common.query import INTAKE, STATISTICS, Occasion, Query, Statistic, Term
from bridgestat.coordinator import ca, hub
from bridgestat.coordinator.client import query as coordinator_query
from bridgestat.coordinator.client import wire as coordinator_wire
from bridgestat.coordinator.statistics import effects, privacy, tables
from bridgestat.node import connect, loss, planner, serde
from bridgestat.node import query as node_query
from bridgestat.node.errors import QueryError
from bridgestat.v1 import node_service_pb2 as pb
from tests.fuzz.strategies import fuzz_settings, queries

NAMES = st.text(max_size=8)
FLOATS = st.floats(allow_nan=False, width=64)
OCCASIONS = st.builds(Occasion, *(st.integers(-2**31, 2**31 - 1),) * 3)
CLIPS = st.none() | st.tuples(FLOATS, FLOATS)
TERMS = st.builds(Term, NAMES, st.none() | OCCASIONS, st.none() | OCCASIONS, NAMES, CLIPS)
SHARED_QUERIES = st.builds(
    Query, st.sampled_from(STATISTICS), NAMES, NAMES, FLOATS,
    st.lists(st.tuples(NAMES, st.lists(NAMES, max_size=3).map(tuple)), max_size=3).map(tuple),
    st.lists(st.tuples(NAMES, st.none() | FLOATS, st.none() | FLOATS), max_size=3).map(tuple),
    st.lists(NAMES, max_size=3).map(tuple), st.none() | OCCASIONS, st.none() | OCCASIONS,
    st.lists(FLOATS, max_size=4).map(tuple), CLIPS, FLOATS, FLOATS,
    st.lists(TERMS, max_size=3).map(tuple))


@fuzz_settings(300)
@given(SHARED_QUERIES)
def test_every_shared_query_survives_the_wire_unchanged(query: Query) -> None:
    assert wire.query_from_pb(wire.query_to_pb(query)) == query


@fuzz_settings(300)
@given(queries())
def test_the_node_echoes_exactly_what_it_decoded(msg: pb.Query) -> None:
    """Any wire query (also malformed ones) the node can decode, it encodes back to a query
    that decodes to the same planning form (the echo beside its answer)."""
    try:
        spec = serde.query_from_pb(msg)
    except QueryError as exc:
        assert exc.field == "query.statistic" or exc.field.startswith("query.filters[")
        return
    if spec.statistic is Statistic.UNSPECIFIED:
        return  # refused by the planner, never echoed
    echoed = serde.query_to_pb(spec)
    again = serde.query_to_pb(serde.query_from_pb(echoed))
    assert again.SerializeToString(deterministic=True) == \
        echoed.SerializeToString(deterministic=True)


def test_decoding_names_what_has_no_shared_value() -> None:
    with pytest.raises(wire.WireError, match=r"^query\.statistic: unknown statistic 99$"):
        wire.query_from_pb(pb.Query(statistic=99))
    msg = pb.Query(statistic=pb.STATISTIC_COUNT, table="participant")
    msg.filters.add(category=pb.CategoryFilter(column="gender", values=["female"]))
    msg.filters.add()
    with pytest.raises(QueryError, match=r"^query\.filters\[1\]: must be a category or a range"):
        serde.query_from_pb(msg)
    with pytest.raises(wire.WireError, match="must be one of count, mean"):
        wire.query_to_pb(Query("median", "assessment", "bridge_total"))


def test_an_unset_statistic_reaches_the_planner_to_be_refused() -> None:
    spec = serde.query_from_pb(pb.Query(table="participant"))
    assert spec.statistic is Statistic.UNSPECIFIED


def test_the_node_plans_category_filters_then_ranges_as_the_coordinator_sends_them() -> None:
    query = Query("count", "participant", "", 0.5, (("gender", ("female",)),),
                  (("age", 18.0, None),), occasion=INTAKE)
    spec = serde.query_from_pb(coordinator_wire.query_to_pb(query))
    assert spec.filters == (node_query.CategoryFilter("gender", ("female",)),
                            node_query.RangeFilter("age", 18.0, None))
    assert spec.shared() == query


def test_both_sides_name_the_same_values() -> None:
    assert coordinator_query.Occasion is node_query.Occasion is Occasion
    assert coordinator_query.Term is node_query.Term is Term
    assert coordinator_query.INTAKE is node_query.INTAKE is INTAKE
    assert node_query.Statistic is Statistic
    assert coordinator_wire.query_to_pb is wire.query_to_pb
    assert planner.MISSING == effects.MISSING == tables.MISSING == labels.MISSING
    assert connect.SESSION_HEADER == SESSION_HEADER and hub.MEMBER_HEADER == MEMBER_HEADER
    assert Occasion.month(12, 3) == Occasion(12, 9, 15) and Occasion.month(1, 3).window_lower == 0


@pytest.mark.parametrize("rho", [0.02, 0.5, 70284.0, 1e10])
def test_node_and_coordinator_convert_rho_alike(rho: float) -> None:
    """The coordinator plans with the node's conversion: infinite where OpenDP overflows."""
    node_side, coordinator_side = loss.rho_to_epsilon(rho, 1e-6), \
        privacy.Spend(rho=rho).guarantee(1e-6)
    assert node_side == coordinator_side
    assert math.isfinite(node_side) == (rho < 70283)


# -- certificates ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ca")
    ca.init_ca(folder)
    ca.issue(folder, "member-01")
    return folder


def test_a_good_identity_has_no_problem(authority: Path) -> None:
    assert certs.check_identity(authority / "ca.pem", authority / "member-01.pem",
                                authority / "member-01.key", "member-01") is None
    assert ca.check_identity is certs.check_identity


def test_each_problem_names_its_role_and_file(authority: Path, tmp_path: Path) -> None:
    ca.init_ca(tmp_path / "rogue")
    rogue = ca.issue(tmp_path / "rogue", "member-01")
    old = ca.issue(authority, "member-01", tmp_path / "old",
                   valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=800))
    good = (authority / "ca.pem", authority / "member-01.pem", authority / "member-01.key")
    cases = [((tmp_path / "none.pem", *good[1:]), "ca", "cannot read"),
             ((good[0], rogue.cert, rogue.key), "cert", "not signed by the CA in tls.ca"),
             ((good[0], old.cert, old.key), "cert", "expired on"),
             ((*good[:2], rogue.key), "key", "does not match the certificate in tls.cert"),
             ((good[0], good[1], good[0]), "key", "is not an unencrypted PEM private key")]
    for files, role, text in cases:
        problem = certs.check_identity(*files)
        assert problem is not None and problem[0] == role and text in problem[1], problem
    problem = certs.check_identity(*good, "member-02", "node_id")
    assert problem == ("cert", f"certificate {good[1]} is for member-01, not node_id member-02")
