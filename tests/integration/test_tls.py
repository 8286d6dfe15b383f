"""Mutual TLS between coordinator and nodes, with certificates from the network CA.

Real servers on loopback and real certificates made by `coordinator/ca.py`: the node refuses
callers without a certificate, from another CA or not on its allow-list (spending nothing);
the coordinator refuses a node whose certificate is for another member; broken TLS files
stop `bridgestat-node serve` at start-up naming file and key; plain text needs --insecure.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml

from bridgestat.coordinator import ca
from bridgestat.coordinator.api import Network
from bridgestat.coordinator.cli import main as cli
from bridgestat.coordinator.client.network_file import (
    Member,
    NetworkFileError,
    TlsFiles,
    load_network,
)
from bridgestat.coordinator.demo import local, synth
from bridgestat.node.app import open_engine
from bridgestat.node.config import load_config
from bridgestat.node.engine import Engine
from bridgestat.node.service import build_node_server
from bridgestat.node.tls import load_server_tls
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class SecureNode:
    """One member's node over mTLS in this process, and the coordinator's identity."""

    root: Path
    name: str
    config: Path
    address: str
    engine: Engine
    coordinator: TlsFiles

    def spent(self) -> float:
        return float(self.engine.ledger.state().spent)


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureNode]:
    synth.write_network(tmp_path, members=1, seed=5, sizes=[150])
    member = local.write_configs(tmp_path, total_epsilon=5.0, max_per_query=1.0)[0]
    config = load_config(member.config)
    engine = open_engine(config)
    node = build_node_server(engine, "127.0.0.1:0", tls=load_server_tls(config))
    node.server.start()
    assert member.client_tls is not None
    yield SecureNode(tmp_path, member.name, member.config, f"127.0.0.1:{node.port}", engine,
                     member.client_tls)
    node.stop(None)


def _mean_request(key: str = "k1") -> pb.RunQueryRequest:
    return pb.RunQueryRequest(idempotency_key=key, query=pb.Query(
        statistic=pb.STATISTIC_MEAN, table="assessment", column="bridge_total",
        loss=pb.PrivacyLoss(epsilon=0.5)))


def _call(node: SecureNode, credentials: grpc.ChannelCredentials) -> grpc.RpcError:
    """RunQuery with `credentials`, expected to fail; returns the error."""
    options = [("grpc.ssl_target_name_override", node.name)]
    with grpc.secure_channel(node.address, credentials, options=options) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        pb_grpc.NodeServiceStub(channel).RunQuery(_mean_request(), timeout=10)
    return caught.value  # type: ignore[return-value]


def _credentials(ca_cert: Path, identity: ca.Identity | None) -> grpc.ChannelCredentials:
    if identity is None:
        return grpc.ssl_channel_credentials(ca_cert.read_bytes())
    return grpc.ssl_channel_credentials(ca_cert.read_bytes(), identity.key.read_bytes(),
                                        identity.cert.read_bytes())


# -- the happy path ---------------------------------------------------------------------------

def test_coordinator_queries_a_node_over_mutual_tls(secure: SecureNode,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    callers: list[str] = []
    run = secure.engine.run

    def spy(key: str, query: object, caller: str = "anonymous") -> object:
        callers.append(caller)
        return run(key, query, caller)  # type: ignore[arg-type]
    monkeypatch.setattr(secure.engine, "run", spy)
    with Network([Member(secure.name, secure.address)], tls=secure.coordinator) as net:
        info = net.info()
        frame = net.mean("assessment", "bridge_total", epsilon=0.5)
    assert bool(info["reachable"].all()), info.to_dict("records")
    row = frame[frame.member == secure.name].iloc[0]
    assert row["status"] == "ok" and row["loss"] == pytest.approx(0.5)
    assert callers == ["coordinator"]  # the certificate's identity reaches the engine
    assert secure.spent() == pytest.approx(0.5)


def test_the_local_network_file_runs_over_mutual_tls(secure: SecureNode) -> None:
    spec = load_network(secure.root / "network.yaml")
    assert spec.tls is not None and spec.tls.cert.name == "coordinator.pem"
    config = yaml.safe_load(secure.config.read_text())
    assert config["tls"]["allow"] == ["coordinator"]


# -- the node refuses -------------------------------------------------------------------------

def test_node_refuses_a_caller_without_a_client_certificate(secure: SecureNode) -> None:
    error = _call(secure, _credentials(secure.coordinator.ca, None))
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails
    assert secure.spent() == 0


def test_node_refuses_a_certificate_from_another_ca(secure: SecureNode, tmp_path: Path) -> None:
    ca.init_ca(tmp_path / "rogue")
    impostor = ca.issue(tmp_path / "rogue", "coordinator")  # the right name, the wrong CA
    error = _call(secure, _credentials(secure.coordinator.ca, impostor))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert secure.spent() == 0


def test_node_refuses_an_identity_not_on_its_allow_list(secure: SecureNode) -> None:
    other = ca.issue(secure.root / "ca", "member-99", secure.root / "member-99")
    error = _call(secure, _credentials(secure.coordinator.ca, other))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "member-99" in (error.details() or "") and "allow" in (error.details() or "")
    assert secure.spent() == 0
    assert secure.engine.ledger.charges() == []


# -- the coordinator refuses ------------------------------------------------------------------

def test_coordinator_refuses_a_node_with_another_members_certificate(
        secure: SecureNode) -> None:
    # the network file says member-02 listens here, but the node holds member-01's certificate
    with Network([Member("member-02", secure.address)], tls=secure.coordinator) as net:
        info = net.info()
        frame = net.mean("assessment", "bridge_total", epsilon=0.5)
    status = str(info.iloc[0]["status"])
    assert not bool(info.iloc[0]["reachable"])
    assert status.startswith("UNAVAILABLE") and "member-02" in status, status
    row = frame[frame.member == "member-02"].iloc[0]
    assert "certificate for member-02" in row["status"], row["status"]
    assert secure.spent() == 0


def test_coordinator_needs_tls_or_an_explicit_insecure(secure: SecureNode) -> None:
    plain = secure.root / "plain.yaml"
    plain.write_text(yaml.safe_dump({"members": [{"name": secure.name,
                                                  "address": secure.address}]}))
    with pytest.raises(NetworkFileError, match=r"plain\.yaml: tls: missing.*--insecure"):
        Network.from_file(plain)
    with pytest.raises(NetworkFileError, match="tls: missing"):
        Network([Member(secure.name, secure.address)])
    result = _cli("info", "--network", str(plain))
    assert result.returncode == 2 and "tls: missing" in result.stderr
    with Network.from_file(plain, insecure=True) as net:  # plain text to a TLS node fails
        assert not bool(net.info().iloc[0]["reachable"])


def test_network_file_with_a_broken_coordinator_certificate_names_file_and_key(
        secure: SecureNode) -> None:
    expired = ca.issue(secure.root / "ca", "coordinator", secure.root / "old",
                       valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=800))
    network = yaml.safe_load((secure.root / "network.yaml").read_text())
    for key, value, expected in (("cert", "old/coordinator.pem", "expired on"),
                                 ("ca", "nowhere/ca.pem", "cannot read"),
                                 ("key", "ca/ca.key", "does not match")):
        broken = dict(network, tls={**network["tls"], key: value})
        if key == "cert":
            broken["tls"]["key"] = str(expired.key.relative_to(secure.root))
        path = secure.root / f"network-{key}.yaml"
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(NetworkFileError) as caught:
            load_network(path)
        assert f"network-{key}.yaml: tls.{key}:" in str(caught.value), str(caught.value)
        assert expected in str(caught.value), str(caught.value)


# -- start-up checks of the node's tls files --------------------------------------------------

def _serve(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgestat.node.cli", "serve", "--config",
                           str(config), *flags], capture_output=True, text=True, timeout=120,
                          check=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgestat.coordinator.cli.main", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _set_tls(config: Path, **files: str) -> None:
    doc = yaml.safe_load(config.read_text())
    doc["tls"].update(files)
    config.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def member(tmp_path: Path) -> Path:
    """A member's node.yaml with valid certificates (not served)."""
    synth.write_network(tmp_path, members=1, seed=5, sizes=[60])
    return local.write_configs(tmp_path)[0].config


