"""Certificates with a lifetime: days left shown by the node, renewal, reload on SIGHUP.

A real `bridgestat-node serve` process over mutual TLS whose certificate has 20 days left:
it warns at start-up, `check` and `budget` say so, the metric shows it; after `bridgestat ca
renew` and SIGHUP a new handshake gets the new certificate (its serial read from a plain
`ssl` client handshake) while a call opened before goes on; a broken replacement is refused
with a log line naming the file and the renewed certificate stays in use. And `serve` in this
process with a query held in the engine: SIGHUP while it is in flight, the query completes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bridgestat.common import certs
from bridgestat.coordinator import ca
from bridgestat.coordinator.client.network_file import TlsFiles
from bridgestat.coordinator.demo import local, synth
from bridgestat.coordinator.demo.local import LocalMember
from bridgestat.node import app
from bridgestat.node.engine import Engine
from bridgestat.v1 import node_service_pb2 as pb
from bridgestat.v1 import node_service_pb2_grpc as pb_grpc
from tests.integration.engine_gate import Gate

DAYS_LEFT = 20.5  # the node starts with a certificate inside the 30-day warning


@dataclass
class Served:
    root: Path
    member: LocalMember
    metrics: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def tls(self) -> TlsFiles:
        assert self.member.client_tls is not None
        return self.member.client_tls

    @property
    def cert(self) -> Path:
        return self.member.config.parent / f"{self.member.name}.pem"


def _network(root: Path) -> LocalMember:
    """One member whose certificate has DAYS_LEFT days left."""
    synth.write_network(root, members=1, seed=3, sizes=[150])
    member = local.write_configs(root, total_epsilon=5.0, max_per_query=1.0)[0]
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=ca.MEMBER_DAYS - DAYS_LEFT)
    ca.issue(root / "ca", member.name, member.config.parent, valid_from=start)
    return member


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    member = _network(tmp_path)
    metrics = f"127.0.0.1:{local.free_port()}"
    doc = yaml.safe_load(member.config.read_text())
    doc.update(metrics=metrics, log_format="json")
    member.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    processes = local.start_nodes([member], tmp_path)
    try:
        yield Served(tmp_path, member, metrics, tmp_path / f"{member.name}.log", processes[0])
    finally:
        local.stop_nodes(processes)


def served_serial(address: str, tls: TlsFiles, name: str) -> int:
    """The serial of the certificate the server presents in a new TLS handshake, as a plain
    client with the coordinator's identity sees it (checked against the CA and `name`)."""
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.set_alpn_protocols(["h2"])
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as wrapped:
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def _serial(path: Path) -> int:
    return int(certs.load_certificate(path).serial_number)


def _channel(address: str, tls: TlsFiles, name: str) -> grpc.Channel:
    """A new channel (its own credentials, so its own connection and handshake)."""
    return grpc.secure_channel(address, tls.channel_credentials(),
                               options=[("grpc.ssl_target_name_override", name)])


def _query(key: str) -> pb.RunQueryRequest:
    return pb.RunQueryRequest(idempotency_key=key, query=pb.Query(
        statistic=pb.STATISTIC_MEAN, table="assessment", column="bridge_total",
        loss=pb.PrivacyLoss(epsilon=0.5)))


