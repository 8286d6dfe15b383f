"""Backups of the ledger and audit log that a node can be restored from without re-granting
budget.

**Why a restore is dangerous.** The ledger is the node's memory of the privacy loss it has
spent. A ledger copied on Monday and restored on Friday forgets every charge in between, so
every query answered since Monday could be asked and paid for again: budget spent would be
handed back. `restore` therefore refuses a copy older than what the node itself has seen
(its current audit head and ledger, when they still exist) or what the coordinator has
witnessed (`--witness`: the heads the node returned with its answers, see
`bridgestat.common.witness`), unless forced.

**Why the copy is consistent.** The engine answers a query in this order: reserve the loss
(ledger) -> commit the release (ledger) -> append the released entry (audit log) -> mark
the charge logged (ledger). `audit verify` requires every committed charge to have exactly
one released entry and every released entry its charge. Neither simple order of copying
gives that while the node serves:

- audit log first, then the ledger: a charge committed (and even marked logged) between the
  two copies is in the ledger copy without its entry;
- ledger first, then the log: an entry appended between the copies has no charge in the
  ledger copy;
- the audit log's lock held while copying both stops appends but not commits: a charge
  committed while the lock is held, whose append waits for the lock, is again in the ledger
  copy without its entry.

So `backup` first pauses the ledger's writers (`ledger.writers_paused`: its write lock, so no
reserve, commit or mark happens; reads and the answers already computed go on), then waits
until every charge committed in the last minute and not yet marked logged has its released
entry in the log (those appends need no ledger lock, so they finish; a charge whose entry
never comes within `settle` seconds is one whose audit write failed, copied as it is, which
`audit verify` names on the node too), then takes the audit log's exclusive `flock` (no
append meanwhile) and copies the log and the ledger (SQLite's online backup API). The pair
is then the state of a node stopped at that instant with no query between commit and
append. Queries wait for the ledger lock while the copy runs (the busy timeout is 60 s).

A copy that `audit verify` would not pass (e.g. a charge whose audit write failed long
ago) is still written, with the problem in its manifest: it is the node's state, and a
backup of it is better than none.

A backup directory holds `ledger.sqlite`, `audit.jsonl` and `manifest.json` (time, node,
dataset, the ledger's totals, the audit head, and both files' sha256).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from bridgestat.common import witness
from bridgestat.node import audit
from bridgestat.node.audit import Head
from bridgestat.node.config import NodeConfig
from bridgestat.node.errors import NodeError
from bridgestat.node.ledger import (
    Ledger,
    Snapshot,
    copy_database,
    timestamp,
    unlogged_since,
    utc_now,
    writers_paused,
)
from bridgestat.node.loss import Epsilon, Loss

LEDGER_FILE, AUDIT_FILE, MANIFEST_FILE = "ledger.sqlite", "audit.jsonl", "manifest.json"
SETTLE_SECONDS = 10.0  # longest wait for the released entries of charges just committed
RECENT = timedelta(minutes=1)  # charges committed earlier are not waited for
_POLL = 0.01


class BackupError(NodeError):
    """A backup cannot be written or read; names the directory or file."""


class RestoreRefused(NodeError):
    """The backup is older than what the node or the coordinator's witness has seen."""


@dataclass(frozen=True)
class Manifest:
    """What a backup holds, written beside it as manifest.json."""

    created: str
    node_id: str
    dataset: str
    charges: int  # ledger rows (committed and reserved)
    spent: str  # the ledger's running total, exact (Loss.encode)
    epsilon_spent: float  # its (epsilon, delta) guarantee at the config's delta
    audit_seq: int
    audit_hash: str
    ledger_sha256: str
    audit_sha256: str
    verified: str = "ok"  # or the problem `audit verify` names in the copy (as on the node)

    @property
    def head(self) -> Head:
        return Head(self.audit_seq, self.audit_hash)

    @property
    def spent_loss(self) -> Loss:
        return Loss.decode(self.spent)


# --- backup ----------------------------------------------------------------------------


def backup(config: NodeConfig, out: Path, settle: float = SETTLE_SECONDS) -> Manifest:
    """Write a consistent copy of the node's ledger and audit log to `out` (see the module
    docstring for why it is consistent) and its manifest; the node may keep serving."""
    log_path = audit.audit_path(config)
    if not config.ledger_path.exists():
        raise BackupError(f"{config.source}: ledger: no ledger at {config.ledger_path} "
                          "(nothing charged yet?)")
    _empty_folder(out)
    with writers_paused(config.ledger_path) as db:
        since = timestamp(utc_now() - RECENT)
        _await_entries(log_path, config.budget.dataset,
                       unlogged_since(db, config.budget.dataset, since), settle)
        with _appends_paused(log_path):
            _copy_log(log_path, out / AUDIT_FILE)
            copy_database(config.ledger_path, out / LEDGER_FILE)
    _fsync(out / LEDGER_FILE)
    manifest = _describe(config, out, timestamp(utc_now()))
    _write_atomically(out / MANIFEST_FILE, json.dumps(asdict(manifest), indent=2).encode())
    return manifest


