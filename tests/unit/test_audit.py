"""The audit log: the hash chain (every edit, removal, reordering and truncation named by its
line), appends from many threads and processes, start-up checks, the ledger cross-check,
OpenDP's serialized measurements and the per-caller, per-period summary."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pytest

from bridgestat.node import mechanisms
from bridgestat.node.audit import (
    GENESIS,
    AuditLog,
    Record,
    entry_hash,
    format_summary,
    measurement,
    summarize,
    verify,
)
from bridgestat.node.errors import AuditError, PolicyError
from bridgestat.node.ledger import Ledger, Reserved, period_label
from bridgestat.node.loss import Epsilon, Loss
from bridgestat.node.query import QuerySpec, Statistic

QUERY = QuerySpec(Statistic.COUNT, "participant", "", 0.5)


class Clock:
    """Ticks one day per call from a fixed start, so entries span months."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(days=1)
        return self.now


def _record(key: str, caller: str = "coordinator", outcome: str = "released",
            epsilon: float = 0.5) -> Record:
    error = PolicyError("query.statistic", "policy rule statistics: no") \
        if outcome == "refused" else None
    return Record(caller, "ds", key, QUERY, outcome,
                  charged=Loss.of(epsilon) if outcome == "released" else Loss(), error=error)


def _log(tmp_path: Path, n: int = 5) -> Path:
    log = AuditLog(tmp_path / "audit.jsonl", Clock(datetime(2026, 1, 1, tzinfo=UTC)))
    for i in range(n):
        log.append(_record(f"k{i + 1}"))
    return log.path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_entries_are_chained_from_genesis(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    entries = [json.loads(line) for line in _lines(path)]
    assert [e["seq"] for e in entries] == [1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS
    assert [e["prev_hash"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]
    assert all(entry_hash(e) == e["hash"] for e in entries)
    assert entries[0]["caller"] == "coordinator" and entries[0]["key"] == "k1"
    assert entries[0]["query"]["statistic"] == "count"
    assert entries[0]["charged"] == {"epsilon": 0.5, "rho": 0.0, "exact": "1/2;0"}
    result = verify(path)
    assert result.ok and result.count == 3 and result.last_hash == entries[-1]["hash"]


def _edit_byte(lines: list[bytes]) -> list[bytes]:
    lines[2] = lines[2].replace(b'"k3"', b'"k9"')  # still valid JSON
    return lines


def _corrupt(lines: list[bytes]) -> list[bytes]:
    lines[3] = b"#" + lines[3][1:]  # the opening brace
    return lines


def _swap(lines: list[bytes]) -> list[bytes]:
    lines[1], lines[2] = lines[2], lines[1]
    return lines


def _truncate(lines: list[bytes]) -> list[bytes]:
    lines[-1] = lines[-1][:40]
    return lines


def _insert(lines: list[bytes]) -> list[bytes]:
    return [*lines[:2], lines[1], *lines[2:]]  # a copy of line 2 as line 3


def _refit(lines: list[bytes]) -> list[bytes]:
    """Remove line 2 and recompute its successor's hash (an editor who knows the scheme)."""
    entry = json.loads(lines[2])
    entry["seq"] = 2
    entry["hash"] = entry_hash(entry)
    return [lines[0], json.dumps(entry, separators=(",", ":")).encode() + b"\n", *lines[3:]]


TAMPERING: list[tuple[str, Callable[[list[bytes]], list[bytes]], int, str]] = [
    ("edited byte", _edit_byte, 3, "hash mismatch: the entry was edited"),
    ("corrupted line", _corrupt, 4, "not valid JSON"),
    ("removed line", lambda lines: [lines[0], *lines[2:]], 2, "seq 3 where 2 was expected"),
    ("removed first line", lambda lines: lines[1:], 1, "seq 2 where 1 was expected"),
    ("swapped lines", _swap, 2, "seq 3 where 2 was expected"),
    ("truncated last line", _truncate, 5, "incomplete entry"),
    ("inserted copy", _insert, 3, "seq 2 where 3 was expected"),
    ("removed and re-hashed", _refit, 2, "prev_hash does not match the hash of line 1"),
]


@pytest.mark.parametrize(("case", "tamper", "line", "reason"), TAMPERING,
                         ids=[t[0] for t in TAMPERING])
def test_tampering_is_named_by_its_first_line(
        tmp_path: Path, case: str, tamper: Callable[[list[bytes]], list[bytes]], line: int,
        reason: str) -> None:
    path = _log(tmp_path)
    path.write_bytes(b"".join(tamper(_lines(path))))
    result = verify(path)
    assert not result.ok, case
    assert result.line == line, result.problem
    assert result.problem is not None and result.problem.startswith(f"line {line}: {reason}"), \
        result.problem


def _release(ledger: Ledger, log: AuditLog, key: str, epsilon: float = 0.5,
             mark: bool = True) -> None:
    """What the engine does for a fresh release: charge, commit, log the charge, mark it."""
    charge = ledger.reserve(key, key, Loss.of(epsilon))
    assert isinstance(charge, Reserved)
    ledger.commit(key, "{}")
    log.append(Record("coordinator", "ds", key, QUERY, "released", charged=charge.loss,
                      charged_at=charge.charged_at))
    if mark:
        ledger.mark_logged(key)


def _ledger_and_log(tmp_path: Path, keys: str = "abc") -> tuple[Ledger, AuditLog]:
    ledger = Ledger(tmp_path / "ledger.sqlite", "ds", Epsilon.of(10))
    log = AuditLog(tmp_path / "audit.jsonl")
    for key in keys:
        _release(ledger, log, key)
    return ledger, log


def _rechain(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep only the entries `keep` accepts and recompute seq and hashes (an editor who
    knows the scheme: the chain itself then verifies)."""
    head, out = GENESIS, []
    for entry in (json.loads(line) for line in _lines(path)):
        if keep(entry):
            entry.update(seq=len(out) + 1, prev_hash=head)
            entry["hash"] = head = entry_hash(entry)
            out.append(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
    path.write_bytes(b"".join(out))


def test_cut_off_entries_are_caught_by_the_ledger_and_by_an_anchor(tmp_path: Path) -> None:
    ledger, log = _ledger_and_log(tmp_path)
    path = log.path
    anchor = verify(path).last_hash
    assert verify(path, ledger.snapshot(), "ds", anchor).ok
    path.write_bytes(b"".join(_lines(path)[:2]))  # a clean cut: the chain itself is intact
    assert verify(path).ok
    by_ledger = verify(path, ledger.snapshot(), "ds")
    assert by_ledger.problem is not None and "ledger charge 'c'" in by_ledger.problem
    assert "although the node wrote one: entries were removed" in by_ledger.problem
    by_anchor = verify(path, anchor=anchor)
    assert by_anchor.problem is not None and "anchor" in by_anchor.problem


def test_a_removed_released_entry_is_caught_even_when_its_replays_remain(
        tmp_path: Path) -> None:
    ledger, log = _ledger_and_log(tmp_path)
    log.append(_record("b", outcome="replayed"))
    _rechain(log.path, lambda e: not (e["key"] == "b" and e["outcome"] == "released"))
    assert verify(log.path).ok  # the chain alone cannot tell
    result = verify(log.path, ledger.snapshot(), "ds")
    assert result.problem is not None
    assert result.problem.startswith("ledger charge 'b' of dataset 'ds' (epsilon 0.5, "
                                     "committed ")
    assert "although the node wrote one: entries were removed" in result.problem


def test_a_charge_logged_only_as_replays_is_named(tmp_path: Path) -> None:
    """What the node did before this check: a retry after a failed audit write was logged
    as a free replay, and the log never recorded the charge."""
    ledger, log = _ledger_and_log(tmp_path, "a")
    ledger.reserve("k1", "k1", Loss.of(0.5))
    ledger.commit("k1", "{}")  # the audit write failed here
    log.append(_record("k1", outcome="replayed"))
    result = verify(log.path, ledger.snapshot(), "ds")
    assert result.problem is not None and result.problem.startswith("ledger charge 'k1'")
    assert "logged only as replays, charging nothing" in result.problem


def test_a_charge_whose_audit_write_failed_is_named_until_it_is_answered(
        tmp_path: Path) -> None:
    ledger, log = _ledger_and_log(tmp_path, "a")
    ledger.reserve("k1", "k1", Loss.of(0.5))
    ledger.commit("k1", "{}")
    result = verify(log.path, ledger.snapshot(), "ds")
    assert result.problem is not None and "the node wrote none yet" in result.problem
    assert "when the caller retries the key" in result.problem


def test_a_key_logged_as_released_twice_is_caught(tmp_path: Path) -> None:
    ledger, log = _ledger_and_log(tmp_path, "ab")
    [_, charge] = ledger.history()
    log.append(Record("coordinator", "ds", "b", QUERY, "released", charged=charge.loss,
                      charged_at=charge.created_at))
    result = verify(log.path, ledger.snapshot(), "ds")
    assert result.problem == ("key 'b' is logged as released 2 times (lines 2, 3): its loss "
                              "would count 2 times against the ledger's one charge")


def test_a_released_entry_without_a_ledger_charge_is_caught(tmp_path: Path) -> None:
    ledger, log = _ledger_and_log(tmp_path, "a")
    log.append(_record("ghost"))
    result = verify(log.path, ledger.snapshot(), "ds")
    assert result.problem is not None and result.problem.startswith(
        "line 2: key 'ghost' is logged as released, charging epsilon 0.5, but the ledger")


def test_the_charge_time_is_the_ledgers(tmp_path: Path) -> None:
    ledger, log = _ledger_and_log(tmp_path, "")
    charge = ledger.reserve("a", "a", Loss.of(0.5))
    ledger.commit("a", "{}")
    log.append(Record("coordinator", "ds", "a", QUERY, "released", charged=Loss.of(0.5),
                      charged_at="2025-12-31T23:59:59.999Z"))
    assert isinstance(charge, Reserved)
    result = verify(log.path, ledger.snapshot(), "ds")
    assert result.problem == (f"line 1: key 'a' charged at 2025-12-31T23:59:59.999Z, but the "
                              f"ledger charged it at {charge.charged_at}")


def _set(ledger: Ledger, sql: str, *args: object) -> None:
    with closing(sqlite3.connect(ledger.path)) as db:
        db.execute(sql, args)
        db.commit()


def test_totals_overall_and_per_period_are_reconciled_with_the_ledgers(
        tmp_path: Path) -> None:
    ledger, log = _ledger_and_log(tmp_path)
    ok = verify(log.path, ledger.snapshot(), "ds")
    assert ok.ok and ok.released == Loss.of(1.5) and ok.held == ()
    _set(ledger, "UPDATE budget SET spent = ? WHERE dataset = 'ds'", Loss.of(2).encode())
    total = verify(log.path, ledger.snapshot(), "ds")
    assert total.problem == ("in total the released entries charge epsilon 1.5, but the "
                             "ledger's running total is epsilon 2")
    _set(ledger, "UPDATE budget SET spent = ? WHERE dataset = 'ds'", Loss.of(1.5).encode())
    month = period_label("month", datetime.now(UTC))
    _set(ledger, "UPDATE period_spent SET spent = '1;0' WHERE period = 'month'")
    period = verify(log.path, ledger.snapshot(), "ds")
    assert period.problem == (f"month {month}: the released entries charge epsilon 1.5, but "
                              "the ledger's total for the month is epsilon 1")


def test_a_reservation_of_an_interrupted_query_is_held_not_logged(tmp_path: Path) -> None:
    ledger, log = _ledger_and_log(tmp_path, "ab")
    ledger.reserve("c", "c", Loss.of(0.25))  # the node was killed while computing it
    result = verify(log.path, ledger.snapshot(), "ds")
    assert result.ok, result.problem
    assert result.released == Loss.of(1.0)
    assert [(c.key, c.loss) for c in result.held] == [("c", Loss.of(0.25))]


def test_ledger_check_compares_the_exact_loss(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ledger = Ledger(tmp_path / "ledger.sqlite", "ds", Epsilon.of(10))
    ledger.reserve("a", "a", Loss.of(0.25))
    ledger.commit("a", "{}")
    AuditLog(path).append(_record("a", epsilon=0.5))
    result = verify(path, ledger.snapshot(), "ds")
    assert result.problem is not None and "the ledger charged 1/4;0" in result.problem


def test_find_released_finds_the_keys_entry_only(tmp_path: Path) -> None:
    _, log = _ledger_and_log(tmp_path, "ab")
    log.append(_record("a", outcome="replayed"))
    log.append(_record('b","x'))  # a key that contains another key's JSON text
    found = log.find_released("ds", "a")
    assert found is not None and (found["seq"], found["outcome"]) == (1, "released")
    assert log.find_released("ds", "c") is None and log.find_released("other", "a") is None


def test_appends_from_threads_and_processes_interleave_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path), AuditLog(path)]  # separate locks, like two processes: flock

    def writer(i: int) -> None:
        for j in range(15):
            logs[i % 2].append(_record(f"t{i}-{j}"))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify(path)
    assert result.ok, result.problem
    assert result.count == 90


def test_a_torn_last_line_stops_start_up(tmp_path: Path) -> None:
    path = _log(tmp_path, 2)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(AuditError, match="incomplete entry"):
        AuditLog(path)


def test_refusal_records_error_and_no_loss(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    entry = log.append(_record("r", outcome="refused"))
    assert entry["outcome"] == "refused" and entry["charged"]["exact"] == "0;0"
    assert entry["error"] == {"code": "PolicyError", "reason": "policy",
                              "message": "query.statistic: policy rule statistics: no"}
    assert entry["release"] is None


def test_measurements_are_openDP_serialized_and_deserialize_to_the_same_map() -> None:
    components = [mechanisms.count_component(0.5), mechanisms.histogram_component(4, 0.3),
                  *mechanisms.cross_product_components(2, 0.06)]
    shown = measurement(components)
    assert [m["components"] for m in shown][:2] == [["count"], ["histogram"]]
    assert len(shown[2]["components"]) == 6  # identical regression entries written once
    for item, component in zip(shown, components[:3], strict=True):
        rebuilt = dp.deserialize(item["opendp"])  # type: ignore[no-untyped-call]
        d_in = component.sum_bound or 1
        assert rebuilt.map(d_in) == component.measurement.map(d_in)  # type: ignore[no-untyped-call]
    # the regression's sums are taken outside OpenDP, and the entry says so
    assert "input" not in shown[0] and "input" not in shown[1]
    assert f"d_in = {mechanisms.FIXED_POINT}" in shown[2]["input"]
    assert shown[2]["input"].startswith("exact int64 sum")


def test_summary_per_caller_and_period(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", Clock(datetime(2026, 1, 29, tzinfo=UTC)))
    log.append(_record("a"))  # 2026-01-30
    log.append(_record("b", caller="analyst", outcome="refused"))  # 2026-01-31
    log.append(_record("c"))  # 2026-02-01
    log.append(_record("c", outcome="replayed"))  # 2026-02-02
    entries = [json.loads(line) for line in _lines(log.path)]
    rows = summarize(entries, "month")
    table = {(r.period, r.caller): r for r in rows}
    assert set(table) == {("2026-01", "analyst"), ("2026-01", "coordinator"),
                          ("2026-02", "coordinator")}
    assert table[("2026-02", "coordinator")].counts["replayed"] == 1
    assert float(table[("2026-02", "coordinator")].epsilon) == 0.5
    assert table[("2026-01", "analyst")].counts["refused"] == 1
    yearly = summarize(entries, "year")
    assert [(r.period, r.caller, float(r.epsilon)) for r in yearly] == [
        ("2026", "analyst", 0.0), ("2026", "coordinator", 1.0)]
    assert "coordinator" in format_summary(yearly).splitlines()[2]


def test_a_release_counts_in_the_period_the_ledger_charged_it(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", Clock(datetime(2026, 1, 31, tzinfo=UTC)))
    log.append(Record("coordinator", "ds", "a", QUERY, "released", charged=Loss.of(0.5),
                      charged_at="2026-01-31T23:59:59.999Z"))  # logged on 2026-02-01
    log.append(_record("a", outcome="replayed"))  # 2026-02-02
    rows = summarize([json.loads(line) for line in _lines(log.path)], "month")
    assert [(r.period, r.counts["released"], r.counts["replayed"], float(r.epsilon))
            for r in rows] == [("2026-01", 1, 0, 0.5), ("2026-02", 0, 1, 0.0)]
