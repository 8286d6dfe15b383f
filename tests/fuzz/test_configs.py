"""Fuzzed node configs: `load_config` (and the schema the config declares) either gives a
config or raises ConfigError naming the file and a key; `bridgestat-node check` exits 1 or
2 without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bridgestat.node.config import NodeConfig, load_config
from bridgestat.node.errors import ConfigError

from .conftest import Member
from .mutations import mutated, weird_paths
from .strategies import fuzz_settings

EXAMPLES = 700
FUZZ_FILE = "fuzz-node.yaml"
config_values = st.one_of(
    weird_paths,
    st.sampled_from(["host:99999", ":1", "a:b", "[::1]:50051", "127.0.0.1:-1", "h:0", "csv",
                     "postgresql", "parquet", "excel", "default", "json", "text",
                     "postgresql://ro:secret@db:5432/care", "postgresql://", "host=db port=x",
                     "coordinator", "year"]))


def variants(base: dict[str, Any]) -> list[dict[str, Any]]:
    """The member's valid config, and richer valid ones using every optional key."""
    full = {**base, "audit": "audit.jsonl", "metrics": "127.0.0.1:9464", "log_format": "json",
            "connect": {"coordinator": "coord.example:50100", "server_name": "coordinator"},
            "tls": {"ca": "node.yaml", "cert": "node.yaml", "key": "node.yaml",
                    "allow": ["coordinator"]},
            "budget": {**base["budget"], "delta": 1e-6}}
    database = {**base, "data": {"source": "postgresql", "dsn": "postgresql://ro@db:5432/care",
                                 "password_env": "BRIDGESTAT_DB_PASSWORD",
                                 "tables": {"participant": "bridge.participant_v"}}}
    return [base, full, database]


_SCHEMA_OUTCOMES: dict[tuple[Any, ...], ConfigError | None] = {}


def _schema_check(config: NodeConfig) -> None:
    """config.schema(), memoized on what it depends on (loading the schema takes ~30 ms)."""
    key = (config.source, config.schema_path, tuple(sorted(config.categories.items())))
    if key not in _SCHEMA_OUTCOMES:
        try:
            config.schema()
            _SCHEMA_OUTCOMES[key] = None
        except ConfigError as exc:
            _SCHEMA_OUTCOMES[key] = exc
    outcome = _SCHEMA_OUTCOMES[key]
    if outcome is not None:
        raise outcome


def check_loads_or_names_key(path: Path) -> None:
    """The property: a config (whose schema loads too) or a ConfigError naming file and key."""
    try:
        config = load_config(path)
        _schema_check(config)
    except ConfigError as exc:
        assert exc.source == str(path), exc
        assert isinstance(exc.key, str), exc  # '' when the unknown key itself is ''
        assert str(exc).startswith(f"{path}: {exc.key}: "), exc


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def write(path: Path, doc: Any) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")


def test_mutated_configs_load_or_name_the_key(member: Member) -> None:
    base = yaml.safe_load(member.config_path.read_text(encoding="utf-8"))
    path = member.folder / FUZZ_FILE

    @fuzz_settings(EXAMPLES)
    @given(st.one_of(*(mutated(v, config_values) for v in variants(base))))
    def check(doc: Any) -> None:
        write(path, doc)
        check_loads_or_names_key(path)

    check()


def test_unreadable_config_files_name_the_file(member: Member) -> None:
    path = member.folder / FUZZ_FILE

    @fuzz_settings(200)
    @given(st.one_of(st.binary(max_size=200),
                     st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        check_loads_or_names_key(path)

    check()


CLI_CASES = {
    "unknown top-level key": {"colour": "red"},
    "listen is not host:port": {"listen": "localhost"},
    "data folder missing": {"data": {"source": "csv", "path": "no-such-folder"}},
    "negative budget": {"budget": {"total_epsilon": -1, "max_epsilon_per_query": 1}},
    "not a mapping": None,
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_node_check_exits_1_or_2_without_traceback(member: Member, tmp_path: Path,
                                                   case: str) -> None:
    base = yaml.safe_load(member.config_path.read_text(encoding="utf-8"))
    change = CLI_CASES[case]
    doc = ["not", "a", "mapping"] if change is None else {**base, **change}
    path = member.folder / f"cli-{abs(hash(case))}.yaml"
    write(path, doc)
    done = subprocess.run([sys.executable, "-m", "bridgestat.node.cli", "check", "--config",
                           str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode in (1, 2), (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
