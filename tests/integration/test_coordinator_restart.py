"""A coordinator restarted while queries are in flight, with real processes on loopback:
clear outcomes, nothing charged twice, nothing lost.

The nodes are real `bridgestat-node serve` processes with their SQLite ledgers; the
coordinator is a real process too (the `bridgestat` CLI, or a child Python process using
`Network`), SIGKILLed mid-run and started again with the same idempotency keys.

- `study run --run-id R` killed before its first save, after its first analysis and half-way:
  the killed run leaves a results.json that is valid JSON (it is replaced atomically) or none;
  the nodes finish and store what was in flight though its caller is gone; the re-run with
  the same run id exits 0 with every analysis, replays exactly what the nodes had stored (the
  same answers) and computes the rest, so each member's ledger ends up with every query of
  the study charged once: spent equals the study's planned cost.
- The same restart when the budget pays for the study once but not for its saved half again:
  the re-run needs budget only for the analyses not saved (the nodes replay the rest free).
- `Network.run(query, key)` in a child process killed as it sends, while the query is at the
  nodes, and after the answer arrived: a new process retrying with the same key gets the
  release the node stored (replayed), or the first computation if the query never got there,
  and the key is charged once on every member, released once in its audit log.

Where exactly SIGKILL lands is racy by nature, so every assertion holds whatever the kill
point: what depends on it (replayed or computed now) is checked against the ledgers, read
straight from their files, and the nodes' own GetNodeInfo.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.query import Occasion, Query, Term
from bridgestat.coordinator.demo import local
from bridgestat.coordinator.studies import runner as study
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from bridgestat.coordinator.studies.studyfile import load_study
from bridgestat.node import audit
from bridgestat.node.loss import Loss
from tests.integration.conftest import LocalNetwork, local_network

REPO = Path(__file__).resolve().parents[2]
DELTA = 1e-6  # the nodes' default budget delta
RUN_ID = "restart-run"
SETTLE_TIMEOUT = 30.0  # the nodes finish an orphaned query in far less
MONTH_12 = Occasion.month(12, 3)
STEPS = ("housing_step", "family_care_step", "health_step", "social_network_step",
         "debt_step", "savings_step", "education_step", "employment_step")

# A released value by (group-by cell, statistic name): the same for a node's stored release
# and for what the coordinator received or saved, so the two can be compared exactly.
Values = dict[tuple[tuple[tuple[str, str], ...], str], float]


# -- reading a live node's ledger and audit log ----------------------------------------------

@dataclass(frozen=True)
class StoredCharge:
    state: str  # reserved | committed
    loss: Loss
    release: str | None  # the release as stored (JSON), once committed


@dataclass(frozen=True)
class LedgerView:
    spent: Loss
    charges: dict[str, StoredCharge]  # by idempotency key

    def reserved(self) -> list[str]:
        return [key for key, charge in self.charges.items() if charge.state == "reserved"]


def _ledger(member: local.LocalMember) -> LedgerView:
    """One read-only snapshot of the member's ledger file (safe beside its live node), with
    the ledger's invariants checked: spent is the exact sum of the charges, one row per key,
    and every committed charge has its stored release."""
    path = member.config.parent / "ledger.sqlite"
    dataset = f"{member.name}-synthetic"  # what local.write_configs names it
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        db.execute("BEGIN")  # one snapshot for both reads
        (spent,) = db.execute("SELECT spent FROM budget WHERE dataset = ?",
                              (dataset,)).fetchone()
        rows = db.execute("SELECT query_key, state, loss, release FROM charge "
                          "WHERE dataset = ? ORDER BY rowid", (dataset,)).fetchall()
        db.execute("COMMIT")
    view = LedgerView(Loss.decode(spent), {key: StoredCharge(state, Loss.decode(loss), release)
                                           for key, state, loss, release in rows})
    assert len(view.charges) == len(rows), rows
    assert view.spent == sum((c.loss for c in view.charges.values()), Loss()), member.name
    assert all(c.release is not None for c in view.charges.values() if c.state == "committed")
    return view


def _settled(members: list[local.LocalMember]) -> dict[str, LedgerView]:
    """Every member's ledger once no charge is left reserved: a node answers a query whose
    caller died, commits its release and keeps it for the retry. Fails if one never does."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        views = {m.name: _ledger(m) for m in members}
        reserved = {name: view.reserved() for name, view in views.items() if view.reserved()}
        if not reserved:
            return views
        if time.monotonic() > deadline:
            pytest.fail(f"charges still reserved after {SETTLE_TIMEOUT:.0f} s: {reserved}")
        time.sleep(0.02)


