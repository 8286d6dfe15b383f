"""Crashes the fuzz tests found, kept as explicit regression tests now that they are fixed.

Each was an unhandled exception: an absurd rho overflowing OpenDP's conversion (INTERNAL
instead of a refusal), a huge YAML integer overflowing float in a config or study file, and a
config or network file that is not UTF-8.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from bridgestat.coordinator.client.network_file import NetworkFileError, load_network
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from bridgestat.coordinator.studies.studyfile import StudyError, parse_study
from bridgestat.node.config import load_config
from bridgestat.node.engine import Engine
from bridgestat.node.errors import ConfigError
from bridgestat.v1 import node_service_pb2 as pb

from .conftest import Member, ServedNode
from .ledger_checks import key_for, run_on_engine, run_over_grpc

# Found by fuzzing: planner._check_loss converts the query's rho to epsilon
# (loss.rho_to_epsilon) before comparing it to the per-query cap, and for rho >= ~70283
# OpenDP's conversion overflows. That raised an OpenDPException, no NodeError, so gRPC
# answered INTERNAL. rho_to_epsilon now returns inf there, which every cap refuses.
HUGE_RHO = pb.Query(statistic=pb.STATISTIC_CROSS_PRODUCTS, table="participant",
                    loss=pb.PrivacyLoss(rho=70284.0),
                    terms=[pb.Term(column="rollout_wave"), pb.Term(column="intake_year")])
RHO_BUG = ("node/planner.py _check_loss: rho_to_epsilon overflows in OpenDP for a finite rho "
           ">= ~70283 (OpenDPException, not a PolicyError on query.loss.rho)")


def test_huge_rho_is_refused_by_the_engine(engine: Engine) -> None:
    assert run_on_engine(engine, key_for("fresh"), HUGE_RHO) == "PolicyError"


def test_huge_rho_is_refused_over_grpc(served: ServedNode) -> None:
    assert run_over_grpc(served.engine, served.stub, key_for("fresh"), HUGE_RHO) == \
        grpc.StatusCode.PERMISSION_DENIED.name


# node/config.py _positive (`not math.isfinite(value)`, line 289): a budget number that YAML
# reads as an int too large for a float (e.g. total_epsilon: 1 followed by 400 zeros) raises
# OverflowError instead of ConfigError; `bridgestat-node check` then dies with a traceback.
BIG_INT_BUG = ("node/config.py _positive: math.isfinite(int) raises OverflowError for "
               "budget.total_epsilon / max_epsilon_per_query beyond float range")


def _huge_budget_config(member: Member) -> Path:
    doc = yaml.safe_load(member.config_path.read_text(encoding="utf-8"))
    doc["budget"]["total_epsilon"] = 10**400
    path = member.folder / "huge-budget.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def test_huge_integer_budget_is_a_config_error(member: Member) -> None:
    path = _huge_budget_config(member)
    with pytest.raises(ConfigError, match=r"budget\.total_epsilon"):
        load_config(path)


def test_node_check_reports_huge_integer_budget_without_traceback(member: Member) -> None:
    done = subprocess.run([sys.executable, "-m", "bridgestat.node.cli", "check", "--config",
                           str(_huge_budget_config(member))], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


# node/config.py load_config (line 148) catches OSError and yaml.YAMLError around
# `Path(path).read_text(encoding="utf-8")`, but a file that is not UTF-8 raises
# UnicodeDecodeError (a ValueError): not a ConfigError naming the file.
NOT_UTF8_BUG = ("node/config.py load_config: a non-UTF-8 config file raises "
                "UnicodeDecodeError instead of ConfigError(file, '(file)')")


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_bytes(b"\x80")
    with pytest.raises(ConfigError, match=r"\(file\)"):
        load_config(path)


# coordinator/client/network_file.py load_network (line 95) has the same gap: a non-UTF-8 network file
# raises UnicodeDecodeError instead of NetworkFileError naming the file.
NETWORK_UTF8_BUG = ("coordinator/client/network_file.py load_network: a non-UTF-8 network file raises "
                    "UnicodeDecodeError instead of NetworkFileError")


def test_non_utf8_network_file_is_a_network_file_error(tmp_path: Path) -> None:
    path = tmp_path / "network.yaml"
    path.write_bytes(b"\x80")
    with pytest.raises(NetworkFileError, match="cannot read"):
        load_network(path)


# coordinator/studies/studyfile.py _number (line 200, `not math.isfinite(value)`): the same overflow
# for a study number, e.g. an analysis's epsilon: 1 followed by 400 zeros.
STUDY_BIG_INT_BUG = ("coordinator/studies/studyfile.py _number: math.isfinite(int) raises "
                     "OverflowError for an int beyond float range (e.g. epsilon)")


def test_huge_integer_epsilon_is_a_study_error() -> None:
    doc = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
    doc["analyses"][0]["epsilon"] = 10**400
    with pytest.raises(StudyError, match=r"\.epsilon: must be a number"):
        parse_study(doc, "study.yaml")
