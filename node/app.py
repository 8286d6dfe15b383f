"""Assemble a node from its config: schema, data, ledger, engine, TLS, server and/or
connector, metrics, logs; reload the certificate on SIGHUP; and stop it gracefully.

Inbound mode (`listen`) serves NodeService; connect mode (`connect`) runs a `Connector` in a
thread that dials out to the coordinator with the node's own certificate. Both share the
engine, the allow-list and the metrics, so a query is treated the same whichever way it
comes; a node may run both.

SIGHUP re-reads `tls.cert`, `tls.key` and `tls.ca` (checked as at start-up; refused files
leave the old ones in use): new handshakes, and connect mode's next reconnect, use them,
calls in flight go on. Days left on the node's and the CA's certificates are logged at
start-up and daily, as a warning from `WARN_DAYS` on, and exported as a metric.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bridgestat.common.certs import WARN_DAYS
from bridgestat.node import logs
from bridgestat.node.audit import open_audit
from bridgestat.node.config import NodeConfig, load_config
from bridgestat.node.connect import Connector
from bridgestat.node.engine import Engine
from bridgestat.node.errors import ConfigError
from bridgestat.node.frames import Frames
from bridgestat.node.ledger import Ledger
from bridgestat.node.loader import load_columns
from bridgestat.node.loss import Epsilon
from bridgestat.node.metrics import MetricsServer, NodeMetrics
from bridgestat.node.policy import load_policy
from bridgestat.node.secure_service import secure_node
from bridgestat.node.service import NodeServer, build_node_server
from bridgestat.node.tls import ServerTls, load_server_tls

log = logging.getLogger("bridgestat.node")
GRACE_SECONDS = 30.0  # how long in-flight queries may take to finish after SIGTERM
EXPIRY_CHECK_SECONDS = 86_400.0  # how often a serving node logs its certificates' days left


def open_engine(config: NodeConfig) -> Engine:
    """Read the policy, load and check the member's data, open the ledger and the audit
    log; raise on any problem (a ConfigError naming the file and key). The data are read
    and checked in a child process (`node/loader.py`) and arrive as numpy columns: the
    serving process never imports pandas."""
    schema = config.schema()
    policy = load_policy(config, schema)  # before the data: a bad policy file fails fast
    columns = load_columns(config.data, schema, config.source)
    try:
        ledger = Ledger(config.ledger_path, config.budget.dataset,
                        Epsilon.of(policy.total_epsilon), config.budget.delta,
                        period=policy.per_period)
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(config.source, "ledger",
                          f"cannot open ledger {config.ledger_path}: {exc}") from exc
    audit = open_audit(config)
    engine = Engine(config.node_id, schema, Frames(columns, schema), ledger, policy, audit)
    release_free_memory()
    return engine


def release_free_memory() -> None:
    """Give the memory freed after loading back to the system: glibc malloc keeps freed
    pages (the loader's answer is read into memory, then converted). Arrow's pool only if
    this process loaded Arrow (a test that imported it; the serving node never does)."""
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def serve(config_path: Path, ready: threading.Event | None = None, *, insecure: bool = False,
          grace: float = GRACE_SECONDS) -> None:
    """Serve until SIGTERM/SIGINT, then refuse new calls and finish in-flight queries (for
    up to `grace` seconds); reload the certificate and key on SIGHUP. Without `tls` in the config only with `insecure` (plain text,
    local demos). Every config, certificate, data and ledger problem is raised here, at
    start-up, as a ConfigError naming the file and key."""
    config = load_config(config_path)
    # With JSON logs every line the node writes is JSON, gRPC's own lines included.
    stream = logs.route_stderr().original if config.log_format == "json" else None
    logs.configure(config.log_format, fields={"node_id": config.node_id}, stream=stream)
    tls = server_tls(config, insecure)
    if tls is not None:
        log_expiry(tls)
    engine = open_engine(config)
    counters = NodeMetrics(engine.ledger.state)
    if tls is not None:
        counters.watch_certificates(lambda: {k: e.days for k, e in tls.expiries().items()})
    node = _listen(config, engine, tls, counters) if config.listen is not None else None
    metrics = _metrics_endpoint(config, counters, node)
    connector = _connector(config, engine, tls, counters)
    stop, reload = threading.Event(), threading.Event()
    with _on_signals(stop, reload):
        if node is not None:
            node.server.start()
            _announce(config, node, tls is not None)
        thread = _start_connector(config, connector, tls is not None)
        if ready is not None:
            ready.set()
        _wait_for_stop(stop, reload, tls)
        log.info("stopping: refusing new calls, finishing in-flight queries (grace %g s)",
                 grace, extra={"event": "stopping"})
        if connector is not None:
            connector.stop(grace)  # drains in its own thread while the server drains here
        if node is not None:
            node.stop(grace)
        if thread is not None:
            thread.join(grace + 5)
    if metrics is not None:
        metrics.close()
    log.info("stopped", extra={"event": "stopped"})


def _wait_for_stop(stop: threading.Event, reload: threading.Event,
                   tls: ServerTls | None) -> None:
    """Until `stop`: reload the certificate when `reload` is set (SIGHUP), and log the days
    left on the certificates daily (and after a reload). Wakes up now and then: Python runs
    signal handlers only in the main thread, between waits."""
    checked = time.monotonic()  # serve logged them at start-up
    while not stop.wait(0.5):
        if reload.is_set():
            reload.clear()
            if tls is None:
                log.warning("SIGHUP: no tls section, no certificate to reload")
            elif tls.reload():
                checked = float("-inf")
        if tls is not None and time.monotonic() - checked >= EXPIRY_CHECK_SECONDS:
            checked = time.monotonic()
            log_expiry(tls)


def log_expiry(tls: ServerTls) -> None:
    """One log line per certificate in use: days left, a warning within WARN_DAYS."""
    for name, found in tls.expiries().items():
        level = logging.WARNING if found.warning else logging.INFO
        log.log(level, "%s", found.describe(),
                extra={"event": "certificate_expiry", "certificate": name,
                       "expiry_days": found.days, "warn_days": WARN_DAYS})


def server_tls(config: NodeConfig, insecure: bool) -> ServerTls | None:
    """The checked TLS files, or None for plain text, which needs `insecure`."""
    if config.tls is not None:
        return load_server_tls(config)
    if not insecure:
        raise ConfigError(config.source, "tls", "missing: a node serves only over mutual TLS "
                          "(tls: {ca, cert, key, allow}; certificates from `bridgestat ca`); "
                          "for a local plain-text demo pass --insecure")
    log.warning("serving plain text without TLS (--insecure): for local demos only")
    return None


def _listen(config: NodeConfig, engine: Engine, tls: ServerTls | None,
            metrics: NodeMetrics) -> NodeServer:
    assert config.listen is not None
    try:
        return build_node_server(engine, config.listen, tls=tls, metrics=metrics)
    except (RuntimeError, OSError) as exc:
        raise ConfigError(config.source, "listen", f"cannot listen on {config.listen} "
                          "(address in use, or not an address of this machine)") from exc


def _connector(config: NodeConfig, engine: Engine, tls: ServerTls | None,
               metrics: NodeMetrics) -> Connector | None:
    """Connect mode: the node's own certificate as client identity (as last reloaded, at
    each reconnect), the coordinator's checked against `connect.server_name`, and the
    node's allow-list for the researchers the coordinator relays; secure-aggregation rounds
    signed with the node's TLS key. Plain text only when `tls` is absent (--insecure)."""
    if config.connect is None:
        return None
    if tls is None:
        return Connector(engine, config.connect.coordinator, None, metrics=metrics)
    return Connector(engine, config.connect.coordinator, tls.channel_credentials,
                     server_name=config.connect.server_name, metrics=metrics, allow=tls.allow,
                     secure=secure_node(engine, tls))


