"""The coordinator witnesses every member's audit head; a cut-back, rewritten or rolled-back
log is named by `bridgestat witness check` and by `bridgestat-node audit verify --witness`.

Real processes over mutual TLS: the hub (`bridgestat coordinator serve`), an inbound node and
a connect-mode node (whose answers the hub relays). The researcher's API writes the witness
file beside the network file by itself. The tests tamper with member-01's files as someone
with access to its disk would; the node reads its log's head from the file, so a changed
log is what it reports at once (a replaced ledger needs a restart: SQLite keeps the file
open).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridgestat.common import witness as witness_file
from bridgestat.coordinator.api import Network
from bridgestat.coordinator.cli import main as coordinator_cli
from bridgestat.coordinator.client.witness import default_path
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.demo.local import LocalMember
from bridgestat.node import cli as node_cli
from bridgestat.node.audit import canonical_line, entry_hash

INBOUND, OUTBOUND = "member-01", "member-02"


@dataclass
class Net:
    root: Path
    members: list[LocalMember]
    nodes: list[subprocess.Popen[bytes]]
    hub: subprocess.Popen[bytes]

    @property
    def network(self) -> Path:
        return self.root / "network.yaml"

    @property
    def witness(self) -> Path:
        return default_path(self.network)

    def member(self, name: str) -> LocalMember:
        return next(m for m in self.members if m.name == name)

    def log(self, name: str) -> Path:
        return self.root / name / "audit.jsonl"

    def ledger(self, name: str) -> Path:
        return self.root / name / "ledger.sqlite"

    def restart(self, name: str, between: Any = None) -> None:
        """Stop the member's node, run `between()`, start it again."""
        index = self.members.index(self.member(name))
        local.stop_nodes([self.nodes[index]])
        if between is not None:
            between()
        self.nodes[index] = local.start_nodes([self.member(name)], self.root)[0]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("witness")
    synth.write_network(root, members=2, seed=21, sizes=[150, 150])
    members = local.write_configs(root, total_epsilon=20.0, max_per_query=1.0,
                                  connect=[OUTBOUND])
    hub = local.start_hub(root, next(m.address for m in members if m.connect),
                          root / "hub.log")
    try:
        nodes = local.start_nodes(members, root)
    except BaseException:
        local.stop_nodes([hub])
        raise
    running = Net(root, members, nodes, hub)
    try:
        yield running
    finally:
        local.stop_nodes([*running.nodes, running.hub])


def _queries(net: Net, count: int, prefix: str) -> None:
    with Network.from_file(net.network) as api:
        for i in range(count):
            # epsilon 1 (count noise scale 5 on ~150 rows): every answer is estimable, so
            # each query adds exactly one `released` entry that the later tests count on
            frame = api.mean("assessment", "bridge_total", epsilon=1.0, key=f"{prefix}-{i}")
            assert (frame.status == "ok").all(), frame[["member", "status"]].to_dict("records")


def _last(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text().splitlines()[-1]))


def _check(capsys: pytest.CaptureFixture[str], net: Net,
           witness: Path | None = None) -> tuple[int, dict[str, str]]:
    """`bridgestat witness check` (which records the heads it sees in `witness` too):
    exit code and each member's line."""
    code = coordinator_cli.main(["witness", "check", "--network", str(net.network),
                                 "--witness", str(witness or net.witness)])
    lines = capsys.readouterr().out.splitlines()
    return code, {line.split(": ", 1)[0]: line for line in lines if line.startswith("member-")}


