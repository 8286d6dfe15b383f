"""ServerApp: per round, one query message to every SuperNode; sum the replies.

Each round is timed inside the ServerApp (push to every node, wait for all replies, pool),
so process start-up is excluded; the first `warmup` rounds are not reported. The timings,
the last round's pooled answer and the wall-clock time the first round started go to the
JSON file named by the run config `timings`, rewritten after every round (`complete` once
all are done), or the error if the app failed.
"""

from __future__ import annotations

import json
import time
import traceback
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()
SPEC_KEYS = ("hist-table", "hist-column", "mean-table", "mean-column")


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    nodes: list[int] = []
    while time.monotonic() < deadline:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        time.sleep(0.2)
    raise TimeoutError(f"only {len(nodes)} of {expected} SuperNodes connected")


def one_round(grid: Grid, nodes: list[int], spec: ConfigRecord, round_id: int
              ) -> dict[str, Any]:
    messages = [Message(RecordDict({"spec": spec}), dst_node_id=node,
                        message_type=MessageType.QUERY, group_id=str(round_id))
                for node in nodes]
    return pool(grid.send_and_receive(messages), len(nodes))


def pool(replies: Iterable[Message], expected: int) -> dict[str, Any]:
    """Sum the members' counts and (sum, count); the slowest member's compute time."""
    counts: Counter[str] = Counter()
    total, n, answered, compute_ms = 0.0, 0, 0, 0.0
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id}: {reply.error}")
        for key, value in reply.content["histogram"].items():
            counts[key.removeprefix("count:")] += int(value)
        mean = reply.content["mean"]
        total += float(mean["sum"])
        n += int(mean["count"])
        compute_ms = max(compute_ms, float(mean["compute_ms"]))
        answered += 1
    if answered != expected:
        raise RuntimeError(f"{answered} of {expected} SuperNodes answered")
    return {"histogram": dict(counts), "mean": total / n, "n": n, "compute_ms": compute_ms}


def benchmark(grid: Grid, config: dict[str, Any], out: Path) -> None:
    """Run the rounds, rewriting `out` after each one (the driver watches it for progress)."""
    rounds, warmup = int(config["rounds"]), int(config["warmup"])
    spec = ConfigRecord({key: str(config[key]) for key in SPEC_KEYS})
    nodes = wait_for_nodes(grid, int(config["members"]))
    result: dict[str, Any] = {"round_ms": [], "compute_ms": [], "nodes": len(nodes),
                              "first_round_wall": time.time(), "done": 0, "complete": False}
    for round_id in range(warmup + rounds):
        start = time.perf_counter()
        answer = one_round(grid, nodes, spec, round_id)
        if round_id >= warmup:
            result["round_ms"].append((time.perf_counter() - start) * 1000)
            result["compute_ms"].append(answer["compute_ms"])
        result.update(answer=answer, done=round_id + 1)
        write(out, result)
    write(out, {**result, "complete": True})


def write(out: Path, result: dict[str, Any]) -> None:
    partial = out.with_suffix(".part")
    partial.write_text(json.dumps(result))
    partial.replace(out)


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = dict(context.run_config)
    out = Path(str(config["timings"]))
    try:
        benchmark(grid, config, out)
    except BaseException:  # reported to the driver through the file, then re-raised
        write(out, {"error": traceback.format_exc()})
        raise
