"""The comparison form: the catalogue of analyses, fields generated from each kind's Params,
and the form turned back into a one-analysis study that the study file's checks validate.

The catalogue is the standard study's analyses (their settings prefilled) and every kind of
the registry. A kind's fields are its pydantic `Params` fields, in the API's order; the
widget follows the field's name (a table or column from the members' published schema, an
occasion from the named ones, a number, a list), and a field this module does not know yet
is a YAML text box, so a new kind gets a working form without a change here. Submitted
values become a study entry (`statistic`, `id`, the fields), parsed by `parse_study`: the
same validation and the same key-path errors as a study file, and the same schema and
budget checks before anything is spent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml
from pydantic_core import PydanticUndefined

from bridgestat.coordinator.analyses import REGISTRY, Kind
from bridgestat.coordinator.analyses.methods import signature
from bridgestat.coordinator.client.query import Occasion
from bridgestat.coordinator.report.i18n import N_, Translator
from bridgestat.coordinator.studies.runner import STANDARD_STUDY
from bridgestat.coordinator.studies.studyfile import Study, TableInfo, parse_study

ENTRY_FIELDS = ("statistic", "id", "number", "title", "description", "audience", "meta")
"""The study's own keys of an analysis: not form fields of the kind."""

LABELS: dict[str, str] = {
    "table": N_("Table"), "column": N_("Column"), "epsilon": N_("Privacy loss (epsilon)"),
    "rho": N_("Privacy loss (rho)"), "share_epsilon": N_("Loss for the share improved"),
    "attrition_epsilon": N_("Loss for attrition (baseline with / without follow-up)"),
    "where": N_("Only participants with"), "occasion": N_("Occasion"),
    "baseline": N_("Baseline occasion"), "group_by": N_("Groups"),
    "clip": N_("Public bounds (lower, upper)"), "bin_edges": N_("Bin edges"),
    "categories": N_("Categories"), "improvement": N_("Improvement is"),
    "group": N_("Group column"), "groups": N_("The two groups"), "terms": N_("Terms"),
    "replicates": N_("Bootstrap replicates"), "seed": N_("Seed"), "q": N_("Quantile (0-1)"),
    "candidates": N_("Candidate values"),
}
HELP: dict[str, str] = {
    "where": N_("e.g. gender=female; arm=mobility_mentoring (empty: everybody)"),
    "clip": N_("e.g. -40, 40: decided before looking; values outside are clipped"),
    "bin_edges": N_("numbers separated by commas (numeric columns only)"),
    "categories": N_("names separated by commas"),
    "groups": N_("two names separated by a comma"),
    "candidates": N_("numbers separated by commas, or {from: 0, to: 40000, step: 500}"),
    "terms": N_("YAML: regressors, then the response"),
    "group_by": N_("one panel per value (Ctrl-click to choose several)"),
}
NUMBER = {"epsilon", "rho", "share_epsilon", "attrition_epsilon", "q", "reference_sd"}
WHOLE = {"replicates", "seed"}
NAMES = {"categories", "group_by", "groups"}
NUMBERS = {"bin_edges", "clip", "split"}
FLAGS = {"clip_counts"}  # switches the model takes as true/false only
YAML_TEXT = {"candidates", "terms"}
OCCASIONS = {"occasion", "baseline"}


@dataclass(frozen=True)
class Entry:
    """One item of the catalogue: a standard analysis (prefilled) or a bare kind."""

    key: str  # "std:<analysis id>" or "kind:<name>"
    kind: str
    title: str
    description: str
    spec: Mapping[str, Any]
    standard: bool


@dataclass(frozen=True)
class FormField:
    """One generated form field with its current text, choices and error."""

    name: str
    label: str
    widget: str  # select | multi | number | text | textarea
    value: str
    required: bool
    help: str = ""
    choices: tuple[tuple[str, str], ...] = ()
    groups: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()  # optgroups of a select
    error: str = ""

    def selected(self, option: str) -> bool:
        if self.widget == "multi":
            return option in split_names(self.value)
        return option == self.value


