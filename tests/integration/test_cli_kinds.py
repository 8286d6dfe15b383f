"""`bridgestat query KIND` for every analysis kind, against one network of 3 real node
processes over mutual TLS.

Each kind runs once through the CLI with `--json` and an idempotency key, then once through
the Python API with the same analysis and the same key: every node replays its stored release,
so the API's NETWORK row must equal the CLI's (up to the 10 significant digits of pandas'
JSON) and nothing more is spent. Bad option values exit 2 naming the option, before anything
is sent.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

from bridgestat.coordinator.analyses import REGISTRY
from bridgestat.coordinator.api import NETWORK, Network
from bridgestat.coordinator.cli import main as cli
from bridgestat.coordinator.client.query import INTAKE, Occasion, Term
from bridgestat.coordinator.demo import local
from bridgestat.coordinator.statistics import tables
from tests.integration.conftest import LocalNetwork, local_network

M12 = Occasion.month(12, 3)
PAID = ["paid_with_support", "paid_part_time", "paid_full_time", "self_employed"]
REL = 1e-9  # the CLI writes JSON floats with 15 decimals

# kind -> (CLI arguments after KIND, the same analysis as API keyword arguments)
CASES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "count": (["participant", "--group-by", "arm"],
              {"table": "participant", "group_by": ["arm"]}),
    "mean": (["assessment", "bridge_total", "--clip", "10,90", "--where",
              "gender=female,male", "--meta"],
             {"table": "assessment", "column": "bridge_total", "clip": (10, 90),
              "where": {"gender": ["female", "male"]}}),
    "histogram": (["participant", "household_type", "--epsilon", "0.3"],
                  {"table": "participant", "column": "household_type", "epsilon": 0.3}),
    "proportion": (["assessment", "income_to_norm_ratio", "[1.2, 4]", "--bins", "1.2",
                    "--occasion", "12"],
                   {"table": "assessment", "column": "income_to_norm_ratio",
                    "categories": ["[1.2, 4]"], "bin_edges": [1.2], "occasion": M12}),
    "paired_change": (["assessment", "bridge_total", "--occasion", "12:9-15", "--baseline",
                       "intake", "--clip=-40,40", "--improvement", "increase",
                       "--share-epsilon", "0.2", "--meta"],
                      {"table": "assessment", "column": "bridge_total", "occasion": M12,
                       "baseline": INTAKE, "clip": (-40, 40), "improvement": "increase",
                       "share_epsilon": 0.2}),
    "share_improved": (["assessment", "total_debt", "--occasion", "month_12",
                        "--improvement", "decrease", "--epsilon", "0.3"],
                       {"table": "assessment", "column": "total_debt", "occasion": M12,
                        "improvement": "decrease", "epsilon": 0.3}),
    "follow_up": (["assessment", "bridge_total", "--occasion", "12"],
                  {"table": "assessment", "column": "bridge_total", "occasion": M12}),
    "transition": (["assessment", "work_status", "--occasion", "12", "--categories",
                    ",".join(PAID), "--epsilon", "0.3"],
                   {"table": "assessment", "column": "work_status", "occasion": M12,
                    "categories": PAID, "epsilon": 0.3}),
    "compare": (["assessment", "work_status", ",".join(PAID), "--occasion", "12",
                 "--group", "arm", "--groups", "mobility_mentoring,comparison", "--meta"],
                {"table": "assessment", "column": "work_status", "categories": PAID,
                 "occasion": M12, "group": "arm",
                 "groups": ("mobility_mentoring", "comparison")}),
    "did": (["assessment", "bridge_total", "--occasion", "12", "--clip=-40,40"],
            {"table": "assessment", "column": "bridge_total", "occasion": M12,
             "clip": (-40, 40)}),
    "regression": (["total_sessions:0,60", "bridge_total@12~intake:-40,40", "--rho", "0.05",
                    "--replicates", "200"],
                   {"terms": [Term("total_sessions", clip=(0, 60)),
                              Term("bridge_total", occasion=M12, baseline=INTAKE,
                                   clip=(-40, 40))],
                    "rho": 0.05, "replicates": 200}),
    "quantile": (["assessment", "total_debt", "0.5", "0:40000:500", "--epsilon", "0.4"],
                 {"table": "assessment", "column": "total_debt", "q": 0.5,
                  "candidates": [500.0 * i for i in range(81)], "epsilon": 0.4}),
}


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    with local_network(tmp_path_factory.mktemp("cli-kinds"), members=3, seed=17,
                       total_epsilon=40.0, max_per_query=2.0,
                       sizes=(300, 350, 400)) as running:
        yield running


@pytest.fixture(scope="module")
def net(network: LocalNetwork) -> Iterator[Network]:
    with Network.from_file(network.network) as client:
        yield client


def _cli(network: LocalNetwork, capsys: pytest.CaptureFixture[str], *args: str
         ) -> tuple[int, str, str]:
    """`bridgestat query ...` in this process (the real parser and command); argparse's own
    usage errors exit through SystemExit."""
    try:
        code = cli.main(["query", "--network", str(network.network), *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _spent(net: Network) -> dict[str, tuple[float, float]]:
    info = net.info()
    return {row.member: (row.epsilon_spent, row.rho_spent) for row in info.itertuples()}


def _api_table(kind: str, value: Any) -> pd.DataFrame:
    """The API's answer as the kind's first table."""
    if kind == "transition":
        return tables.transition_table(value)
    if kind == "regression":
        return tables.regression_table(value)
    assert isinstance(value, pd.DataFrame)
    return value


def _same_network_rows(printed: pd.DataFrame, api: pd.DataFrame) -> None:
    """The NETWORK rows agree in every numeric column of the API's table."""
    want = api[api.member == NETWORK]
    got = printed[printed.member == NETWORK]
    assert len(got) == len(want) > 0
    numeric = [c for c in want.columns if pd.api.types.is_numeric_dtype(want[c])]
    assert numeric
    for (_, mine), (_, theirs) in zip(got.iterrows(), want.iterrows(), strict=True):
        for column in numeric:
            value = float(theirs[column])
            shown = math.nan if mine[column] is None else float(mine[column])
            if math.isnan(value):
                assert math.isnan(shown), column
            else:
                assert shown == pytest.approx(value, rel=REL, abs=1e-14), column


