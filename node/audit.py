"""The node's audit log: every query it receives, released or refused, hash-chained.

One JSON object per line (JSON Lines) at the config's `audit` path:

    {"seq": 7, "time": "2026-03-01T10:00:00.000Z", "caller": "coordinator",
     "dataset": "extract-2026", "key": "...", "outcome": "released",
     "query": {...}, "error": null, "measurement": [{"components": ["count"],
     "opendp": "<dp.serialize of the measurement>"}], "charged": {"epsilon": 0.5,
     "rho": 0.0, "exact": "1/2;0"}, "pooled_only": false, "release": {...},
     "prev_hash": "<hash of entry 6>", "hash": "<sha256>"}

- `outcome`: released (charged now), replayed (a retry answered from the ledger, nothing
  charged), refused (a NodeError: the query, the policy or the budget did not allow it) or
  failed (an internal error; nothing left the node).
- `measurement`: OpenDP's serialized form of every measurement the query runs (or would have
  run, for a budget refusal), identical components listed once with their names; `input`
  says what a measurement is applied to when that step is not OpenDP's (a regression's
  clamped integer sums).
- `hash` = sha256(prev_hash + canonical JSON of the entry without `hash`), canonical meaning
  sorted keys and no spaces; the first entry's prev_hash is GENESIS. Editing, removing or
  reordering entries therefore breaks the chain at the first affected line, which
  `bridgestat-node audit verify` names.

Durability and order: the engine writes a release's entry after the ledger commit and before
the release is returned, and a refusal's entry before the refusal is raised; each append is
fsync'ed under a thread lock and an exclusive `flock`, so appends from several threads and
processes interleave whole. If an entry cannot be written the node fails closed: the query is
not answered (a committed release is then replayed, and audited, on the caller's retry).

Limits, honestly: a hash chain without a secret proves that the log is internally
consistent, not who wrote it. Someone who can write the file can rewrite the whole chain,
or cut entries off its end. `audit verify` therefore also checks the log against the budget
ledger (every committed charge must have its entry) and accepts an `--anchor`: a hash printed
by an earlier verify and kept elsewhere (a ticket, an e-mail), which must still be in the chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import opendp.prelude as dp
from opendp.mod import _Encoder

from bridgestat.node.config import NodeConfig
from bridgestat.node.errors import AuditError, ConfigError, NodeError
from bridgestat.node.ledger import Charge, Clock, parse_timestamp, period_label, timestamp, utc_now
from bridgestat.node.loss import Loss
from bridgestat.node.mechanisms import Component
from bridgestat.node.query import QuerySpec, query_doc
from bridgestat.node.release import Release

GENESIS = "0" * 64
OUTCOMES = ("released", "replayed", "refused", "failed")
_BLOCK = 1 << 16


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers: sorted keys, no spaces, UTF-8."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256(prev_hash + canonical JSON of the entry without its hash)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(str(entry.get("prev_hash", "")).encode() + canonical(body)).hexdigest()


# --- what an entry says ----------------------------------------------------------------


class _TypesAsText(_Encoder):
    """OpenDP 0.16's encoder refuses type arguments such as `L1Distance<i32>` (the default
    output metric of make_count_by_categories); OpenDP's constructors accept them as text,
    so that is how they are written, and `dp.deserialize` rebuilds the same measurement."""

    def default(self, obj: Any) -> Any:
        if isinstance(obj, dp.RuntimeType):
            return str(obj)
        return super().default(obj)  # type: ignore[no-untyped-call]


def serialize_measurement(component: Component) -> str:
    """OpenDP's serialized form of one component's measurement."""
    try:
        return component.serialize()
    except Exception:  # OpenDP raises a bare Exception for what its encoder cannot handle
        return json.dumps(_TypesAsText().default(component.measurement))


def measurement(components: Sequence[Component]) -> list[dict[str, Any]]:
    """Serialized measurements, each distinct one once with the components that run it (a
    regression's entries share one measurement)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for component in components:
        key = (serialize_measurement(component), component.input_doc())
        grouped.setdefault(key, []).append(component.name)
    return [{"components": names, "opendp": text, **({"input": given} if given else {})}
            for (text, given), names in grouped.items()]


def charged_doc(loss: Loss) -> dict[str, Any]:
    return {"epsilon": float(loss.epsilon), "rho": float(loss.rho), "exact": loss.encode()}


def error_doc(exc: BaseException) -> dict[str, Any]:
    """A refusal's type and message (an internal error's message stays in the node's log)."""
    message = str(exc) if isinstance(exc, NodeError) else "internal error; see the node's log"
    return {"code": type(exc).__name__, "message": message}


@dataclass(frozen=True)
class Record:
    """What the engine knows about one request; `AuditLog.append` adds seq, time, chain."""

    caller: str
    dataset: str
    key: str
    query: QuerySpec | None
    outcome: str  # one of OUTCOMES
    measurement: list[dict[str, Any]] = field(default_factory=list)
    charged: Loss = Loss()
    release: Release | None = None
    error: BaseException | None = None
    pooled_only: bool = False

    def body(self) -> dict[str, Any]:
        return {"caller": self.caller, "dataset": self.dataset, "key": self.key,
                "outcome": self.outcome,
                "query": query_doc(self.query) if self.query is not None else None,
                "error": error_doc(self.error) if self.error is not None else None,
                "measurement": self.measurement, "charged": charged_doc(self.charged),
                "pooled_only": self.pooled_only,
                "release": self.release.doc() if self.release else None}


# --- appending -------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """The last entry's sequence number and hash (0 and GENESIS for an empty log)."""

    seq: int
    hash: str


class AuditLog:
    """Appends hash-chained entries durably; safe across threads and processes."""

    def __init__(self, path: Path, clock: Clock = utc_now) -> None:
        self.path, self.clock = Path(path), clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # An unwritable, unreadable or torn log is a start-up error, not a first-query one.
        existed = self.path.exists()
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))
        if not existed:
            _fsync_dir(self.path.parent)
        self.head()

    def head(self) -> Head:
        """The chain's current head (read under a shared lock)."""
        if not self.path.exists():
            return Head(0, GENESIS)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return _head(fd, self.path)
        finally:
            os.close(fd)

    def append(self, record: Record) -> dict[str, Any]:
        """Chain `record` onto the log and fsync it; return the entry written."""
        with self._lock:
            created = not self.path.exists()  # removed since start-up: the ledger check tells
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
            except OSError as exc:
                raise AuditError(f"cannot open audit log {self.path}: {exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                entry = self._entry(_head(fd, self.path), record)
                _write_all(fd, canonical_line(entry))
                os.fsync(fd)
            except OSError as exc:
                raise AuditError(f"cannot write audit log {self.path}: {exc}") from exc
            finally:
                os.close(fd)  # releases the flock
            if created:
                _fsync_dir(self.path.parent)
            return entry

    def _entry(self, head: Head, record: Record) -> dict[str, Any]:
        entry = {"seq": head.seq + 1, "time": timestamp(self.clock()), **record.body(),
                 "prev_hash": head.hash}
        entry["hash"] = entry_hash(entry)
        return entry


def canonical_line(entry: dict[str, Any]) -> bytes:
    """One line of the log: the entry in its own key order (readable), compact."""
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=True).encode("utf-8") + b"\n"


