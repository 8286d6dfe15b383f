"""The node's audit log: every query it receives, released or refused, hash-chained.

One JSON object per line (JSON Lines) at the config's `audit` path:

    {"seq": 7, "time": "2026-03-01T10:00:00.000Z", "caller": "coordinator",
     "dataset": "extract-2026", "key": "...", "outcome": "released",
     "query": {...}, "error": null, "measurement": [{"components": ["count"],
     "opendp": "<dp.serialize of the measurement>"}], "charged": {"epsilon": 0.5,
     "rho": 0.0, "exact": "1/2;0", "at": "2026-03-01T09:59:59.990Z"}, "pooled_only": false,
     "release": {...},
     "prev_hash": "<hash of entry 6>", "hash": "<sha256>"}

- `outcome`: released (the one entry of a committed ledger charge: its loss as the ledger
  holds it, `charged.at` the ledger's time of the charge, which decides its period), replayed
  (a later answer from the ledger, nothing charged), refused (a NodeError: the caller, the
  query, the policy or the budget did not allow it) or failed (an internal error; nothing
  left the node). A refused or failed entry charges nothing and its `error` says why:
  `code` (the exception), `reason` (one of REASONS, also the label of the refusals metric)
  and `message`. A caller refused for who it is (not on `tls.allow`, or a probe identity
  calling more than health or reflection) has `query: null` and the method in the message.
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
not answered, and the first answer of that key that does leave the node (the caller's retry,
after a restart if need be) is logged as its release, with the ledger's charge (see
`engine.py`).

Limits, honestly: a hash chain without a secret proves that the log is internally
consistent, not who wrote it. Someone who can write the file can rewrite the whole chain,
or cut entries off its end. `audit verify` therefore also reconciles the log with the budget
ledger (`ledger_mismatch`: per key and in total, overall and per period), and checks the
chain against heads kept outside the node: the coordinator's witness (every answer carries
the head; `witnessed`: each must still be in the chain, and the chain must reach the highest)
or an `--anchor` noted by hand.
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

from opendp.mod import _Encoder

from bridgestat.common import opendp_core as dp
from bridgestat.node.config import NodeConfig
from bridgestat.node.errors import (
    AuditError,
    BudgetExhausted,
    ConfigError,
    IdempotencyConflict,
    NodeError,
    PolicyError,
    QueryError,
    QueryInProgress,
)
from bridgestat.node.ledger import (
    PERIODS,
    Charge,
    Clock,
    Snapshot,
    parse_timestamp,
    period_label,
    timestamp,
    utc_now,
)
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


_SERIALIZED: dict[int, tuple[Any, str]] = {}  # id(measurement) -> (measurement, its text)
_SERIALIZED_MAX = 1024


def serialize_measurement(component: Component) -> str:
    """OpenDP's serialized form of one component's measurement. Remembered per measurement
    object (kept alive beside its text, so its id is not reused): the node builds each
    calibrated component once (`mechanisms`), and encoding it took a tenth of a new
    query's CPU."""
    known = _SERIALIZED.get(id(component.measurement))
    if known is not None and known[0] is component.measurement:
        return known[1]
    text = _serialize(component)
    if len(_SERIALIZED) >= _SERIALIZED_MAX:
        _SERIALIZED.clear()
    _SERIALIZED[id(component.measurement)] = (component.measurement, text)
    return text


def _serialize(component: Component) -> str:
    """`dp.serialize` (json.dumps of its encoder's `default`) with `_TypesAsText`, which
    differs only where OpenDP's encoder raises: one pass, not a failed one and a second."""
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


def charged_doc(loss: Loss, at: str = "") -> dict[str, Any]:
    """The loss an entry charges; a released entry adds `at`, the ledger's timestamp of the
    charge, which decides its period (the ledger's, not the entry's time)."""
    doc = {"epsilon": float(loss.epsilon), "rho": float(loss.rho), "exact": loss.encode()}
    return {**doc, "at": at} if at else doc