def _verify(capsys: pytest.CaptureFixture[str], net: Net, name: str,
            *extra: str) -> tuple[int, str]:
    """`bridgestat-node audit verify --config` of `name` with `extra` arguments."""
    code = node_cli.main(["audit", "verify", "--config", str(net.member(name).config), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _rewrite_from(path: Path, seq: int) -> None:
    """Edit entry `seq` (its caller) and re-hash the chain from there: internally intact."""
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    for entry in entries[seq - 1:]:
        if entry["seq"] == seq:
            entry["caller"] = "someone-else"
        entry["prev_hash"] = entries[entry["seq"] - 2]["hash"] if entry["seq"] > 1 else \
            entry["prev_hash"]
        entry["hash"] = entry_hash(entry)
    path.write_bytes(b"".join(canonical_line(entry) for entry in entries))


def test_every_answer_carries_the_head_and_the_api_witnesses_it(
        net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    _queries(net, 3, "first")
    seen = list(witness_file.read(net.witness))
    for name in (INBOUND, OUTBOUND):  # the connect-mode member's head is relayed by the hub
        mine = [w for w in seen if w.member == name]
        assert len(mine) == 3, seen
        last = _last(net.log(name))
        assert (mine[-1].seq, mine[-1].hash) == (last["seq"], last["hash"])
        assert [w.seq for w in mine] == sorted({w.seq for w in mine})  # each head once
    code, lines = _check(capsys, net)
    assert code == 0, lines
    assert "agrees with 3 witnessed heads" in lines[INBOUND]
    assert "agrees with 3 witnessed heads" in lines[OUTBOUND]
    code, out = _verify(capsys, net, INBOUND, "--witness", str(net.witness))
    assert code == 0, out
    assert "the 3 heads the coordinator witnessed are in the chain" in out


def _scratch(net: Net, folder: Path) -> Path:
    """A copy of the witness file, for a check whose own records must not stay."""
    return Path(shutil.copyfile(net.witness, folder / "witness.jsonl"))


def test_a_truncated_log_is_named_by_both_checks(net: Net, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    log = net.log(INBOUND)
    kept = log.read_bytes()
    witnessed = max(w.seq for w in witness_file.of_member(net.witness, INBOUND))
    try:
        log.write_bytes(b"".join(kept.splitlines(keepends=True)[:-2]))  # last 2 entries cut
        code, lines = _check(capsys, net, _scratch(net, tmp_path))
        assert code == 1
        assert f"CUT BACK: head seq {witnessed - 2} is below seq {witnessed}" in lines[INBOUND]
        assert "agrees" in lines[OUTBOUND]
        code, out = _verify(capsys, net, INBOUND, "--no-ledger", "--witness", str(net.witness))
        assert code == 1
        assert f"the chain ends at seq {witnessed - 2}, but the coordinator witnessed seq " \
            f"{witnessed}" in out
    finally:
        log.write_bytes(kept)


def test_a_rewritten_tail_is_named_by_both_checks(net: Net, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    log = net.log(INBOUND)
    kept = log.read_bytes()
    head = _last(log)
    scratch = _scratch(net, tmp_path)
    try:
        _rewrite_from(log, head["seq"] - 1)  # the last two entries, chain re-hashed
        code, _ = _verify(capsys, net, INBOUND, "--no-ledger")
        assert code == 0  # the chain alone cannot tell
        code, lines = _check(capsys, net, scratch)
        assert code == 1
        assert f"REWRITTEN: head seq {head['seq']} has hash" in lines[INBOUND]
        assert head["hash"] in lines[INBOUND]
        code, out = _verify(capsys, net, INBOUND, "--no-ledger", "--witness", str(net.witness))
        assert code == 1
        assert f"seq {head['seq'] - 1} has hash" in out and "witnessed" in out
    finally:
        log.write_bytes(kept)
    # The check witnessed the rewritten head: put back or not, the witness keeps the record.
    code, lines = _check(capsys, net, scratch)
    assert code == 1
    assert f"two hashes witnessed at seq {head['seq']}" in lines[INBOUND]


def test_a_rewrite_covered_by_later_entries_is_named_by_the_node(
        net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    """Rewrite a witnessed entry, then let the node answer on: its new heads extend the
    rewritten chain, so only the whole witness against the whole chain shows it."""
    log = net.log(INBOUND)
    kept_seq = _last(log)["seq"]
    _rewrite_from(log, kept_seq)
    _queries(net, 1, "after-rewrite")
    code, out = _verify(capsys, net, INBOUND, "--no-ledger", "--witness", str(net.witness))
    assert code == 1
    assert f"line {kept_seq}: seq {kept_seq} has hash" in out


def test_rolled_back_ledger_and_log_are_named(net: Net, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An old ledger under the newer log fails the ledger check; an old log with its old
    ledger is a consistent pair that only the witness shows to be old."""
    config = net.member(OUTBOUND).config
    old = tmp_path / "old"
    assert node_cli.main(["backup", "--config", str(config), "--out", str(old)]) == 0
    _queries(net, 2, "after-backup")
    capsys.readouterr()

    def old_ledger_only() -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{net.ledger(OUTBOUND)}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(old / "ledger.sqlite", net.ledger(OUTBOUND))

    net.restart(OUTBOUND, old_ledger_only)
    code, out = _verify(capsys, net, OUTBOUND)
    assert code == 1
    assert "the ledger of dataset 'member-02-synthetic' has no charge for it: the ledger was " \
        "replaced or rolled back" in out

    def old_pair() -> None:
        shutil.copyfile(old / "audit.jsonl", net.log(OUTBOUND))

    net.restart(OUTBOUND, old_pair)
    code, out = _verify(capsys, net, OUTBOUND)
    assert code == 0, out  # consistent with each other ...
    code, out = _verify(capsys, net, OUTBOUND, "--witness", str(net.witness))
    assert code == 1  # ... but older than what the coordinator saw
    assert "but the coordinator witnessed seq" in out
    code, lines = _check(capsys, net)
    assert code == 1
    assert "CUT BACK" in lines[OUTBOUND]
