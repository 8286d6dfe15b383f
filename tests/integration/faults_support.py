"""Helpers for the fault tests (`test_faults.py`): real peers and a real spend loop.

Run as a script, this file is one of two processes the tests start and kill:

- `fake-peer`: a tiny gRPC server implementing NodeService that misbehaves like a broken
  member would: `slow` sleeps far past any deadline, `garbage` answers RunQuery with nonsense
  (the kind chosen by the idempotency key's prefix, see `GARBAGE`). It is a fake *peer* on a
  loopback port, over the network's TLS, not a mock of our own code.
- `spend`: a loop of reserve/commit on a real ledger file with distinct keys and random pauses,
  which the test kills with SIGKILL; it prints (and flushes) RESERVED <key> after `reserve` and
  COMMITTED <key> only after `commit` returned, so the parent knows what the ledger must never
  lose.

Imported, it offers read-only views of a ledger file that a live node is writing.
"""

from __future__ import annotations

import argparse
import math
import random
import sqlite3
import sys
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    import grpc

NAN = math.nan

# The garbage a `garbage` fake peer answers, by the prefix of the idempotency key.
GARBAGE = ("nan_value", "negative_variance", "nan_variance", "no_cells", "missing_values")


@dataclass(frozen=True)
class LedgerRow:
    key: str
    loss: str  # the ledger's exact text form (Loss.encode)
    state: str
    owner: str
    has_release: bool


def read_ledger(path: Path, dataset: str) -> tuple[str, list[LedgerRow]]:
    """(spent, charges) of a ledger file, read-only (safe beside a live node)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        db.execute("BEGIN")  # one snapshot for both reads
        spent = db.execute("SELECT spent FROM budget WHERE dataset = ?", (dataset,)).fetchone()
        rows = db.execute("SELECT query_key, loss, state, owner, release IS NOT NULL "
                          "FROM charge WHERE dataset = ? ORDER BY rowid", (dataset,)).fetchall()
        db.execute("COMMIT")
    finally:
        db.close()
    return spent[0], [LedgerRow(k, loss, s, o, bool(r)) for k, loss, s, o, r in rows]


def charge_state(db: sqlite3.Connection, dataset: str, key: str) -> str | None:
    """The state of `key`'s charge ('reserved', 'committed') or None, on an open connection."""
    row = db.execute("SELECT state FROM charge WHERE dataset = ? AND query_key = ?",
                     (dataset, key)).fetchone()
    return None if row is None else str(row[0])


# -- the fake peer --------------------------------------------------------------------------

def _fake_peer(mode: str, port: int, cert: Path, key: Path, node_id: str) -> None:
    import grpc  # only the peer needs it at run time

    class Servicer(pb_grpc.NodeServiceServicer):
        def GetNodeInfo(self, request: pb.GetNodeInfoRequest,
                        context: grpc.ServicerContext) -> pb.GetNodeInfoResponse:
            if mode == "slow":
                _sleep_while_active(context, 120.0)
            return pb.GetNodeInfoResponse(node_id=node_id, software_version="fake")

        def RunQuery(self, request: pb.RunQueryRequest,
                     context: grpc.ServicerContext) -> pb.RunQueryResponse:
            if mode == "slow":
                _sleep_while_active(context, 120.0)
                return _response(request, node_id, "valid")
            kind = request.idempotency_key.split(":", 1)[0]
            return _response(request, node_id, kind if kind in GARBAGE else "nan_value")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_NodeServiceServicer_to_server(Servicer(), server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    if server.add_secure_port(f"127.0.0.1:{port}", credentials) == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


def _sleep_while_active(context: grpc.ServicerContext, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and context.is_active():
        time.sleep(0.05)


def _response(request: pb.RunQueryRequest, node_id: str, kind: str) -> pb.RunQueryResponse:
    """A RunQueryResponse for a mean query: valid, or with the garbage named by `kind`."""
    response = pb.RunQueryResponse(idempotency_key=request.idempotency_key, query=request.query,
                                   node_id=node_id, replayed=False)
    response.charged.epsilon = request.query.loss.epsilon
    response.budget.remaining.epsilon = 1.0
    release = response.release
    release.center = 50.0
    release.lower, release.upper = 0.0, 100.0
    release.mechanism = "fake peer"
    if kind == "no_cells":
        return response
    values = {"count": (300.0, 8.0), "sum": (150.0, 2.0e4), "sum_squares": (4.0e4, 3.0e6)}
    if kind == "nan_value":
        values["count"] = (NAN, 8.0)
    elif kind == "negative_variance":
        values["sum"] = (150.0, -5.0)
    elif kind == "nan_variance":
        values["sum_squares"] = (4.0e4, NAN)
    elif kind == "missing_values":
        del values["sum"], values["sum_squares"]
    cell = release.cells.add()
    for name, (value, variance) in values.items():
        cell.values.add(name=name, value=value, noise_variance=variance,
                        noise_scale=NAN if math.isnan(variance) else math.sqrt(abs(variance)),
                        epsilon=0.1)
    return response


# -- the spend loop -------------------------------------------------------------------------

def fingerprint(key: str) -> str:
    return f"fp-{key}"


def loss_of(key: str) -> tuple[float, float]:
    """The (epsilon, rho) a key of the spend loop charges: a function of the key, so that a
    retry of the key (taking over a reservation) asks for the same loss."""
    rng = random.Random(key)
    return (rng.uniform(0.001, 0.05), rng.uniform(0.0, 0.0005) if rng.random() < 0.3 else 0.0)


def _spend(path: Path, dataset: str, total: float, run: int, seed: int) -> None:
    from bridgestat.node.ledger import Ledger
    from bridgestat.node.loss import Epsilon, Loss

    rng = random.Random(seed)
    ledger = Ledger(path, dataset, Epsilon.of(total))
    print("OPEN", flush=True)
    for i in range(10**6):
        key = f"run{run}-{i}"
        ledger.reserve(key, fingerprint(key), Loss.of(*loss_of(key)))
        print(f"RESERVED {key}", flush=True)
        time.sleep(rng.uniform(0, 0.01))  # "computing" the release
        ledger.commit(key, f"release-of-{key}")
        print(f"COMMITTED {key}", flush=True)
        time.sleep(rng.uniform(0, 0.002))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    fake = sub.add_parser("fake-peer")
    fake.add_argument("--mode", choices=("slow", "garbage"), required=True)
    fake.add_argument("--port", type=int, required=True)
    fake.add_argument("--cert", type=Path, required=True)
    fake.add_argument("--key", type=Path, required=True)
    fake.add_argument("--node-id", required=True)
    spend = sub.add_parser("spend")
    spend.add_argument("--ledger", type=Path, required=True)
    spend.add_argument("--dataset", required=True)
    spend.add_argument("--total", type=float, required=True)
    spend.add_argument("--run", type=int, required=True)
    spend.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "fake-peer":
        _fake_peer(args.mode, args.port, args.cert, args.key, args.node_id)
    else:
        _spend(args.ledger, args.dataset, args.total, args.run, args.seed)


if __name__ == "__main__":
    sys.exit(main())
