"""The command line of every analysis kind, derived from the registry: `bridgestat query KIND`.

`bridgestat --help` must not import pydantic, pandas or the registry, so the CLI reads a small
static table, `bridgestat/coordinator/cli/options.py`, that this module writes from the
registry (`sh scripts/gen-cli-options`; `tests/unit/test_cli_options.py` fails when the table
is stale, like the protobuf stubs' check). Each kind's `positional` fields become positional
arguments, every other field of its `Params` one option (`bin_edges` -> `--bin-edges`, and
`--bins` for its alias), typed by the field's shared type in `fields` (a converter name in
the CLI: `pair` reads `L,U`, `where` reads `COL=V1,V2`, ...). The values are then validated
by the kind's own model when the command runs, so a new kind needs no change here, and a new
*field type* one line in `CLI_TYPES`.
"""

from __future__ import annotations

import pprint
import sys
import typing
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bridgestat.common.query import INTAKE, Occasion
from bridgestat.coordinator.analyses import fields as f
from bridgestat.coordinator.analyses.base import Kind
from bridgestat.coordinator.analyses.kinds import REGISTRY

OCCASION = "MONTH (window +-3), MONTH:LOW-HIGH, month_MONTH or intake"
TERM = ("COLUMN[=CATEGORY][@OCCASION][~BASELINE][:L,U], the regressors first, the response "
        "last")
WHERE = "keep rows whose COL is one of the values; repeat for several columns"
# The shared field type -> (converter in coordinator/cli/main.py, metavar, help when a field has
# no description of its own). The converters turn text into what the model validates.
CLI_TYPES: tuple[tuple[Any, str, str, str], ...] = (
    (f.Name, "text", "NAME", "a name"),
    (f.Positive, "number", "X", "a number > 0"),
    (f.OptionalPositive, "number", "X", "a number > 0"),
    (f.Number, "number", "X", "a number"),
    (f.Share, "number", "Q", "a number in (0, 1)"),
    (f.Whole, "whole", "N", "a whole number >= 0"),
    (f.Replicates, "whole", "N", "a whole number >= 1"),
    (f.Flag, "flag", "", "a switch"),
    (f.Names, "names", "COL", "repeat, or separate by commas"),
    (f.Categories, "list", "A,B", "comma-separated"),
    (f.OptionalCategories, "list", "A,B", "comma-separated"),
    (f.Groups, "list", "A,B", "two comma-separated names"),
    (f.Numbers, "numbers", "X,Y", "comma-separated numbers"),
    (f.Clip, "pair", "L,U", "two numbers, lower < upper (--clip=-40,40 when L < 0)"),
    (f.MeanSplitField, "numbers", "N,S,Q", "three shares > 0 summing to 1"),
    (f.WhereField, "where", "COL=V1,V2", WHERE),
    (f.Improvement, "text", "{increase,decrease}", "increase or decrease"),
    (f.OptionalImprovement, "text", "{increase,decrease}", "increase or decrease"),
    (f.Candidates, "candidates", "X,Y,...|FROM:TO:STEP", "increasing public candidates"),
    (f.OccasionField, "occasion", "OCCASION", OCCASION),
    (f.OptionalOccasion, "occasion", "OCCASION", OCCASION),
    (f.Terms, "terms", "TERM", TERM),
)

