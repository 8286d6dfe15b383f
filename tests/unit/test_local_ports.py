"""The local launcher's loopback ports: the kernel's choice, or a range of its own
(BRIDGESTAT_LOCAL_PORTS, which the parallel test workers each set to a different range)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bridgestat.coordinator.demo import local


def test_ports_come_from_the_range_distinct_and_skip_one_in_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # a port something is bound to now
        port = taken.getsockname()[1]
        monkeypatch.setenv(local.PORTS_ENV, f"{port}-{port + 50}")
        ports = [local.free_port() for _ in range(5)]  # in turn: distinct
    assert len(set(ports)) == 5
    assert all(port < p <= port + 50 for p in ports), ports  # never the bound one


def test_a_range_with_nothing_free_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        monkeypatch.setenv(local.PORTS_ENV, f"{port}-{port}")
        with pytest.raises(OSError, match=f"BRIDGESTAT_LOCAL_PORTS={port}-{port}: no free port"):
            local.free_port()


@pytest.mark.parametrize("value", ["20000", "x-y", "30000-20000", "0-10", "1-70000"])
def test_a_malformed_range_is_refused_by_name(monkeypatch: pytest.MonkeyPatch,
                                              value: str) -> None:
    monkeypatch.setenv(local.PORTS_ENV, value)
    with pytest.raises(ValueError, match="BRIDGESTAT_LOCAL_PORTS=.*expected a port range"):
        local.free_port()


def test_without_the_variable_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(local.PORTS_ENV, raising=False)
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    low, high = map(int, ephemeral.split())
    assert low <= local.free_port() <= high
