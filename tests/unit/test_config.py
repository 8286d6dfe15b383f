"""The node config file: defaults that other modules rely on."""

from __future__ import annotations

from pathlib import Path

import yaml

from bridgestat.node import audit
from bridgestat.node.config import load_config

BASE = {"node_id": "member-01", "data": {"source": "csv", "path": "data"},
        "budget": {"dataset": "d", "total_epsilon": 3.0, "max_epsilon_per_query": 1.0},
        "ledger": "state/ledger.sqlite"}


def _config(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}), encoding="utf-8")
    return path


def test_the_audit_log_defaults_to_audit_jsonl_beside_the_ledger(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    assert config.audit_path is None
    assert audit.audit_path(config) == tmp_path.resolve() / "state" / "audit.jsonl"


def test_a_configured_audit_log_is_relative_to_the_config(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, audit="logs/audit.jsonl"))
    assert audit.audit_path(config) == tmp_path.resolve() / "logs" / "audit.jsonl"
