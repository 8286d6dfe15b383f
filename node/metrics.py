"""The node's Prometheus metrics: queries, refusals, loss spent, latency, budget left and
the days left on its certificates.

Recorded by the servicer around `Engine.run` (the engine knows nothing of transport or
monitoring) and served over HTTP on the config's `metrics` address. Every metric depends
only on the queries and the public budget, never on the member's data.

Each `NodeMetrics` has its own registry, so several nodes in one process (tests) do not
collide in the global one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from bridgestat.node.ledger import BudgetState

PREFIX = "bridgestat_node"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class MetricsServer:
    """The running HTTP endpoint; `close` stops it."""

    httpd: WSGIServer
    thread: threading.Thread
    port: int

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class NodeMetrics:
    """Counters, latency histogram and budget gauges of one node."""

    def __init__(self, budget: Callable[[], BudgetState] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.queries = Counter(f"{PREFIX}_queries", "RunQuery calls by statistic and outcome "
                               "(ok, replayed, or the refusal's gRPC status)",
                               ["statistic", "outcome"], registry=self.registry)
        self.refusals = Counter(f"{PREFIX}_refusals", "Refused calls by gRPC status and "
                                "reason (allow-list, probe, schema, policy, budget, "
                                "idempotency, in-progress, audit, internal)", ["code", "reason"],
                                registry=self.registry)
        self.epsilon = Counter(f"{PREFIX}_loss_spent_epsilon", "Pure-DP epsilon charged by "
                               "answered queries since start", registry=self.registry)
        self.rho = Counter(f"{PREFIX}_loss_spent_rho", "zCDP rho charged by answered queries "
                           "since start", registry=self.registry)
        self.seconds = Histogram(f"{PREFIX}_query_seconds", "RunQuery latency by statistic",
                                 ["statistic"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.connected = Gauge(f"{PREFIX}_connected", "Connect mode: 1 while the coordinator "
                               "has accepted this node's stream, else 0", registry=self.registry)
        if budget is not None:
            self._budget_gauges(budget)

    def _budget_gauges(self, budget: Callable[[], BudgetState]) -> None:
        """Gauges read from the ledger at each scrape, so they are never stale."""
        for name, text, read in (
                ("remaining", "Epsilon left in the dataset's budget",
                 lambda: float(budget().remaining)),
                ("spent", "Epsilon spent from the dataset's budget (all time)",
                 lambda: float(budget().spent)),
                ("total", "The dataset's total epsilon", lambda: float(budget().total))):
            gauge = Gauge(f"{PREFIX}_budget_{name}_epsilon", text, registry=self.registry)
            gauge.set_function(read)

    def watch_certificates(self, days: Callable[[], dict[str, int]]) -> None:
        """Gauges of the days left on the node's and the CA's certificates in use, read at
        each scrape (after a reload on SIGHUP, the new certificate's); `days` maps "node"
        and "ca" to whole days (negative: expired). Alert below 30."""
        gauge = Gauge(f"{PREFIX}_certificate_expiry_days", "Whole days until the certificate "
                      "in use expires (node: the node's own, ca: the network CA's); warn from "
                      "30", ["certificate"], registry=self.registry)
        for name in ("node", "ca"):
            gauge.labels(name).set_function(_days_of(days, name))

    def answered(self, statistic: str, seconds: float, epsilon: float, rho: float,
                 replayed: bool) -> None:
        """A query answered; a replay charged nothing now."""
        self.queries.labels(statistic, "replayed" if replayed else "ok").inc()
        self.seconds.labels(statistic).observe(seconds)
        if not replayed:
            self.epsilon.inc(max(epsilon, 0.0))
            self.rho.inc(max(rho, 0.0))

    def refused(self, statistic: str, code: str, seconds: float, reason: str) -> None:
        """A query refused (or failed) with gRPC status `code` for `reason`; nothing was
        charged."""
        self.queries.labels(statistic, code).inc()
        self.seconds.labels(statistic).observe(seconds)
        self.refusals.labels(code, reason).inc()

    def caller_refused(self, _caller: str, reason: str = "allow-list") -> None:
        """A caller refused for who it is (the identity goes to the audit log and the log,
        not a label: labels must stay few)."""
        self.refusals.labels("PERMISSION_DENIED", reason).inc()

    def serve(self, address: str) -> MetricsServer:
        """Serve /metrics on host:port (port 0: any free port); raises OSError."""
        host, _, port = address.rpartition(":")
        httpd, thread = start_http_server(int(port), addr=host.strip("[]"),
                                          registry=self.registry)
        return MetricsServer(httpd, thread, int(httpd.server_address[1]))


def _days_of(days: Callable[[], dict[str, int]], name: str) -> Callable[[], float]:
    return lambda: float(days()[name])
