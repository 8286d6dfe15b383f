"""The CLI's static table of every kind's arguments is the registry's (like the protobuf
stubs' check): regenerate with `sh scripts/gen-cli-options` when this fails."""

from __future__ import annotations

from pathlib import Path

from bridgestat.coordinator.analyses import REGISTRY, cli_spec
from bridgestat.coordinator.cli import options as cli_options
from bridgestat.coordinator.cli import query as cli_query

TABLE = Path(cli_options.__file__)


def test_the_checked_in_table_is_the_registrys() -> None:
    assert TABLE.read_text(encoding="utf-8") == cli_spec.render(), (
        f"{TABLE.name} is stale: run `sh scripts/gen-cli-options`")


def test_every_kind_and_field_has_an_argument_the_cli_can_read() -> None:
    assert set(cli_options.KINDS) == set(REGISTRY)
    for name, kind in REGISTRY.items():
        arguments = cli_options.KINDS[name]["arguments"]
        assert [a["field"] for a in arguments[:len(kind.positional)]] == list(kind.positional)
        assert {a["field"] for a in arguments} == set(kind.Params.model_fields)
        assert all(a["type"] in cli_query.CONVERTERS or a["type"] == "flag"
                   for a in arguments)


def test_a_term_reads_as_the_study_files_mapping() -> None:
    from bridgestat.coordinator.client.query import INTAKE, Occasion

    assert cli_query.term("bridge_total@12:9-15~intake:-40,40") == {
        "column": "bridge_total", "occasion": Occasion(12, 9, 15), "baseline": INTAKE,
        "clip": [-40.0, 40.0]}
    assert cli_query.term("arm=comparison") == {"column": "arm", "category": "comparison"}
    assert cli_query.term("total_sessions:0,60") == {"column": "total_sessions",
                                                     "clip": [0.0, 60.0]}
    assert cli_query.occasion("month_6") == Occasion(6, 3, 9) == cli_query.occasion("6")
