"""`bridgestat-node health`: ask a running node for grpc.health.v1 Check, as a probe.

The check dials the node's own `listen` address (a wildcard host becomes loopback) over the
same mutual TLS as every caller, so it also proves that the listener, the certificates and
the handshake work, which a plain health port beside it would not. Its identity is the
node's own certificate (a probe identity by default, see `tls.py`: whoever holds the key
holds the ledger too), so a container's HEALTHCHECK needs no other files; an outside monitor
uses a certificate issued for a name on `tls.probe` (`bridgestat ca issue --name monitor`).
A probe identity may call health and reflection only: never a query, never budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridgestat.node.config import NodeConfig
from bridgestat.node.errors import ConfigError

WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


@dataclass(frozen=True)
class Health:
    """The outcome of one check: SERVING or not, and what to tell the operator."""

    serving: bool
    message: str


@dataclass(frozen=True)
class ProbeIdentity:
    """The client certificate and key a probe presents."""

    cert: Path
    key: Path


def probe_address(listen: str) -> str:
    """Where to dial a node listening on `listen`: a wildcard host means loopback."""
    host, _, port = listen.rpartition(":")
    return f"{WILDCARDS.get(host, host)}:{port}"


def check_health(config: NodeConfig, *, address: str | None = None,
                 identity: ProbeIdentity | None = None, service: str = "",
                 timeout: float = 5.0) -> Health:
    """grpc.health.v1 Check of `service` ("" = the whole node) on the node of `config`
    (its `listen` address unless `address` is given), as `identity` (default: the node's own
    certificate). Raises ConfigError when the config gives nothing to dial."""
    target = address or (probe_address(config.listen) if config.listen else None)
    if target is None:
        raise ConfigError(config.source, "listen", "none (connect mode only): there is no "
                          "port to probe; watch bridgestat_node_connected on the metrics "
                          "endpoint instead, or pass --address")
    try:
        with _channel(config, target, identity) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return Health(False, f"{target}: {code}: {details}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return Health(reply.status == health_pb2.HealthCheckResponse.SERVING,
                  f"{target}: {status}")


def _channel(config: NodeConfig, target: str, identity: ProbeIdentity | None) -> grpc.Channel:
    """A channel to the node: mutual TLS with the network CA (the node's certificate must be
    for its node_id), or plain text for a node without `tls` (--insecure demos)."""
    if config.tls is None:
        return grpc.insecure_channel(target)
    chosen = identity or ProbeIdentity(config.tls.cert, config.tls.key)
    try:
        key, cert, ca = chosen.key.read_bytes(), chosen.cert.read_bytes(), \
            config.tls.ca.read_bytes()
    except OSError as exc:
        raise ConfigError(config.source, "tls", f"cannot read the probe's certificate, key "
                          f"or CA: {exc}") from exc
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    return grpc.secure_channel(target, credentials,
                               options=[("grpc.ssl_target_name_override", config.node_id)])
