"""The registry of analysis kinds: one definition read by the API, the study file and costs."""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridgestat.coordinator.analyses import REGISTRY, ArgumentError, attach_async, attach_sync
from bridgestat.coordinator.api import Network
from bridgestat.coordinator.client.query import INTAKE, Occasion, Query, Term
from bridgestat.coordinator.statistics.tables import QueryResult
from bridgestat.coordinator.studies.runner import STANDARD_STUDY, ResultsFile
from bridgestat.coordinator.studies.studyfile import STATISTICS, StudyError, parse_study

KINDS = ("count", "mean", "proportion", "histogram", "paired_change", "share_improved",
         "follow_up", "transition", "compare", "did", "regression", "quantile")
M12 = Occasion.month(12, 3)
STANDARD = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))

# The researcher API as README.md documents it: these calls must keep working.
README_PARAMETERS = {
    "count": ["table", "epsilon", "where", "group_by", "occasion", "key"],
    "mean": ["table", "column", "epsilon", "where", "group_by", "occasion", "clip", "key"],
    "paired_change": ["table", "column", "occasion", "baseline", "epsilon", "where",
                      "group_by", "clip", "key"],
    "histogram": ["table", "column", "epsilon", "where", "group_by", "occasion", "bin_edges",
                  "key"],
    "proportion": ["table", "column", "categories", "epsilon", "where", "group_by",
                   "occasion", "bin_edges", "key"],
    "share_improved": ["table", "column", "occasion", "baseline", "improvement", "epsilon",
                       "where", "group_by", "key"],
    "transition": ["table", "column", "occasion", "baseline", "epsilon", "where", "key"],
    "compare": ["table", "column", "categories", "group", "groups", "epsilon", "where",
                "occasion", "bin_edges", "key"],
    "did": ["table", "column", "occasion", "baseline", "group", "groups", "epsilon", "clip",
            "where", "key"],
    "regression": ["terms", "table", "rho", "where", "occasion", "replicates", "seed", "key"],
    "quantile": ["table", "column", "q", "candidates", "epsilon", "where", "occasion", "key"],
}


def test_every_kind_is_registered_once_with_a_title_and_a_description() -> None:
    assert set(REGISTRY) == set(KINDS)
    assert set(STATISTICS) == set(KINDS)  # the study file's statistics are the registry's
    for name, kind in REGISTRY.items():
        assert kind.name == name and kind.title and kind.description
        assert kind.Params.model_config.get("extra") == "forbid"
        assert kind.Params.model_config.get("frozen") is True


@pytest.mark.parametrize("name", KINDS)
def test_network_methods_come_from_the_registry_with_real_signatures(name: str) -> None:
    method = getattr(Network, name)
    signature = inspect.signature(method)
    fields = REGISTRY[name].Params.model_fields
    assert set(signature.parameters) == {"self", "key", *fields}
    assert method.__doc__ and REGISTRY[name].description in method.__doc__
    for parameter in signature.parameters.values():
        if parameter.name in ("self", "key"):
            continue
        default = fields[parameter.name].default
        if parameter.default is not inspect.Parameter.empty:
            assert parameter.default == default, parameter


@pytest.mark.parametrize(("name", "documented"), README_PARAMETERS.items())
def test_the_documented_keyword_arguments_are_still_accepted(name: str,
                                                            documented: list[str]) -> None:
    parameters = inspect.signature(getattr(Network, name)).parameters
    assert set(documented) <= set(parameters), set(documented) - set(parameters)
    positional = [p for p in parameters.values()
                  if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD][1:]
    assert [p.name for p in positional] == list(REGISTRY[name].positional)


class Recorder:
    """A client that records the queries it is asked to run and answers with no member."""

    def __init__(self) -> None:
        self.calls: list[tuple[Query, str | None]] = []

    def run(self, query: Query, key: str | None = None) -> QueryResult:
        self.calls.append((query, key))
        return QueryResult(query, key or "", (), {}, {})


class AsyncRecorder(Recorder):
    async def run(self, query: Query, key: str | None = None) -> QueryResult:  # type: ignore[override]
        return Recorder.run(self, query, key)


attach_sync(Recorder)
attach_async(AsyncRecorder)


def test_sync_and_async_clients_send_the_kinds_queries_with_their_keys() -> None:
    sync, asynchronous = Recorder(), AsyncRecorder()
    arguments: dict[str, Any] = {"table": "assessment", "column": "total_debt", "q": 0.5,
                                 "candidates": [0.0, 10.0, 20.0], "epsilon": 0.4, "key": "k"}
    sync.quantile(**arguments)  # type: ignore[attr-defined]
    asyncio.run(asynchronous.quantile(**arguments))  # type: ignore[attr-defined]
    assert sync.calls == asynchronous.calls
    (first, k0), (second, k1) = sync.calls
    assert (k0, k1) == ("k:0", "k:1")
    assert first.statistic == "quantile" and first.epsilon == 0.2 and first.quantile == 0.5
    assert second.statistic == "histogram" and second.bin_edges == (10.0,)
    sync.calls.clear()
    sync.mean("assessment", "bridge_total", where={"arm": ["comparison"]},  # type: ignore[attr-defined]
              clip=(0, 50), key="m")
    ((query, key),) = sync.calls
    assert key == "m"  # a one-query kind uses the caller's key as given
    assert query == Query("mean", "assessment", "bridge_total", 0.5,
                          (("arm", ("comparison",)),), clip=(0.0, 50.0))


