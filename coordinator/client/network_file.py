"""The network file (YAML): which members there are, where their nodes listen, and the
coordinator's identity for mutual TLS.

    tls: {ca: ca/ca.pem, cert: coordinator.pem, key: coordinator.key}
    hub: coordinator.example.org:50100     # only with connect-mode members
    members:
      - {name: member-01, address: 10.0.0.11:50051}   # inbound: its node listens
      - {name: member-02, via: hub}                   # connect: its node dials the hub
    secure: {threshold: 4, colluding: 1}   # optional: secure aggregation's t and c

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
from typing import Annotated, Any

import grpc
from pydantic import BeforeValidator, Field, PlainValidator, ValidationError, WithJsonSchema

from bridgestat.common.files import (
    Address,
    CertificateName,
    FileModel,
    FileProblem,
    KeyProblem,
    Name,
    Text,
    address,
    first_problem,
    not_null,
    read_yaml,
)
from bridgestat.common.names import COORDINATOR
from bridgestat.coordinator.ca import check_identity

HUB_NAME = COORDINATOR  # the name on the hub's certificate
NotNull = BeforeValidator(not_null)


class NetworkFileError(ValueError):
    """A network file is unusable; names the file and key."""


# -- the file, as the researcher (or the network's IT) writes it -------------------------------


def _via(value: object) -> str:
    if value != "hub":
        raise ValueError(f"must be 'hub' (a member whose node connects out), got {value!r}")
    return "hub"


def _hub(value: object) -> object:
    """`hub: host:port` is short for `hub: {address: host:port}`."""
    if isinstance(value, str):
        try:
            address(value)
        except ValueError as exc:
            raise ValueError(f"{exc} (where `bridgestat coordinator serve` listens)") from None
        return {"address": value}
    return not_null(value)


class HubFile(FileModel):
    """`hub`: where `bridgestat coordinator serve` listens, and its certificate's name."""

    address: Address
    name: CertificateName = HUB_NAME


class MemberFile(FileModel):
    """A `members` entry: its node listens at `address`, or dials the hub (`via: hub`)."""

    name: Name  # the name its node's certificate carries
    address: Annotated[Address | None, NotNull] = None
    via: Annotated[str | None, PlainValidator(_via),
                   WithJsonSchema({"const": "hub"})] = None


class NetworkTlsFile(FileModel):
    """`tls`: the network CA and the coordinator's certificate and key."""

    ca: Text
    cert: Text
    key: Text


class SecureFile(FileModel):
    """`secure`: secure aggregation's threshold t and assumed colluding members c
    (defaults from `common/secagg.py`: t = floor(2K/3) + 1, c = 1)."""

    threshold: Annotated[int | None, NotNull, Field(ge=2)] = None
    colluding: Annotated[int | None, NotNull, Field(ge=0)] = None


class NetworkFile(FileModel):
    """The network file (see the module docstring)."""

    members: Annotated[list[MemberFile], Field(min_length=1)]
    tls: Annotated[NetworkTlsFile | None, NotNull] = None
    hub: Annotated[HubFile | None, BeforeValidator(_hub)] = None
    secure: Annotated[SecureFile | None, NotNull] = None


# -- the values the coordinator runs with -----------------------------------------------------


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
class SecureSettings:
    """Secure aggregation's t and c for this network (checked against K when read)."""

    threshold: int
    colluding: int

    @classmethod
    def default(cls, members: int) -> SecureSettings:
        from bridgestat.common.secagg import default_colluding, default_threshold  # lazily
        return cls(default_threshold(members), default_colluding(members))


@dataclass(frozen=True)
class NetworkSpec:
    members: tuple[Member, ...]
    tls: TlsFiles | None = None
    hub: Hub | None = None
    secure: SecureSettings | None = None  # None: the defaults for K members

    @property
    def secure_settings(self) -> SecureSettings:
        return self.secure or SecureSettings.default(len(self.members))

    @property
    def connect_members(self) -> tuple[str, ...]:
        """The members whose nodes dial the hub."""
        return tuple(m.name for m in self.members if m.hub is not None)