@cache
def standard_study() -> tuple[Study, dict[str, Any]]:
    """The shipped standard study, checked, and its raw named occasions."""
    doc = yaml.safe_load(STANDARD_STUDY.read_text(encoding="utf-8"))
    return parse_study(doc, str(STANDARD_STUDY)), dict(doc.get("occasions") or {})


def catalogue() -> list[Entry]:
    """The standard study's analyses, then every registered kind."""
    study, _ = standard_study()
    entries = [Entry(f"std:{a.id}", a.statistic, a.title, a.description, dict(a.spec), True)
               for a in study.analyses]
    entries += [Entry(f"kind:{name}", name, kind.title, kind.description, {}, False)
                for name, kind in REGISTRY.items()]
    return entries


def find_entry(key: str) -> Entry | None:
    return next((e for e in catalogue() if e.key == key), None)


def occasion_names() -> dict[str, Occasion]:
    """The occasions a form may choose: intake and the standard study's named ones."""
    study, _ = standard_study()
    return dict(study.occasions)


# -- fields ---------------------------------------------------------------------------------


def field_names(kind: Kind) -> list[str]:
    """The kind's parameters in the API's order (positional ones first)."""
    return [p.name for p in signature(kind).parameters.values()
            if p.name not in ("self", "key")]


def form_fields(entry: Entry, tables: Mapping[str, TableInfo], values: Mapping[str, str],
                errors: Mapping[str, str], t: Translator) -> list[FormField]:
    """The entry's fields, with `values` (submitted text) or the entry's own settings."""
    kind = REGISTRY[entry.kind]
    model = kind.Params.model_fields
    found = []
    for name in field_names(kind):
        info = model[name]
        required = info.default is PydanticUndefined and info.default_factory is None
        default = entry.spec.get(name, None if required else _default(info))
        text = values[name] if name in values else to_text(name, default)
        label = t.gettext(LABELS[name]) if name in LABELS else name.replace("_", " ")
        help_text = t.gettext(HELP[name]) if name in HELP else ""
        found.append(_widget(FormField(name, label, "text", text, required, help_text,
                                       error=errors.get(name, "")), kind, tables, t))
    return found


def _default(info: Any) -> Any:
    return info.default if info.default is not PydanticUndefined else None


def _widget(f: FormField, kind: Kind, tables: Mapping[str, TableInfo], t: Translator
            ) -> FormField:
    """The widget for a field, by name; unknown names stay text (YAML)."""
    from dataclasses import replace
    name = f.name
    if name == "table":
        return replace(f, widget="select", choices=tuple((n, n) for n in tables))
    if name == "column":
        return replace(f, widget="select", groups=_column_groups(tables, kind.column_kind))
    if name == "group":
        return replace(f, widget="select", groups=_column_groups(tables, "categorical"))
    if name == "group_by":
        return replace(f, widget="multi", groups=_column_groups(tables, "categorical"))
    if name in OCCASIONS:
        blank = (("", t("(none)")),) if not f.required and name == "occasion" else ()
        return replace(f, widget="select", choices=blank + tuple(
            (n, _occasion_label(n, o, t)) for n, o in occasion_names().items()))
    if name == "improvement":
        blank = (("", t("(none)")),) if not f.required and f.value in ("", "None") else ()
        return replace(f, widget="select", choices=blank + (
            ("increase", t("an increase")), ("decrease", t("a decrease"))))
    if name in NUMBER or name in WHOLE:
        return replace(f, widget="number")
    if name in FLAGS:
        return replace(f, widget="select", value=f.value.lower(),
                       choices=(("false", "false"), ("true", "true")))
    if name == "terms":
        return replace(f, widget="textarea")
    return f