def _expired(folder: Path) -> str:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=800)
    issued = ca.issue(folder.parent / "ca", "member-01", folder / "old", valid_from=old)
    _set_tls(folder / "node.yaml", key=f"old/{issued.key.name}")
    return f"old/{issued.cert.name}"


def _future(folder: Path) -> str:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    issued = ca.issue(folder.parent / "ca", "member-01", folder / "new", valid_from=soon)
    _set_tls(folder / "node.yaml", key=f"new/{issued.key.name}")
    return f"new/{issued.cert.name}"


def _rogue(folder: Path) -> str:
    ca.init_ca(folder / "rogue")
    issued = ca.issue(folder / "rogue", "member-01")
    _set_tls(folder / "node.yaml", key=f"rogue/{issued.key.name}")
    return f"rogue/{issued.cert.name}"


def _other_name(folder: Path) -> str:
    issued = ca.issue(folder.parent / "ca", "member-02", folder / "other")
    _set_tls(folder / "node.yaml", key=f"other/{issued.key.name}")
    return f"other/{issued.cert.name}"


def _garbage(folder: Path) -> str:
    (folder / "garbage.pem").write_text("not a certificate\n")
    return "garbage.pem"


CERT_PROBLEMS = [("expired", _expired, "tls.cert", "expired on"),
                 ("not yet valid", _future, "tls.cert", "is not valid before"),
                 ("another CA", _rogue, "tls.cert", "not signed by the CA in tls.ca"),
                 ("another member", _other_name, "tls.cert", "is for member-02, not node_id"),
                 ("not PEM", _garbage, "tls.cert", "is not a PEM certificate")]


