"""The serving node process holds numpy columns, not pandas (issue 14: idle memory).

A real `bridgestat-node serve` process answers queries and has none of pandas', Arrow's or
psycopg's extension modules mapped (/proc/<pid>/maps): the data were loaded and checked in
a child process (node/loader.py). The loader's answer, columns sent through a pipe, gives
exactly the cells of the frames checked in-process; its refusals name file, row and column
as `sources.load`'s did, and the warnings of servable data are still logged."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.query import INTAKE, Occasion
from bridgestat.coordinator.demo import local, synth
from bridgestat.node import sources
from bridgestat.node.config import load_config
from bridgestat.node.errors import ConfigError, DataError
from bridgestat.node.frames import Frames
from bridgestat.node.loader import load_columns
from bridgestat.node.planner import compile_query
from bridgestat.node.policy import Policy
from bridgestat.node.query import CategoryFilter, QuerySpec, RangeFilter, Statistic, Term
from tests.integration.csv_edit import edit_cell

MONTH_12 = Occasion(12, 9, 15)
# extension modules a serving node must not have loaded, and one it must have (the check
# itself works): file paths as they appear in /proc/<pid>/maps
ABSENT = ("/pandas/_libs/", "libarrow", "/pyarrow/", "psycopg", "/openpyxl/")
PRESENT = "/grpc/_cython/cygrpc"
QUERIES = (  # every path of frames.py: joins, pairs, transitions, terms, filters, groups
    QuerySpec(Statistic.COUNT, "participant", "", 1.0),
    QuerySpec(Statistic.HISTOGRAM, "participant", "household_type", 1.0, group_by=("arm",)),
    QuerySpec(Statistic.MEAN, "participant", "goals_achieved", 1.0,
              filters=(CategoryFilter("arm", ("comparison",)), RangeFilter("n_children", 1, 3))),
    QuerySpec(Statistic.MEAN, "assessment", "bridge_total", 1.0, occasion=MONTH_12,
              filters=(RangeFilter("bridge_total", None, 50),)),
    QuerySpec(Statistic.PAIRED_CHANGE, "assessment", "bridge_total", 1.0, occasion=MONTH_12,
              group_by=("arm",)),
    QuerySpec(Statistic.HISTOGRAM, "assessment", "work_status", 1.0, occasion=MONTH_12,
              baseline=INTAKE),
    QuerySpec(Statistic.HISTOGRAM, "assessment", "bridge_total", 1.0, occasion=MONTH_12,
              baseline=INTAKE, bin_edges=(-5.0, 0.0, 5.0)),
    QuerySpec(Statistic.CROSS_PRODUCTS, "assessment", "", 0.0, rho=0.2, occasion=MONTH_12,
              terms=(Term("arm", category="mobility_mentoring"),
                     Term("bridge_total", occasion=INTAKE),
                     Term("bridge_total", occasion=MONTH_12, baseline=INTAKE))),
)


def _member(root: Path, size: int = 300) -> local.LocalMember:
    synth.write_network(root, members=1, seed=5, sizes=[size])
    return local.write_configs(root, total_epsilon=50.0, max_per_query=1.0)[0]


def test_a_serving_node_process_has_not_loaded_pandas(tmp_path: Path) -> None:
    member = _member(tmp_path)
    [process] = local.start_nodes([member], tmp_path, timeout=120)
    try:
        with Network.from_file(tmp_path / "network.yaml", timeout=60) as net:
            mean = net.mean("assessment", "bridge_total", epsilon=0.5)
            change = net.paired_change("assessment", "bridge_total", occasion=MONTH_12,
                                       epsilon=0.5, clip=(-40.0, 40.0))
        maps = Path(f"/proc/{process.pid}/maps").read_text()
    finally:
        local.stop_nodes([process])
    for frame in (mean, change):  # answered, from the columns
        assert (frame.status == "ok").all(), frame.to_dict("records")
    assert PRESENT in maps
    assert [name for name in ABSENT if name in maps] == []


def test_the_loaders_columns_give_the_cells_of_the_frames_checked_in_process(
        tmp_path: Path) -> None:
    config = load_config(_member(tmp_path, size=600).config)
    schema = config.schema()
    loaded = Frames(load_columns(config.data, schema, config.source), schema)
    in_process = Frames(dict(sources.load(config.data, schema, config.source).tables), schema)
    policy = Policy(max_epsilon_per_query=5.0)
    for query in QUERIES:
        plan = compile_query(query, schema, policy)
        got, want = list(loaded.cells(plan)), list(in_process.cells(plan))
        assert [(c.group, c.n_rows) for c in got] == [(c.group, c.n_rows) for c in want]
        assert sum(c.n_rows for c in want) > 0, query
        for a, b in zip(got, want, strict=True):
            assert a.values.dtype == b.values.dtype
            assert np.array_equal(a.values, b.values, equal_nan=True), query


def test_the_loader_refuses_bad_data_naming_file_line_and_column(tmp_path: Path) -> None:
    member = _member(tmp_path, size=120)
    config = load_config(member.config)
    assert config.data.path is not None
    line = edit_cell(config.data.path, "participant", 3, "gender", "robot")
    with pytest.raises(DataError) as refused:
        load_columns(config.data, config.schema(), config.source)
    message = str(refused.value)
    assert "cannot be served" in message and "participant.csv" in message
    assert f"participant.csv, row {line}, column gender" in message and "'robot'" in message


def test_the_loader_refuses_a_source_problem_naming_the_config_key(tmp_path: Path) -> None:
    config = load_config(_member(tmp_path, size=120).config)
    without_path = replace(config.data, path=None)
    with pytest.raises(ConfigError) as refused:
        load_columns(without_path, config.schema(), config.source)
    assert (refused.value.source, refused.value.key) == (config.source, "data.path")
    assert "needs a path" in refused.value.problem


def test_the_loader_logs_the_warnings_of_servable_data(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(_member(tmp_path, size=120).config)
    assert config.data.path is not None
    edit_cell(config.data.path, "assessment", 0, "bridge_total", "140")  # above 100: clipped
    with caplog.at_level(logging.INFO):
        columns = load_columns(config.data, config.schema(), config.source)
    assert columns.n_participants == 120
    [record] = [r for r in caplog.records if r.name == "bridgestat.node.data"]
    assert record.levelno == logging.WARNING
    assert "served with warnings" in record.getMessage()
    assert "bridge_total" in record.getMessage() and "'140'" in record.getMessage()
    [loaded] = [r for r in caplog.records if getattr(r, "event", None) == "data_loaded"]
    assert getattr(loaded, "rows", {})["participant"] == 120
    assert getattr(loaded, "loader_peak_mib", 0) > 0
