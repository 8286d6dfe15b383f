"""The node over real gRPC on loopback: info, releases, idempotency and every refusal."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from bridgestat.v1 import node_service_pb2 as pb

from .conftest import RunningNode

TWELVE = pb.Occasion(target_month=12, window_lower=9, window_upper=15)


def _request(key: str = "k1", **query: object) -> pb.RunQueryRequest:
    base: dict[str, object] = {"statistic": pb.STATISTIC_MEAN, "table": "assessment",
                               "column": "bridge_total", "loss": pb.PrivacyLoss(epsilon=0.5)}
    base.update(query)
    return pb.RunQueryRequest(idempotency_key=key, query=pb.Query(**base))


def _spent(node: RunningNode) -> float:
    return node.stub.GetNodeInfo(pb.GetNodeInfoRequest()).budget.spent.epsilon


def test_info_names_node_schema_and_budget(node: RunningNode) -> None:
    info = node.stub.GetNodeInfo(pb.GetNodeInfoRequest())
    assert info.node_id == "member-01"
    assert info.schema.version == "1.0.0"
    tables = {t.name: t for t in info.schema.tables}
    assert {"participant", "assessment", "goal", "coaching_contact"} <= set(tables)
    debt = next(c for c in tables["assessment"].columns if c.name == "total_debt")
    assert (debt.lower, debt.upper) == (0.0, 100000.0)
    team = next(c for c in tables["participant"].columns if c.name == "team")
    assert list(team.categories)  # declared by the node config
    assert info.budget.total.epsilon == 5.0 and info.budget.spent.epsilon == 0.0


def test_mean_release_carries_noise_metadata_and_charge(node: RunningNode) -> None:
    reply = node.stub.RunQuery(_request())
    values = {v.name: v for v in reply.release.cells[0].values}
    assert set(values) == {"count", "sum", "sum_squares"}
    assert all(v.noise_variance > 0 and v.noise_scale > 0 for v in values.values())
    assert reply.release.center == 50.0
    assert reply.charged.epsilon == pytest.approx(0.5)
    assert reply.budget.spent.epsilon == pytest.approx(0.5)
    assert 300 < values["count"].value < 500  # 400 participants at intake, noise scale 10


def test_retry_returns_identical_release_and_spends_nothing(node: RunningNode) -> None:
    first = node.stub.RunQuery(_request("same"))
    second = node.stub.RunQuery(_request("same"))
    assert second.replayed and not first.replayed
    assert second.release == first.release
    assert _spent(node) == pytest.approx(0.5)


def test_group_by_gives_one_cell_per_category_for_one_loss(node: RunningNode) -> None:
    reply = node.stub.RunQuery(_request(group_by=["arm", "gender"]))
    assert len(reply.release.cells) == 2 * 4
    assert reply.charged.epsilon == pytest.approx(0.5)


def test_histogram_and_paired_change(node: RunningNode) -> None:
    hist = node.stub.RunQuery(_request("h", statistic=pb.STATISTIC_HISTOGRAM, table="participant",
                                       column="household_type"))
    names = [v.name for v in hist.release.cells[0].values]
    assert names[-1] == "(missing)" and names[0] == "single"
    change = node.stub.RunQuery(_request("c", statistic=pb.STATISTIC_PAIRED_CHANGE,
                                         occasion=TWELVE))
    assert change.release.center == 0.0 and change.release.upper == 100.0


REFUSALS: list[tuple[str, Callable[[], pb.RunQueryRequest], grpc.StatusCode, str]] = [
    ("unknown table", lambda: _request(table="payroll"),
     grpc.StatusCode.INVALID_ARGUMENT, "query.table"),
    ("unknown column", lambda: _request(column="salary"),
     grpc.StatusCode.INVALID_ARGUMENT, "query.column"),
    ("unknown category", lambda: _request(filters=[pb.Filter(category=pb.CategoryFilter(
        column="gender", values=["martian"]))]),
     grpc.StatusCode.INVALID_ARGUMENT, "query.filters[0].values"),
    ("unknown group-by column", lambda: _request(group_by=["shoe_size"]),
     grpc.StatusCode.INVALID_ARGUMENT, "query.group_by[0]"),
    ("mean of a category", lambda: _request(column="work_status"),
     grpc.StatusCode.INVALID_ARGUMENT, "query.column"),
    ("histogram of a number without bins", lambda: _request(statistic=pb.STATISTIC_HISTOGRAM),
     grpc.StatusCode.INVALID_ARGUMENT, "query.bin_edges"),
    ("key column", lambda: _request(table="participant", column="participant_id"),
     grpc.StatusCode.INVALID_ARGUMENT, "query.column"),
    ("many-rows table", lambda: _request(table="goal", column="incentive_value"),
     grpc.StatusCode.INVALID_ARGUMENT, "query.table"),
    ("zero loss", lambda: _request(loss=pb.PrivacyLoss(epsilon=0.0)),
     grpc.StatusCode.INVALID_ARGUMENT, "query.loss.epsilon"),
    ("negative loss", lambda: _request(loss=pb.PrivacyLoss(epsilon=-1.0)),
     grpc.StatusCode.INVALID_ARGUMENT, "query.loss.epsilon"),
    ("loss above per-query cap", lambda: _request(loss=pb.PrivacyLoss(epsilon=1.5)),
     grpc.StatusCode.PERMISSION_DENIED, "query.loss.epsilon"),
    ("missing statistic", lambda: _request(statistic=pb.STATISTIC_UNSPECIFIED),
     grpc.StatusCode.INVALID_ARGUMENT, "query.statistic"),
    ("paired change without follow-up", lambda: _request(statistic=pb.STATISTIC_PAIRED_CHANGE),
     grpc.StatusCode.INVALID_ARGUMENT, "query.occasion"),
    ("empty key", lambda: _request(key=""), grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
]


@pytest.mark.parametrize(("case", "request_fn", "code", "field"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_refusal_names_field_and_spends_nothing(
        node: RunningNode, case: str, request_fn: Callable[[], pb.RunQueryRequest],
        code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.RunQuery(request_fn())
    assert caught.value.code() == code, case
    assert caught.value.details().startswith(field), caught.value.details()
    assert _spent(node) == 0.0
    assert node.engine.ledger.charges() == []


def test_key_reuse_with_other_query_is_refused_and_spends_nothing(node: RunningNode) -> None:
    node.stub.RunQuery(_request("reused"))
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.RunQuery(_request("reused", column="stress_score"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "idempotency_key" in caught.value.details()
    assert _spent(node) == pytest.approx(0.5)


def test_exhausted_budget_is_resource_exhausted_and_spends_nothing(node: RunningNode) -> None:
    for i in range(5):  # total 5.0, 1.0 each
        node.stub.RunQuery(_request(f"q{i}", loss=pb.PrivacyLoss(epsilon=1.0)))
    with pytest.raises(grpc.RpcError) as caught:
        node.stub.RunQuery(_request("one-too-many", loss=pb.PrivacyLoss(epsilon=0.1)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _spent(node) == pytest.approx(5.0)


def test_concurrent_queries_over_grpc_never_overspend(node: RunningNode) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> grpc.StatusCode:
        try:
            node.stub.RunQuery(_request(f"c{i}", loss=pb.PrivacyLoss(epsilon=0.7)))
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(one, range(20)))
    assert codes.count(grpc.StatusCode.OK) == 7  # floor(5.0 / 0.7)
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 13
    assert _spent(node) == pytest.approx(4.9)
