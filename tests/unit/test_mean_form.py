"""The workspace's compare form takes a mean's split, clip counts and reference_sd."""

from __future__ import annotations

from bridgestat.coordinator.report.i18n import Translator
from bridgestat.coordinator.studies.studyfile import parse_study, schema_tables
from bridgestat.coordinator.web import forms
from bridgestat.node.schema import load_schema
from bridgestat.node.serde import schema_to_pb

TABLES = schema_tables(schema_to_pb(load_schema()))


def _entry(kind: str) -> forms.Entry:
    return next(e for e in forms.catalogue() if e.kind == kind)


def test_the_defaults_as_shown_parse_back() -> None:
    for kind in ("mean", "paired_change"):
        entry = _entry(kind)
        fields = forms.form_fields(entry, TABLES, {}, {}, Translator("en"))
        shown = {f.name: f for f in fields}
        assert shown["clip_counts"].widget == "select" and shown["clip_counts"].value == "false"
        values = {f.name: f.value for f in fields}
        study = parse_study(forms.study_doc(entry, values), "form")
        assert study.analyses[0].params.clip_counts is False


def test_the_options_from_the_form_reach_the_query() -> None:
    entry = _entry("paired_change")
    fields = forms.form_fields(entry, TABLES, {}, {}, Translator("en"))
    values = {f.name: f.value for f in fields}
    values.update(split="0.1, 0.5, 0.4", clip_counts="true", reference_sd="9")
    [analysis] = parse_study(forms.study_doc(entry, values), "form").analyses
    query = analysis.plan()[0].query
    assert query.split == (0.1, 0.5, 0.4) and query.clip_counts
    assert analysis.params.reference_sd == 9
