"""Runs that spend budget: comparisons and studies, each a study run with its own run id.

A comparison is a one-analysis study, so both go through `study.run`: the same checks
before anything is spent, `results.json` saved after every analysis, and idempotency keys
`<run id>:<analysis>:<n>` that the nodes replay for free. The run id is drawn at the plan
step and carried by the confirm form, so a double click, a reload or a second submit of the
same confirmation joins the run already started (and a node would replay it anyway). A run
happens in a worker thread on a blocking `Network` whose `run` records progress per analysis
and member and writes every query to the spend log before sending it.

Runs are kept in `<data-dir>/compare/<run id>/` and `<data-dir>/studies/<run id>/`
(`results.json`, the study file, reports), listed newest first with their loss.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bridgestat.coordinator.api import Network, QueryResult
from bridgestat.coordinator.client.network_file import Member, TlsFiles
from bridgestat.coordinator.client.query import Query
from bridgestat.coordinator.report.i18n import N_, Translator
from bridgestat.coordinator.studies import runner as study_runner
from bridgestat.coordinator.studies.studyfile import Study
from bridgestat.coordinator.web.state import SpendLog, now_iso

KINDS = ("compare", "studies")


# The words of the progress table (a step's state, a member's outcome), translated when shown;
# a member's failure is its gRPC status code, shown as it is (operations teams search for it).
PROGRESS_WORDS = {"waiting": N_("waiting"), "running": N_("running"), "done": N_("done"),
                  "stopped": N_("stopped"), "failed": N_("failed"), "ok": N_("ok"),
                  "replayed": N_("replayed (no new spending)")}


def progress_words(t: Translator) -> dict[str, str]:
    """Each progress word in the reader's language, for the page and the live poll."""
    return {word: t.gettext(message) for word, message in PROGRESS_WORDS.items()}


@dataclass
class Step:
    """Progress of one analysis: waiting, running, done; each member's outcome so far."""

    id: str
    title: str
    state: str = "waiting"
    members: dict[str, str] = field(default_factory=dict)  # ok | replayed | CODE


@dataclass
class Run:
    """A run in this process: its progress, its log lines and how it ended."""

    run_id: str
    kind: str  # "compare" | "studies"
    folder: Path
    title: str
    user: str
    steps: list[Step]
    members: tuple[str, ...]
    state: str = "running"  # running | done | failed
    error: str = ""
    log: list[str] = field(default_factory=list)
    started: str = field(default_factory=now_iso)
    task: asyncio.Future[None] | None = None

    def step(self, analysis_id: str) -> Step | None:
        return next((s for s in self.steps if s.id == analysis_id), None)

    def progress(self) -> dict[str, Any]:
        """What the progress poll returns (JSON)."""
        return {"state": self.state, "error": self.error, "members": list(self.members),
                "steps": [{"id": s.id, "title": s.title, "state": s.state,
                           "members": s.members} for s in self.steps],
                "log": self.log[-40:]}


class RunNetwork(Network):
    """A blocking client that records each query's progress in `run` and logs it first."""

    def __init__(self, members: Sequence[Member], timeout: float, *, tls: TlsFiles | None,
                 insecure: bool, record: Run, spend_log: SpendLog) -> None:
        super().__init__(members, timeout, tls=tls, insecure=insecure)
        self.record, self.spend_log = record, spend_log

    def run(self, query: Query, key: str | None = None) -> QueryResult:
        analysis = key.split(":")[1] if key and key.count(":") >= 2 else ""
        step = self.record.step(analysis)
        for other in self.record.steps:
            if other is not step and other.state == "running":
                other.state = "done"
        if step is not None:
            step.state = "running"
        self.spend_log.write(user=self.record.user, action=self.record.kind,
                             run_id=self.record.run_id, key=key, query=query)
        result: QueryResult = super().run(query, key)
        if step is not None:
            for member in result.members:
                if member in result.failures:
                    step.members[member] = result.failures[member].code
                elif step.members.get(member, "ok") in ("ok", "replayed"):
                    step.members[member] = ("replayed" if result.releases[member].replayed
                                            else "ok")
        return result


