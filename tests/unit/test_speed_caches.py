"""What the study-speed caches (issue 11) must not change: a cached calibration still samples
noise on every release, an audit log appended to by two writers stays one chain, a ledger
shared by two writers adds every charge exactly, and the study's results document and
progress table say what the pandas-based code said."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from bridgestat.coordinator.studies import runner as study
from bridgestat.node import mechanisms
from bridgestat.node.audit import AuditLog, Record, verify
from bridgestat.node.ledger import Ledger, Reserved
from bridgestat.node.loss import Epsilon, Loss
from bridgestat.node.query import QuerySpec, Statistic

QUERY = QuerySpec(Statistic.COUNT, "participant", "", 0.5)


def test_a_cached_component_is_built_once_and_still_draws_fresh_noise() -> None:
    first = mechanisms.count_component(1.0)
    assert mechanisms.count_component(1.0) is first  # calibrated once per parameters
    assert mechanisms.count_component(0.5) is not first
    data = np.zeros(100, dtype=np.int64)
    draws = {int(first.release(data)) for _ in range(60)}
    # discrete Laplace at scale 1: P(two draws equal) < 0.5, so 60 equal draws have
    # probability below 2^-59; fresh noise gives several values
    assert len(draws) > 1
    rows = mechanisms.cross_product_components(2, 0.1)
    assert mechanisms.cross_product_components(2, 0.1) is rows


def test_two_writers_of_one_audit_log_keep_one_chain(tmp_path: Path) -> None:
    """Each AuditLog remembers the head it appended; another writer's append (another
    process) must make it read the file's head again, never chain onto a stale one."""
    path = tmp_path / "audit.jsonl"
    clock = lambda: datetime(2026, 3, 1, tzinfo=UTC)
    one, two = AuditLog(path, clock), AuditLog(path, clock)
    for i in range(6):
        writer = one if i % 3 else two
        writer.append(Record("coordinator", "ds", f"k{i}", QUERY, "replayed"))
    seqs = [json.loads(line)["seq"] for line in path.read_text().splitlines()]
    assert seqs == [1, 2, 3, 4, 5, 6]
    checked = verify(path)
    assert checked.ok and checked.count == 6, checked.problem


def test_two_writers_of_one_ledger_add_every_charge_exactly(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    one = Ledger(path, "ds", Epsilon.of(100))
    two = Ledger(path, "ds", Epsilon.of(100))
    losses = [Loss.of(0.1), Loss.of(0.2, 0.01), Loss.of(0.3)] * 4
    for i, loss in enumerate(losses):
        ledger = one if i % 2 else two
        assert isinstance(ledger.reserve(f"k{i}", "f", loss), Reserved)
        ledger.commit(f"k{i}", "{}")
    exact = sum(losses, Loss())
    assert one.state().spent_loss == two.state().spent_loss == exact
    assert one.snapshot().spent == exact


def _reference_records(frame: pd.DataFrame) -> list[dict[str, object]]:
    """The results document's rows as the code before the speed-up built them."""
    def plain(value: object) -> object:
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if value is pd.NA:
            return None
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, np.generic):
            return plain(value.item())
        return value
    return [{str(k): plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


def test_results_rows_and_the_progress_table_match_the_pandas_forms() -> None:
    frame = pd.DataFrame({
        "member": ["member-01", "member-02", "NETWORK"],
        "estimate": [1.23456, math.nan, -math.inf],
        "n": pd.array([3, None, 5], dtype="Int64"),
        "term": [("a", 1), None, ("b", 2)],
        "status": ["ok", "not estimable: " + "x" * 60, "ok"],
    })
    assert study._records(frame) == _reference_records(frame)
    text = json.dumps(study._records(frame), allow_nan=False)  # JSON-safe throughout
    assert json.loads(text)[1] == {"member": "member-02", "estimate": None, "n": None,
                                   "term": None, "status": "not estimable: " + "x" * 60}

    lines = study._short(frame).splitlines()
    assert lines[0].split() == ["member", "term", "estimate", "n", "status"]
    assert lines[1].split()[-3:] == ["1.23", "3", "ok"]
    assert "NaN" in lines[2] and "<NA>" in lines[2]
    assert lines[2].endswith("not estimable: " + "x" * 25)  # cut at 40 characters
    assert len({len(line) for line in lines}) == 1  # right-aligned columns

    long = pd.concat([frame] * 10, ignore_index=True)  # over 24 rows: NETWORK rows only
    assert [line.split()[0] for line in study._short(long).splitlines()[1:]] == \
        ["NETWORK"] * 10
