"""Fuzzed network and study files: only NetworkFileError / StudyError, naming file and key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from bridgestat.coordinator.client.network_file import NetworkFileError, load_network
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from bridgestat.coordinator.studies.studyfile import (
    StudyError,
    check_against,
    parse_study,
    schema_tables,
)
from bridgestat.node.schema import load_schema
from bridgestat.node.serde import schema_to_pb

from .conftest import Member
from .mutations import mutated, weird_paths
from .strategies import COLUMNS, TABLES, fuzz_settings

NETWORK_EXAMPLES = 600
STUDY_EXAMPLES = 1000
SCHEMA_TABLES = schema_tables(schema_to_pb(load_schema()))
STANDARD = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
STUDY_SOURCE = "study.yaml"
network_values = st.one_of(weird_paths, st.sampled_from(
    ["member-01", "127.0.0.1:1", ":", "host", "ca/ca.pem", "network.yaml"]))
study_values = st.one_of(st.sampled_from(
    TABLES + COLUMNS + ["month_6", "month_12", "intake", "count", "mean", "histogram",
                        "proportion", "paired_change", "follow_up", "transition", "compare",
                        "did", "regression", "quantile", "increase", "decrease", "researcher"]),
    st.lists(st.floats(allow_nan=True), max_size=4),
    st.fixed_dictionaries({"from": st.integers(-5, 50), "to": st.integers(-5, 50),
                           "step": st.floats(-1, 10)}),
    st.fixed_dictionaries({"month": st.integers(-3, 40), "window": st.integers(-3, 40)}))


def has_huge_int(doc: Any) -> bool:
    """Whether `doc` holds an int too large for a float anywhere."""
    if isinstance(doc, dict):
        return any(has_huge_int(v) for v in doc.values())
    if isinstance(doc, list):
        return any(has_huge_int(v) for v in doc)
    return isinstance(doc, int) and abs(doc) > 2**1023


def network_variants(path: Path) -> list[dict[str, Any]]:
    """The member's network file, and one with a tls section of existing non-PEM files."""
    base = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [base, {**base, "tls": {"ca": "network.yaml", "cert": "truth.json",
                                   "key": "member-01/node.yaml"}}]


def check_network(path: Path) -> None:
    try:
        load_network(path)
    except NetworkFileError as exc:
        assert str(exc).startswith(f"{path}: "), exc


def test_mutated_network_files_name_the_key(member: Member) -> None:
    network = member.root / "network.yaml"
    path = member.root / "fuzz-network.yaml"

    @fuzz_settings(NETWORK_EXAMPLES)
    @given(st.one_of(*(mutated(v, network_values) for v in network_variants(network))))
    def check(doc: Any) -> None:
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
                        encoding="utf-8")
        check_network(path)

    check()


def test_unreadable_network_files_name_the_file(member: Member) -> None:
    path = member.root / "fuzz-network.yaml"

    @fuzz_settings(200)
    @given(st.binary(max_size=200))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        check_network(path)

    check()


def test_mutated_study_files_name_analysis_and_field() -> None:
    analyses = STANDARD["analyses"]

    @fuzz_settings(STUDY_EXAMPLES)
    @given(st.one_of(
        mutated(STANDARD, study_values, max_mutations=2),
        st.integers(0, len(analyses) - 1).flatmap(
            lambda i: mutated({**STANDARD, "analyses": [copy.deepcopy(analyses[i])]},
                              study_values))))
    def check(doc: Any) -> None:
        try:
            check_against(parse_study(doc, STUDY_SOURCE), SCHEMA_TABLES)
        except StudyError as exc:
            text = str(exc)
            assert text.startswith(f"{STUDY_SOURCE}: "), text
            field = text.removeprefix(f"{STUDY_SOURCE}: ").split(":", 1)[0]
            assert field.strip(), text  # 'analyses[3] (a02_x).column', 'occasions', ...

    check()
