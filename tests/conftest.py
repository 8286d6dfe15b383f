"""Suite-wide set-up: `make test` runs the tests in parallel workers (pytest-xdist, one file
per worker at a time), and each worker hands out loopback ports from its own range, so that
two workers never choose the same port for the nodes, hubs and servers they start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridgestat.coordinator.demo.local import PORTS_ENV

EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")  # what bind(0) hands out
PORTS_PER_WORKER = 2000


def pytest_configure(config: pytest.Config) -> None:
    worker = getattr(config, "workerinput", {}).get("workerid", "")  # gw0, gw1, ...
    if worker.startswith("gw") and worker[2:].isdigit():
        # the ranges lie just below the kernel's ephemeral ports, one under the other
        high = _first_ephemeral() - 1 - int(worker[2:]) * PORTS_PER_WORKER
        os.environ.setdefault(PORTS_ENV, f"{high - PORTS_PER_WORKER + 1}-{high}")


def _first_ephemeral() -> int:
    try:
        return int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
