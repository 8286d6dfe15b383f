"""The coordinator's witness of every member's audit log: the heads it saw, kept outside the
node, so that nobody has to copy hashes by hand.

Every node answer (RunQuery and GetNodeInfo, directly or relayed by the hub) carries the
head of the node's hash-chained audit log: the seq and hash of its last entry. `Fanout`
hands each fan-out's answers to `Witness.observe`, which appends the heads it has not seen
yet to the witness file (one JSON line per member per head, `bridgestat.common.witness`;
appended under an exclusive flock and fsync'ed: one write per fan-out, not per member).
By default the file is `<network file>.witness.jsonl` beside the network file
(`Network.from_file(..., witness=...)` names another).

What it catches, with `bridgestat witness check` (every member's head now against the file)
or with the file copied to the member (`bridgestat-node audit verify --witness FILE`):

- a log cut back, or an older log (with its older ledger) restored: the head's seq is below
  one witnessed;
- a log whose tail was rewritten and re-hashed: another hash at a witnessed seq. The check
  here sees that when the node's head is at a witnessed seq; a rewrite that later entries
  cover is caught by the node's verify with the witness file, which checks every witnessed
  (seq, hash) in the chain.

A witness file that cannot be written is logged as a warning and the answers are used
anyway: a missing witness must not stop a study (`witness check` then has less to compare).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bridgestat.common.witness import Witnessed, WitnessError, read
from bridgestat.v1 import node_service_pb2 as pb

log = logging.getLogger("bridgestat.coordinator.client.witness")
SUFFIX = ".witness.jsonl"
Answered = pb.RunQueryResponse | pb.GetNodeInfoResponse

__all__ = ["Witness", "WitnessError", "check", "default_path", "record"]


def default_path(network: Path) -> Path:
    """The witness file beside a network file: network.yaml -> network.witness.jsonl."""
    return network.with_name(network.stem + SUFFIX)


def _now() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y-%m-%dT%H:%M:%S}.{now.microsecond // 1000:03d}Z"


def head_of(member: str, answer: object) -> Witnessed | None:
    """The audit head an answer carries (None: not a node answer, or no audit log)."""
    if not isinstance(answer, Answered) or not answer.HasField("audit_head"):
        return None
    return Witnessed(member, int(answer.audit_head.seq), answer.audit_head.hash, _now())


def record(path: Path, heads: Sequence[Witnessed]) -> None:
    """Append `heads` to the witness file durably: one write under an exclusive flock (whole
    lines from concurrent coordinators), then fsync."""
    if not heads:
        return
    data = b"".join(head.line() for head in heads)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class Witness:
    """Records the heads a client sees in one witness file, each (member, seq, hash) once
    per process (an idle node's repeated GetNodeInfo head is not written again)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: dict[str, tuple[int, str]] = {}
        self._warned = False

    def observe(self, answers: Sequence[tuple[str, object]]) -> None:
        """Record the new heads of (member, answer) pairs; never raises for the file."""
        heads = [head for member, answer in answers
                 if (head := head_of(member, answer)) is not None
                 and self._seen.get(member) != (head.seq, head.hash)]
        try:
            record(self.path, heads)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write the witness file %s (%s): audit heads are not "
                            "witnessed", self.path, exc)
                self._warned = True
            return
        self._seen.update((head.member, (head.seq, head.hash)) for head in heads)


# --- checking --------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One member's result: `problem` None when its head agrees with what was witnessed."""

    member: str
    summary: str
    problem: bool


def check(witnessed: Sequence[Witnessed],
          now: Mapping[str, tuple[int, str] | str]) -> list[Finding]:
    """Compare every member's head now ((seq, hash), or why there is none) with the heads
    witnessed for it."""
    by_member: dict[str, list[Witnessed]] = {}
    for head in witnessed:
        by_member.setdefault(head.member, []).append(head)
    return [_check_member(member, by_member.get(member, []), current)
            for member, current in now.items()]


def _check_member(member: str, seen: list[Witnessed],
                  current: tuple[int, str] | str) -> Finding:
    if isinstance(current, str):
        return Finding(member, f"no head: {current}", True)
    seq, digest = current
    for first, second in _conflicts(seen):
        return Finding(member, f"REWRITTEN: two hashes witnessed at seq {first.seq} "
                       f"({first.hash} at {first.time}, {second.hash} at {second.time}): "
                       "the audit log was rewritten in between", True)
    if not seen:
        return Finding(member, f"head seq {seq}; nothing witnessed before", False)
    top = max(seen, key=lambda w: w.seq)
    if seq < top.seq:
        return Finding(member, f"CUT BACK: head seq {seq} is below seq {top.seq} witnessed at "
                       f"{top.time}: entries were removed from the end of the audit log, or "
                       "an older log (and ledger) was restored", True)
    at_seq = [w for w in seen if w.seq == seq and w.hash != digest]
    if at_seq:
        return Finding(member, f"REWRITTEN: head seq {seq} has hash {digest}, but "
                       f"{at_seq[0].hash} was witnessed at that seq at {at_seq[0].time}: the "
                       "audit log's tail was rewritten", True)
    distinct = len({(w.seq, w.hash) for w in seen})
    return Finding(member, f"head seq {seq} agrees with {distinct} witnessed heads "
                   f"(highest seq {top.seq})", False)


def _conflicts(seen: list[Witnessed]) -> list[tuple[Witnessed, Witnessed]]:
    first: dict[int, Witnessed] = {}
    found = []
    for head in seen:
        earlier = first.setdefault(head.seq, head)
        if earlier.hash != head.hash:
            found.append((earlier, head))
    return found


def check_network(network: Path, path: Path | None, timeout: float,
                  insecure: bool) -> int:
    """`bridgestat witness check`: ask every member for its head (GetNodeInfo) and compare
    it with the witness file; prints one line per member; 1 when any is cut back,
    rewritten or has no head to compare."""
    from bridgestat.coordinator.api import Network  # the client, only for this command

    path = path or default_path(network)
    witnessed = list(read(path)) if path.exists() else []
    with Network.from_file(network, timeout, insecure=insecure, witness=path) as net:
        infos = net.node_infos()
    now: dict[str, tuple[int, str] | str] = {}
    for member, info in infos.items():
        if not isinstance(info, pb.GetNodeInfoResponse):
            now[member] = f"unreachable ({info.code}: {info.message})"
        elif not info.HasField("audit_head"):
            now[member] = "the node reports no audit head (no audit log, or older software)"
        else:
            now[member] = (int(info.audit_head.seq), info.audit_head.hash)
    findings = check(witnessed, now)
    for finding in findings:
        print(f"{finding.member}: {finding.summary}")
    bad = [f.member for f in findings if f.problem]
    print(f"witness {path}: {len(witnessed)} heads witnessed; " +
          (f"PROBLEMS at {', '.join(bad)}" if bad else "every member agrees"))
    return 1 if bad else 0
