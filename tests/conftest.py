"""Suite-wide set-up: `make test` runs the tests in parallel workers (pytest-xdist, one file
per worker at a time), and each worker hands out loopback ports from its own range, so that
two workers never choose the same port for the nodes, hubs and servers they start."""

from __future__ import annotations

import os

import pytest

from bridgestat.coordinator.demo.local import PORTS_ENV

FIRST_PORT = 20000  # below the kernel's ephemeral ports (32768 up), which bind(0) hands out
PORTS_PER_WORKER = 3000


def pytest_configure(config: pytest.Config) -> None:
    worker = getattr(config, "workerinput", {}).get("workerid", "")  # gw0, gw1, ...
    if worker.startswith("gw") and worker[2:].isdigit():
        low = FIRST_PORT + int(worker[2:]) * PORTS_PER_WORKER
        os.environ.setdefault(PORTS_ENV, f"{low}-{low + PORTS_PER_WORKER - 1}")
