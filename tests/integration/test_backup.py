"""`bridgestat-node backup` while the node serves queries, and `restore`, which refuses a
backup older than the node or the coordinator's witness (an old ledger would hand spent
budget back).

A real node process over mutual TLS answers queries from a thread of the researcher's API
(which keeps a witness file) while backups are taken; the copies are restored into a fresh
folder, verified against their own ledger, and compared with their manifests.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from bridgestat.common import witness as witness_file
from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.network_file import Member
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.demo.local import LocalMember
from bridgestat.node import backup
from bridgestat.node import cli as node_cli
from bridgestat.node.audit import AuditLog, Record
from bridgestat.node.config import load_config
from bridgestat.node.ledger import Ledger, Reserved
from bridgestat.node.loss import Epsilon, Loss

BACKUPS = 3
AFTER = 5  # queries answered after the last backup before the load stops
MEAN = Query("mean", "assessment", "bridge_total", 0.01, ())


@dataclass
class Load:
    """Queries with fresh keys, one after another, until stopped."""

    member: LocalMember
    witness: Path
    answered: int = 0
    problems: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        member = Member(self.member.name, self.member.address)
        with Network([member], 30.0, tls=self.member.client_tls, witness=self.witness) as net:
            while not self.stop.is_set():
                result = net.run(MEAN)
                with self.progress:
                    self.problems.extend(f"{f.code}: {f.message}"
                                         for f in result.failures.values())
                    self.answered += 1
                    self.progress.notify_all()

    def wait_for(self, count: int) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.answered >= count or bool(self.problems),
                                          timeout=120), "the load stalled"


@dataclass(frozen=True)
class Served:
    root: Path
    member: LocalMember
    backups: tuple[Path, ...]
    seqs: tuple[int, ...]  # the node's audit head before each backup, and at the end
    witness: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Backups taken while a thread keeps querying the node; the node is stopped after."""
    root = tmp_path_factory.mktemp("backup")
    synth.write_network(root, members=1, seed=5, sizes=[300])
    member = local.write_configs(root, total_epsilon=50.0, max_per_query=1.0)[0]
    processes = local.start_nodes([member], root)
    log = AuditLog(root / member.name / "audit.jsonl")
    load = Load(member, root / "network.witness.jsonl")
    thread = threading.Thread(target=load.run, daemon=True)
    folders, seqs = [], []
    try:
        thread.start()
        for number in range(BACKUPS):
            load.wait_for(load.answered + 2)  # queries run before and while it is taken
            seqs.append(log.head().seq)
            folders.append(root / f"backup-{number}")
            assert node_cli.main(["backup", "--config", str(member.config),
                                  "--out", str(folders[-1])]) == 0
        load.wait_for(load.answered + AFTER)
    finally:
        load.stop.set()
        thread.join(timeout=60)
        local.stop_nodes(processes)
    assert not load.problems, load.problems
    seqs.append(log.head().seq)
    yield Served(root, member, tuple(folders), tuple(seqs), load.witness)


