"""The audit log records every charged loss, whatever happens between the ledger's commit and
the answer (issue 16): real `bridgestat-node serve` processes, plain text on loopback, real
ledger and audit files, the real `bridgestat-node budget` and `audit verify|show`.

- A failed audit write (the log replaced by a directory): the query is refused, the ledger
  holds the charge; the retry, once the log is back, is logged as the release with the
  ledger's charge, and later retries as replays.
- Concurrent retries of such a key in one process: one of them writes the released entry.
- A node killed deterministically (the engine's test hook BRIDGESTAT_NODE_TEST_KILL_AT makes
  it SIGKILL itself) after the ledger's reserve, after its commit, and after the audit append
  but before the ledger's mark; then restarted and retried.

After each: exactly one released entry for the key, with the loss the ledger holds;
`audit verify` exits 0; `audit show`'s total equals `budget`'s; a released entry removed by
hand (and the chain re-hashed) is named by `audit verify`.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bridgestat.coordinator.demo import local, synth
from bridgestat.node import audit
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.engine import KILL_AT
from bridgestat.node.errors import AuditError, QueryInProgress
from bridgestat.node.loss import Loss
from bridgestat.node.query import QuerySpec, Statistic
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc
from tests.integration.faults_support import LedgerRow, read_ledger

DATASET = "member-01-synthetic"  # what local.write_configs names it


@dataclass
class Node:
    """One member's files and (when running) its node process."""

    member: local.LocalMember
    root: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def folder(self) -> Path:
        return self.member.config.parent

    @property
    def log(self) -> Path:
        return self.folder / "audit.jsonl"

    def start(self) -> None:
        self.starts += 1
        logs = self.root / f"start-{self.starts}"
        logs.mkdir()
        self.process = local.start_nodes([self.member], logs)[0]

    def stop(self) -> None:
        if self.process is not None:
            local.stop_nodes([self.process])
            self.process = None

    def mean(self, key: str) -> pb.RunQueryResponse:
        request = pb.RunQueryRequest(idempotency_key=key, query=pb.Query(
            statistic=pb.STATISTIC_MEAN, table="assessment", column="bridge_total",
            loss=pb.PrivacyLoss(epsilon=0.5)))
        with grpc.insecure_channel(self.member.address) as channel:
            reply: pb.RunQueryResponse = pb_grpc.NodeServiceStub(channel).RunQuery(
                request, timeout=60)
            return reply

    def charge(self, key: str) -> LedgerRow:
        _, rows = read_ledger(self.folder / "ledger.sqlite", DATASET)
        return next(row for row in rows if row.key == key)

    def entries(self, key: str) -> list[tuple[str, str]]:
        """(outcome, exact loss charged) of the key's entries, in order."""
        return [(e["outcome"], e["charged"]["exact"]) for e in audit.entries(self.log)
                if e["key"] == key]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*local.node_command(), *args, "--config",
                               str(self.member.config)],
                              capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A member with total_epsilon 5 and at most 0.5 per query, plain text."""
    synth.write_network(tmp_path, members=1, seed=11, sizes=[200])
    member = local.write_configs(tmp_path, total_epsilon=5.0, max_per_query=0.5, tls=False)[0]
    running = Node(member, tmp_path)
    try:
        yield running
    finally:
        running.stop()


def _reconciled(node: Node) -> None:
    """`audit verify` passes, and `audit show`'s total is `budget`'s."""
    verified = node.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "is logged once as released with its loss" in verified.stdout
    budget, shown = node.cli("budget"), node.cli("audit", "show", "--period", "year")
    assert budget.returncode == 0 and shown.returncode == 0, budget.stderr + shown.stderr
    spent = re.search(r"spent epsilon (\S+) of", budget.stdout)
    total = re.search(r"queries released, .*: spent epsilon (\S+) \(delta", shown.stdout)
    assert spent is not None and total is not None, budget.stdout + shown.stdout
    assert spent.group(1) == total.group(1), budget.stdout + shown.stdout


def _remove_released(node: Node, key: str) -> None:
    """Delete the key's released entry by hand and re-hash the chain after it."""
    head, kept = audit.GENESIS, []
    for entry in audit.entries(node.log):
        if entry["key"] == key and entry["outcome"] == "released":
            continue
        entry.update(seq=len(kept) + 1, prev_hash=head)
        entry["hash"] = head = audit.entry_hash(entry)
        kept.append(json.dumps(entry, separators=(",", ":")) + "\n")
    node.log.write_text("".join(kept))


def _removal_is_caught(node: Node, key: str) -> None:
    _remove_released(node, key)
    assert node.cli("audit", "verify", "--no-ledger").returncode == 0  # the chain holds
    caught = node.cli("audit", "verify")
    assert caught.returncode == 1
    assert f"ledger charge {key!r} of dataset {DATASET!r}" in caught.stdout, caught.stdout
    assert "entries were removed" in caught.stdout