def _log_events(log: Path) -> list[dict[str, Any]]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def _wait_until(done: Callable[[], bool], what: str, process: subprocess.Popen[bytes] | None
                = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert process is None or process.poll() is None, f"the node exited before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.1)


def _wait_event(served: Served, event: str, count: int) -> dict[str, Any]:
    """The `count`-th log entry with this event, once the node has written it."""
    def found() -> list[dict[str, Any]]:
        return [e for e in _log_events(served.log) if e.get("event") == event]
    _wait_until(lambda: len(found()) >= count, f"log event {event}", served.process)
    return found()[count - 1]


def _expiry_gauge(served: Served) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{served.metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {sample.labels["certificate"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "bridgestat_node_certificate_expiry_days"}


def _node_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*local.node_command(), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_node_shows_days_left_and_warns_within_thirty(served: Served) -> None:
    warnings = [e for e in _log_events(served.log) if e.get("event") == "certificate_expiry"]
    node = next(e for e in warnings if e["certificate"] == "node")
    assert node["level"] == "WARNING" and node["expiry_days"] == 20, node
    assert str(served.cert) in node["message"] and "bridgestat ca renew" in node["message"]
    authority = next(e for e in warnings if e["certificate"] == "ca")
    assert authority["level"] == "INFO" and authority["expiry_days"] == ca.CA_DAYS - 1
    assert _expiry_gauge(served) == {"node": 20.0, "ca": float(ca.CA_DAYS - 1)}
    for command in ("check", "budget"):
        result = _node_cli(command, "--config", str(served.member.config))
        assert result.returncode == 0, result.stderr
        assert (f"certificate {served.cert} expires" in result.stdout
                and "(in 20 days): WARNING, fewer than 31 days left" in result.stdout), \
            result.stdout
        assert f"(in {ca.CA_DAYS - 1} days)" in result.stdout, result.stdout


def test_sighup_reloads_a_renewed_certificate_and_refuses_a_broken_one(
        served: Served) -> None:
    name, address, tls = served.member.name, served.member.address, served.tls
    old = _serial(served.cert)
    assert served_serial(address, tls, name) == old
    with _channel(address, tls, name) as before:
        # a call in flight across both reloads: a health watch stays open until the node stops
        watch = health_pb2_grpc.HealthStub(before).Watch(health_pb2.HealthCheckRequest(),
                                                         timeout=120)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.NodeServiceStub(before)
        in_flight = stub.RunQuery.future(_query("across-the-reload"), timeout=60)

        renewed = ca.renew(served.root / "ca", served.cert)
        served.process.send_signal(signal.SIGHUP)
        reloaded = _wait_event(served, "tls_reloaded", 1)
        new = _serial(renewed.cert)
        assert new != old and reloaded["serial"] == f"{new:x}", reloaded
        assert served_serial(address, tls, name) == new  # a new handshake: the new one
        assert in_flight.result().charged.epsilon == pytest.approx(0.5)
        assert stub.RunQuery(_query("old-connection"), timeout=30).charged.epsilon > 0
        with _channel(address, tls, name) as after:
            answer = pb_grpc.NodeServiceStub(after).RunQuery(_query("new-connection"),
                                                             timeout=30)
        assert answer.charged.epsilon == pytest.approx(0.5)
        assert _expiry_gauge(served)["node"] == ca.MEMBER_DAYS - 1

        # a broken replacement: an expired certificate (with its own, matching key)
        expired = ca.issue(served.root / "ca", name, served.root / "expired",
                           valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=800))
        served.cert.write_bytes(expired.cert.read_bytes())
        renewed.key.write_bytes(expired.key.read_bytes())
        served.process.send_signal(signal.SIGHUP)
        refused = _wait_event(served, "tls_reload_refused", 1)
        assert refused["level"] == "ERROR", refused
        message = refused["message"]
        assert "tls.cert" in message and str(served.cert) in message and "expired on" in message
        assert f"serial {new:x}" in message, message
        assert served_serial(address, tls, name) == new  # the renewed one stays in use
        with _channel(address, tls, name) as later:
            assert pb_grpc.NodeServiceStub(later).GetNodeInfo(pb.GetNodeInfoRequest(),
                                                              timeout=30).node_id == name
        assert not watch.done()  # the watch opened before both reloads is still open
        served.process.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    assert served.process.wait(60) == 0


# -- a query held in the engine while the node reloads -----------------------------------------



def _client(member: LocalMember, ready: threading.Event, gate: Gate,
            results: dict[str, Any]) -> None:
    """Hold a query in the engine, renew the certificate and SIGHUP this process, see the new
    certificate in a new handshake, then let the query finish and SIGTERM."""
    try:
        assert ready.wait(60), "node did not start"
        tls = member.client_tls
        assert tls is not None
        cert = member.config.parent / f"{member.name}.pem"
        with _channel(member.address, tls, member.name) as channel:
            future = pb_grpc.NodeServiceStub(channel).RunQuery.future(_query("held"),
                                                                      timeout=60)
            assert gate.entered.wait(30), "the query never reached the engine"
            results["old"] = served_serial(member.address, tls, member.name)
            renewed = ca.renew(member.config.parent.parent / "ca", cert)
            results["new"] = _serial(renewed.cert)
            os.kill(os.getpid(), signal.SIGHUP)
            _wait_until(lambda: served_serial(member.address, tls, member.name)
                        == results["new"], "new certificate served")
            results["done_before_release"] = future.done()
            gate.release.set()
            results["in_flight"] = future.result()
    except BaseException as exc:  # noqa: BLE001  # reported by the test, not lost here
        results["error"] = exc
    finally:
        gate.release.set()
        os.kill(os.getpid(), signal.SIGTERM)




def test_sighup_with_a_query_in_flight_lets_it_finish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_logging: None) -> None:
    member = _network(tmp_path)
    gate = Gate(threading.Event(), threading.Event())
    opened: list[Engine] = []
    real_open = app.open_engine

    def open_gated(config: Any) -> Engine:
        opened.append(gate.wrap(real_open(config)))
        return opened[-1]
    monkeypatch.setattr(app, "open_engine", open_gated)
    ready, results = threading.Event(), {}
    client = threading.Thread(target=_client, args=(member, ready, gate, results))
    before = signal.getsignal(signal.SIGHUP)
    client.start()
    app.serve(member.config, ready, grace=30)  # returns once the client's SIGTERM is handled
    client.join(30)
    assert "error" not in results, results.get("error")
    assert results["old"] != results["new"]
    assert results["done_before_release"] is False  # the query was held across the reload
    answer = results["in_flight"]
    assert answer.idempotency_key == "held" and answer.charged.epsilon == pytest.approx(0.5)
    assert float(opened[0].ledger.state().spent) == pytest.approx(0.5)
    assert signal.getsignal(signal.SIGHUP) == before  # serve put the old handler back


def test_budget_names_an_unreadable_certificate_and_still_reports(tmp_path: Path) -> None:
    member = _network(tmp_path)
    cert = member.config.parent / f"{member.name}.pem"
    cert.write_text("not a certificate\n")
    result = _node_cli("budget", "--config", str(member.config))
    assert result.returncode == 0, result.stderr
    assert "spent epsilon 0 of 5" in result.stdout, result.stdout
    assert f"certificate: {cert} is not a PEM certificate" in result.stdout, result.stdout