def _start_connector(config: NodeConfig, connector: Connector | None,
                     secure: bool) -> threading.Thread | None:
    if connector is None or config.connect is None:
        return None
    thread = threading.Thread(target=connector.run, name="connector", daemon=True)
    thread.start()
    mode = "mutual TLS" if secure else "plain text (--insecure)"
    target = config.connect.coordinator
    log.info("node %s connecting out to coordinator %s (%s)", config.node_id, target, mode,
             extra={"event": "connecting", "coordinator": target, "tls": secure})
    if config.log_format == "text":
        print(f"bridgestat-node {config.node_id}: connecting to coordinator {target} ({mode})",
              flush=True)
    return thread


def _metrics_endpoint(config: NodeConfig, metrics: NodeMetrics,
                      node: NodeServer | None) -> MetricsServer | None:
    if config.metrics_listen is None:
        return None
    try:
        return metrics.serve(config.metrics_listen)
    except (OSError, ValueError) as exc:
        if node is not None:
            node.stop(None)
        raise ConfigError(config.source, "metrics", f"cannot serve metrics on "
                          f"{config.metrics_listen}: {exc}") from exc


def _announce(config: NodeConfig, node: NodeServer, secure: bool) -> None:
    mode = "mutual TLS" if secure else "plain text (--insecure)"
    log.info("node %s serving on %s (port %d, %s)", config.node_id, config.listen, node.port,
             mode, extra={"event": "serving", "listen": config.listen, "port": node.port,
                          "tls": secure})
    if config.log_format == "text":  # with json logs, every line of output is JSON
        print(f"bridgestat-node {config.node_id}: serving on {config.listen} ({mode})",
              flush=True)


@contextmanager
def _on_signals(stop: threading.Event, reload: threading.Event) -> Iterator[None]:
    """Set `stop` on SIGTERM/SIGINT and `reload` on SIGHUP (main thread only); restore the
    old handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_, event=event: event.set())
                for sig, event in ((signal.SIGTERM, stop), (signal.SIGINT, stop),
                                   (signal.SIGHUP, reload))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
