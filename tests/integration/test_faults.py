"""Faults, with real processes on loopback: nothing charged twice, nothing lost.

- A node killed with SIGKILL in the middle of a query (between its ledger's reserve and
  commit): the coordinator names it UNAVAILABLE and pools the rest; after a restart (same
  config, same ledger file) the retried query (same key) is answered and charged once.
- A peer that sleeps past the deadline, and peers that answer garbage (fake NodeService
  servers in their own processes, `faults_support.py`): the member's row names the problem,
  the coordinator never crashes, and NETWORK pools the rest.
- 100 concurrent queries against one node whose cap allows k of them: exactly k admitted.
- A spend loop on a ledger file killed with SIGKILL at random points, restarted 15 times,
  the ledger's invariants checked after every restart.

Why the ledger's durability settings are right (see `node/ledger.py`): the ledger runs in WAL
mode. A charge is *reserved* in a `BEGIN IMMEDIATE` transaction with synchronous=NORMAL: in
WAL mode NORMAL never corrupts the database, it only may lose the last transactions in a power
cut. Losing a reservation is safe, because nothing is released before the *commit*, and the
commit runs with synchronous=FULL, which fsyncs the WAL (the reservation's frames and the
commit's) before it returns. So a release leaves the node only after its charge is on disk:
one fsync per query, and no release is ever outside the budget. A process killed between
reserve and commit leaves the reservation in place (the charge stands); the retry with the
same key takes it over and is charged once.

What the kill test can and cannot show: SIGKILL stops the process at an arbitrary instruction,
including inside SQLite's transactions, so it checks atomicity and the takeover protocol at
random points. It cannot drop the OS page cache, so the fsync half of a real power cut rests
on SQLite's documented guarantee for synchronous=FULL, not on this test.
"""

from __future__ import annotations

import math
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from bridgestat.coordinator.api import NETWORK, Network
from bridgestat.coordinator.client.network_file import Member
from bridgestat.coordinator.client.query import Occasion, Query, Term
from bridgestat.coordinator.client.wire import query_to_pb
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.statistics.tables import (
    QueryResult,
    cross_products,
    mean_table,
    regression_fits,
    term_names,
)
from bridgestat.node.ledger import Ledger, Reserved
from bridgestat.node.loss import Epsilon, Loss
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc
from tests.integration import faults_support
from tests.integration.faults_support import GARBAGE, charge_state, read_ledger

SUPPORT = Path(faults_support.__file__)
DELTA = 1e-6  # the nodes' default budget delta
MONTH_12 = Occasion.month(12, 3)
STEPS = ("housing_step", "family_care_step", "health_step", "social_network_step",
         "debt_step", "savings_step", "education_step", "employment_step")


def dataset(member: local.LocalMember) -> str:
    return f"{member.name}-synthetic"  # what local.write_configs names it


def ledger_path(member: local.LocalMember) -> Path:
    return member.config.parent / "ledger.sqlite"


def check_ledger(member: local.LocalMember, key: str | None = None) -> tuple[Loss, list[Any]]:
    """The ledger's invariants (spent == sum of charges, committed charges have releases);
    with `key`, also that it holds exactly one charge for it. Returns (spent, charges)."""
    spent_text, rows = read_ledger(ledger_path(member), dataset(member))
    spent = Loss.decode(spent_text)
    assert spent == sum((Loss.decode(r.loss) for r in rows), Loss()), (member.name, rows)
    assert all(r.has_release for r in rows if r.state == "committed"), rows
    assert len({r.key for r in rows}) == len(rows)
    if key is not None:
        assert [r.key for r in rows].count(key) == 1, (member.name, key, rows)
    return spent, rows