def _audit_outcomes(member: local.LocalMember) -> dict[str, list[str]]:
    """The outcome of every audit-log entry (released, replayed, ...) by idempotency key."""
    outcomes: dict[str, list[str]] = {}
    for entry in audit.entries(member.config.parent / "audit.jsonl"):
        outcomes.setdefault(entry["key"], []).append(entry["outcome"])
    return outcomes


def _spent_by_node(network: Path) -> dict[str, float]:
    """Each member's spent epsilon as its node reports it (GetNodeInfo)."""
    with Network.from_file(network) as client:
        info = client.info()
    assert list(info.status) == ["ok"] * len(info), info.to_dict("records")
    return dict(zip(info.member, info.epsilon_spent, strict=True))


def _epsilon(loss: Loss) -> float:
    return float(loss.epsilon_at(DELTA).value)


# -- releases, as the node stored them and as the coordinator got them -----------------------

def _stored_values(release: str | None) -> Values:
    """The values of a release as the node's ledger stores it (`Release.encode`)."""
    assert release is not None
    doc = json.loads(release)
    return {(tuple((c, v) for c, v in cell["group"]), value["name"]): value["value"]
            for cell in doc["cells"] for value in cell["values"]}


def _reported_values(release: dict[str, Any]) -> Values:
    """The values of a `MemberRelease` in JSON form (results.json, or a child's output)."""
    values: Values = {}
    for cell in release["cells"]:
        group = tuple((c, v) for c, v in cell["group"])
        for name, noisy in cell["values"].items():
            values[(group, name)] = noisy["value"]
        for name, point in (cell["points"] or {}).items():  # a quantile's chosen candidate
            values[(group, name)] = point
    return values


# -- 1. `bridgestat study run` killed and re-run with the same run id ------------------------

@pytest.fixture
def network(tmp_path: Path) -> Iterator[LocalNetwork]:
    """Three fresh node processes over mTLS (every ledger empty), stopped afterwards."""
    with local_network(tmp_path / "network", members=3, seed=11, total_epsilon=50.0,
                       max_per_query=2.5) as running:
        yield running


