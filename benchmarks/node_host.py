"""Host many node services in one process, for fan-out benchmarks at hundreds of members.

Each config gets the product's own parts: its engine (schema, data, ledger, policy, audit)
from `app.open_engine` and its own gRPC server from `build_node_server`, on its own port, with
its own SQLite ledger. Only the process is shared, so 1,000 members fit on a 2-core machine.
Prints `ready <n>` once every server is up (or `failed <config>: <why>`), then serves until
stdin closes or SIGTERM. The nodes' per-query log lines are not written (logging is not
configured: one process hosts many nodes); everything else is the node's own path.
Usage: python benchmarks/node_host.py [--tls] [--workers 2] CONFIG...
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from bridgestat.node import app
from bridgestat.node.config import load_config
from bridgestat.node.service import NodeServer, build_node_server


def start(config_path: Path, tls: bool, workers: int) -> NodeServer:
    """One member's node server, started, exactly as `bridgestat-node serve` builds it."""
    config = load_config(config_path)
    assert config.listen is not None, f"{config_path}: the benchmark needs `listen`"
    engine = app.open_engine(config)
    node = build_node_server(engine, config.listen, workers=workers,
                             tls=app.server_tls(config, insecure=not tls))
    node.server.start()
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tls", action="store_true", help="serve mutual TLS (configs have tls)")
    parser.add_argument("--workers", type=int, default=2, help="threads per node server")
    parser.add_argument("configs", nargs="+", type=Path)
    args = parser.parse_args()
    nodes = []
    for path in args.configs:
        try:
            nodes.append(start(path, args.tls, args.workers))
        except Exception as exc:  # noqa: BLE001  # any failure: shown instead of `ready`
            print(f"failed {path}: {exc}", flush=True)
            for node in nodes:
                node.server.stop(None)
            sys.exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"ready {len(nodes)}", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    stop.wait()
    for node in nodes:
        node.server.stop(None)


if __name__ == "__main__":
    main()