# Why a call was refused, by the exception that refused it; callers refused for who they are
# carry their own reason ("allow-list" or "probe", see tls.CallerRefused).
_REASONS: tuple[tuple[type[NodeError], str], ...] = (
    (QueryError, "schema"), (PolicyError, "policy"), (BudgetExhausted, "budget"),
    (IdempotencyConflict, "idempotency"), (QueryInProgress, "in-progress"),
    (AuditError, "audit"))
_REASON_OF_CODE = {cls.__name__: reason for cls, reason in _REASONS} | {
    "CallerRefused": "allow-list"}
REASONS = ("allow-list", "probe", *(r for _, r in _REASONS), "other", "internal")


def refusal_reason(exc: BaseException) -> str:
    """The reason (one of REASONS) a call was refused or failed."""
    given = getattr(exc, "reason", None)
    if isinstance(given, str) and given in REASONS:
        return given
    if not isinstance(exc, NodeError):
        return "internal"
    return next((reason for cls, reason in _REASONS if isinstance(exc, cls)), "other")


def error_doc(exc: BaseException) -> dict[str, Any]:
    """A refusal's type, reason and message (an internal error's message stays in the
    node's log)."""
    message = str(exc) if isinstance(exc, NodeError) else "internal error; see the node's log"
    return {"code": type(exc).__name__, "reason": refusal_reason(exc), "message": message}


def entry_reason(entry: dict[str, Any]) -> str:
    """A refused or failed entry's reason; entries written before reasons were recorded get
    it from their exception's name."""
    error = entry.get("error") or {}
    if error.get("reason"):
        return str(error["reason"])
    if entry.get("outcome") == "failed":
        return "internal"
    return _REASON_OF_CODE.get(str(error.get("code")), "other")


