"""What the workspace remembers: members' last contact, confirmations it handed out, the
spend log.

Kept under `--data-dir`: `members.json` (when each member was last reachable, and since when
it is not: survives a restart), `spend-log.jsonl` (one JSON line per query that may spend
budget: time, user, run, idempotency key, the query) and the runs (see `runs`). Confirmations
live in memory: a confirm step that outlived a restart is planned again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridgestat.coordinator.client.fanout import Failure
from bridgestat.coordinator.client.network_file import Member
from bridgestat.coordinator.studies.studyfile import Study
from bridgestat.v1 import node_service_pb2 as pb

PENDING_SECONDS = 3600.0
"""How long a confirmation stays valid."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Contact:
    """A member's last answer and, while it does not answer, since when."""

    last_seen: str | None = None
    down_since: str | None = None


@dataclass(frozen=True)
class MemberView:
    """One row of the Members page."""

    name: str
    mode: str  # "inbound" | "connect"
    address: str
    reachable: bool
    contact: Contact
    problem: str = ""
    software: str = ""
    schema: str = ""
    dataset: str = ""
    total: float = 0.0
    spent: float = 0.0
    left: float = 0.0
    spent_rho: float = 0.0
    max_per_query: float = 0.0
    period: str = ""  # the policy's calendar period (year, quarter, month), if capped
    period_name: str = ""  # the current one, e.g. 2026-Q4
    period_total: float = 0.0
    period_spent: float = 0.0
    period_left: float = 0.0

    @property
    def used_share(self) -> float:
        """Share of the budget spent, for the bar (0-1)."""
        return min(1.0, max(0.0, self.spent / self.total)) if self.total > 0 else 0.0

    @property
    def period_used_share(self) -> float:
        """Share of the current period's cap spent, for its bar (0-1)."""
        if self.period_total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.period_spent / self.period_total))


class Contacts:
    """Members' last contact, saved in `members.json` after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known: dict[str, Contact] = {}
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            self.known = {str(k): Contact(v.get("last_seen"), v.get("down_since"))
                          for k, v in raw.items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError):
            pass

    def update(self, infos: Mapping[str, pb.GetNodeInfoResponse | Failure]) -> None:
        stamp = now_iso()
        for member, info in infos.items():
            contact = self.known.setdefault(member, Contact())
            if isinstance(info, Failure):
                contact.down_since = contact.down_since or stamp
            else:
                contact.last_seen, contact.down_since = stamp, None
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in self.known.items()},
                                  indent=1), encoding="utf-8")
        tmp.replace(self.path)

    def views(self, members: tuple[Member, ...],
              infos: Mapping[str, pb.GetNodeInfoResponse | Failure]) -> list[MemberView]:
        rows = []
        for m in members:
            info = infos.get(m.name)
            mode = "connect" if m.hub is not None else "inbound"
            contact = self.known.get(m.name, Contact())
            if info is None or isinstance(info, Failure):
                problem = f"{info.code}: {info.message}" if info is not None else ""
                rows.append(MemberView(m.name, mode, m.address, False, contact, problem))
                continue
            b = info.budget
            p = b.period if b.HasField("period") else None
            rows.append(MemberView(
                m.name, mode, m.address, True, contact, "", info.software_version,
                f"{info.schema.name} {info.schema.version}", b.dataset, b.total.epsilon,
                b.spent.epsilon, b.remaining.epsilon, b.spent.rho, b.max_per_query.epsilon,
                p.period if p else "", p.name if p else "", p.total.epsilon if p else 0.0,
                p.spent.epsilon if p else 0.0, p.remaining.epsilon if p else 0.0))
        return rows


@dataclass(frozen=True)
class Pending:
    """A confirmation handed out by a plan step: its run id is the idempotency key prefix."""

    run_id: str
    kind: str  # "compare" | "study"
    study: Study
    session: str
    title: str
    entry: str = ""  # the catalogue entry of a comparison
    created: float = field(default_factory=time.time)

    @property
    def expired(self) -> bool:
        return time.time() - self.created > PENDING_SECONDS


class SpendLog:
    """`spend-log.jsonl`: one line per query sent that may spend budget (appended before it
    is sent, so a crash never hides a spend)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def write(self, **entry: Any) -> None:
        line = json.dumps({"time": now_iso(), **entry}, default=_plain, sort_keys=False)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()

    def entries(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)