def execute(run: Run, study: Study, net: RunNetwork) -> None:
    """Run the study in this (worker) thread; the outcome goes into `run`."""
    try:
        study_runner.run(study, net, run.folder, run_id=run.run_id, echo=run.log.append)
    except Exception as exc:  # noqa: BLE001 - any failure is shown on the run's page
        run.state, run.error = "failed", str(exc) or type(exc).__name__
    else:
        run.state = "done"
    finally:
        net.close()
    for step in run.steps:
        if step.state == "running":
            step.state = "done" if run.state == "done" else "stopped"


class Runs:
    """The runs of this process, and the saved ones under the data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.active: dict[str, Run] = {}
        self._lock = threading.Lock()

    def folder(self, kind: str, run_id: str) -> Path:
        if kind not in KINDS or not run_id.isalnum():
            raise KeyError(run_id)
        return self.data_dir / kind / run_id

    def start(self, run: Run, study: Study, net: RunNetwork) -> Run:
        """Start `run` unless a run with its id exists: then return that one (a double
        submission joins the first)."""
        with self._lock:
            if run.run_id in self.active:
                net.close()
                return self.active[run.run_id]
            self.active[run.run_id] = run
        run.folder.mkdir(parents=True, exist_ok=True)
        run.task = asyncio.ensure_future(asyncio.to_thread(execute, run, study, net))
        return run

    def results(self, kind: str, run_id: str) -> dict[str, Any] | None:
        """A run's saved results document, or None."""
        try:
            doc = json.loads((self.folder(kind, run_id) / "results.json").read_text("utf-8"))
        except (KeyError, OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def listed(self, kind: str) -> list[dict[str, Any]]:
        """The saved runs of a kind, newest first, with their loss."""
        found = []
        base = self.data_dir / kind
        for results in base.glob("*/results.json") if base.is_dir() else ():
            doc = self.results(kind, results.parent.name)
            if doc is None:
                continue
            active = self.active.get(results.parent.name)
            found.append({"run_id": doc.get("run_id") or results.parent.name,
                          "created": doc.get("created") or "",
                          "title": (doc.get("study") or {}).get("title") or "",
                          "analyses": len(doc.get("analyses") or []),
                          "state": active.state if active else "done",
                          **loss_of(doc)})
        return sorted(found, key=lambda r: str(r["created"]), reverse=True)


def loss_of(doc: dict[str, Any]) -> dict[str, float]:
    """The largest loss any member paid in a run (epsilon, rho), from its analyses."""
    per_member: dict[str, list[float]] = {}
    for analysis in doc.get("analyses") or []:
        for member, loss in (analysis.get("loss") or {}).items():
            spent = per_member.setdefault(member, [0.0, 0.0])
            spent[0] += float(loss.get("epsilon") or 0.0)
            spent[1] += float(loss.get("rho") or 0.0)
    epsilon = max((v[0] for v in per_member.values()), default=0.0)
    rho = max((v[1] for v in per_member.values()), default=0.0)
    return {"epsilon": epsilon, "rho": rho}


# -- downloads ------------------------------------------------------------------------------


def frames(analysis: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """An analysis's tables as DataFrames (raw values, as results.json keeps them)."""
    found = []
    for table in analysis.get("tables") or []:
        frame = pd.DataFrame(table.get("rows") or [], columns=table.get("columns") or None)
        found.append((str(table.get("name") or "table"), frame))
    return found


def csv_bytes(analysis: dict[str, Any], index: int = 0) -> bytes:
    tables = frames(analysis)
    if not 0 <= index < len(tables):
        raise KeyError(index)
    return tables[index][1].to_csv(index=False).encode("utf-8")


def xlsx_bytes(analysis: dict[str, Any], note: str) -> bytes:
    """Every table of an analysis as a sheet of one workbook, and a sheet with the note."""
    buffer = io.BytesIO()
    with pd.ExcelWriter(buffer, engine="xlsxwriter") as writer:
        used: set[str] = set()
        for name, frame in frames(analysis):
            sheet = _sheet_name(name, used)
            frame.to_excel(writer, sheet_name=sheet, index=False)
        pd.DataFrame({"note": [note]}).to_excel(writer, sheet_name="about", index=False)
    return buffer.getvalue()


def _sheet_name(name: str, used: set[str]) -> str:
    base = "".join(c for c in name if c not in "[]:*?/\\")[:28] or "table"
    sheet, n = base, 1
    while sheet in used:
        n += 1
        sheet = f"{base}_{n}"
    used.add(sheet)
    return sheet


def finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