@dataclass(frozen=True)
class Record:
    """What the engine knows about one request; `AuditLog.append` adds seq, time, chain."""

    caller: str
    dataset: str
    key: str
    query: QuerySpec | None
    outcome: str  # one of OUTCOMES
    measurement: list[dict[str, Any]] = field(default_factory=list)
    charged: Loss = field(default_factory=Loss)
    release: Release | None = None
    error: BaseException | None = None
    pooled_only: bool = False
    charged_at: str = ""  # a released entry: when the ledger charged it (its timestamp form)

    def body(self) -> dict[str, Any]:
        return {"caller": self.caller, "dataset": self.dataset, "key": self.key,
                "outcome": self.outcome,
                "query": query_doc(self.query) if self.query is not None else None,
                "error": error_doc(self.error) if self.error is not None else None,
                "measurement": self.measurement,
                "charged": charged_doc(self.charged, self.charged_at),
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
        self._written: tuple[tuple[int, int, int], Head] | None = None  # see `_current_head`
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
                entry = self._entry(self._current_head(fd), record)
                _write_all(fd, canonical_line(entry))
                os.fsync(fd)
                self._written = (_identity(fd), Head(int(entry["seq"]), str(entry["hash"])))
            except OSError as exc:
                raise AuditError(f"cannot write audit log {self.path}: {exc}") from exc
            finally:
                os.close(fd)  # releases the flock
            if created:
                _fsync_dir(self.path.parent)
            return entry

    def _current_head(self, fd: int) -> Head:
        """The head under the exclusive lock: the entry this process appended last while the
        file is exactly as that append left it (same inode, size and modification time; any
        other writer changes them), else read from the file's last line."""
        if self._written is not None and self._written[0] == _identity(fd):
            return self._written[1]
        return _head(fd, self.path)

    def find_released(self, dataset: str, key: str) -> dict[str, Any] | None:
        """The released entry of `key` in `dataset`, or None. Reads the whole log (lines
        without the key's JSON text are skipped unparsed): for recovering interrupted
        releases, not for every query."""
        needle = b'"key":' + json.dumps(key, ensure_ascii=False).encode("utf-8") + b","
        for _, raw in lines(self.path):
            if needle not in raw:
                continue
            entry = _parsed(raw)
            if entry is not None and entry.get("outcome") == "released" and \
                    entry.get("dataset") == dataset and entry.get("key") == key:
                return entry
        return None

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


def _identity(fd: int) -> tuple[int, int, int]:
    """(inode, size, modification time in ns) of the open file."""
    stat = os.fstat(fd)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


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
    """The outcome of `verify`: entries checked, the last good hash, the first problem; with
    the ledger, what reconciled: the loss the log records and the reservations it cannot."""

    count: int
    last_hash: str
    problem: str | None = None  # "line N: why", or a ledger mismatch
    line: int | None = None  # the first bad line, when the problem is one
    released: Loss | None = None  # the released entries' loss (checked against the ledger)
    held: tuple[Charge, ...] = ()  # reservations of interrupted queries: nothing released

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


def verify(path: Path, ledger: Snapshot | None = None, dataset: str = "",
           anchor: str = "", witnessed: Sequence[Head] = ()) -> Verification:
    """Recompute the chain; with `ledger`, reconcile the log with it (`ledger_mismatch`);
    with `anchor`, check that the hash is in the chain; with `witnessed` (heads the
    coordinator saw), check that each is still in the chain and the chain reaches them."""
    head, entries = Head(0, GENESIS), []
    seen_anchor = not anchor
    expected: dict[int, list[str]] = {}
    for seen in witnessed:
        expected.setdefault(seen.seq, []).append(seen.hash)
    numbered = lines(path) if path.exists() else iter([])
    for number, raw in numbered:
        problem = _check_line(number, raw, head)
        if problem is not None:
            return Verification(head.seq, head.hash, f"line {number}: {problem}", number)
        entry = json.loads(raw)
        head = Head(entry["seq"], entry["hash"])
        seen_anchor = seen_anchor or head.hash == anchor
        other = [h for h in expected.get(head.seq, ()) if h != head.hash]
        if other:
            return Verification(head.seq - 1, str(entry["prev_hash"]), _rewritten(
                number, head, other[0]), number)
        entries.append(entry)
    if not seen_anchor:
        return Verification(head.seq, head.hash, f"anchor {anchor} is not in the chain: the "
                            "log was rewritten or cut back since that hash was noted")
    if expected and max(expected) > head.seq:
        return Verification(head.seq, head.hash, _cut_back(head, max(expected)))
    if ledger is None:
        return Verification(head.seq, head.hash)
    problem = ledger_mismatch(entries, ledger, dataset)
    held = tuple(c for c in ledger.charges if c.state == "reserved")
    return Verification(head.seq, head.hash, problem, released=released_loss(entries, dataset),
                        held=held)


def _rewritten(number: int, head: Head, witnessed: str) -> str:
    return (f"line {number}: seq {head.seq} has hash {head.hash}, but the coordinator "
            f"witnessed {witnessed} at that seq: the log was rewritten at or before this "
            "entry (or replaced by another log)")


def _cut_back(head: Head, witnessed: int) -> str:
    return (f"the chain ends at seq {head.seq}, but the coordinator witnessed seq "
            f"{witnessed}: entries were cut off the end, or an older log (and ledger) was "
            "restored")


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


def ledger_mismatch(entries: Sequence[dict[str, Any]], ledger: Snapshot,
                    dataset: str) -> str | None:
    """The first difference between the log and the ledger of `dataset`, per key (in the
    ledger's order) and then in total, overall and per period: every committed charge has
    exactly one released entry with its loss and timestamp, every released entry has its
    charge, and the released entries add up to the ledger's running totals less the
    reservations of interrupted queries (charged, nothing released, so never logged)."""
    released: dict[str, list[dict[str, Any]]] = {}
    replayed: set[str] = set()
    for entry in entries:
        if entry.get("dataset") == dataset and entry.get("outcome") == "released":
            released.setdefault(str(entry.get("key")), []).append(entry)
        elif entry.get("dataset") == dataset and entry.get("outcome") == "replayed":
            replayed.add(str(entry.get("key")))
    for charge in ledger.charges:
        problem = _charge_mismatch(charge, released.pop(charge.key, []), dataset,
                                   charge.key in replayed)
        if problem is not None:
            return problem
    for key, found in released.items():
        return (f"line {found[0]['seq']}: key {key!r} is logged as released, charging "
                f"{_charged(found[0])}, but the ledger of dataset {dataset!r} has no charge "
                "for it: the ledger was replaced or rolled back, or the entry was made up")
    return _totals_mismatch(entries, ledger, dataset)


def _charge_mismatch(charge: Charge, found: list[dict[str, Any]], dataset: str,
                     replayed: bool) -> str | None:
    """How the released entries of one ledger charge differ from it, or None."""
    key = charge.key
    if len(found) > 1:
        return (f"key {key!r} is logged as released {len(found)} times (lines "
                f"{', '.join(str(e['seq']) for e in found)}): its loss would count "
                f"{len(found)} times against the ledger's one charge")
    if not found:
        return None if charge.state == "reserved" else _missing(charge, dataset, replayed)
    entry = found[0]
    if charge.state == "reserved":
        return (f"line {entry['seq']}: key {key!r} is logged as released, but the ledger holds "
                "only its reservation: an entry is written only after the ledger's commit")
    exact = (entry.get("charged") or {}).get("exact")
    if exact != charge.loss.encode():
        return (f"line {entry['seq']}: charged {exact} but the ledger charged "
                f"{charge.loss.encode()} for key {key!r}")
    at = (entry.get("charged") or {}).get("at")
    if at is not None and at != charge.created_at:
        return (f"line {entry['seq']}: key {key!r} charged at {at}, but the ledger charged it "
                f"at {charge.created_at}")
    return None


def _missing(charge: Charge, dataset: str, replayed: bool) -> str:
    """Why a committed charge has no released entry, as far as the ledger can tell."""
    head = (f"ledger charge {charge.key!r} of dataset {dataset!r} ({charge.loss}, committed "
            f"{charge.committed_at}) has no released entry")
    if charge.logged:
        return f"{head}, although the node wrote one: entries were removed"
    if replayed:
        return (f"{head}: its answers were logged only as replays, charging nothing (a node "
                "before this check did that after a failed audit write, or entries were "
                "removed); the node logs the charge on the key's next answer")
    return (f"{head}: the node wrote none yet (its audit write failed, or it stopped between "
            "the ledger's commit and the answer, so no answer left it); it is written, with "
            "this loss, when the caller retries the key")


def _totals_mismatch(entries: Sequence[dict[str, Any]], ledger: Snapshot,
                     dataset: str) -> str | None:
    """The released entries against the ledger's running totals (the figures `budget`
    shows), less the reservations of interrupted queries; overall, then per period."""
    held = [c for c in ledger.charges if c.state == "reserved"]
    logged = released_loss(entries, dataset)
    expected = ledger.spent - sum((c.loss for c in held), Loss())
    note = f", less {len(held)} reservations of interrupted queries," if held else ""
    if logged != expected:
        return (f"in total the released entries charge {logged}, but the ledger's running "
                f"total{note} is {expected}")
    by_period = _period_totals(entries, dataset)
    for key in sorted(set(ledger.periods) | set(by_period)):
        expected = ledger.periods.get(key, Loss()) - sum(
            (c.loss for c in held if period_label(key[0], parse_timestamp(c.created_at))
             == key[1]), Loss())
        if by_period.get(key, Loss()) != expected:
            return (f"{key[0]} {key[1]}: the released entries charge "
                    f"{by_period.get(key, Loss())}, but the ledger's total for the "
                    f"{key[0]}{note} is {expected}")
    return None


def _released(entries: Iterable[dict[str, Any]], dataset: str) -> Iterator[dict[str, Any]]:
    return (e for e in entries if e.get("dataset") == dataset and e.get("outcome") == "released")


def _charged(entry: dict[str, Any]) -> Loss:
    return Loss.decode(str((entry.get("charged") or {}).get("exact", "0;0")))


def _charged_at(entry: dict[str, Any]) -> str:
    """When the entry's loss was charged: the ledger's timestamp (`charged.at`) when the
    entry has it (released entries), else the entry's own time."""
    return str((entry.get("charged") or {}).get("at") or entry.get("time"))


def released_loss(entries: Iterable[dict[str, Any]], dataset: str) -> Loss:
    """The loss the released entries of `dataset` record (replays charge nothing)."""
    return sum((_charged(e) for e in _released(entries, dataset)), Loss())


def _period_totals(entries: Iterable[dict[str, Any]],
                   dataset: str) -> dict[tuple[str, str], Loss]:
    totals: dict[tuple[str, str], Loss] = {}
    for entry in _released(entries, dataset):
        when = parse_timestamp(_charged_at(entry))
        for period in PERIODS:
            key = (period, period_label(period, when))
            totals[key] = totals.get(key, Loss()) + _charged(entry)
    return totals


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
        entry = _parsed(raw)
        if entry is not None:
            yield entry


def _parsed(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def summarize(items: Iterable[dict[str, Any]], period: str = "month") -> list[Summary]:
    """Per period (UTC) and caller: outcomes counted and the loss charged. A released entry
    counts in the period in which the ledger charged it (`charged.at`), as the ledger's
    period totals do; other entries in the period of their time."""
    table: dict[tuple[str, str], Summary] = {}
    for entry in items:
        label = period_label(period, parse_timestamp(_charged_at(entry)))
        caller = str(entry.get("caller"))
        row = table.setdefault((label, caller), Summary(label, caller))
        outcome = str(entry.get("outcome"))
        row.counts[outcome] = row.counts.get(outcome, 0) + 1
        loss = Loss.decode((entry.get("charged") or {}).get("exact", "0;0"))
        row.epsilon += loss.epsilon
        row.rho += loss.rho
    return [table[k] for k in sorted(table)]


@dataclass
class Refusals:
    """Calls refused (or failed) for one caller and one reason."""

    caller: str
    reason: str
    count: int = 0
    first: str = ""
    last: str = ""
    example: str = ""  # the last refusal's message


def summarize_refusals(items: Iterable[dict[str, Any]]) -> list[Refusals]:
    """Refused and failed entries per caller and reason, with when they were first and last
    seen and the last message: who tried what, for a security officer's review."""
    table: dict[tuple[str, str], Refusals] = {}
    for entry in items:
        if entry.get("outcome") not in ("refused", "failed"):
            continue
        caller, reason = str(entry.get("caller")), entry_reason(entry)
        row = table.setdefault((caller, reason), Refusals(caller, reason))
        row.count += 1
        when = str(entry.get("time", ""))
        row.first = min(row.first or when, when)
        row.last = max(row.last, when)
        row.example = str((entry.get("error") or {}).get("message", ""))
    return [table[k] for k in sorted(table)]


def format_refusals(rows: Sequence[Refusals], width: int = 160) -> str:
    """A text table of `summarize_refusals`' rows; the message is cut to fit `width`."""
    if not rows:
        return "no refusals"
    header = ("caller", "reason", "refused", "first", "last", "last message")
    table = [header] + [(r.caller, r.reason, str(r.count), r.first, r.last, r.example)
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    room = max(20, width - sum(widths) - 2 * len(widths))
    return "\n".join("  ".join([*(cell.rjust(w) if i == 2 else cell.ljust(w)
                                 for i, (cell, w) in enumerate(zip(row[:-1], widths,
                                                                   strict=True))),
                                _cut(row[-1], room)]).rstrip() for row in table)


def _cut(text: str, room: int) -> str:
    return text if len(text) <= room else text[: room - 3] + "..."


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