def _empty_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"--out {out}: cannot create the folder: {exc.strerror}") from exc
    taken = [name for name in (LEDGER_FILE, AUDIT_FILE, MANIFEST_FILE) if (out / name).exists()]
    if taken:
        raise BackupError(f"--out {out}: already holds a backup ({', '.join(taken)}); choose "
                          "a new folder (backups are never overwritten)")


def _await_entries(log_path: Path, dataset: str, keys: Sequence[str], settle: float) -> None:
    """Wait (at most `settle` seconds) until each key has a released entry in the log."""
    wanted = {b'"key":' + json.dumps(k, ensure_ascii=False).encode() + b",": k for k in keys}
    offset, deadline = 0, time.monotonic() + settle
    while wanted and time.monotonic() < deadline:
        offset = _scan(log_path, offset, dataset, wanted)
        if wanted:
            time.sleep(_POLL)


def _scan(log_path: Path, offset: int, dataset: str, wanted: dict[bytes, str]) -> int:
    """Drop from `wanted` the keys released in complete lines after `offset`; the new offset."""
    if not log_path.exists():
        return offset
    with log_path.open("rb") as file:
        file.seek(offset)
        data = file.read()
    complete = data[: data.rfind(b"\n") + 1]
    for raw in complete.splitlines():
        for needle in [n for n in wanted if n in raw]:
            entry = json.loads(raw)
            if entry.get("outcome") == "released" and entry.get("dataset") == dataset:
                del wanted[needle]
    return offset + len(complete)


@contextmanager
def _appends_paused(path: Path) -> Iterator[None]:
    """The audit log's exclusive flock, the one every append takes: no entry is written
    while it is held (appends wait, then go on)."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _copy_log(source: Path, target: Path) -> None:
    with source.open("rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.flush()
        os.fsync(dst.fileno())


def _describe(config: NodeConfig, folder: Path, created: str) -> Manifest:
    """The manifest of the copy in `folder`, from the copy itself (checked by verify)."""
    snapshot = _snapshot(config, folder / LEDGER_FILE)
    result = audit.verify(folder / AUDIT_FILE, snapshot, config.budget.dataset)
    return Manifest(created, config.node_id, config.budget.dataset, len(snapshot.charges),
                    snapshot.spent.encode(), float(snapshot.spent.epsilon_at(
                        config.budget.delta)), result.count, result.last_hash,
                    _sha256(folder / LEDGER_FILE), _sha256(folder / AUDIT_FILE),
                    result.problem or "ok")


def _snapshot(config: NodeConfig, path: Path) -> Snapshot:
    """The charges and totals of the ledger file at `path`, read from a scratch copy so the
    backup's own file stays byte for byte what its sha256 says (opening a ledger switches it
    to WAL mode)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / LEDGER_FILE
        shutil.copyfile(path, copy)
        return _ledger(config, copy).snapshot()


def _ledger(config: NodeConfig, path: Path) -> Ledger:
    return Ledger(path, config.budget.dataset, Epsilon.of(config.budget.total_epsilon),
                  config.budget.delta)


# --- restore ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    overridden: tuple[str, ...]  # the reasons to refuse that --force overrode
    kept: tuple[Path, ...]  # the node's previous files, moved aside


def read_manifest(folder: Path) -> Manifest:
    """The backup's manifest, with both files checked against its sha256."""
    path = folder / MANIFEST_FILE
    try:
        doc = json.loads(path.read_text())
        manifest = Manifest(**doc)
    except OSError as exc:
        raise BackupError(f"--from {folder}: no readable {MANIFEST_FILE}: {exc.strerror} "
                          "(not a backup folder of `bridgestat-node backup`?)") from exc
    except (ValueError, TypeError) as exc:
        raise BackupError(f"{path}: not a backup manifest: {exc}") from exc
    for name, digest in ((LEDGER_FILE, manifest.ledger_sha256),
                         (AUDIT_FILE, manifest.audit_sha256)):
        if not (folder / name).exists() or _sha256(folder / name) != digest:
            raise BackupError(f"{folder / name}: missing or changed since the backup (its "
                              f"sha256 is not the manifest's)")
    return manifest


