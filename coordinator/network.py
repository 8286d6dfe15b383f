"""The network file (YAML): which members there are, where their nodes listen, and the
coordinator's identity for mutual TLS.

    tls: {ca: ca/ca.pem, cert: coordinator.pem, key: coordinator.key}
    members:
      - {name: member-01, address: 10.0.0.11:50051}

Paths are relative to the network file. A member's `name` is the identity its node's
certificate must carry: the coordinator checks it on every connection. The CA, certificate
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


class NetworkFileError(ValueError):
    """A network file is unusable; names the file and key."""


@dataclass(frozen=True)
class Member:
    name: str
    address: str


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


@dataclass(frozen=True)
class NetworkSpec:
    members: tuple[Member, ...]
    tls: TlsFiles | None = None


def load_network(path: Path) -> NetworkSpec:
    try:
        raw: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise NetworkFileError(f"{path}: cannot read network file: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) - {"members", "tls"}:
        raise NetworkFileError(f"{path}: must be a mapping with the keys 'members' and "
                               "(optional) 'tls'")
    items = raw.get("members")
    if not isinstance(items, list) or not items:
        raise NetworkFileError(f"{path}: members: must be a non-empty list")
    members = tuple(_member(item, path, i) for i, item in enumerate(items))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise NetworkFileError(f"{path}: members: names must be unique")
    tls = load_tls(raw["tls"], Path(path)) if "tls" in raw else None
    return NetworkSpec(members, tls)


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


def _member(item: Any, path: Path, index: int) -> Member:
    where = f"{path}: members[{index}]"
    if not isinstance(item, dict) or set(item) - {"name", "address"}:
        raise NetworkFileError(f"{where}: must be a mapping with keys name and address")
    name, address = item.get("name"), item.get("address")
    if not isinstance(name, str) or not name:
        raise NetworkFileError(f"{where}.name: must be a non-empty string")
    if not isinstance(address, str) or ":" not in address:
        raise NetworkFileError(f"{where}.address: must be host:port, got {address!r}")
    return Member(name, address)