def _head(fd: int, path: Path) -> Head:
    size = os.fstat(fd).st_size
    if size == 0:
        return Head(0, GENESIS)
    if os.pread(fd, 1, size - 1) != b"\n":
        raise AuditError(f"audit log {path} ends in an incomplete entry (a crash while "
                         "writing, or a truncated file); run `bridgestat-node audit verify`, "
                         "keep a copy, and remove the incomplete last line")
    last = _last_line(fd, size)
    try:
        entry = json.loads(last)
        return Head(int(entry["seq"]), str(entry["hash"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"audit log {path}: the last line is not an audit entry ({exc}); "
                         "run `bridgestat-node audit verify`") from exc


def _last_line(fd: int, size: int) -> bytes:
    """The file's last line without its trailing newline, read backwards in blocks."""
    chunk, position = b"", size - 1  # bytes [position, size - 1) are in chunk
    while position > 0:
        step = min(_BLOCK, position)
        position -= step
        chunk = os.pread(fd, step, position) + chunk
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return chunk[newline + 1:]
    return chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    """Make a new file's directory entry durable too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def audit_path(config: NodeConfig) -> Path:
    """The config's `audit` path (default: audit.jsonl beside the ledger)."""
    return config.audit_path or config.ledger_path.with_name("audit.jsonl")


def open_audit(config: NodeConfig, clock: Clock = utc_now) -> AuditLog:
    """The config's audit log, checked at start-up; problems name the config's `audit` key."""
    path = audit_path(config)
    try:
        return AuditLog(path, clock)
    except (AuditError, OSError) as exc:
        raise ConfigError(config.source, "audit", f"cannot use audit log {path}: {exc}") from exc


# --- verifying -------------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """The outcome of `verify`: entries checked, the last good hash, the first problem."""

    count: int
    last_hash: str
    problem: str | None = None  # "line N: why", or a ledger mismatch
    line: int | None = None  # the first bad line, when the problem is one

    @property
    def ok(self) -> bool:
        return self.problem is None


def lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes with newline) of the log as it is now; entries appended while
    reading are left for the next run (the size is fixed under the writers' lock)."""
    with path.open("rb") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_SH)
        size = os.fstat(file.fileno()).st_size
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        read = 0
        for number, raw in enumerate(file, 1):
            if read >= size:
                return
            read += len(raw)
            yield number, raw[: len(raw) - max(0, read - size)]


def verify(path: Path, charges: Sequence[Charge] | None = None, dataset: str = "",
           anchor: str = "") -> Verification:
    """Recompute the chain; with `charges`, check that each committed ledger charge of
    `dataset` has its entry (and the same loss); with `anchor`, that the hash is in it."""
    head, entries = Head(0, GENESIS), []
    seen_anchor = not anchor
    numbered = lines(path) if path.exists() else iter([])
    for number, raw in numbered:
        problem = _check_line(number, raw, head)
        if problem is not None:
            return Verification(head.seq, head.hash, f"line {number}: {problem}", number)
        entry = json.loads(raw)
        head = Head(entry["seq"], entry["hash"])
        seen_anchor = seen_anchor or head.hash == anchor
        entries.append(entry)
    if not seen_anchor:
        return Verification(head.seq, head.hash, f"anchor {anchor} is not in the chain: the "
                            "log was rewritten or cut back since that hash was noted")
    if charges is not None:
        problem = ledger_mismatch(entries, charges, dataset)
        if problem is not None:
            return Verification(head.seq, head.hash, problem)
    return Verification(head.seq, head.hash)


def _check_line(number: int, raw: bytes, head: Head) -> str | None:
    """Why line `number` does not continue the chain at `head`, or None."""
    if not raw.endswith(b"\n"):
        return "incomplete entry (the file was truncated, or the node crashed while writing)"
    try:
        entry = json.loads(raw)
    except ValueError:
        return "not valid JSON: the entry was edited or corrupted"
    if not isinstance(entry, dict) or not {"seq", "prev_hash", "hash"} <= set(entry):
        return "not an audit entry (no seq, prev_hash and hash)"
    if entry_hash(entry) != entry["hash"]:
        return "hash mismatch: the entry was edited"
    if entry["seq"] != head.seq + 1:
        return (f"seq {entry['seq']} where {head.seq + 1} was expected: entries were removed "
                "or reordered")
    if entry["prev_hash"] != head.hash:
        return (f"prev_hash does not match the hash of line {number - 1}: entries were "
                "removed, inserted or reordered" if number > 1 else
                "prev_hash is not the genesis hash: the log's first entries were removed")
    return None


def ledger_mismatch(entries: Sequence[dict[str, Any]], charges: Sequence[Charge],
                    dataset: str) -> str | None:
    """The first committed charge without its audit entry (or with another loss)."""
    logged: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("dataset") == dataset and entry.get("outcome") in ("released", "replayed"):
            key = str(entry.get("key"))
            if key not in logged or logged[key].get("outcome") == "replayed":
                logged[key] = entry
    for charge in charges:
        if charge.state != "committed":
            continue
        found = logged.get(charge.key)
        if found is None:
            return (f"ledger charge {charge.key!r} of dataset {dataset!r} (committed "
                    f"{charge.committed_at}) has no audit entry: entries were removed")
        if found["outcome"] == "released" and found["charged"]["exact"] != charge.loss.encode():
            return (f"line {found['seq']}: charged {found['charged']['exact']} but the ledger "
                    f"charged {charge.loss.encode()} for key {charge.key!r}")
    return None


# --- summarizing -----------------------------------------------------------------------


@dataclass
class Summary:
    """Queries and loss of one caller in one period."""

    period: str
    caller: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    epsilon: Fraction = Fraction(0)
    rho: Fraction = Fraction(0)


def entries(path: Path) -> Iterator[dict[str, Any]]:
    """The log's entries that parse (whatever the chain says; `verify` judges that)."""
    if not path.exists():
        return
    for _, raw in lines(path):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


def summarize(items: Iterable[dict[str, Any]], period: str = "month") -> list[Summary]:
    """Per period (UTC) and caller: outcomes counted and the loss charged."""
    table: dict[tuple[str, str], Summary] = {}
    for entry in items:
        label = period_label(period, parse_timestamp(str(entry.get("time"))))
        caller = str(entry.get("caller"))
        row = table.setdefault((label, caller), Summary(label, caller))
        outcome = str(entry.get("outcome"))
        row.counts[outcome] = row.counts.get(outcome, 0) + 1
        loss = Loss.decode((entry.get("charged") or {}).get("exact", "0;0"))
        row.epsilon += loss.epsilon
        row.rho += loss.rho
    return [table[k] for k in sorted(table)]


def format_summary(rows: Sequence[Summary]) -> str:
    """A text table of `summarize`'s rows (loss: pure epsilon and zCDP rho, summed)."""
    if not rows:
        return "no entries"
    header = ("period", "caller", *OUTCOMES, "epsilon", "rho")
    table = [header] + [(r.period, r.caller, *(str(r.counts.get(o, 0)) for o in OUTCOMES),
                         f"{float(r.epsilon):.6g}", f"{float(r.rho):.6g}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
                     .rstrip() for row in table)