def load_network(path: Path) -> NetworkSpec:
    """Read and validate a network file; `NetworkFileError` names the file and key path."""
    try:
        raw = read_yaml(path, "network file")
    except FileProblem as exc:
        raise NetworkFileError(str(exc)) from exc
    try:
        doc = NetworkFile.model_validate(raw)
        hub = None if doc.hub is None else Hub(doc.hub.address, doc.hub.name)
        members = tuple(_member(item, i, hub) for i, item in enumerate(doc.members))
        _unique(members)
        tls = None if doc.tls is None else _tls(doc.tls, Path(path))
        secure = None if doc.secure is None else _secure(doc.secure, len(members))
    except (ValidationError, KeyProblem) as exc:
        key, problem = first_problem(exc, NetworkFile)
        raise NetworkFileError(f"{path}: {key}: {problem}") from None
    return NetworkSpec(members, tls, hub, secure)


def _secure(doc: SecureFile, k: int) -> SecureSettings:
    """t and c, defaults filled in, within the protocol's limits: K/2 < t <= K, 0 <= c < t."""
    default = SecureSettings.default(k)
    threshold = default.threshold if doc.threshold is None else doc.threshold
    colluding = default.colluding if doc.colluding is None else doc.colluding
    if not k // 2 < threshold <= k:
        raise KeyProblem("secure.threshold", f"t = {threshold} must satisfy K/2 < t <= K "
                         f"(K = {k} members)")
    if not colluding < threshold:
        raise KeyProblem("secure.colluding", f"c = {colluding} must be below t = {threshold}")
    return SecureSettings(threshold, colluding)


def load_tls(value: Any, path: Path) -> TlsFiles:
    """The `tls` section of the network file at `path`, its files checked."""
    try:
        return _tls(NetworkTlsFile.model_validate(value), Path(path))
    except (ValidationError, KeyProblem) as exc:
        key, problem = first_problem(exc, NetworkTlsFile)
        key = "tls" if key == "(top level)" else f"tls.{key.removeprefix('tls.')}"
        raise NetworkFileError(f"{path}: {key}: {problem}") from None


def _tls(doc: NetworkTlsFile, path: Path) -> TlsFiles:
    """The files, relative to the network file, checked as a set (`ca.check_identity`)."""
    base = path.resolve().parent
    files = TlsFiles(base / doc.ca, base / doc.cert, base / doc.key)
    problem = check_identity(files.ca, files.cert, files.key)
    if problem is not None:
        role, message = problem
        raise KeyProblem(f"tls.{role}", message)
    return files


def require_tls(tls: TlsFiles | None, insecure: bool, where: str) -> None:
    """Refuse plain text unless it was asked for explicitly."""
    if tls is None and not insecure:
        raise NetworkFileError(f"{where}: tls: missing; the coordinator connects to nodes only "
                               "over mutual TLS (add tls: {ca, cert, key} to the network file; "
                               "certificates from `bridgestat ca`), or pass --insecure "
                               "(insecure=True) for a local plain-text demo")


def _unique(members: tuple[Member, ...]) -> None:
    seen: set[str] = set()
    for i, member in enumerate(members):
        if member.name in seen:
            raise KeyProblem(f"members[{i}].name", f"{member.name!r} is listed twice (names "
                             "must be unique)")
        seen.add(member.name)


def _member(doc: MemberFile, index: int, hub: Hub | None) -> Member:
    """What one entry cannot say alone: a member via hub needs the hub, and no address."""
    where = f"members[{index}]"
    if doc.via is None:
        if doc.address is None:
            raise KeyProblem(f"{where}.address", "missing (host:port of the member's node, or "
                             "via: hub for a node that connects out)")
        return Member(doc.name, doc.address)
    if doc.address is not None:
        raise KeyProblem(f"{where}.address", "a member via hub has no address of its own (its "
                         "node dials the hub)")
    if hub is None:
        raise KeyProblem(f"{where}.via", "a member via hub needs the top-level key hub: "
                         "host:port (where `bridgestat coordinator serve` listens)")
    return Member(doc.name, hub.address, hub)