def test_every_kind_is_a_cli_command() -> None:
    assert set(CASES) == set(REGISTRY)


@pytest.mark.parametrize("kind", list(CASES))
def test_the_cli_gives_the_apis_answer_for_the_same_key(
        kind: str, network: LocalNetwork, net: Network,
        capsys: pytest.CaptureFixture[str]) -> None:
    arguments, api = CASES[kind]
    key = f"cli-{kind}"
    code, out, err = _cli(network, capsys, kind, *arguments, "--json", "--key", key)
    assert code == 0, err
    printed = json.loads(out)
    meta = "--meta" in arguments
    several = isinstance(printed, dict)
    assert several == (meta or kind in ("paired_change", "transition"))
    first = pd.DataFrame(next(iter(printed.values())) if several else printed)

    before = _spent(net)
    value = getattr(net, kind)(**api, key=key)  # the nodes replay the CLI's releases
    assert _spent(net) == before, "the API's replay spent budget again"
    api_table = _api_table(kind, value)
    _same_network_rows(first, api_table)
    if meta:
        _check_meta(kind, printed["meta"], api_table)


def _check_meta(kind: str, rows: list[dict[str, Any]], api_table: pd.DataFrame) -> None:
    """FE, RE and HKSJ rows with Q, I2 and tau2: the API table's meta-analysis."""
    assert [r["model"] for r in rows] == ["fixed", "random", "hksj"]
    frame = api_table
    if kind == "compare":
        frame = frame[frame.measure == "risk_difference"]
    expected = tables.meta_from_table(frame)
    assert rows[0]["estimate"] == pytest.approx(expected.fixed.estimate, rel=REL)
    assert rows[1]["estimate"] == pytest.approx(expected.random.estimate, rel=REL)
    assert rows[2]["ci_high"] == pytest.approx(expected.hksj.ci_high, rel=REL)
    for row in rows:
        assert row["k"] == expected.k >= 2
        assert row["i2"] == pytest.approx(expected.i2, rel=REL, abs=1e-12)
        assert row["tau2"] == pytest.approx(expected.tau2, rel=REL, abs=1e-12)
        assert row["q"] == pytest.approx(expected.q, rel=REL, abs=1e-12)


