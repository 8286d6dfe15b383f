"""Mutual TLS for the node: start-up checks of the `tls` files, server credentials, and the
allow-list of caller identities.

Every problem with `tls.ca`, `tls.cert` or `tls.key` (unreadable, not PEM, expired or not
yet valid, not signed by the network CA, key and certificate apart, certificate for another
name than `node_id`) is a `ConfigError` naming the config file and key at start-up, not a
handshake failure on the first query; the checks are the coordinator's too
(`bridgestat.common.certs`). The server then requires a client certificate from
the network CA (`require_client_auth`), and `AllowList` refuses, before any handler runs,
every call whose certificate's common name is not in `tls.allow`; a probe identity
(`tls.probe`, and the node's own certificate) may call health and reflection only. Each
refusal is handed to a callback (service.py audits, counts and logs it).

Callers whose handshake fails (no certificate, another CA) never reach this code: gRPC's
core refuses them and logs the failure itself (`logs.route_stderr` turns those lines into
JSON objects with `log_format: json`).

The certificate and key can be replaced while the node serves: `ServerTls.reload` (SIGHUP)
checks the new files like at start-up and hands them to gRPC's dynamic server credentials,
which use them from the next handshake on; calls in flight are not touched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509

from bridgestat.common.certs import Expiry, check_identity, expiry
from bridgestat.node.config import NodeConfig, TlsConfig
from bridgestat.node.errors import ConfigError, NodeError

if TYPE_CHECKING:  # grpc-stubs' generics; at run time these classes take no parameters
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.ServerInterceptor[Any, Any]
    Context = grpc.ServicerContext
else:
    _Interceptor = grpc.ServerInterceptor

log = logging.getLogger("bridgestat.node.tls")
ANONYMOUS = "anonymous"  # the caller of a plain-text (--insecure) node
# What a probe identity may call: health and reflection (both versions), nothing that reads
# data or spends budget.
PROBE_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                  "grpc.reflection.v1alpha.ServerReflection")


@dataclass(frozen=True)
class TlsPem:
    """One checked set of the node's PEM files: private key, certificate and network CA."""

    key: bytes
    cert: bytes
    ca: bytes

    def server_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)],
                                                         root_certificates=self.ca)

    def serial(self) -> int:
        return int(x509.load_pem_x509_certificate(self.cert).serial_number)

    def expiries(self, tls: TlsConfig) -> dict[str, Expiry]:
        """Days left on the node's certificate ("node") and the CA's ("ca")."""
        return {"node": expiry(x509.load_pem_x509_certificate(self.cert), tls.cert),
                "ca": expiry(x509.load_pem_x509_certificate(self.ca), tls.ca,
                             "CA certificate")}


class ServerTls:
    """The node's TLS identity and who may call it. `reload` (on SIGHUP) re-reads and checks
    `tls.ca`, `tls.cert` and `tls.key` as at start-up; new handshakes, in both directions,
    then use the new files, while connections already open (and their calls) go on. Files
    that fail a check are refused with a log line naming file and key, and the old ones stay
    in use. The allow-list is read at start-up only."""

    def __init__(self, config: NodeConfig, pem: TlsPem) -> None:
        assert config.tls is not None
        self.config, self.files = config, config.tls
        self.allow: tuple[str, ...] = config.tls.allow
        # The node's own certificate is a probe identity too: whoever holds its key holds the
        # ledger as well, and a health check inside the node's container needs no other files.
        probe = tuple(dict.fromkeys((*config.tls.probe, config.node_id)))
        self.probe: tuple[str, ...] = tuple(p for p in probe if p not in self.allow)
        self._pem = pem
        self._fresh = False  # a reloaded configuration not yet handed to the server
        self._lock = threading.Lock()

    @property
    def pem(self) -> TlsPem:
        with self._lock:
            return self._pem

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that demand a client certificate signed by the network CA, and
        pick up a reloaded certificate at the next handshake."""
        # grpc documents None from the fetcher as "no change"; grpc-stubs leave None out
        return grpc.dynamic_ssl_server_credentials(
            self.pem.server_configuration(), self._fetch,  # type: ignore[arg-type]
            require_client_authentication=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The current identity as a client (a node dialling out in connect mode); ask again
        for each new connection to use a reloaded certificate."""
        pem = self.pem
        return grpc.ssl_channel_credentials(pem.ca, pem.key, pem.cert)

    def expiries(self) -> dict[str, Expiry]:
        """Days left on the certificates in use: the node's ("node") and the CA's ("ca")."""
        return self.pem.expiries(self.files)

    def reload(self) -> bool:
        """Re-read and check the tls files; use them for new handshakes if they pass, else
        log why (naming file and key) and keep the old ones. True when reloaded."""
        try:
            pem = _checked_pem(self.config)
        except ConfigError as exc:
            old = self.pem.serial()
            log.error("certificate reload refused, still using the certificate with serial "
                      "%x: %s", old, exc, extra={"event": "tls_reload_refused",
                                                 "serial": f"{old:x}"})
            return False
        with self._lock:
            self._pem, self._fresh = pem, True
        node = pem.expiries(self.files)["node"]
        log.info("certificate reloaded: new handshakes use serial %x; %s", pem.serial(),
                 node.describe(), extra={"event": "tls_reloaded", "serial": f"{pem.serial():x}",
                                         "expiry_days": node.days})
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC asks before every new handshake: the reloaded configuration once, else None
        (no change)."""
        with self._lock:
            if not self._fresh:
                return None
            self._fresh = False
            return self._pem.server_configuration()


def load_server_tls(config: NodeConfig) -> ServerTls:
    """Read and check the node's `tls` files (the shared checks, the certificate for
    `node_id`); raise ConfigError naming file and key."""
    return ServerTls(config, _checked_pem(config))


def _checked_pem(config: NodeConfig) -> TlsPem:
    if config.tls is None:
        raise ConfigError(config.source, "tls", "no tls section")
    tls: TlsConfig = config.tls
    # The coordinator checks the node's certificate against the member's name in the network
    # file, which is the node_id: a certificate for another name would be refused.
    problem = check_identity(tls.ca, tls.cert, tls.key, config.node_id, "node_id")
    if problem is not None:
        role, message = problem
        raise ConfigError(config.source, f"tls.{role}", message)
    key, cert, ca = (_read(config.source, f"tls.{k}", getattr(tls, k))
                     for k in ("key", "cert", "ca"))
    return TlsPem(key, cert, ca)


def caller_identity(context: grpc.ServicerContext) -> str:
    """The common name of the caller's verified certificate; ANONYMOUS without TLS."""
    found = context.auth_context().get("x509_common_name")
    names = [found] if isinstance(found, bytes) else list(found or [])
    return names[0].decode("utf-8", "replace") if names else ANONYMOUS