def restore(config: NodeConfig, source: Path, witness_file: Path | None = None,
            force: bool = False) -> Restored:
    """Put the backup in `source` in place of the node's ledger and audit log (the node must
    be stopped). Refuses, unless `force`, a backup older than the node's current files or
    than the coordinator's witness; the node's previous files are moved aside, never
    deleted."""
    manifest = read_manifest(source)
    if manifest.dataset != config.budget.dataset:
        raise RestoreRefused(f"{source}: a backup of dataset {manifest.dataset!r}, but "
                             f"{config.source} budget.dataset is {config.budget.dataset!r}")
    reasons = [*_newer_on_node(config, manifest), *_newer_witnessed(config, manifest,
                                                                    witness_file)]
    if reasons and not force:
        raise RestoreRefused(
            f"{source}: refusing to restore a backup taken {manifest.created} (audit seq "
            f"{manifest.audit_seq}, spent {manifest.spent_loss}): " + "; ".join(reasons) +
            ". An older ledger forgets the budget spent since, so every query answered "
            "since the backup could be charged again. Restore a newer backup, or pass "
            "--force if you know why (e.g. the witness belongs to another node)")
    kept = _move_aside(config)
    _put(source / LEDGER_FILE, config.ledger_path)
    _put(source / AUDIT_FILE, audit.audit_path(config))
    return Restored(manifest, tuple(reasons), kept)


def _newer_on_node(config: NodeConfig, manifest: Manifest) -> list[str]:
    """Why the node's current files are newer than the backup (none: they are not)."""
    reasons = []
    log_path = audit.audit_path(config)
    if log_path.exists() and log_path.stat().st_size:
        head = audit.AuditLog(log_path).head()
        if head.seq > manifest.audit_seq:
            reasons.append(f"the node's audit log {log_path} is at seq {head.seq}, the "
                           f"backup's at {manifest.audit_seq}")
        elif head.seq == manifest.audit_seq and head.hash != manifest.audit_hash:
            reasons.append(f"the node's audit log {log_path} has another hash at seq "
                           f"{head.seq} than the backup: another history")
    if config.ledger_path.exists():
        state = _ledger(config, config.ledger_path).state()
        spent = state.spent_loss
        if spent.epsilon_at(config.budget.delta) > manifest.spent_loss.epsilon_at(
                config.budget.delta):
            reasons.append(f"the node's ledger {config.ledger_path} has spent {spent}, the "
                           f"backup {manifest.spent_loss}")
    return reasons


def _newer_witnessed(config: NodeConfig, manifest: Manifest,
                     witness_file: Path | None) -> list[str]:
    """Why the coordinator's witness has seen more of this node than the backup holds."""
    if witness_file is None:
        return []
    try:
        seen = witness.of_member(witness_file, config.node_id)
    except witness.WitnessError as exc:
        raise BackupError(str(exc)) from exc
    if not seen:
        raise BackupError(f"--witness {witness_file}: no heads witnessed for node "
                          f"{config.node_id!r} (the coordinator's witness file of this node?)")
    latest = max(seen, key=lambda w: w.seq)
    reasons = []
    if latest.seq > manifest.audit_seq:
        reasons.append(f"the coordinator witnessed audit seq {latest.seq} (at {latest.time}), "
                       f"beyond the backup's {manifest.audit_seq}")
    if any(w.seq == manifest.audit_seq and w.hash != manifest.audit_hash for w in seen):
        reasons.append(f"the coordinator witnessed another hash at the backup's seq "
                       f"{manifest.audit_seq}: the backup is not this node's history")
    return reasons


def _move_aside(config: NodeConfig) -> tuple[Path, ...]:
    """Move the node's ledger (checkpointed into one file) and audit log aside."""
    stamp = timestamp(utc_now()).replace(":", "").replace(".", "")
    kept = []
    ledger_path = config.ledger_path
    if ledger_path.exists():
        aside = ledger_path.with_name(f"{ledger_path.name}.before-restore-{stamp}")
        copy_database(ledger_path, aside)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{ledger_path}{suffix}").unlink(missing_ok=True)
        kept.append(aside)
    log_path = audit.audit_path(config)
    if log_path.exists():
        aside = log_path.with_name(f"{log_path.name}.before-restore-{stamp}")
        log_path.rename(aside)
        kept.append(aside)
    return tuple(kept)


def _put(source: Path, target: Path) -> None:
    """Copy `source` to `target` durably: a temporary file beside it, fsync, rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.restoring")
    shutil.copyfile(source, temporary)
    _fsync(temporary)
    temporary.replace(target)
    _fsync_folder(target.parent)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    _fsync(temporary)
    temporary.replace(path)
    _fsync_folder(path.parent)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    _fsync(folder)