def test_readable_and_csv_output(network: LocalNetwork,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Replayed by key (free): the paired change's tables in text and in CSV."""
    arguments = CASES["paired_change"][0]
    code, text, _ = _cli(network, capsys, "paired_change", *arguments, "--key",
                         "cli-paired_change")
    assert code == 0
    assert "== Mean change with Cohen's d_z" in text and "== Share improved" in text
    assert "== Meta-analysis" in text and "hksj" in text and NETWORK in text
    code, csv, _ = _cli(network, capsys, "paired_change", *arguments, "--csv", "--key",
                        "cli-paired_change")
    assert code == 0
    header = csv.splitlines()[0].split(",")
    assert header[:2] == ["table", "member"]
    tables_seen = {line.split(",")[0] for line in csv.splitlines()[1:]}
    assert tables_seen == {"change", "share_improved", "meta"}


BAD: list[tuple[list[str], str]] = [
    (["mean", "assessment", "bridge_total", "--clip", "5,1"], "--clip: must be [lower, upper]"),
    (["mean", "assessment", "bridge_total", "--epsilon", "-1"], "--epsilon: must be a number"),
    (["mean", "assessment", "bridge_total", "--epsilon", "lots"], "argument --epsilon"),
    (["mean", "assessment", "bridge_total", "--occasion", "soon"], "argument --occasion"),
    (["mean", "assessment", "bridge_total", "--where", "gender"], "argument --where"),
    (["paired_change", "assessment", "bridge_total"], "--occasion"),
    (["paired_change", "assessment", "bridge_total", "--occasion", "12", "--improvement",
      "up"], "--improvement: must be increase or decrease"),
    (["paired_change", "assessment", "bridge_total", "--occasion", "12", "--improvement",
      "increase"], "--share-epsilon"),
    (["compare", "assessment", "work_status", "paid_full_time", "--groups", "a"],
     "--groups: must name two different groups"),
    (["quantile", "assessment", "total_debt", "1.5", "0,10"], "Q: must lie in (0, 1)"),
    (["quantile", "assessment", "total_debt", "0.5", "10,0"], "CANDIDATES: must be"),
    (["regression", "bridge_total"], "TERMS: must list regressors"),
    (["regression", "x@later", "y"], "argument TERMS"),
    (["count", "--meta"], "unrecognized arguments: --meta"),
    (["mean", "assessment", "bridge_total", "--where", "a=x", "--where", "a=y"],
     "--where: column 'a' given twice"),
]


@pytest.mark.parametrize(("args", "named"), BAD, ids=[f"{a[0]}-{i}" for i, (a, _) in
                                                      enumerate(BAD)])
def test_a_bad_value_exits_2_naming_the_option_and_spends_nothing(
        args: list[str], named: str, network: LocalNetwork, net: Network,
        capsys: pytest.CaptureFixture[str]) -> None:
    before = _spent(net)
    code, _, err = _cli(network, capsys, *args)
    assert code == cli.EXIT_USAGE, err
    assert named in err and "Traceback" not in err, err
    assert _spent(net) == before


def test_help_lists_every_kind_and_its_options() -> None:
    command = local.coordinator_command()
    listed = subprocess.run([*command, "query", "--help"], capture_output=True, text=True,
                            timeout=60, check=True).stdout
    for name, kind in REGISTRY.items():
        assert name in listed and kind.description.split()[0] in listed
    mean = subprocess.run([*command, "query", "mean", "--help"], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    for option in ("--clip L,U", "--occasion", "--group-by", "--where", "--epsilon", "--meta",
                   "--key", "--json"):
        assert option in mean


def test_a_closed_pipe_ends_quietly(network: LocalNetwork) -> None:
    """`bridgestat info | head -1` and `bridgestat --help | head -1`: the reader is gone
    before anything is written; no traceback, the exit status of SIGPIPE."""
    for args in (["info", "--network", str(network.network)], ["--help"]):
        process = subprocess.Popen([*local.coordinator_command(), *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        err = process.stderr.read().decode()
        # argparse itself drops a failed write of --help (exit 0); a command's output ends
        # with SIGPIPE's status
        assert process.wait(timeout=60) == (0 if args == ["--help"] else cli.EXIT_PIPE), err
        assert "Traceback" not in err and "BrokenPipeError" not in err
