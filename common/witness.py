"""The witness log's line format: audit chain heads a coordinator saw, kept outside the node.

Every node answer carries the head of the node's audit log (the seq and hash of its last
entry). The coordinator appends each head it sees as one JSON line,

    {"time": "2026-12-06T10:00:00.000Z", "member": "member-07", "seq": 42, "hash": "<sha256>"}

and `bridgestat-node audit verify --witness FILE` (the node) and `bridgestat witness check`
(the coordinator) read it back. Both sides parse it here: node and coordinator never import
each other. A line that is not a witnessed head is an error naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HASH_LENGTH = 64


class WitnessError(ValueError):
    """A witness file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Witnessed:
    """One head of one member's audit chain, as the coordinator saw it at `time`."""

    member: str
    seq: int
    hash: str
    time: str = ""

    def line(self) -> bytes:
        doc = {"time": self.time, "member": self.member, "seq": self.seq, "hash": self.hash}
        return json.dumps(doc, separators=(",", ":")).encode("utf-8") + b"\n"


def read(path: Path) -> Iterator[Witnessed]:
    """Every witnessed head in `path`, in file order; a torn last line (a coordinator killed
    while writing) is skipped, any other bad line is a WitnessError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WitnessError(f"{path}: cannot read the witness file: {exc.strerror}") from exc
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        if number == len(lines):  # no newline after it: an append that was cut off
            return
        yield _parse(path, number, raw)


def _parse(path: Path, number: int, raw: bytes) -> Witnessed:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise WitnessError(f"{path}: line {number}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise WitnessError(f"{path}: line {number}: not a witnessed head (a JSON object)")
    member, seq, digest = doc.get("member"), doc.get("seq"), doc.get("hash")
    if not isinstance(member, str) or not member:
        raise WitnessError(f"{path}: line {number}: member: must be a member name")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise WitnessError(f"{path}: line {number}: seq: must be a whole number >= 0")
    if not isinstance(digest, str) or len(digest) != HASH_LENGTH or \
            any(c not in "0123456789abcdef" for c in digest):
        raise WitnessError(f"{path}: line {number}: hash: must be {HASH_LENGTH} hex digits")
    return Witnessed(member, seq, digest, str(doc.get("time", "")))


def of_member(path: Path, member: str) -> list[Witnessed]:
    """The heads witnessed for `member`."""
    return [w for w in read(path) if w.member == member]
