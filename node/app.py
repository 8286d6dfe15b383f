"""Assemble a node from its config: schema, data, ledger, engine, server."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
from pathlib import Path

from bridgestat.node.config import NodeConfig, load_config
from bridgestat.node.data import load_folder
from bridgestat.node.engine import Engine
from bridgestat.node.errors import ConfigError
from bridgestat.node.frames import Frames
from bridgestat.node.ledger import Ledger
from bridgestat.node.loss import Epsilon
from bridgestat.node.planner import Policy
from bridgestat.node.service import build_server

log = logging.getLogger("bridgestat.node")


def open_engine(config: NodeConfig) -> Engine:
    """Load and check the member's data and open the ledger; raise on any problem."""
    schema = config.schema()
    data = load_folder(config.data_path, schema)
    try:
        ledger = Ledger(config.ledger_path, config.budget.dataset,
                        Epsilon.of(config.budget.total_epsilon), config.budget.delta)
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(config.source, "ledger",
                          f"cannot open ledger {config.ledger_path}: {exc}") from exc
    policy = Policy(max_epsilon_per_query=config.budget.max_epsilon_per_query,
                    delta=config.budget.delta)
    return Engine(config.node_id, schema, Frames(dict(data.tables), schema), ledger, policy)


def serve(config_path: Path, ready: threading.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then finish in-flight queries (grace 30 s)."""
    config = load_config(config_path)
    engine = open_engine(config)
    try:
        server, port = build_server(engine, config.listen)
    except (RuntimeError, OSError) as exc:
        raise ConfigError(config.source, "listen", f"cannot listen on {config.listen} "
                          "(address in use, or not an address of this machine)") from exc
    server.start()
    log.info("node %s serving on %s (port %d)", config.node_id, config.listen, port)
    print(f"bridgestat-node {config.node_id}: serving on {config.listen}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if ready is not None:
        ready.set()
    stop.wait()
    server.stop(grace=30).wait()
