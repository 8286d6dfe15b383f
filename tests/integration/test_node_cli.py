"""`bridgestat-node check` and `budget` as member IT runs them (the real command, a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from bridgestat.coordinator.demo import local, synth
from tests.integration.csv_edit import edit_cell


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridgestat.node.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def _member(tmp_path: Path) -> tuple[Path, Path]:
    synth.write_network(tmp_path, members=1, seed=3, sizes=[120])
    member = local.write_configs(tmp_path, total_epsilon=3.0, max_per_query=1.0)[0]
    return member.config, member.config.parent


def test_clean_data_passes(tmp_path: Path) -> None:
    config, _ = _member(tmp_path)
    result = _run("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "data can be served" in result.stdout


def test_check_names_file_row_and_column_of_each_problem(tmp_path: Path) -> None:
    config, folder = _member(tmp_path)
    wrong_type = edit_cell(folder, "assessment", 3, "debt_step", "three")
    vocabulary = edit_cell(folder, "participant", 5, "household_type", "castle")
    bounds = edit_cell(folder, "assessment", 7, "bridge_total", "140")
    missing_key = edit_cell(folder, "participant", 9, "participant_id", "")
    participants = pd.read_csv(folder / "participant.csv", dtype=str, keep_default_na=False)
    duplicate = edit_cell(folder, "participant", 11, "participant_id",
                      participants.loc[10, "participant_id"])
    result = _run("check", "--config", str(config))
    out = result.stdout
    assert result.returncode == 1, out
    expected = [
        ("assessment.csv", wrong_type, "debt_step", "wrong_type"),
        ("participant.csv", vocabulary, "household_type", "not_in_vocabulary"),
        ("assessment.csv", bounds, "bridge_total", "out_of_bounds"),
        ("participant.csv", missing_key, "participant_id", "missing_key"),
        ("participant.csv", duplicate, "participant_id", "duplicate_key"),
    ]
    for file, line, column, kind in expected:
        assert any(file in text and f"row {line}" in text and column in text and kind in text
                   for text in out.splitlines()), (file, line, column, kind, out)
    assert "data cannot be served" in out


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    config, _ = _member(tmp_path)
    config.write_text(config.read_text().replace("max_epsilon_per_query: 1.0",
                                                 "max_epsilon_per_query: -1"))
    result = _run("check", "--config", str(config))
    assert result.returncode == 2
    assert "budget.max_epsilon_per_query" in result.stderr


def test_serve_refuses_unservable_data(tmp_path: Path) -> None:
    config, folder = _member(tmp_path)
    edit_cell(folder, "participant", 0, "gender", "robot")
    result = _run("serve", "--config", str(config))
    assert result.returncode == 2
    assert "participant.csv" in result.stderr and "gender" in result.stderr


def test_budget_shows_spent_and_remaining(tmp_path: Path) -> None:
    config, _ = _member(tmp_path)
    result = _run("budget", "--config", str(config))
    assert result.returncode == 0
    assert "spent epsilon 0 of 3" in result.stdout and "remaining 3" in result.stdout


def test_serve_on_a_taken_port_names_the_listen_key(tmp_path: Path) -> None:
    import socket

    config, _ = _member(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = config.read_text()
        address = next(line for line in text.splitlines() if line.startswith("listen:"))
        config.write_text(text.replace(address, f"listen: 127.0.0.1:{port}"))
        result = _run("serve", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "listen" in result.stderr and "Traceback" not in result.stderr


def test_unwritable_ledger_names_the_ledger_key(tmp_path: Path) -> None:
    config, folder = _member(tmp_path)
    (folder / "blocked").write_text("a file, not a folder")
    config.write_text(config.read_text().replace("ledger: ledger.sqlite",
                                                 "ledger: blocked/ledger.sqlite"))
    result = _run("serve", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert ": ledger: cannot open ledger" in result.stderr and "Traceback" not in result.stderr


def test_check_reports_certificates_and_policy_before_the_data(tmp_path: Path) -> None:
    """`check` runs the start-up checks of `serve`: a good member passes with its TLS named,
    an expired certificate or a policy with an unknown key fails naming file and key."""
    import datetime as dt

    import yaml

    from bridgestat.coordinator import ca

    config, folder = _member(tmp_path)
    result = _run("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tls " in result.stdout and "callers allowed: coordinator" in result.stdout

    doc = yaml.safe_load(config.read_text())
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    ca.issue(tmp_path / "ca", "member-01", folder / "expired", days=2, valid_from=old)
    doc["tls"].update(cert="expired/member-01.pem", key="expired/member-01.key")
    config.write_text(yaml.safe_dump(doc))
    expired = _run("check", "--config", str(config))
    assert expired.returncode == 2
    assert "tls.cert" in expired.stderr and "expired" in expired.stderr, expired.stderr

    doc = yaml.safe_load(config.read_text())
    doc["tls"].update(cert="member-01.pem", key="member-01.key")
    (folder / "policy.yaml").write_text("statistics: [count]\nmax_cells: 3\n")
    doc["policy"] = "policy.yaml"
    config.write_text(yaml.safe_dump(doc))
    bad_policy = _run("check", "--config", str(config))
    assert bad_policy.returncode == 2
    assert "policy.yaml" in bad_policy.stderr and "max_cells" in bad_policy.stderr