@dataclass
class Running:
    root: Path
    members: list[local.LocalMember]
    processes: dict[str, subprocess.Popen[bytes]]

    def member(self, name: str) -> local.LocalMember:
        return next(m for m in self.members if m.name == name)


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[Running]:
    """Three node processes over mTLS; member-03 is big, so a regression query on it takes
    tens of milliseconds between the ledger's reserve and commit."""
    synth.write_network(tmp_path, members=3, seed=5, sizes=(300, 300, 20000))
    members = local.write_configs(tmp_path, total_epsilon=100.0, max_per_query=3.0)
    running = Running(tmp_path, members, {})
    try:
        for member, process in zip(members, local.start_nodes(members, tmp_path), strict=True):
            running.processes[member.name] = process
        yield running
    finally:
        local.stop_nodes(list(running.processes.values()))


def _regression(attempt: int) -> Query:
    terms = tuple(Term(c, occasion=MONTH_12) for c in STEPS)
    return Query("cross_products", "assessment", "", 0.0, occasion=MONTH_12,
                 rho=0.05 + attempt / 1000, terms=terms)


def _kill_between_reserve_and_commit(net: Network, query: Query, key: str,
                                     victim: local.LocalMember,
                                     process: subprocess.Popen[bytes]
                                     ) -> tuple[QueryResult | Exception, str | None]:
    """Run `query` in a thread and SIGKILL the victim as soon as its ledger shows the key
    reserved. Returns the run's result and the state the key was seen in (None: never)."""
    box: dict[str, QueryResult | Exception] = {}

    def run() -> None:
        try:
            box["result"] = net.run(query, key)
        except Exception as exc:  # noqa: BLE001  # reported to the test thread
            box["result"] = exc

    db = sqlite3.connect(f"file:{ledger_path(victim)}?mode=ro", uri=True, timeout=30)
    thread = threading.Thread(target=run)
    thread.start()
    seen = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and seen is None:
            state = charge_state(db, dataset(victim), key)
            if state == "reserved":
                process.send_signal(signal.SIGKILL)
                seen = state
            elif state == "committed" or not thread.is_alive():
                seen = state or "answered"
    finally:
        db.close()
        thread.join(timeout=60)
    return box["result"], seen


def test_node_killed_mid_query_is_reported_and_the_retry_is_charged_once(
        three_nodes: Running) -> None:
    victim = three_nodes.member("member-03")
    others = [m for m in three_nodes.members if m is not victim]
    with Network.from_file(three_nodes.root / "network.yaml", timeout=30) as net:
        for attempt in range(8):  # usually the first; a miss is a query answered too fast
            key, query = f"kill-{attempt}", _regression(attempt)
            result, seen = _kill_between_reserve_and_commit(
                net, query, key, victim, three_nodes.processes[victim.name])
            if seen != "reserved":
                continue
            three_nodes.processes[victim.name].wait(timeout=30)
            after_kill, rows = check_ledger(victim, key)
            if next(r for r in rows if r.key == key).state == "reserved":
                break  # killed between reserve and commit
            restart = three_nodes.root / f"restart-{attempt}"  # killed after the commit
            restart.mkdir()
            three_nodes.processes[victim.name] = local.start_nodes([victim], restart)[0]
        else:
            pytest.fail("never caught the victim between reserve and commit")

        assert isinstance(result, QueryResult), result
        assert set(result.failures) == {victim.name}
        assert result.failures[victim.name].code == "UNAVAILABLE", result.failures
        assert set(result.releases) == {m.name for m in others}
        fits = regression_fits(result, replicates=50)
        assert isinstance(fits[victim.name], str) and fits[victim.name].startswith("UNAVAILABLE")
        names = term_names(query.terms)
        pooled_n = sum(cross_products(r, r.cells[0], names).entries[(0, 0)].value
                       for r in result.releases.values())
        assert not isinstance(fits[NETWORK], str), fits[NETWORK]
        assert fits[NETWORK].n == pytest.approx(pooled_n, rel=1e-12)
        others_spent = {m.name: check_ledger(m, key)[0] for m in others}

        # restart the node: same config, same ledger file, and retry with the same key
        restart = three_nodes.root / "restart"
        restart.mkdir()
        three_nodes.processes[victim.name] = local.start_nodes([victim], restart)[0]
        retried = net.run(query, key)

    assert retried.failures == {}, retried.failures
    answer = retried.releases[victim.name]
    assert not answer.replayed  # computed now, by taking over the reservation
    spent, rows = check_ledger(victim, key)
    assert spent == after_kill  # the reservation's charge stands, and is not charged again
    charge = next(r for r in rows if r.key == key)
    assert charge.state == "committed"
    assert answer.charged == pytest.approx(float(Loss.decode(charge.loss).epsilon_at(DELTA)))
    for member in others:
        assert retried.releases[member.name].replayed
        assert check_ledger(member, key)[0] == others_spent[member.name]