def test_regression_terms_and_transition_results_pass_through() -> None:
    client = Recorder()
    terms = [Term("total_sessions", clip=(0, 60)),
             Term("bridge_total", occasion=M12, baseline=INTAKE, clip=(-40, 40))]
    client.regression(terms, rho=0.1, replicates=10)  # type: ignore[attr-defined]
    ((query, _),) = client.calls
    assert query.terms == tuple(terms) and query.rho == 0.1 and query.epsilon == 0.0
    result = client.transition("assessment", "work_status",  # type: ignore[attr-defined]
                               occasion=M12)
    assert isinstance(result, QueryResult) and result.query.baseline == INTAKE


@pytest.mark.parametrize(("call", "match"), [
    ({"epsilon": -1}, r"mean\(\): epsilon: must be a number > 0"),
    ({"clip": (5, 1)}, r"mean\(\): clip: must be \[lower, upper\]"),
    ({"colour": "red"}, r"unexpected keyword argument 'colour'"),
])
def test_bad_api_arguments_name_the_argument(call: dict[str, Any], match: str) -> None:
    with pytest.raises((ArgumentError, TypeError), match=match):
        Recorder().mean("assessment", "bridge_total", **call)  # type: ignore[attr-defined]


def test_costs_are_derived_from_the_queries() -> None:
    change = REGISTRY["paired_change"]
    p = change.parse(table="assessment", column="bridge_total", occasion=M12, epsilon=0.6,
                     improvement="increase", share_epsilon=0.2)
    assert change.cost(p).epsilon == pytest.approx(0.8)
    assert [q.pays for q in change.plan(p)] == ["epsilon", "share_epsilon"]
    quantile = REGISTRY["quantile"]
    q = quantile.parse(table="assessment", column="total_debt", q=0.5,
                       candidates=[0.0, 1.0, 2.0], epsilon=0.3)
    assert quantile.cost(q).epsilon == pytest.approx(0.3)  # two halves
    regression = REGISTRY["regression"]
    r = regression.parse(terms=[Term("n_children"), Term("bridge_total")], rho=0.1)
    assert regression.cost(r).rho == 0.1 and regression.cost(r).epsilon == 0.0


def _standard_with(index_id: str, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(STANDARD)
    target = next(a for a in doc["analyses"] if a["id"] == index_id)
    target.update(changes)
    return doc


def test_meta_with_group_by_is_refused_naming_analysis_and_field() -> None:
    doc = _standard_with("a06_bridge_change", group_by=["arm"])
    with pytest.raises(StudyError, match=r"study.yaml: analyses\[\d+\] \(a06_bridge_change\)"
                                         r"\.meta: a meta-analysis pools one estimate per "
                                         r"member; with group_by"):
        parse_study(doc, "study.yaml")
    parse_study(_standard_with("a06_bridge_change", group_by=["arm"], meta=False),
                "study.yaml")  # grouped without a meta-analysis is fine


@pytest.mark.parametrize(("changes", "match"), [
    ({"meta": True, "statistic": "histogram", "column": "household_type",
      "table": "participant", "occasion": None, "clip": None, "improvement": None,
      "share_epsilon": None},
     r"\.meta: a meta-analysis needs member estimates"),
    ({"share_epsilon": None}, r"\(a06_bridge_change\)\.share_epsilon: the share improved"),
    ({"improvement": None}, r"\(a06_bridge_change\)\.share_epsilon: only with improvement"),
    ({"epsilon": None}, r"\(a06_bridge_change\)\.epsilon: missing \(required\)"),
])
def test_study_entries_are_checked_by_the_kinds_model(changes: dict[str, Any],
                                                      match: str) -> None:
    doc = _standard_with("a06_bridge_change", **changes)
    target = next(a for a in doc["analyses"] if a["id"] == "a06_bridge_change")
    for key in [k for k, v in target.items() if v is None]:
        del target[key]
    with pytest.raises(StudyError, match=match):
        parse_study(doc, "study.yaml")


def test_a_study_file_may_name_every_kind_and_write_bins_or_bin_edges() -> None:
    doc = {"name": "s", "analyses": [
        {"id": "a", "statistic": "proportion", "table": "assessment", "column": "debt_step",
         "bins": [3], "categories": ["[1, 3)"], "epsilon": 0.1},
        {"id": "b", "statistic": "proportion", "table": "assessment", "column": "debt_step",
         "bin_edges": [3], "categories": ["[1, 3)"], "epsilon": 0.1},
        {"id": "c", "statistic": "share_improved", "table": "assessment",
         "column": "total_debt", "occasion": "intake", "improvement": "decrease",
         "epsilon": 0.1}]}
    a, b, c = parse_study(doc, "s.yaml").analyses
    assert a.plan()[0].query == b.plan()[0].query
    assert a.plan()[0].query.bin_edges == (3.0,)
    assert c.spend().epsilon == 0.1 and c.plan()[0].query.baseline == INTAKE


def test_results_file_writes_the_document_one_part_at_a_time(tmp_path: Path) -> None:
    doc: dict[str, Any] = {"format": "f", "analyses": [], "budget": [], "z": {"a": [1.5]}}
    results = ResultsFile(tmp_path / "results.json", doc)
    results.save()
    assert json.loads((tmp_path / "results.json").read_text()) == doc
    for i in range(3):
        results.add({"id": f"a{i}", "rows": [{"x": i, "text": "two\nlines"}], "empty": {}})
        results.save()
        text = (tmp_path / "results.json").read_text()
        assert json.loads(text) == doc
        assert [line for line in text.splitlines() if '"id": "a' in line] == \
            [f"  {json.dumps(a)}" + ("," if j < i else "") for j, a in
             enumerate(doc["analyses"])]  # one line per analysis, encoded once
    assert not (tmp_path / "results.json.tmp").exists()
