"""The budget ledger: idempotency, caps, concurrency, crash between reserve and commit."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from bridgestat.node.errors import BudgetExhausted, IdempotencyConflict, QueryInProgress
from bridgestat.node.ledger import Ledger, Replay, Reserved
from bridgestat.node.loss import Epsilon, Loss, rho_to_epsilon

EPS = Loss.of(0.3)


def _ledger(tmp_path: Path, total: float = 1.0) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite", "ds", Epsilon.of(total))


def test_retry_with_same_key_replays_and_charges_once(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    assert isinstance(ledger.reserve("k1", "fp", EPS), Reserved)
    ledger.commit("k1", '{"release": 1}')
    replay = ledger.reserve("k1", "fp", EPS)
    assert isinstance(replay, Replay)
    assert (replay.release, replay.loss, replay.logged) == ('{"release": 1}', EPS, False)
    assert replay.charged_at == ledger.history()[0].created_at
    assert ledger.state().spent_loss == EPS
    assert len(ledger.charges()) == 1


def test_same_key_with_other_query_is_refused(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.reserve("k1", "fp-a", EPS)
    ledger.commit("k1", "r")
    with pytest.raises(IdempotencyConflict, match="k1"):
        ledger.reserve("k1", "fp-b", EPS)
    assert ledger.state().spent_loss == EPS


def test_cap_binds_exactly(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, total=1.0)
    for key in ("a", "b", "c"):
        ledger.reserve(key, key, EPS)
        ledger.commit(key, key)
    with pytest.raises(BudgetExhausted, match="exhausted"):
        ledger.reserve("d", "d", EPS)  # 0.9 + 0.3 > 1.0
    ledger.reserve("e", "e", Loss(Fraction(1) - Fraction(0.3) * 3))  # exactly the rest
    assert ledger.state().spent == Epsilon.of(1)


def test_in_flight_key_is_not_answered_twice(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.reserve("k", "fp", EPS)
    with pytest.raises(QueryInProgress):
        ledger.reserve("k", "fp", EPS)


def test_cancel_refunds_a_failed_computation(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.reserve("k", "fp", EPS)
    ledger.cancel("k")
    assert ledger.state().spent == Epsilon.zero()
    assert ledger.charges() == []


def test_twenty_concurrent_queries_never_overspend(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, total=1.0)  # room for 3 charges of 0.3
    admitted, refused = [], []
    barrier = threading.Barrier(20)

    def spend(i: int) -> None:
        own = Ledger(ledger.path, "ds", Epsilon.of(1.0))  # its own connection and owner
        barrier.wait()
        try:
            own.reserve(f"q{i}", f"fp{i}", EPS)
            own.commit(f"q{i}", "r")
            admitted.append(i)
        except BudgetExhausted:
            refused.append(i)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3 and len(refused) == 17
    assert ledger.state().spent == Epsilon.of(Fraction(0.3) * 3)
    assert sum((e for _, e, _ in ledger.charges()), Loss()).epsilon_at(1e-6) == ledger.state().spent


CRASH = """
import os, sys
from bridgestat.node.ledger import Ledger
from bridgestat.node.loss import Epsilon, Loss
ledger = Ledger(sys.argv[1], "ds", Epsilon.of(1.0))
ledger.reserve("k", "fp", Loss.of(0.3))
os._exit(9)  # the process dies between reserve and commit
"""


def test_crash_between_reserve_and_commit_never_double_charges(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    Ledger(path, "ds", Epsilon.of(1.0))
    died = subprocess.run([sys.executable, "-c", CRASH, str(path)], check=False)
    assert died.returncode == 9
    restarted = Ledger(path, "ds", Epsilon.of(1.0))
    assert restarted.state().spent == Epsilon.of(0.3)  # the reservation stands
    outcome = restarted.reserve("k", "fp", Loss.of(0.3))  # the retry takes it over
    [charge] = restarted.history()
    assert outcome == Reserved("k", taken_over=True, loss=charge.loss,
                               charged_at=charge.created_at)  # the charge as it stands
    restarted.commit("k", "release")
    assert restarted.state().spent == Epsilon.of(0.3)  # charged once in total
    replay = restarted.reserve("k", "fp", Loss.of(0.3))
    assert isinstance(replay, Replay) and replay.release == "release"


def test_rho_charges_compose_in_zcdp_and_the_cap_binds_on_the_guarantee(tmp_path: Path) -> None:
    """Rho adds up before conversion: two rho = 0.02 releases cost epsilon(0.04), not 2x."""
    ledger = Ledger(tmp_path / "ledger.sqlite", "ds", Epsilon.of(3.0), delta=1e-6)
    ledger.reserve("pure", "a", Loss.of(epsilon=0.5))
    ledger.reserve("g1", "b", Loss.of(rho=0.02))
    ledger.reserve("g2", "c", Loss.of(rho=0.02))
    state = ledger.state()
    assert state.spent_loss == Loss.of(0.5, Fraction(0.02) + Fraction(0.02))
    expected = 0.5 + rho_to_epsilon(float(Fraction(0.02) + Fraction(0.02)), 1e-6)
    assert float(state.spent) == pytest.approx(expected, rel=1e-12)
    assert float(state.spent) < 0.5 + 2 * rho_to_epsilon(0.02, 1e-6)
    # epsilon(0.04 + 0.2, 1e-6) > 3: refused, nothing charged
    with pytest.raises(BudgetExhausted, match="delta 1e-06"):
        ledger.reserve("g3", "d", Loss.of(rho=0.2))
    assert ledger.state().spent_loss == state.spent_loss


def test_the_audit_mark_is_set_once_the_entry_is_written_and_survives_a_restart(
        tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.reserve("k", "fp", EPS)
    ledger.mark_logged("k")  # a reservation is never marked: no entry before the commit
    assert not ledger.is_logged("k")
    ledger.commit("k", "release")
    first = ledger.reserve("k", "fp", EPS)
    assert isinstance(first, Replay) and not first.logged
    ledger.mark_logged("k")
    restarted = _ledger(tmp_path)
    again = restarted.reserve("k", "fp", EPS)
    assert isinstance(again, Replay) and again.logged and restarted.is_logged("k")
    assert [c.logged for c in restarted.history()] == [True]


def test_a_ledger_from_before_the_audit_mark_gets_the_column_unmarked(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = _ledger(tmp_path)
    ledger.reserve("k", "fp", EPS)
    ledger.commit("k", "release")
    with closing(sqlite3.connect(path)) as db:  # the table as an older node wrote it
        db.execute("ALTER TABLE charge DROP COLUMN logged")
        db.commit()
    reopened = _ledger(tmp_path)
    replay = reopened.reserve("k", "fp", EPS)
    assert isinstance(replay, Replay) and not replay.logged  # its entry is looked up
    snapshot = reopened.snapshot()
    assert [c.key for c in snapshot.charges] == ["k"] and snapshot.spent == EPS
    assert snapshot.periods[("year", str(datetime.now(UTC).year))] == EPS