# -- slow and garbage peers -----------------------------------------------------------------

@dataclass
class Mixed:
    real: list[local.LocalMember]
    slow: Member
    garbage: Member
    tls: Any


def _fake(kind: str, member: local.LocalMember, log: Path) -> tuple[Member, subprocess.Popen[str]]:
    """A fake peer in its own process, with the member's certificate, at a free port."""
    tls = yaml.safe_load(member.config.read_text())["tls"]
    port = local.free_port()
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(SUPPORT), "fake-peer", "--mode", kind, "--port", str(port),
             "--cert", str(member.config.parent / tls["cert"]),
             "--key", str(member.config.parent / tls["key"]), "--node-id", member.name],
            stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "READY":
        process.kill()
        process.communicate()
        raise RuntimeError(f"fake peer did not start: {log.read_text()}")
    return Member(member.name, f"127.0.0.1:{port}"), process


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    """Two real nodes, a peer that sleeps and a peer that answers garbage (mTLS for all)."""
    root = tmp_path_factory.mktemp("mixed")
    synth.write_network(root, members=4, seed=9, sizes=(300, 300, 300, 300))
    members = local.write_configs(root, total_epsilon=50.0, max_per_query=2.0)
    real = members[:2]
    processes = local.start_nodes(real, root)
    fakes: list[subprocess.Popen[str]] = []
    try:
        slow, process = _fake("slow", members[2], root / "slow.log")
        fakes.append(process)
        garbage, process = _fake("garbage", members[3], root / "garbage.log")
        fakes.append(process)
        yield Mixed(real, slow, garbage, real[0].client_tls)
    finally:
        for fake in fakes:
            fake.kill()
            fake.communicate()
        local.stop_nodes(processes)


def _members(mixed: Mixed, fake: Member) -> list[Member]:
    return [*(Member(m.name, m.address) for m in mixed.real), fake]


def _network_pools_the_real_members(frame: Any, mixed: Mixed) -> None:
    real = frame[frame.member.isin([m.name for m in mixed.real])]
    assert list(real.status) == ["ok", "ok"], real.to_dict("records")
    network = frame[frame.member == NETWORK].iloc[0]
    assert network.status == "ok", network.to_dict()
    assert network.n == pytest.approx(real.n.sum(), rel=1e-12)


def test_slow_peer_past_its_deadline_is_named_and_the_rest_pool(mixed: Mixed) -> None:
    timeout = 1.5
    query = Query("mean", "assessment", "bridge_total", 0.5, clip=(0.0, 100.0))
    with Network(_members(mixed, mixed.slow), timeout, tls=mixed.tls) as net:
        for _ in range(2):  # the retry (same key) replays on the real nodes, spends nothing
            start = time.monotonic()
            result = net.run(query, "slow-peer")
            elapsed = time.monotonic() - start
            assert elapsed < timeout + 3.0, elapsed  # the peer sleeps 120 s
            assert set(result.failures) == {mixed.slow.name}
            assert result.failures[mixed.slow.name].code == "DEADLINE_EXCEEDED"
            frame = mean_table(result)
            row = frame[frame.member == mixed.slow.name].iloc[0]
            assert row.status.startswith("DEADLINE_EXCEEDED"), row.status
            assert math.isnan(row.estimate) or row.estimate is None
            _network_pools_the_real_members(frame, mixed)
    for member in mixed.real:
        check_ledger(member, "slow-peer")