def _planned_by_cli(network: Path) -> dict[str, float]:
    """`bridgestat study plan`'s cost of the standard study per member (4 digits shown)."""
    done = subprocess.run([*local.coordinator_command(), "study", "plan", str(STANDARD_STUDY),
                           "--network", str(network)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("member-")]
    assert len(rows) == 3, done.stdout
    return {row[0]: float(row[2]) for row in rows}


def _read_results(out: Path) -> dict[str, Any] | None:
    """results.json of a run, or None. A half-written file fails here (json.loads)."""
    path = out / "results.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    doc: dict[str, Any] = json.loads(text)
    return doc


def _kill_study_run(command: list[str], out: Path, saved: int, log: Path
                    ) -> dict[str, Any] | None:
    """Start `study run`, SIGKILL it once `saved` analyses are in results.json (0: once it has
    printed its banner, i.e. checked the study and begun the first analysis), and return
    what the killed run left in results.json (None: nothing). Every intermediate results.json
    seen while waiting must parse too."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.with_suffix(".out").open("wb") as stdout, \
            log.with_suffix(".err").open("wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"study run ended (exit {process.returncode}) before it was killed:"
                            f"\n{log.with_suffix('.err').read_text()[-3000:]}")
            if saved == 0:
                ready = "== Study " in log.with_suffix(".out").read_text()
            else:
                doc = _read_results(out)
                ready = doc is not None and len(doc["analyses"]) >= saved
            if ready:
                break
            time.sleep(0.005)
        else:
            pytest.fail(f"no kill point after 120 s:\n{log.with_suffix('.err').read_text()}")
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL  # killed mid-run, not finished by itself
    return _read_results(out)


def _queries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every query of a results document by its idempotency key."""
    queries = {q["key"]: q for a in doc["analyses"] for q in a["queries"]}
    assert len(queries) == sum(len(a["queries"]) for a in doc["analyses"])  # keys unique
    return queries


@pytest.mark.parametrize("saved", [0, 1, 16],
                         ids=["before-first-save", "after-first-analysis", "half-way"])
def test_study_run_killed_then_rerun_with_its_run_id_charges_every_query_once(
        network: LocalNetwork, tmp_path: Path, saved: int) -> None:
    """SIGKILL `study run` mid-run, re-run the same command: every analysis is saved, what
    the nodes had answered is replayed (the same values), the rest computed, and each
    member's spent epsilon (GetNodeInfo, and the ledger file's exact sum of one charge per
    query) is the plan's cost, to float rounding."""
    standard = load_study(STANDARD_STUDY)
    ids = [a.id for a in standard.analyses]
    assert saved < len(ids)
    planned_cli = _planned_by_cli(network.network)
    with Network.from_file(network.network) as client:
        planned = {c.member: c.study for c in study.plan(standard, client).costs}
    assert set(planned) == set(planned_cli) == {m.name for m in network.members}
    out = tmp_path / "out"
    command = [*local.coordinator_command(), "study", "run", str(STANDARD_STUDY), "--network",
               str(network.network), "--out", str(out), "--run-id", RUN_ID]

    partial = _kill_study_run(command, out, saved, tmp_path / "killed")
    done_ids = [a["id"] for a in partial["analyses"]] if partial is not None else []
    assert len(done_ids) >= saved
    assert done_ids == ids[:len(done_ids)]  # saved in order, each analysis whole
    if partial is not None:
        assert partial["run_id"] == RUN_ID and partial["budget"] == []  # not finished
    saved_queries = _queries(partial) if partial is not None else {}
    in_flight = f"{RUN_ID}:{ids[len(done_ids)]}:"  # keys of the analysis the kill cut short

    after_kill = _settled(network.members)
    for member in network.members:
        view = after_kill[member.name]
        for key, query in saved_queries.items():  # what the killed run saved was charged
            assert query["failures"] == {}, query["failures"]
            assert view.charges[key].state == "committed"
            assert _stored_values(view.charges[key].release) == \
                _reported_values(query["releases"][member.name])
        unsaved = set(view.charges) - set(saved_queries)  # at most the analysis in flight
        assert all(key.startswith(in_flight) for key in unsaved), (in_flight, unsaved)

    again = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    doc = _read_results(out)
    assert doc is not None and doc["run_id"] == RUN_ID
    assert [a["id"] for a in doc["analyses"]] == ids  # every analysis
    assert all(a["tables"] for a in doc["analyses"])
    queries = _queries(doc)
    for key, query in saved_queries.items():  # the same answers as the killed run saved
        assert query["releases"].keys() == queries[key]["releases"].keys()
        for member, release in query["releases"].items():
            assert _reported_values(queries[key]["releases"][member]) == \
                _reported_values(release)

    spent = _spent_by_node(network.network)
    budget = {row["member"]: row for row in doc["budget"]}
    for member in network.members:
        final, before = _ledger(member), after_kill[member.name]
        assert set(final.charges) == set(queries)  # every query of the study, nothing else
        assert not final.reserved()
        for key, query in queries.items():
            assert query["failures"] == {}, query["failures"]
            release = query["releases"][member.name]
            assert _reported_values(release) == _stored_values(final.charges[key].release)
            if key in before.charges:  # stored before the restart: replayed, unchanged
                assert release["replayed"], key
                assert final.charges[key] == before.charges[key]
            elif not key.startswith(in_flight):  # (a late arrival there is the one race)
                assert not release["replayed"], key
        fresh = [c.loss for k, c in final.charges.items() if k not in before.charges]
        assert final.spent == before.spent + sum(fresh, Loss())  # the re-run paid the rest

        epsilon = _epsilon(final.spent)  # straight from the ledger file
        assert spent[member.name] == epsilon  # and as the node reports it
        assert budget[member.name]["epsilon_after"] == epsilon
        # the budget table counts the whole study, the killed run's charges included
        assert budget[member.name]["epsilon_before"] == 0.0
        assert budget[member.name]["epsilon_study"] == epsilon
        # the plan's cost, to float rounding (the plan sums floats, the node exact rationals)
        assert epsilon == pytest.approx(planned[member.name], rel=0, abs=1e-9)
        assert epsilon == pytest.approx(planned_cli[member.name], rel=1e-3)
        outcomes = _audit_outcomes(member)
        assert set(outcomes) == set(queries)
        for key, seen in outcomes.items():  # released once; a replay is all a retry got
            assert seen.count("released") == 1, (member.name, key, seen)
            assert set(seen) <= {"released", "replayed"}, (member.name, key, seen)


@pytest.fixture
def tight_network(tmp_path: Path) -> Iterator[LocalNetwork]:
    """As `network`, but each member's budget (epsilon 10.5) pays for the standard study
    (about 9.72) once, and not for the half of it a killed run already spent on top."""
    with local_network(tmp_path / "network", members=3, seed=11, total_epsilon=10.5,
                       max_per_query=2.5) as running:
        yield running


def test_rerun_after_a_kill_is_not_refused_when_the_budget_pays_for_the_study_once(
        tight_network: LocalNetwork, tmp_path: Path) -> None:
    """The restart must finish a study the members can afford: SIGKILL `study run` half-way
    and re-run it with its run id; the replayed half costs nothing, so the re-run must go
    through and leave each member at exactly the plan's cost."""
    standard = load_study(STANDARD_STUDY)
    with Network.from_file(tight_network.network) as client:
        costs = study.plan(standard, client).costs
    assert all(c.before == 0 and c.affordable for c in costs)
    out = tmp_path / "out"
    command = [*local.coordinator_command(), "study", "run", str(STANDARD_STUDY), "--network",
               str(tight_network.network), "--out", str(out), "--run-id", RUN_ID]
    partial = _kill_study_run(command, out, 16, tmp_path / "killed")
    assert partial is not None and len(partial["analyses"]) >= 16

    again = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr  # today: "the study's total loss is more..."
    doc = _read_results(out)
    assert doc is not None
    assert [a["id"] for a in doc["analyses"]] == [a.id for a in standard.analyses]
    spent = _spent_by_node(tight_network.network)
    for cost in costs:
        assert spent[cost.member] == pytest.approx(cost.study, rel=0, abs=1e-9)


# -- 2. `Network.run` in a coordinator process killed while its query is in flight -----------

def _regression() -> Query:
    """Cross products of 8 terms: on a 20 000-row member, tens of ms between the ledger's
    reserve and its commit, so the query is at the nodes long enough to be caught there."""
    terms = tuple(Term(c, occasion=MONTH_12) for c in STEPS)
    return Query("cross_products", "assessment", "", 0.0, occasion=MONTH_12, rho=0.05,
                 terms=terms)


def _coordinator(network: Path, key: str, out: Path) -> None:
    """The child coordinator: run the regression with `key`, write what every member
    answered to `out` (atomically), say so, then wait for stdin to close (or for SIGKILL)."""
    with Network.from_file(network, timeout=60.0) as net:
        print(f"SENDING {key}", flush=True)
        result = net.run(_regression(), key)
        doc = {"failures": {m: f"{f.code}: {f.message}" for m, f in result.failures.items()},
               "releases": {m: asdict(r) for m, r in result.releases.items()}}
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        tmp.replace(out)
        print("ANSWERED", flush=True)
        sys.stdin.read()


def _start_coordinator(network: Path, key: str, out: Path, stdin: int,
                       log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_coordinator_restart",
             str(network), key, str(out)], cwd=REPO, env=env, stdin=stdin,
            stdout=subprocess.PIPE, stderr=stderr, text=True)