def _occasion_label(name: str, occ: Occasion, t: Translator) -> str:
    if name == "intake":
        return t("intake")
    return t("month {month} ({low}-{high})", month=str(occ.target_month),
             low=str(occ.window_lower), high=str(occ.window_upper))


def _column_groups(tables: Mapping[str, TableInfo], wanted: str
                   ) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    groups = []
    for table in tables.values():
        names = tuple((c.name, c.name) for c in table.columns.values() if c.kind != "key" and (
            wanted in ("any", "none") or (wanted == "numeric" and c.numeric)
            or (wanted == "categorical" and c.categorical)))
        if names:
            groups.append((table.name, names))
    return tuple(groups)


# -- text <-> values -------------------------------------------------------------------------


def to_text(name: str, value: Any) -> str:
    """A parameter value as the form shows it."""
    if value is None or value == () or value == []:
        return ""
    if isinstance(value, Occasion):
        return next((n for n, o in occasion_names().items() if o == value), "")
    if name == "where" and isinstance(value, Mapping | tuple):
        items = dict(value).items()
        return "; ".join(f"{c}={','.join([v] if isinstance(v, str) else v)}" for c, v in items)
    if name in YAML_TEXT or isinstance(value, Mapping):
        plain = [vars(v) if hasattr(v, "__dict__") else v for v in value] \
            if isinstance(value, list | tuple) and name == "terms" else value
        return str(yaml.safe_dump(plain, default_flow_style=name != "terms",
                                  sort_keys=False)).strip()
    if isinstance(value, list | tuple):
        return ", ".join(_num(v) for v in value)
    return _num(value)


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def split_names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def from_text(name: str, text: str) -> Any:
    """A submitted text as the study file would write the value (None: left out)."""
    text = text.strip()
    if not text:
        return None
    if name in NUMBER:
        return _number(text)
    if name in FLAGS:
        return {"true": True, "false": False}.get(text.lower(), text)
    if name in WHOLE:
        return int(text) if re.fullmatch(r"-?\d+", text) else text
    if name in NAMES:
        return split_names(text)
    if name in NUMBERS:
        return [_number(part) for part in split_names(text)]
    if name == "where":
        return _where(text)
    if name in YAML_TEXT and name != "candidates" or text[:1] in "[{":
        return _yaml(text)
    if name == "candidates":
        return [_number(part) for part in split_names(text)]
    return text


def _number(text: str) -> Any:
    """A number from a form ("0,5" is read as 0.5 too); the text itself when it is not one,
    so that the model's error names the field and the value."""
    try:
        value = float(text.replace(",", ".")) if text.count(",") == 1 and "." not in text \
            else float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def _where(text: str) -> Any:
    found: dict[str, list[str]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        column, sep, values = part.partition("=")
        if not sep:
            return text  # refused by the model, naming the field
        found[column.strip()] = split_names(values)
    return found


def _yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# -- the form as a study ----------------------------------------------------------------------


def study_doc(entry: Entry, values: Mapping[str, str]) -> dict[str, Any]:
    """A one-analysis study from the submitted form (the entry's title, meta kept)."""
    _, occasions = standard_study()
    analysis: dict[str, Any] = {"id": entry.key.split(":", 1)[1], "statistic": entry.kind,
                                "title": entry.title, "audience": "coordinator"}
    for key in ("number", "description", "meta"):
        if key in entry.spec:
            analysis[key] = entry.spec[key]
    for name in field_names(REGISTRY[entry.kind]):
        value = from_text(name, values.get(name, ""))
        if value is not None:
            analysis[name] = value
    return {"name": "workspace-comparison", "title": entry.title, "occasions": occasions,
            "analyses": [analysis]}


def error_field(message: str, names: Sequence[str]) -> str | None:
    """The form field a study error names (`analyses[0] (x).clip: ...` -> clip)."""
    found = re.search(r"analyses\[0\](?: \([^)]*\))?\.(\w+)", message)
    if found and found.group(1) in names:
        return found.group(1)
    return None