# Each garbage answer used to break the whole query (PoolingError, KeyError or StopIteration
# escaping Network.run or the tables); the coordinator now checks every release's shape and
# names the member INVALID_RESPONSE.
@pytest.mark.parametrize("kind", GARBAGE)
def test_peer_answering_garbage_is_named_and_the_rest_pool(mixed: Mixed, kind: str) -> None:
    key = f"{kind}:1"
    query = Query("mean", "assessment", "bridge_total", 0.5, clip=(0.0, 100.0))
    with Network(_members(mixed, mixed.garbage), 10.0, tls=mixed.tls) as net:
        frame = mean_table(net.run(query, key))
    row = frame[frame.member == mixed.garbage.name].iloc[0]
    assert row.status != "ok" and row.status, row.to_dict()
    assert row.estimate is None or math.isnan(row.estimate)
    _network_pools_the_real_members(frame, mixed)
    for member in mixed.real:
        check_ledger(member, key)


# -- 100 concurrent queries against one node --------------------------------------------------

def test_hundred_concurrent_queries_admit_exactly_what_the_cap_allows(tmp_path: Path) -> None:
    synth.write_network(tmp_path, members=1, seed=13, sizes=(300,))
    member = local.write_configs(tmp_path, total_epsilon=3.0, max_per_query=1.0)[0]
    [process] = local.start_nodes([member], tmp_path)
    query = query_to_pb(Query("count", "participant", "", 0.25))
    assert member.client_tls is not None
    try:
        with grpc.secure_channel(member.address, member.client_tls.channel_credentials(),
                                 options=[("grpc.ssl_target_name_override", member.name)]
                                 ) as channel:
            stub = pb_grpc.NodeServiceStub(channel)
            calls = [stub.RunQuery.future(pb.RunQueryRequest(idempotency_key=f"q{i:03d}",
                                                             query=query), timeout=60)
                     for i in range(100)]
            ok, refused = [], []
            for call in calls:
                try:
                    ok.append(call.result())
                except grpc.RpcError as exc:
                    refused.append(exc)
            info = stub.GetNodeInfo(pb.GetNodeInfoRequest(), timeout=10)
    finally:
        local.stop_nodes([process])
    assert {exc.code() for exc in refused} <= {grpc.StatusCode.RESOURCE_EXHAUSTED}, \
        {exc.code() for exc in refused}
    ledger = Ledger(ledger_path(member), dataset(member), Epsilon.of(3.0))
    charges = ledger.charges()
    per_query = {loss for _, loss, _ in charges}
    assert len(per_query) == 1, per_query  # every admitted query is charged the same
    [charge] = per_query
    allowed = math.floor(Fraction(3) / charge.epsilon_at(DELTA).value)
    assert len(ok) == allowed and len(refused) == 100 - allowed, (len(ok), allowed)
    assert {r.idempotency_key for r in ok} == {key for key, _, _ in charges}
    assert all(state == "committed" for _, _, state in charges)
    spent = ledger.state().spent
    assert spent.value == allowed * charge.epsilon_at(DELTA).value
    assert spent == Epsilon.of(3.0)  # 0.25 is exact in binary: the cap is used to the last bit
    assert math.fsum(r.charged.epsilon for r in ok) == float(spent.value)
    assert info.budget.spent.epsilon == float(spent.value)
    assert info.budget.remaining.epsilon == 0.0


# -- a restart while the old process still runs ---------------------------------------------