def _config(served: Served, name: str, **paths: str) -> Path:
    """A copy of the member's config with other ledger and audit paths."""
    doc = yaml.safe_load(served.member.config.read_text())
    doc.update(paths)
    path = served.member.config.with_name(f"{name}.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _ledger(config: Path) -> Ledger:
    folder = config.parent
    doc = yaml.safe_load(config.read_text())
    return Ledger(folder / doc["ledger"], doc["budget"]["dataset"], Epsilon.of(50.0))


def test_backups_under_load_restore_into_a_fresh_folder_and_verify(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    for number, folder in enumerate(served.backups):
        manifest = backup.read_manifest(folder)
        # taken while queries ran: after the ones before it, before the ones after it
        assert served.seqs[number] <= manifest.audit_seq < served.seqs[-1]
        fresh = _config(served, f"fresh-{number}", ledger=f"fresh-{number}/ledger.sqlite",
                        audit=f"fresh-{number}/audit.jsonl")
        assert node_cli.main(["restore", "--config", str(fresh), "--from", str(folder)]) == 0
        assert node_cli.main(["audit", "verify", "--config", str(fresh)]) == 0
        out = capsys.readouterr().out
        assert f"{manifest.audit_seq} entries, chain intact, last hash " \
            f"{manifest.audit_hash}" in out
        restored = _ledger(fresh)
        assert restored.state().spent_loss == manifest.spent_loss
        assert len(restored.history()) == manifest.charges
        assert manifest.charges > 0


def test_a_backup_older_than_the_node_is_refused_unless_forced(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    oldest = served.backups[0]
    manifest = backup.read_manifest(oldest)
    config = _config(served, "live", ledger="ledger.sqlite", audit="audit.jsonl")
    spent_before = _ledger(config).state().spent_loss
    code = node_cli.main(["restore", "--config", str(config), "--from", str(oldest)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"is at seq {served.seqs[-1]}, the backup's at {manifest.audit_seq}" in err
    assert "every query answered since the backup could be charged again" in err
    assert _ledger(config).state().spent_loss == spent_before  # nothing changed


def test_a_backup_older_than_the_witness_is_refused_in_an_empty_folder(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """A node whose disk was lost has nothing to compare with; the coordinator's witness
    still knows how far its log went."""
    oldest = served.backups[0]
    manifest = backup.read_manifest(oldest)
    highest = max(w.seq for w in witness_file.read(served.witness))
    config = _config(served, "rebuilt", ledger="rebuilt/ledger.sqlite",
                     audit="rebuilt/audit.jsonl")
    code = node_cli.main(["restore", "--config", str(config), "--from", str(oldest),
                          "--witness", str(served.witness)])
    assert code == 1
    assert f"the coordinator witnessed audit seq {highest}" in capsys.readouterr().err
    assert not (config.parent / "rebuilt" / "ledger.sqlite").exists()
    code = node_cli.main(["restore", "--config", str(config), "--from", str(oldest),
                          "--witness", str(served.witness), "--force"])
    captured = capsys.readouterr()
    assert code == 0
    assert "warning: restored with --force although the coordinator witnessed" in captured.err
    assert _ledger(config).state().spent_loss == manifest.spent_loss
    # The restored pair is consistent, and the witness still shows it is old.
    assert node_cli.main(["audit", "verify", "--config", str(config)]) == 0
    assert node_cli.main(["audit", "verify", "--config", str(config),
                          "--witness", str(served.witness)]) == 1
    assert f"but the coordinator witnessed seq {highest}" in capsys.readouterr().out


def test_the_newest_backup_restores_over_the_node_and_keeps_its_files(
        served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """A backup as new as the node is allowed; the files it replaces are kept aside."""
    newest = served.backups[-1]
    config = _config(served, "same", ledger="same/ledger.sqlite", audit="same/audit.jsonl")
    assert node_cli.main(["restore", "--config", str(config), "--from", str(newest)]) == 0
    assert node_cli.main(["restore", "--config", str(config), "--from", str(newest)]) == 0
    out = capsys.readouterr().out
    kept = sorted((config.parent / "same").glob("*.before-restore-*"))
    assert [p.name.split(".before")[0] for p in kept] == ["audit.jsonl", "ledger.sqlite"]
    assert "previous file kept as" in out


def test_a_backup_is_never_written_over_another(served: Served,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = node_cli.main(["backup", "--config", str(served.member.config),
                          "--out", str(served.backups[0])])
    assert code == 2
    assert "already holds a backup" in capsys.readouterr().err


def test_a_charge_committed_before_its_entry_is_copied_with_it(
        served: Served, tmp_path: Path) -> None:
    """The gap the backup closes: a charge committed whose released entry is not yet in the
    log when the backup pauses the ledger's writers. The backup waits for the entry (the
    append needs no ledger lock); the mark, which does, waits for the backup."""
    config = load_config(_config(served, "gap", ledger="gap/ledger.sqlite",
                                 audit="gap/audit.jsonl"))
    ledger = Ledger(config.ledger_path, config.budget.dataset, Epsilon.of(50.0))
    log = AuditLog(config.ledger_path.with_name("audit.jsonl"))
    loss = Loss.of(0.25)
    reserved = ledger.reserve("gap-1", "fingerprint", loss)
    assert isinstance(reserved, Reserved)
    ledger.commit("gap-1", "{}")
    out, done = tmp_path / "gap-backup", []
    thread = threading.Thread(target=lambda: done.append(backup.backup(config, out)))
    thread.start()
    _wait_until_writers_paused(config.ledger_path)
    log.append(Record("coordinator", config.budget.dataset, "gap-1", None, "released",
                      charged=loss, charged_at=reserved.charged_at))
    ledger.mark_logged("gap-1")  # waits for the backup's lock
    thread.join(timeout=120)
    (manifest,) = done
    assert manifest.verified == "ok"
    assert (manifest.charges, manifest.audit_seq, manifest.spent_loss) == (1, 1, loss)


def _wait_until_writers_paused(path: Path) -> None:
    """Until another connection cannot take the ledger's write lock (the backup holds it)."""
    probe = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        while True:
            try:
                probe.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return
            probe.execute("ROLLBACK")
    finally:
        probe.close()
