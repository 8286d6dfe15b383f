"""The durable privacy-budget ledger (SQLite).

One cap per dataset, on the (epsilon, delta) guarantee of everything released: pure-DP
losses (epsilon) and zCDP losses (rho) are summed separately and combined as
epsilon_pure + epsilon(rho, delta) (see `loss.Loss`). A query is charged in one
`BEGIN IMMEDIATE` transaction that checks the cap and reserves the loss *before* anything
is computed; the release is stored with the query's idempotency key when it is committed,
and only then leaves the node.

- Same key, same query fingerprint, committed: the stored release is replayed, nothing spent.
- Same key, other fingerprint: refused (`IdempotencyConflict`).
- Same key, reserved by this process: another request is computing it (`QueryInProgress`).
- Same key, reserved by an earlier process (it crashed between reserve and commit): the
  reservation is taken over; its charge stands and is not charged again. No output of the
  crashed attempt ever left the node, so answering now releases the query exactly once.
- A computation that fails before producing output is cancelled and its reservation refunded.

Audit mark. Each charge has a `logged` flag: set (`mark_logged`) once the release's audit
entry, the one that records its loss, has been appended. The audit entry is written after the
commit (so an entry only ever describes a durable charge), which leaves a window: a failed
audit write, or a kill, between commit and entry. A replay then says `logged=False`, and the
engine writes the missing entry (after looking for it in the log: a kill between the append
and the mark leaves the entry but no mark) before that first answer leaves the node. The mark
is only a shortcut for the engine; `audit verify` checks the log against the charges
themselves.

WAL journal. The commit runs with synchronous=FULL, so when it returns the WAL (the
reservation's frames and the commit's) is on disk and the charge survives a power cut; the
reservation itself runs with synchronous=NORMAL, since a reservation lost in a crash means
no release left the node either. One fsync per query.

Period cap (optional, from the member's policy): the loss charged within the current calendar
period (year, quarter or month, UTC) is capped too. Each charge is stamped with the ledger's
clock when it is reserved, and `reserve` checks the total and the period cap in the same
`BEGIN IMMEDIATE` transaction; a charge stands in the period in which it was reserved. The
loss per period is kept as a running total (table `period_spent`) for every kind of period,
whether or not a cap is set, so a cap added to the policy later counts what was already
charged, and checking it costs the same after a million charges as after one. A ledger from
before that table is summed once from its charges when opened.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bridgestat.node.errors import BudgetExhausted, IdempotencyConflict, QueryInProgress
from bridgestat.node.loss import Epsilon, Loss

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget (
    dataset TEXT PRIMARY KEY,
    spent TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS charge (
    dataset TEXT NOT NULL,
    query_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    loss TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('reserved', 'committed')),
    owner TEXT NOT NULL,
    release TEXT,
    logged INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    committed_at TEXT,
    PRIMARY KEY (dataset, query_key)
);
CREATE INDEX IF NOT EXISTS charge_time ON charge (dataset, created_at);
CREATE TABLE IF NOT EXISTS period_spent (
    dataset TEXT NOT NULL,
    period TEXT NOT NULL,
    label TEXT NOT NULL,
    spent TEXT NOT NULL,
    PRIMARY KEY (dataset, period, label)
);
"""
PERIODS = ("year", "quarter", "month")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp(when: datetime) -> str:
    """UTC time in the ledger's text form (SQLite's strftime('%Y-%m-%dT%H:%M:%fZ')), which
    sorts as text in time order."""
    utc = when.astimezone(UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text)