def test_second_node_on_an_address_in_use_refuses_to_start(tmp_path: Path) -> None:
    synth.write_network(tmp_path, members=1, seed=17, sizes=(100,))
    member = local.write_configs(tmp_path, total_epsilon=5.0, max_per_query=1.0)[0]
    [first] = local.start_nodes([member], tmp_path)
    with (tmp_path / "second.log").open("wb") as log:
        second = subprocess.Popen([*local.node_command(), "serve", "--config",
                                   str(member.config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        second.wait(timeout=8)  # it should stop at start-up: the address is in use
    except subprocess.TimeoutExpired:
        pass
    finally:
        local.stop_nodes([first, second])
    assert second.returncode not in (None, 0, -signal.SIGTERM), \
        (tmp_path / "second.log").read_text()[-2000:]


# -- power-cut style kills of a spend loop ------------------------------------------------------

def test_ledger_survives_kills_at_random_points_of_a_spend_loop(tmp_path: Path) -> None:
    path, name, total = tmp_path / "ledger.sqlite", "ds", 1000.0  # never exhausted
    rng = random.Random(20260511)
    taken_over = 0
    for run in range(15):
        child = subprocess.Popen(
            [sys.executable, str(SUPPORT), "spend", "--ledger", str(path), "--dataset", name,
             "--total", str(total), "--run", str(run), "--seed", str(rng.randrange(2**32))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None
        lines: list[str] = []
        if run % 3 == 0:  # anywhere, start-up and the ledger's creation included
            time.sleep(rng.uniform(0.0, 0.6))
        elif run % 3 == 1:  # inside the loop, however slow the start-up was
            lines.append(child.stdout.readline())
            time.sleep(rng.uniform(0.0, 0.4))
        else:  # right after the n-th reservation: aimed at the reserve-commit window
            reservations = rng.randint(1, 30)
            while reservations:
                lines.append(child.stdout.readline())
                assert lines[-1], child.communicate()[1]  # the child died by itself
                reservations -= lines[-1].startswith("RESERVED")
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err
        lines += out.splitlines()
        reported = [line.split()[1] for line in lines if line.startswith("COMMITTED")]

        if not path.exists():
            continue  # killed before the ledger was created
        db = sqlite3.connect(path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
        ledger = Ledger(path, name, Epsilon.of(total))  # the restart
        # WAL is set by every ledger connection (a kill between creating the file and that
        # pragma leaves the default journal, harmless: nothing was written yet)
        with closing(sqlite3.connect(path)) as check:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        history = ledger.history()
        state = ledger.state()
        assert state.spent_loss == sum((c.loss for c in history), Loss())
        assert state.spent <= Epsilon.of(total)
        stored = dict(ledger_releases(path))
        committed = {c.key for c in history if c.state == "committed"}
        assert all(stored[key] == f"release-of-{key}" for key in committed)
        assert set(reported) <= committed  # nothing reported committed is lost
        reserved = [c for c in history if c.state == "reserved"]
        assert len(reserved) <= 1, reserved  # one per killed process, ours taken over below
        assert all(c.key.startswith(f"run{run}-") for c in reserved)
        for charge in reserved:  # the retry of the key takes the reservation over
            retry = ledger.reserve(charge.key, faults_support.fingerprint(charge.key),
                                   Loss.of(*faults_support.loss_of(charge.key)))
            assert retry == Reserved(charge.key, taken_over=True, loss=charge.loss,
                                     charged_at=charge.created_at)
            ledger.commit(charge.key, f"release-of-{charge.key}")
            taken_over += 1
        assert ledger.state().spent_loss == state.spent_loss  # charged once
        assert all(c.state == "committed" for c in ledger.history())
        del ledger
    assert taken_over >= 1  # kills fell between a reserve and its commit (aimed ones do)
    assert len(Ledger(path, name, Epsilon.of(total)).history()) > 15


def ledger_releases(path: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT query_key, release FROM charge WHERE state = 'committed'"
                          ).fetchall()
    finally:
        db.close()
