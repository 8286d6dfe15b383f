"""The network file (YAML): which members there are, where their nodes listen, and the
coordinator's identity for mutual TLS.

    tls: {ca: ca/ca.pem, cert: coordinator.pem, key: coordinator.key}
    hub: coordinator.example.org:50100     # only with connect-mode members
    members:
      - {name: member-01, address: 10.0.0.11:50051}   # inbound: its node listens
      - {name: member-02, via: hub}                   # connect: its node dials the hub

Paths are relative to the network file. A member `via: hub` runs its node in connect mode:
the node dials `bridgestat coordinator serve` at `hub` and the researcher's calls for it go
there too, naming the member in the `bridgestat-member` metadata; the hub's certificate
must be for `coordinator` (or `hub: {address: host:port, name: <certificate name>}`).
A member's `name` is the identity its node's certificate must carry: the coordinator checks
it on every connection (and the hub on every Hello). The CA, certificate
and key are checked when the file is read (readable, PEM, valid now, signed by the CA, key
and certificate together), so a broken file fails at start-up naming file and key. Without
`tls` the coordinator connects only when told `insecure` (local plain-text demos).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from bridgestat.coordinator.ca import check_identity

_TLS_KEYS = ("ca", "cert", "key")
_TOP_KEYS = {"members", "tls", "hub"}
HUB_NAME = "coordinator"  # the name on the hub's certificate (ca.COORDINATOR)
MEMBER_HEADER = "bridgestat-member"  # metadata naming the member a call to the hub is for


class NetworkFileError(ValueError):
    """A network file is unusable; names the file and key."""


@dataclass(frozen=True)
class Hub:
    """Where `bridgestat coordinator serve` listens, and the name on its certificate."""

    address: str
    name: str = HUB_NAME


@dataclass(frozen=True)
class Member:
    """A member's node: at `address` (inbound mode), or reached through `hub` (connect
    mode; `address` is then the hub's)."""

    name: str
    address: str
    hub: Hub | None = None


@dataclass(frozen=True)
class TlsFiles:
    """The network CA and the coordinator's certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: trust only the network CA, present the coordinator's cert."""
        return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key.read_bytes(),
                                            self.cert.read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials:
        """The hub's server credentials: the coordinator's certificate, and a client
        certificate from the network CA required of every caller."""
        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())],
                                           root_certificates=self.ca.read_bytes(),
                                           require_client_auth=True)


@dataclass(frozen=True)
class NetworkSpec:
    members: tuple[Member, ...]
    tls: TlsFiles | None = None
    hub: Hub | None = None

    @property
    def connect_members(self) -> tuple[str, ...]:
        """The members whose nodes dial the hub."""
        return tuple(m.name for m in self.members if m.hub is not None)


def load_network(path: Path) -> NetworkSpec:
    try:
        raw: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise NetworkFileError(f"{path}: cannot read network file: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) - _TOP_KEYS:
        raise NetworkFileError(f"{path}: must be a mapping with the keys 'members' and "
                               "(optional) 'tls' and 'hub'")
    items = raw.get("members")
    if not isinstance(items, list) or not items:
        raise NetworkFileError(f"{path}: members: must be a non-empty list")
    hub = _hub(raw["hub"], path) if "hub" in raw else None
    members = tuple(_member(item, path, i, hub) for i, item in enumerate(items))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise NetworkFileError(f"{path}: members: names must be unique")
    tls = load_tls(raw["tls"], Path(path)) if "tls" in raw else None
    return NetworkSpec(members, tls, hub)


def load_tls(value: Any, path: Path) -> TlsFiles:
    """The `tls` section of the network file at `path`, its files checked."""
    if not isinstance(value, dict) or set(value) != set(_TLS_KEYS):
        raise NetworkFileError(f"{path}: tls: must be a mapping with the keys ca, cert and key")
    for key in _TLS_KEYS:
        if not isinstance(value[key], str) or not value[key]:
            raise NetworkFileError(f"{path}: tls.{key}: must be a path to a PEM file")
    base = Path(path).resolve().parent
    files = TlsFiles(*(base / value[key] for key in _TLS_KEYS))
    problem = check_identity(files.ca, files.cert, files.key)
    if problem is not None:
        role, message = problem
        raise NetworkFileError(f"{path}: tls.{role}: {message}")
    return files


def require_tls(tls: TlsFiles | None, insecure: bool, where: str) -> None:
    """Refuse plain text unless it was asked for explicitly."""
    if tls is None and not insecure:
        raise NetworkFileError(f"{where}: tls: missing; the coordinator connects to nodes only "
                               "over mutual TLS (add tls: {ca, cert, key} to the network file; "
                               "certificates from `bridgestat ca`), or pass --insecure "
                               "(insecure=True) for a local plain-text demo")


def _hub(value: Any, path: Path) -> Hub:
    """`hub: host:port` or `hub: {address: host:port, name: <certificate name>}`."""
    doc = value if isinstance(value, dict) else {"address": value}
    if set(doc) - {"address", "name"}:
        raise NetworkFileError(f"{path}: hub: must be host:port or a mapping with the keys "
                               "address and (optional) name")
    address, name = doc.get("address"), doc.get("name", HUB_NAME)
    if not _is_address(address):
        raise NetworkFileError(f"{path}: hub: must be host:port of `bridgestat coordinator "
                               f"serve`, got {address!r}")
    if not isinstance(name, str) or not name:
        raise NetworkFileError(f"{path}: hub.name: must be the name on the hub's certificate")
    return Hub(str(address), name)


def _is_address(value: Any) -> bool:
    """host:port with a port number gRPC can dial (1-65535)."""
    if not isinstance(value, str):
        return False
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def _member(item: Any, path: Path, index: int, hub: Hub | None) -> Member:
    where = f"{path}: members[{index}]"
    if not isinstance(item, dict) or set(item) - {"name", "address", "via"}:
        raise NetworkFileError(f"{where}: must be a mapping with keys name and address (or "
                               "via: hub)")
    name, address = item.get("name"), item.get("address")
    if not isinstance(name, str) or not name:
        raise NetworkFileError(f"{where}.name: must be a non-empty string")
    if "via" in item:
        if item["via"] != "hub":
            raise NetworkFileError(f"{where}.via: must be 'hub' (a member whose node connects "
                                   f"out), got {item['via']!r}")
        if "address" in item:
            raise NetworkFileError(f"{where}.address: a member via hub has no address of its "
                                   "own (its node dials the hub)")
        if hub is None:
            raise NetworkFileError(f"{where}.via: a member via hub needs the top-level key "
                                   "hub: host:port (where `bridgestat coordinator serve` "
                                   "listens)")
        return Member(name, hub.address, hub)
    if not _is_address(address):
        raise NetworkFileError(f"{where}.address: must be host:port (port 1-65535), got "
                               f"{address!r}")
    return Member(name, address)