def test_a_failed_audit_write_is_logged_as_the_release_on_the_retry(node: Node) -> None:
    """The issue's reproduction."""
    node.start()
    node.mean("k0")
    keep = node.folder / "audit.keep"
    node.log.rename(keep)
    node.log.mkdir()  # the next audit write fails
    with pytest.raises(grpc.RpcError) as refused:
        node.mean("k1")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot open audit log" in str(refused.value.details())
    assert "Is a directory" in str(refused.value.details())
    assert node.charge("k1").state == "committed"  # the ledger holds the charge
    node.log.rmdir()
    keep.rename(node.log)
    loss = node.charge("k1").loss
    assert node.mean("k1").replayed  # the stored release: nothing charged again
    assert node.mean("k1").replayed
    assert node.entries("k1") == [("released", loss), ("replayed", "0;0")]
    budget = node.cli("budget")
    assert "spent epsilon 1 of 5" in budget.stdout and "2 queries charged" in budget.stdout
    shown = node.cli("audit", "show", "--period", "year")
    assert "2 queries released, epsilon 1: spent epsilon 1 (delta" in shown.stdout, shown.stdout
    _reconciled(node)
    node.stop()
    _removal_is_caught(node, "k1")


KILLS = [
    # point, the key's ledger state after the kill, its entries then, the retry replays
    ("after-reserve", "reserved", [], False),
    ("after-commit", "committed", [], True),
    ("after-audit-append", "committed", ["released"], True),
]


@pytest.mark.parametrize(("point", "state", "logged", "replayed"), KILLS,
                         ids=[k[0] for k in KILLS])
def test_a_node_killed_between_the_steps_logs_the_charge_once_after_a_restart(
        node: Node, monkeypatch: pytest.MonkeyPatch, point: str, state: str,
        logged: list[str], replayed: bool) -> None:
    node.start()
    node.mean("k0")
    node.stop()
    monkeypatch.setenv(KILL_AT, point)
    node.start()
    with pytest.raises(grpc.RpcError) as killed:
        node.mean("k1")
    assert killed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert node.process is not None and node.process.wait(timeout=30) == -signal.SIGKILL
    node.process = None
    assert node.charge("k1").state == state
    assert [outcome for outcome, _ in node.entries("k1")] == logged
    monkeypatch.delenv(KILL_AT)

    before = node.cli("audit", "verify")  # at rest, before the retry
    if point == "after-commit":  # charged and stored, its entry not written, nothing left
        assert before.returncode == 1 and "the node wrote none yet" in before.stdout
    else:  # a reservation (nothing released), or the entry written before the mark
        assert before.returncode == 0, before.stdout
    if point == "after-reserve":  # listed apart: charged, nothing released, not logged
        assert "holds 1 reservations of interrupted queries (epsilon 0.5" in before.stdout
        budget = node.cli("budget").stdout
        assert "spent epsilon 1 of 5" in budget and "of these, 1 interrupted" in budget, budget

    node.start()
    assert node.mean("k1").replayed is replayed
    assert node.mean("k1").replayed
    loss = node.charge("k1").loss
    assert Loss.decode(loss) == Loss.of(0.5)
    answers = [("released", loss), ("replayed", "0;0")]  # the two retries
    if logged:  # the entry written before the kill: both retries are replays
        answers = [("released", loss), ("replayed", "0;0"), ("replayed", "0;0")]
    assert node.entries("k1") == answers
    _reconciled(node)
    node.stop()
    _removal_is_caught(node, "k1")


def test_concurrent_retries_of_an_unlogged_charge_write_one_released_entry(
        node: Node) -> None:
    """The engine in this process (real ledger and log files): eight threads retry a key
    whose audit write failed; one of them writes its released entry."""
    engine = open_engine(load_config(node.member.config))
    query = QuerySpec(Statistic.MEAN, "assessment", "bridge_total", 0.5)
    keep = node.folder / "audit.keep"
    node.log.rename(keep)
    node.log.mkdir()
    with pytest.raises(AuditError, match="Is a directory"):
        engine.run("k1", query)
    node.log.rmdir()
    keep.rename(node.log)
    outcomes: list[str] = []

    def retry() -> None:
        try:
            outcomes.append("answered" if engine.run("k1", query).replayed else "computed")
        except QueryInProgress:
            outcomes.append("in progress")

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "computed" not in outcomes and "answered" in outcomes, outcomes
    logged = [outcome for outcome, _ in node.entries("k1")]
    assert logged.count("released") == 1, logged
    assert logged.count("replayed") == outcomes.count("answered") - 1
    assert logged.count("refused") == outcomes.count("in progress")
    _reconciled(node)