def _read_line(process: subprocess.Popen[str], expected: str, log: Path) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith(expected), f"{line!r}; child stderr:\n{log.read_text()[-3000:]}"


def _wait_at_node(member: local.LocalMember, key: str, process: subprocess.Popen[str],
                  log: Path) -> None:
    """Wait until `member`'s ledger holds `key` (reserved: computing; committed: done)."""
    path = member.config.parent / "ledger.sqlite"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = db.execute("SELECT state FROM charge WHERE query_key = ?", (key,)).fetchone()
            if row is not None:
                return
            if process.poll() is not None:
                pytest.fail(f"child coordinator exited ({process.returncode}):\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.001)
    pytest.fail(f"{key} never reached {member.name}")


@pytest.fixture
def big_member_network(tmp_path: Path) -> Iterator[LocalNetwork]:
    """Three node processes over mTLS; member-03 has 20 000 participants (slow to answer)."""
    with local_network(tmp_path / "network", members=3, seed=5, total_epsilon=100.0,
                       max_per_query=3.0, sizes=(300, 300, 20000)) as running:
        yield running


@pytest.mark.parametrize("kill_at", ["sending", "at_nodes", "answered"])
def test_api_coordinator_killed_mid_query_and_its_retry_is_charged_once(
        big_member_network: LocalNetwork, tmp_path: Path, kill_at: str) -> None:
    """SIGKILL a child coordinator as it sends (`sending`), once the query is in the slow
    member's ledger (`at_nodes`) or after it wrote the answer (`answered`); a new process
    retries with the same key: every member answers, with the release it stored if the first
    attempt reached it (replayed; the same values the first child got, if it got any), and
    each ledger holds the key once, charged once."""
    net = big_member_network
    key = f"restart-{kill_at}"
    before = {m.name: _ledger(m) for m in net.members}
    first_out, first_log = tmp_path / "first.json", tmp_path / "first.log"
    first = _start_coordinator(net.network, key, first_out, subprocess.PIPE, first_log)
    try:
        _read_line(first, "SENDING", first_log)
        if kill_at == "at_nodes":
            _wait_at_node(net.members[2], key, first, first_log)
        elif kill_at == "answered":
            _read_line(first, "ANSWERED", first_log)
        first.send_signal(signal.SIGKILL)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    first_doc = json.loads(first_out.read_text()) if first_out.exists() else None
    if kill_at == "answered":
        assert first_doc is not None and first_doc["failures"] == {}, first_doc

    settled = _settled(net.members)  # what the first attempt left at the nodes
    reached = [m.name for m in net.members if key in settled[m.name].charges]
    if kill_at in ("at_nodes", "answered"):
        assert net.members[2].name in reached

    retry_out, retry_log = tmp_path / "retry.json", tmp_path / "retry.log"
    retry = _start_coordinator(net.network, key, retry_out, subprocess.DEVNULL, retry_log)
    stdout, _ = retry.communicate(timeout=120)
    assert retry.returncode == 0, retry_log.read_text()[-3000:]
    assert stdout.splitlines() == [f"SENDING {key}", "ANSWERED"]
    retried = json.loads(retry_out.read_text())
    assert retried["failures"] == {}, retried["failures"]

    spent = _spent_by_node(net.network)
    for member in net.members:
        name = member.name
        release = retried["releases"][name]
        final = _ledger(member)
        charge = final.charges[key]
        assert charge.state == "committed"
        assert set(final.charges) == set(before[name].charges) | {key}  # nothing else charged
        assert final.spent == before[name].spent + charge.loss  # the key charged once
        assert float(charge.loss.rho) == release["charged_rho"] > 0
        values = _reported_values(release)
        assert values and values == _stored_values(charge.release)
        if key in settled[name].charges:  # the first attempt got there: replayed, unchanged
            assert release["replayed"], name
            assert settled[name].charges[key] == charge
        else:  # it never did: nothing charged then, the retry computed it now
            assert settled[name].spent == before[name].spent
        if first_doc is not None:  # the first child got its answer: the very same values
            assert release["replayed"], name
            assert _reported_values(first_doc["releases"][name]) == values
        assert spent[name] == _epsilon(final.spent)
        seen = _audit_outcomes(member)[key]
        assert seen.count("released") == 1 and set(seen) <= {"released", "replayed"}, seen
        assert ("replayed" in seen) == release["replayed"]


def test_a_retry_arriving_while_the_node_still_answers_waits_for_the_replay(
        big_member_network: LocalNetwork) -> None:
    """Two coordinators send the same key at once (as a restarted coordinator does while its
    predecessor's query is still at the nodes). The node answers the later one ABORTED (the
    same query is being answered); the coordinator retries until its deadline and gets the
    replay: both succeed with the very same values, and the key is charged once. The race is
    forced: the slow member needs tens of ms per answer, and both calls leave together, so
    the audit log must show the node refusing the second at least once in a few keys."""
    net, slow = big_member_network, big_member_network.members[2]
    refused_in_progress = 0
    for attempt in range(5):
        key = f"concurrent-{attempt}"
        before = _ledger(slow)
        start = threading.Barrier(2)

        def send(key: str = key, start: threading.Barrier = start) -> Any:
            with Network.from_file(net.network, timeout=60.0) as client:
                client.info()  # channels up before the race
                start.wait()
                return client.run(_regression(), key)
        with ThreadPoolExecutor(2) as pool:
            first, second = (f.result() for f in [pool.submit(send), pool.submit(send)])
        assert first.failures == {} and second.failures == {}, (first.failures,
                                                                second.failures)
        for member in net.members:
            a, b = first.releases[member.name], second.releases[member.name]
            assert {a.replayed, b.replayed} == {False, True}, member.name
            assert _reported_values(asdict(a)) == _reported_values(asdict(b))
        after = _ledger(slow)
        assert after.spent == before.spent + after.charges[key].loss  # charged once
        entries = [e for e in audit.entries(slow.config.parent / "audit.jsonl")
                   if e["key"] == key]
        assert [e["outcome"] for e in entries].count("released") == 1
        refused_in_progress += sum(
            e["outcome"] == "refused" and e["error"]["code"] == "QueryInProgress"
            for e in entries)
        if refused_in_progress:
            return
    pytest.fail("the node never saw the second call while answering the first")


if __name__ == "__main__":  # the child coordinator of the API test
    _coordinator(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