def period_start(period: str, when: datetime) -> datetime:
    """The start (UTC) of the calendar period containing `when`."""
    utc = when.astimezone(UTC)
    if period == "year":
        return datetime(utc.year, 1, 1, tzinfo=UTC)
    if period == "quarter":
        return datetime(utc.year, 3 * ((utc.month - 1) // 3) + 1, 1, tzinfo=UTC)
    if period == "month":
        return datetime(utc.year, utc.month, 1, tzinfo=UTC)
    raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {period!r}")


def period_label(period: str, when: datetime) -> str:
    """A readable name of the period containing `when`: 2026, 2026-Q2 or 2026-05."""
    start = period_start(period, when)
    if period == "year":
        return f"{start.year}"
    if period == "quarter":
        return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
    return f"{start.year}-{start.month:02d}"


@dataclass(frozen=True)
class PeriodCap:
    """A cap on the (epsilon, delta) guarantee of what is charged within one calendar
    period (UTC), on top of the dataset's total."""

    period: str  # one of PERIODS
    epsilon: Epsilon

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}, got {self.period!r}")


@dataclass(frozen=True)
class Replay:
    """The stored release of an earlier, committed request with the same key, with its
    charge as the ledger holds it and whether that charge's audit entry was written."""

    release: str
    loss: Loss = field(default_factory=Loss)
    charged_at: str = ""  # when it was reserved (the ledger's timestamp form)
    logged: bool = True


@dataclass(frozen=True)
class Reserved:
    """The loss is charged; compute the release and `commit` it. `loss` and `charged_at`
    are the charge as the ledger holds it (a taken-over reservation keeps its own)."""

    key: str
    taken_over: bool = False
    loss: Loss = field(default_factory=Loss)
    charged_at: str = ""


@dataclass(frozen=True)
class Charge:
    """One row of the ledger, for audits."""

    key: str
    loss: Loss
    state: str  # reserved | committed
    created_at: str  # when it was reserved (the ledger's timestamp form)
    committed_at: str | None
    logged: bool = False  # the node wrote the audit entry that records this charge


@dataclass(frozen=True)
class Snapshot:
    """The ledger as one read sees it, for reconciling the audit log: every charge, the
    running total and the running totals per period ((period, label) -> loss)."""

    charges: tuple[Charge, ...]
    spent: Loss
    periods: dict[tuple[str, str], Loss]


@dataclass(frozen=True)
class BudgetState:
    dataset: str
    total: Epsilon  # cap on the (epsilon, delta) guarantee
    spent_loss: Loss  # pure epsilon and rho, summed separately
    delta: float
    period: PeriodCap | None = None
    period_spent_loss: Loss = field(default_factory=Loss)  # charged within the current period
    period_name: str = ""  # e.g. 2026 (the current period)

    @property
    def spent(self) -> Epsilon:
        """The epsilon of the (epsilon, delta) guarantee of everything released."""
        return self.spent_loss.epsilon_at(self.delta)

    @property
    def total_remaining(self) -> Epsilon:
        return self.total - self.spent

    @property
    def period_spent(self) -> Epsilon:
        return self.period_spent_loss.epsilon_at(self.delta)

    @property
    def period_remaining(self) -> Epsilon | None:
        return None if self.period is None else self.period.epsilon - self.period_spent

    @property
    def remaining(self) -> Epsilon:
        """What can still be spent now: the total's rest, or the period's when smaller."""
        period = self.period_remaining
        total = self.total_remaining
        return total if period is None else min(total, period)


class Ledger:
    """SQLite ledger of one dataset's privacy budget; safe across threads and processes."""

    def __init__(self, path: Path, dataset: str, total: Epsilon, delta: float = 1e-6,
                 period: PeriodCap | None = None, clock: Clock = utc_now) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.path, self.dataset, self.total, self.delta = Path(path), dataset, total, delta
        self.period, self.clock = period, clock
        self.owner = uuid.uuid4().hex  # this process's identity for its reservations
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._transaction(durable=True) as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute("INSERT OR IGNORE INTO budget (dataset, spent) VALUES (?, ?)",
                       (dataset, Loss().encode()))
            self._add_logged_column(db)
            self._fill_period_totals(db)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, kept open (closing the last one checkpoints the WAL)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        yield db

    @contextmanager
    def _transaction(self, durable: bool) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            if getattr(self._local, "durable", None) is not durable:  # once per change
                db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._local.durable = durable
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def state(self) -> BudgetState:
        with self._connect() as db:
            spent = self._spent(db)
            if self.period is None:
                return BudgetState(self.dataset, self.total, spent, self.delta)
            now = self.clock()
            return BudgetState(self.dataset, self.total, spent, self.delta, self.period,
                               self._period_spent(db, now),
                               period_label(self.period.period, now))

    def _period_spent(self, db: sqlite3.Connection, now: datetime) -> Loss:
        """Loss of the charges (reserved or committed) stamped in the period of `now`."""
        assert self.period is not None
        row = db.execute("SELECT spent FROM period_spent WHERE dataset = ? AND period = ? "
                         "AND label = ?", (self.dataset, self.period.period,
                                           period_label(self.period.period, now))).fetchone()
        return Loss() if row is None else _decode(row[0])

    def _add_to_periods(self, db: sqlite3.Connection, loss: Loss, when: datetime,
                        refund: bool = False) -> None:
        """Add `loss` to (or take a refund from) the running total of each period of `when`."""
        labels = {period: period_label(period, when) for period in PERIODS}
        pairs = ", ".join("(?, ?)" for _ in labels)
        rows = db.execute("SELECT period, label, spent FROM period_spent WHERE dataset = ? AND "
                          f"(period, label) IN (VALUES {pairs})",
                          (self.dataset, *(x for item in labels.items() for x in item)))
        before = {period: _decode(spent) for period, label, spent in rows
                  if labels[period] == label}
        totals = {period: (before.get(period, Loss()) - loss if refund
                           else before.get(period, Loss()) + loss) for period in PERIODS}
        db.executemany("INSERT OR REPLACE INTO period_spent (dataset, period, label, spent) "
                       "VALUES (?, ?, ?, ?)", [(self.dataset, period, labels[period],
                                                _encode(total))
                                               for period, total in totals.items()])

    @staticmethod
    def _add_logged_column(db: sqlite3.Connection) -> None:
        """A ledger from before the audit mark: every charge starts unmarked, so its first
        replay looks its entry up in the log (and writes it if it is missing)."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(charge)")}
        if "logged" not in columns:
            db.execute("ALTER TABLE charge ADD COLUMN logged INTEGER NOT NULL DEFAULT 0")

    def _fill_period_totals(self, db: sqlite3.Connection) -> None:
        """Sum the period totals from the charges of a ledger written before they were kept."""
        if db.execute("SELECT 1 FROM period_spent WHERE dataset = ? LIMIT 1",
                      (self.dataset,)).fetchone() is not None:
            return
        totals: dict[tuple[str, str], Loss] = {}
        for loss, created in db.execute("SELECT loss, created_at FROM charge WHERE dataset = ?",
                                        (self.dataset,)):
            when = parse_timestamp(created)
            for period in PERIODS:
                key = (period, period_label(period, when))
                totals[key] = totals.get(key, Loss()) + Loss.decode(loss)
        db.executemany("INSERT INTO period_spent (dataset, period, label, spent) "
                       "VALUES (?, ?, ?, ?)", [(self.dataset, period, label, loss.encode())
                                               for (period, label), loss in totals.items()])

    def _spent(self, db: sqlite3.Connection) -> Loss:
        row = db.execute("SELECT spent FROM budget WHERE dataset = ?", (self.dataset,)).fetchone()
        return _decode(row[0])

    def reserve(self, key: str, fingerprint: str, loss: Loss) -> Replay | Reserved:
        """Charge `loss` for `key` atomically, or return the stored release of a retry."""
        with self._transaction(durable=False) as db:
            row = db.execute(
                "SELECT fingerprint, state, owner, release, loss, created_at, logged FROM charge "
                "WHERE dataset = ? AND query_key = ?", (self.dataset, key)).fetchone()
            if row is not None:
                return self._existing(db, key, fingerprint, row)
            spent = self._spent(db)
            total = spent + loss
            if not total.within(self.total, self.delta):
                before, after = spent.epsilon_at(self.delta), total.epsilon_at(self.delta)
                raise BudgetExhausted(
                    f"budget of dataset {self.dataset!r} exhausted: spent epsilon {before} of "
                    f"{self.total}, this query ({loss}) would bring it to {after} "
                    f"(delta {self.delta:g}; remaining {self.total - before})")
            now = self.clock()
            if self.period is not None:
                self._check_period(db, loss, now)
            db.execute("UPDATE budget SET spent = ? WHERE dataset = ?",
                       (_encode(total), self.dataset))
            self._add_to_periods(db, loss, now)
            stamp = timestamp(now)
            db.execute("INSERT INTO charge (dataset, query_key, fingerprint, loss, state, owner,"
                       " created_at) VALUES (?, ?, ?, ?, 'reserved', ?, ?)",
                       (self.dataset, key, fingerprint, loss.encode(), self.owner, stamp))
            return Reserved(key, loss=loss, charged_at=stamp)

    def _check_period(self, db: sqlite3.Connection, loss: Loss, now: datetime) -> None:
        """Refuse a charge that would take the current period over its cap."""
        assert self.period is not None
        spent = self._period_spent(db, now)
        cap = self.period.epsilon
        if not (spent + loss).within(cap, self.delta):
            before, after = spent.epsilon_at(self.delta), (spent + loss).epsilon_at(self.delta)
            raise BudgetExhausted(
                f"policy rule budget.per_period: the {self.period.period} "
                f"{period_label(self.period.period, now)} of dataset {self.dataset!r} is "
                f"exhausted: spent epsilon {before} of {cap}, this query ({loss}) would bring it "
                f"to {after} (remaining {cap - before}; the next {self.period.period} starts "
                f"afresh)")

    def _existing(self, db: sqlite3.Connection, key: str, fingerprint: str,
                  row: tuple[str, str, str, str | None, str, str, int]) -> Replay | Reserved:
        stored_fingerprint, state, owner, release, loss, created, logged = row
        if stored_fingerprint != fingerprint:
            raise IdempotencyConflict(
                f"idempotency_key {key!r} was already used for a different query")
        if state == "committed" and release is not None:
            return Replay(release, Loss.decode(loss), created, bool(logged))
        if owner == self.owner:
            raise QueryInProgress(f"idempotency_key {key!r}: the same query is being answered")
        db.execute("UPDATE charge SET owner = ? WHERE dataset = ? AND query_key = ?",
                   (self.owner, self.dataset, key))
        return Reserved(key, taken_over=True, loss=Loss.decode(loss), charged_at=created)

    def commit(self, key: str, release: str) -> None:
        """Store the release with its charge; only after this may it leave the node."""
        with self._transaction(durable=True) as db:
            cur = db.execute(
                "UPDATE charge SET state = 'committed', release = ?, committed_at = ? "
                "WHERE dataset = ? AND query_key = ? AND state = 'reserved' AND owner = ?",
                (release, timestamp(self.clock()), self.dataset, key, self.owner))
            if cur.rowcount != 1:
                raise RuntimeError(f"ledger: no reservation of ours for key {key!r}")

    def mark_logged(self, key: str) -> None:
        """Note that the audit entry recording `key`'s charge is written. Not synchronous: a
        mark lost in a power cut only makes the engine look the entry up in the log again."""
        with self._transaction(durable=False) as db:
            db.execute("UPDATE charge SET logged = 1 WHERE dataset = ? AND query_key = ? "
                       "AND state = 'committed'", (self.dataset, key))

    def is_logged(self, key: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT logged FROM charge WHERE dataset = ? AND query_key = ?",
                             (self.dataset, key)).fetchone()
        return row is not None and bool(row[0])

    def cancel(self, key: str) -> None:
        """Refund a reservation whose computation failed before producing any output."""
        with self._transaction(durable=False) as db:
            row = db.execute(
                "SELECT loss, created_at FROM charge WHERE dataset = ? AND query_key = ? "
                "AND state = 'reserved' AND owner = ?", (self.dataset, key, self.owner)).fetchone()
            if row is None:
                return
            refund = Loss.decode(row[0])
            db.execute("UPDATE budget SET spent = ? WHERE dataset = ?",
                       ((self._spent(db) - refund).encode(), self.dataset))
            self._add_to_periods(db, refund, parse_timestamp(row[1]), refund=True)
            db.execute("DELETE FROM charge WHERE dataset = ? AND query_key = ?",
                       (self.dataset, key))

    def charges(self) -> list[tuple[str, Loss, str]]:
        """Every charge of this dataset: (key, loss, state), oldest first."""
        return [(c.key, c.loss, c.state) for c in self.history()]

    def history(self) -> list[Charge]:
        """Every charge of this dataset with its timestamps, oldest first."""
        with self._connect() as db:
            return self._history(db)

    def _history(self, db: sqlite3.Connection) -> list[Charge]:
        rows = db.execute("SELECT query_key, loss, state, created_at, committed_at, logged "
                          "FROM charge WHERE dataset = ? ORDER BY rowid",
                          (self.dataset,)).fetchall()
        return [Charge(k, Loss.decode(e), s, c, t, bool(m)) for k, e, s, c, t, m in rows]

    def snapshot(self) -> Snapshot:
        """Charges, running total and period totals from one consistent read."""
        with self._connect() as db:
            db.execute("BEGIN")
            try:
                charges = tuple(self._history(db))
                periods = {(period, label): Loss.decode(spent) for period, label, spent in
                           db.execute("SELECT period, label, spent FROM period_spent "
                                      "WHERE dataset = ?", (self.dataset,))}
                return Snapshot(charges, self._spent(db), periods)
            finally:
                db.execute("COMMIT")


_TEXTS: dict[str, Loss] = {}  # a loss's stored text -> the loss (see `_decode`)
_TEXTS_MAX = 4096


def _decode(text: str) -> Loss:
    """`Loss.decode`, remembered: the running totals this process wrote are read back by the
    next query, and parsing exact fractions from text is slow. The text is an exact
    encoding, so the same text is always the same loss."""
    loss = _TEXTS.get(text)
    if loss is None:
        loss = Loss.decode(text)
        _remember(text, loss)
    return loss


def _encode(loss: Loss) -> str:
    text = loss.encode()
    _remember(text, loss)
    return text


def _remember(text: str, loss: Loss) -> None:
    if len(_TEXTS) >= _TEXTS_MAX:
        _TEXTS.clear()
    _TEXTS[text] = loss


# --- backup ----------------------------------------------------------------------------


@contextmanager
def writers_paused(path: Path) -> Iterator[sqlite3.Connection]:
    """Hold the ledger's write lock (`BEGIN IMMEDIATE` on a connection of its own) so that no
    process reserves, commits, cancels or marks a charge meanwhile; readers go on (WAL). The
    node's writers wait (busy timeout) and resume when it is released."""
    db = sqlite3.connect(path, timeout=60, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        finally:
            db.execute("ROLLBACK")
    finally:
        db.close()


def unlogged_since(db: sqlite3.Connection, dataset: str, since: str) -> list[str]:
    """Keys of committed charges committed at or after `since` whose audit mark is not set:
    those whose released entry may still be on its way to the log."""
    rows = db.execute("SELECT query_key FROM charge WHERE dataset = ? AND state = 'committed' "
                      "AND logged = 0 AND committed_at >= ?", (dataset, since))
    return [str(key) for (key,) in rows]


def copy_database(path: Path, target: Path) -> None:
    """A consistent copy of the ledger at `path` as it is now, by SQLite's online backup API
    (a read transaction of its own: concurrent writers are neither blocked nor seen)."""
    source = sqlite3.connect(path, timeout=60)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        copy.close()
        source.close()
