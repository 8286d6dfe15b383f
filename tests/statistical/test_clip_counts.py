"""Clip counts and a mean's own split, against a real node over gRPC on synthetic data.

The synthetic member (seed 11, 400 participants) is read from its CSV file, so the true
numbers of values below and above the analyst's clipping bounds are known exactly. Each
query's two clip counts are noisy (discrete Laplace, OpenSSL randomness through OpenDP, so
not seedable); the test averages R releases and allows 4 standard errors of that average,
taken from the releases' own noise variances (the average of R = 12 discrete Laplace draws
is close to normal: a false alarm about 6e-5 per count).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest

from bridgestat.node.mechanisms import CLIP_SHARE
from bridgestat.v1 import node_service_pb2 as pb
from tests.integration.conftest import RunningNode, start_node

EPSILON = 1.0
REPEATS = 12
CLIP = (6.0, 30.0)  # months_in_program: schema bounds [0, 72]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[RunningNode]:
    running, server, channel = start_node(tmp_path, total_epsilon=40.0, max_per_query=1.0)
    yield running
    channel.close()
    server.stop(grace=None).wait()


def _months(node: RunningNode) -> pd.Series:
    frame = pd.read_csv(node.root / node.engine.node_id / "participant.csv")
    return frame["months_in_program"].dropna()


def _query(**options: object) -> pb.Query:
    return pb.Query(statistic=pb.STATISTIC_MEAN, table="participant",
                    column="months_in_program", loss=pb.PrivacyLoss(epsilon=EPSILON),
                    clip=pb.Bounds(lower=CLIP[0], upper=CLIP[1]), **options)  # type: ignore[arg-type]


def _run(node: RunningNode, key: str, query: pb.Query) -> pb.RunQueryResponse:
    response: pb.RunQueryResponse = node.stub.RunQuery(
        pb.RunQueryRequest(idempotency_key=key, query=query))
    return response


def test_clip_counts_estimate_the_true_counts_within_the_asked_loss(node: RunningNode) -> None:
    months = _months(node)
    truth = {"clipped_below": int((months < CLIP[0]).sum()),
             "clipped_above": int((months > CLIP[1]).sum())}
    assert min(truth.values()) > 20  # the data cut at both ends: a real test
    draws: dict[str, list[float]] = {name: [] for name in truth}
    variances: dict[str, float] = {}
    for r in range(REPEATS):
        response = _run(node, f"clip-{r}", _query(clip_counts=True))
        assert response.charged.epsilon == pytest.approx(EPSILON, rel=1e-9)  # inside, not on top
        values = {v.name: v for v in response.release.cells[0].values}
        assert set(values) == {"count", "sum", "sum_squares", *truth}
        for name in truth:
            draws[name].append(values[name].value)
            variances[name] = values[name].noise_variance
            assert values[name].epsilon == pytest.approx(EPSILON * CLIP_SHARE, rel=1e-9)
    for name, expected in truth.items():
        se = math.sqrt(variances[name] / REPEATS)
        assert abs(sum(draws[name]) / REPEATS - expected) <= 4 * se, name
    spent = node.stub.GetNodeInfo(pb.GetNodeInfoRequest()).budget.spent.epsilon
    assert spent == pytest.approx(REPEATS * EPSILON, rel=1e-9)


def test_a_split_moves_the_noise_between_the_three_releases(node: RunningNode) -> None:
    default = _run(node, "default", _query()).release.cells[0].values
    split = pb.MeanSplit(count=0.1, sum=0.8, sum_squares=0.1)
    chosen = _run(node, "split", _query(split=split)).release.cells[0].values
    scale = {v.name: v.noise_scale for v in default}
    shares = {"count": (0.2, 0.1), "sum": (0.5, 0.8), "sum_squares": (0.3, 0.1)}
    for value in chosen:
        before, after = shares[value.name]
        assert value.epsilon == pytest.approx(EPSILON * after, rel=1e-9)
        # Laplace scale is sensitivity / epsilon: it moves by the inverse share ratio
        assert value.noise_scale == pytest.approx(scale[value.name] * before / after, rel=1e-6)


@pytest.mark.parametrize("options, field", [
    ({"split": pb.MeanSplit(count=0.2, sum=0.5, sum_squares=0.2)}, "query.split"),
    ({"split": pb.MeanSplit(count=0.0, sum=0.7, sum_squares=0.3)}, "query.split"),
    ({"split": pb.MeanSplit(count=-0.1, sum=0.8, sum_squares=0.3)}, "query.split"),
])
def test_a_bad_split_is_refused_and_spends_nothing(node: RunningNode, options: dict[str, object],
                                                   field: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _run(node, "bad", _query(**options))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(refused.value.details())
    assert node.stub.GetNodeInfo(pb.GetNodeInfoRequest()).budget.spent.epsilon == 0


def test_clip_counts_on_a_count_are_refused_and_spend_nothing(node: RunningNode) -> None:
    query = pb.Query(statistic=pb.STATISTIC_COUNT, table="participant",
                     loss=pb.PrivacyLoss(epsilon=EPSILON), clip_counts=True)
    with pytest.raises(grpc.RpcError) as refused:
        _run(node, "count", query)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "query.clip_counts" in str(refused.value.details())
    assert node.stub.GetNodeInfo(pb.GetNodeInfoRequest()).budget.spent.epsilon == 0


def test_a_retried_clip_count_query_replays_and_spends_nothing_more(node: RunningNode) -> None:
    first = _run(node, "same", _query(clip_counts=True))
    again = _run(node, "same", _query(clip_counts=True))
    assert again.replayed and list(again.release.cells) == list(first.release.cells)
    assert node.stub.GetNodeInfo(pb.GetNodeInfoRequest()).budget.spent.epsilon == \
        pytest.approx(EPSILON, rel=1e-9)