# What a field means, by name, for the fields without a `description` of their own.
MEANING = {
    "table": "table of the schema",
    "column": "column of the table",
    "epsilon": "privacy loss (epsilon) each member spends",
    "rho": "privacy loss (zCDP rho) each member spends",
    "share_epsilon": "epsilon of the share improved (with --improvement)",
    "attrition_epsilon": "epsilon of the baseline values with / without the follow-up occasion",
    "where": "filter",
    "group_by": "one row per member and cell of COL",
    "occasion": "the assessment occasion",
    "baseline": "the baseline occasion",
    "clip": "public clipping bounds inside the schema's",
    "clip_counts": "also release how many values the clip cuts below and above (5 % of the "
                   "loss)",
    "split": "shares of the loss for count, sum and sum of squares (default 0.2,0.5,0.3)",
    "reference_sd": "SD the d_z flag judges the noisy SD against (default: clip half-width / 3)",
    "bin_edges": "public bin edges of a numeric column",
    "categories": "categories counted",
    "improvement": "direction of improvement",
    "group": "column of the two groups",
    "groups": "the two groups, compared first against second",
    "terms": "regression terms",
    "replicates": "parametric-bootstrap replicates",
    "seed": "seed of the bootstrap",
    "q": "the quantile",
    "candidates": "candidates (FROM:TO:STEP for a grid)",
}
RESERVED = frozenset({"network", "timeout", "json", "csv", "insecure", "key", "meta",
                      "output", "func", "command", "kind"})


def cli_type(field: FieldInfo) -> tuple[str, str, str]:
    """(converter, metavar, type help) of a field; `value` (JSON or text) for a type the CLI
    does not know yet."""
    for alias, converter, metavar, text in CLI_TYPES:
        if list(typing.get_args(alias)[1:]) == list(field.metadata):
            return converter, metavar, text
    return "value", "VALUE", "a JSON value or text"


def _default(value: Any) -> Any:
    """A field's default as the CLI shows it (plain JSON types), or None for none."""
    if value is PydanticUndefined or value is None or value == ():
        return None
    if value == INTAKE:
        return "intake"
    if isinstance(value, Occasion):
        return f"{value.target_month}:{value.window_lower}-{value.window_upper}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _flags(name: str, field: FieldInfo) -> list[str]:
    """`--field-name`, then one flag per other alias (`--bins` for `bin_edges`)."""
    names = [name]
    alias = field.validation_alias
    for choice in getattr(alias, "choices", ()):
        if isinstance(choice, str) and choice not in names:
            names.append(choice)
    return [f"--{n.replace('_', '-')}" for n in names]


def argument(kind: Kind, name: str, field: FieldInfo) -> dict[str, Any]:
    """One argument of `bridgestat query KIND`: how the CLI reads and describes the field."""
    if name in RESERVED:
        raise ValueError(f"{kind.name}: field {name!r} clashes with a `bridgestat query` "
                         "option; rename it")
    converter, metavar, text = cli_type(field)
    meaning = field.description or MEANING.get(name, name.replace("_", " "))
    positional = name in kind.positional
    default = _default(field.default)
    return {
        "field": name,
        "flags": [] if positional else _flags(name, field),
        "type": converter,
        "metavar": name.upper() if positional else metavar,
        "required": field.is_required(),
        "default": default,
        "help": f"{meaning}: {text}" + ("" if default is None or converter == "flag"
                                        else f" (default: {default})"),
    }


def kind_spec(kind: Kind) -> dict[str, Any]:
    """The title, one-line description and arguments of one kind, positional ones first."""
    fields = kind.Params.model_fields
    order = [*kind.positional, *(n for n in fields if n not in kind.positional)]
    return {"title": kind.title, "description": kind.description,
            "meta": kind.meta_analysable,
            "arguments": [argument(kind, n, fields[n]) for n in order]}


def build() -> dict[str, dict[str, Any]]:
    return {name: kind_spec(kind) for name, kind in REGISTRY.items()}


def render() -> str:
    """The source of `coordinator/cli/options.py`."""
    table = pprint.pformat(build(), width=99, sort_dicts=False)
    return (
        '"""Every analysis kind\'s command-line arguments (`bridgestat query KIND`).\n\n'
        "GENERATED from the registry (coordinator/analyses/cli_spec.py) by\n"
        "`sh scripts/gen-cli-options`: do not edit. Plain data, so that `bridgestat --help`\n"
        "imports neither pydantic nor the registry; tests/unit/test_cli_options.py fails\n"
        'when it is stale.\n"""\n\n'
        "from typing import Any\n\n"
        f"KINDS: dict[str, dict[str, Any]] = {table}\n")


if __name__ == "__main__":
    sys.stdout.write(render())
