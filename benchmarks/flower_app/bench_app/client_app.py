"""ClientApp: one member's histogram counts and (sum, count) for the mean, from its own CSVs.

The SuperNode is started with `--node-config 'data-dir="<root>/<member>"'`; the CSVs are the
same files the member's bridgestat node serves. The mean is at bridgestat's default occasion
(intake: the assessment at month 0, one per participant); the histogram counts every
participant row by category. No DP noise: this is plain federated aggregation. The reply
carries the time spent computing, so the ServerApp can tell work from runtime overhead.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import pandas as pd
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@lru_cache(maxsize=8)
def load_table(data_dir: str, table: str) -> pd.DataFrame:
    """A member's table; cached, though Flower starts a fresh ClientApp process per message."""
    return pd.read_csv(Path(data_dir) / f"{table}.csv")


def histogram_counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    counts = frame[column].astype("string").fillna("<missing>").value_counts()
    return {str(category): int(n) for category, n in counts.items()}


def intake_sum_count(frame: pd.DataFrame, column: str) -> tuple[float, int]:
    """Sum and count of `column` at intake (month 0; the first such row per participant)."""
    intake = frame[frame["months_since_intake"] == 0]
    values = intake.sort_values("assessment_seq").drop_duplicates("participant_id")[column]
    values = values.dropna()
    return float(values.sum()), len(values)


@app.query()
def aggregate(message: Message, context: Context) -> Message:
    start = time.perf_counter()
    spec = message.content["spec"]
    data_dir = str(context.node_config["data-dir"])
    counts = histogram_counts(load_table(data_dir, str(spec["hist-table"])),
                              str(spec["hist-column"]))
    total, n = intake_sum_count(load_table(data_dir, str(spec["mean-table"])),
                                str(spec["mean-column"]))
    compute_ms = (time.perf_counter() - start) * 1000
    reply = RecordDict({
        "histogram": MetricRecord({f"count:{k}": v for k, v in counts.items()}),
        "mean": MetricRecord({"sum": total, "count": n, "compute_ms": compute_ms}),
    })
    return Message(reply, reply_to=message)