# -- start-up checks --------------------------------------------------------------------------

def _read(source: str, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read {path}: {exc.strerror or exc}") from exc


# -- allow-list ------------------------------------------------------------------------------

class CallerRefused(NodeError):
    """A call refused for who made it, before anything ran: `reason` is "allow-list" (the
    caller is not on `tls.allow`) or "probe" (a probe identity calling more than health or
    reflection). The message names the caller and the method; the audit log keeps it."""

    def __init__(self, caller: str, method: str, reason: str = "allow-list") -> None:
        self.caller, self.method, self.reason = caller, method, reason
        why = not_allowed(caller) if reason == "allow-list" else probe_only(caller)
        super().__init__(f"{why}; called {method}" if method else why)

    @property
    def public(self) -> str:
        """What the caller is told (the method is its own)."""
        return not_allowed(self.caller) if self.reason == "allow-list" \
            else probe_only(self.caller)


Refused = Callable[[CallerRefused, str], None]  # (the refusal, the request's idempotency key)


class AllowList(_Interceptor):
    """Refuses (PERMISSION_DENIED, naming the identity) every call whose client certificate's
    common name is not allowed, and every call of a probe identity to anything but
    PROBE_SERVICES, before the handler runs: nothing is read or spent."""

    def __init__(self, allow: tuple[str, ...], on_refusal: Refused | None = None,
                 probe: tuple[str, ...] = ()) -> None:
        self.allow = frozenset(allow)
        self.probe = frozenset(probe) - self.allow
        self.on_refusal = on_refusal

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails],
                                                       Handler | None],
                          handler_call_details: grpc.HandlerCallDetails
                          ) -> Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method)
        return _guarded(handler, lambda request, context: self._check(method, request,
                                                                      context))

    def refusal(self, caller: str, method: str) -> CallerRefused | None:
        """Why `caller` may not call `method` (a full gRPC method name), or None."""
        if caller in self.allow:
            return None
        if caller in self.probe:
            return None if is_probe_method(method) else CallerRefused(caller, method, "probe")
        return CallerRefused(caller, method)

    def _check(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        refused = self.refusal(caller_identity(context), method)
        if refused is None:
            return
        if self.on_refusal is not None:
            self.on_refusal(refused, str(getattr(request, "idempotency_key", "") or ""))
        context.abort(grpc.StatusCode.PERMISSION_DENIED, refused.public)


def is_probe_method(method: str) -> bool:
    """Whether `method` ("/package.Service/Method") belongs to health or reflection."""
    return method.strip("/").partition("/")[0] in PROBE_SERVICES


def not_allowed(caller: str) -> str:
    """The refusal's message, the same whether the caller came directly or through the
    coordinator (connect mode)."""
    return f"caller {caller!r} is not on this node's allow-list (tls.allow)"


def probe_only(caller: str) -> str:
    """The message for a probe identity that called more than health or reflection."""
    return (f"caller {caller!r} is a probe identity (tls.probe): it may call only "
            "grpc.health.v1 and server reflection")


def _guarded(handler: Handler,
             check: Callable[[Any, Context], None]) -> Handler:
    """The same handler with `check(request, context)` run before its behaviour, for all four
    kinds (a streaming call's request is its iterator, not yet read)."""
    def wrap(behaviour: Callable[[Any, grpc.ServicerContext], Any]
             ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            check(request, context)
            return behaviour(request, context)
        return checked

    kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler),
             ("unary_stream", grpc.unary_stream_rpc_method_handler),
             ("stream_unary", grpc.stream_unary_rpc_method_handler),
             ("stream_stream", grpc.stream_stream_rpc_method_handler))
    for attribute, make in kinds:
        behaviour = getattr(handler, attribute)
        if behaviour is not None:
            return make(wrap(behaviour), request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler
