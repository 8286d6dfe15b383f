"""The command-line entry points import only light modules until a command runs, so that
`bridgestat --help` and `bridgestat-node --help` start fast (benchmarks/cli_startup.py
measures the time; this checks the cause, in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bridgestat.common.certs import WARN_DAYS
from bridgestat.coordinator.cli import main as coordinator_cli
from bridgestat.node import cli as node_cli
from bridgestat.node.ledger import PERIODS

HEAVY = ("pandas", "numpy", "scipy", "matplotlib", "grpc", "opendp", "pyarrow", "cryptography",
         "yaml", "pydantic", "google.protobuf", "sqlite3", "bridgestat.v1")


@pytest.mark.parametrize("module", ["bridgestat.coordinator.cli.main", "bridgestat.node.cli"])
def test_building_the_parser_imports_no_heavy_library(module: str) -> None:
    code = (f"import sys, json, {module} as cli; cli.build_parser(); "
            "print(json.dumps(sorted(sys.modules)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True, timeout=60).stdout)
    heavy = [h for h in HEAVY if any(m == h or m.startswith(f"{h}.") for m in loaded)]
    assert heavy == [], f"{module} imports {heavy} before any command runs"


def test_the_audit_periods_offered_are_the_ledgers() -> None:
    assert node_cli.PERIODS == PERIODS


def test_the_certificate_warning_named_in_help_is_the_checks() -> None:
    assert coordinator_cli.CERT_WARN_DAYS == WARN_DAYS


def test_the_report_languages_offered_are_the_translations() -> None:
    from bridgestat.coordinator.report.i18n import LANGUAGES

    assert coordinator_cli.LANGUAGES == LANGUAGES
