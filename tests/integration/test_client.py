"""The network client where researchers run it: inside a running event loop (as in Jupyter),
from several worker threads at once, and natively with `await` (AsyncNetwork).

Real node processes over mutual TLS. DP noise cannot be seeded, so an estimate is checked
against the synthetic truth with the tolerance of `test_end_to_end` (K DP standard errors at a
per-check false-alarm rate of 2.5e-6); the ledgers are read from the nodes' SQLite files.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pandas as pd
import pytest

from bridgestat.coordinator.api import NETWORK, AsyncNetwork, Network
from bridgestat.coordinator.client.network_client import ClientClosed
from bridgestat.coordinator.client.query import Query
from tests.integration.conftest import LocalNetwork, local_network

ALPHA = 2.5e-6
K = math.log(1 / ALPHA) / math.sqrt(2)  # about 9.1 DP standard errors
SIZES = (300, 400, 500)  # every member large enough that a noisy count at epsilon 1 is >> 1


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with local_network(tmp_path_factory.mktemp("client"), members=3, seed=5,
                       total_epsilon=30.0, max_per_query=2.0, sizes=SIZES) as running:
        yield running


def _charges(network: LocalNetwork) -> dict[str, list[tuple[str, str]]]:
    """Every member's ledger rows (key, state), read-only beside the live node."""
    found = {}
    for member in network.members:
        path = member.config.parent / "ledger.sqlite"
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            found[member.name] = db.execute("SELECT query_key, state FROM charge "
                                            "ORDER BY rowid").fetchall()
    return found


def _intake_mean_recovers_truth(frame: pd.DataFrame, network: LocalNetwork) -> None:
    """Every member and the NETWORK row answered, each within K DP SEs of its truth."""
    truths = {m["name"]: m["sample"]["intake_bridge_mean"] for m in network.truth["members"]}
    truths[NETWORK] = network.truth["network"]["sample"]["intake_bridge_mean"]
    assert list(frame.member) == [*truths]
    for member, truth in truths.items():
        row = frame[frame.member == member].iloc[0]
        assert row["status"] == "ok", (member, row["status"])
        assert abs(row["estimate"] - truth) <= K * row["se_dp"], (member, row.to_dict(), truth)


async def test_sync_client_inside_a_running_event_loop(network: LocalNetwork) -> None:
    """What a Jupyter cell does: blocking calls while the kernel's loop runs."""
    asyncio.get_running_loop()  # this test body runs inside pytest-asyncio's loop
    with Network.from_file(network.network) as net:
        info = net.info()
        frame = net.mean("assessment", "bridge_total", epsilon=1.0, key="in-loop")
    assert info["reachable"].all() and list(info.member) == [m.name for m in network.members]
    _intake_mean_recovers_truth(frame, network)
    assert all(("in-loop", "committed") in rows for rows in _charges(network).values())


def test_four_threads_share_one_client_and_each_key_is_charged_once(
        network: LocalNetwork) -> None:
    """Four threads query at once through one client, each twice with its own key: every
    thread gets its own query's result, and every node charged each key exactly once."""
    columns = ("bridge_total", "income_to_norm_ratio", "housing_cost_ratio", "bridge_total")
    queries = {f"thread-{i}": Query("mean", "assessment", column, 0.5 + 0.1 * i, ())
               for i, column in enumerate(columns)}
    start = threading.Barrier(len(queries))

    def ask(key: str) -> tuple[str, str]:
        start.wait()
        first, retry = net.run(queries[key], key), net.run(queries[key], key)
        assert first.query == retry.query == queries[key] and first.key == retry.key == key
        assert not first.failures and set(first.releases) == set(first.members)
        for member, release in first.releases.items():
            assert release.charged == pytest.approx(queries[key].epsilon) and not release.replayed
            assert retry.releases[member].replayed  # the node's stored release, spent nothing
            assert retry.releases[member].cells == release.cells
        return key, threading.current_thread().name

    with Network.from_file(network.network) as net, ThreadPoolExecutor(4) as pool:
        answered = list(pool.map(ask, queries))
    assert [key for key, _ in answered] == list(queries)
    assert len({thread for _, thread in answered}) == 4  # really four threads at once
    for member, rows in _charges(network).items():
        for key in queries:
            assert rows.count((key, "committed")) == 1, (member, key, rows)


async def test_async_client_gathers_queries_concurrently(network: LocalNetwork) -> None:
    keys = [f"gather-{i}" for i in range(3)]
    async with AsyncNetwork.from_file(network.network) as net:
        info = await net.info()
        results = await asyncio.gather(*(
            net.run(Query("mean", "assessment", "bridge_total", 1.0, ()), key) for key in keys))
    assert info["reachable"].all()
    assert [r.key for r in results] == keys
    for result in results:
        assert not result.failures and set(result.releases) == set(result.members)
    assert not any(r.releases[m].replayed for r in results for m in r.members)
    cells = {repr(r.releases[m].cells) for r in results for m in r.members}
    assert len(cells) == len(keys) * len(SIZES)  # independent noisy releases, none replayed
    for rows in _charges(network).values():
        assert all(rows.count((key, "committed")) == 1 for key in keys)


def test_a_closed_client_says_so_and_closing_twice_is_harmless(network: LocalNetwork) -> None:
    net = Network.from_file(network.network)
    assert net.info()["reachable"].all()
    thread = net._thread.thread
    net.close()
    net.close()
    assert net.closed and not thread.is_alive()
    with pytest.raises(ClientClosed, match="closed; open a new one"):
        net.info()


def test_an_async_client_stays_on_the_loop_of_its_first_call(network: LocalNetwork) -> None:
    """Its grpc.aio channels belong to that loop: another loop gets a clear error."""
    net = AsyncNetwork.from_file(network.network)
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(net.info())["reachable"].all()
        with pytest.raises(RuntimeError, match="another event loop.*one client per loop"):
            second.run_until_complete(net.info())
        first.run_until_complete(net.aclose())
    finally:
        first.close()
        second.close()