@pytest.mark.parametrize(("case", "make", "key", "expected"), CERT_PROBLEMS,
                         ids=[c[0] for c in CERT_PROBLEMS])
def test_serve_refuses_a_broken_certificate_at_start_up(member: Path, case: str, make: object,
                                                        key: str, expected: str) -> None:
    cert = make(member.parent)  # type: ignore[operator]
    _set_tls(member, cert=cert)
    result = _serve(member)
    assert result.returncode == 2, (case, result.stderr)
    assert f"node.yaml: {key}:" in result.stderr and expected in result.stderr, result.stderr
    assert cert.split("/")[-1] in result.stderr  # names the file
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_key_that_does_not_match_the_certificate(member: Path) -> None:
    _set_tls(member, key="../coordinator/coordinator.key")
    result = _serve(member)
    assert result.returncode == 2
    assert "node.yaml: tls.key:" in result.stderr and "does not match" in result.stderr
    assert "coordinator.key" in result.stderr


def test_serve_refuses_a_missing_tls_file(member: Path) -> None:
    _set_tls(member, ca="../ca/missing.pem")
    result = _serve(member)
    assert result.returncode == 2
    assert "node.yaml: tls.ca:" in result.stderr and "missing.pem" in result.stderr


def test_plain_text_needs_insecure(member: Path) -> None:
    doc = yaml.safe_load(member.read_text())
    del doc["tls"]
    member.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = _serve(member)
    assert result.returncode == 2
    assert "node.yaml: tls: missing" in result.stderr and "--insecure" in result.stderr


def test_a_plain_text_network_runs_with_insecure(tmp_path: Path) -> None:
    synth.write_network(tmp_path, members=1, seed=5, sizes=[80])
    members = local.write_configs(tmp_path, tls=False)
    assert "tls" not in yaml.safe_load(members[0].config.read_text())
    processes = local.start_nodes(members, tmp_path)  # passes --insecure
    try:
        with Network.from_file(tmp_path / "network.yaml", insecure=True) as net:
            assert bool(net.info()["reachable"].all())
        info = _cli("info", "--network", str(tmp_path / "network.yaml"), "--insecure")
        assert info.returncode == 0, info.stderr
    finally:
        local.stop_nodes(processes)
    assert "plain text (--insecure)" in (tmp_path / "member-01.log").read_text()


# -- the CA: issue, and the CSR flow that keeps a member's key at the member -------------------

def _ca_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`bridgestat ca ...` in this process (the real parser and handlers, no start-up cost)."""
    code = cli.main(["ca", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_csr_flow_signs_without_the_members_key(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    authority = str(tmp_path / "ca")
    assert _ca_cli(capsys, "init", "--dir", authority)[0] == 0
    code, text = _ca_cli(capsys, "init", "--dir", authority)
    assert code == 2 and "already exists" in text
    member_dir, inbox = tmp_path / "at-member", tmp_path / "at-ca"
    code, text = _ca_cli(capsys, "csr", "--name", "member-07", "--out", str(member_dir))
    assert code == 0, text
    inbox.mkdir()
    (inbox / "member-07.csr").write_bytes((member_dir / "member-07.csr").read_bytes())
    code, text = _ca_cli(capsys, "sign", "--dir", authority, "--csr",
                         str(inbox / "member-07.csr"))
    assert code == 0, text
    assert sorted(p.name for p in inbox.iterdir()) == ["member-07.csr", "member-07.pem"]
    assert (member_dir / "member-07.key").stat().st_mode & 0o077 == 0  # private to the member
    problem = ca.check_identity(tmp_path / "ca" / "ca.pem", inbox / "member-07.pem",
                                member_dir / "member-07.key")
    assert problem is None
    code, _ = _ca_cli(capsys, "issue", "--dir", authority, "--name", "coordinator", "--out",
                      str(tmp_path / "coord"))
    assert code == 0 and (tmp_path / "coord" / "coordinator.pem").is_file()
    code, text = _ca_cli(capsys, "issue", "--dir", authority, "--name", "no spaces")
    assert code == 2 and "name 'no spaces'" in text


def test_a_node_serves_with_a_certificate_from_the_csr_flow(member: Path, tmp_path: Path
                                                            ) -> None:
    key, request = ca.make_csr("member-01", tmp_path / "own")
    cert = ca.sign_csr(tmp_path / "ca", request)
    _set_tls(member, cert=str(cert), key=str(key))
    config = load_config(member)
    assert load_server_tls(config).allow == ("coordinator",)
