"""`bridgestat query KIND ...`: every analysis kind's arguments, read and printed.

The arguments come from `cli_options.KINDS`, a static table generated from the registry of
analysis kinds (`coordinator/analyses/cli_spec.py`), so building the parser imports neither
pydantic nor the registry. Each field of a kind's `Params` is one argument; its converter
(named in the table) turns the text into what the kind's pydantic model validates, and the
model's errors are reported with the option's name (`--clip: must be [lower, upper] ...`).
The syntax of the texts:

    --occasion 12 | 12:9-15 | month_12 | intake   (12 months +-3, an explicit window, the
                                                    same named as in the standard study)
    --where COL=V1,V2 (repeatable)      --group-by COL (repeatable, or COL1,COL2)
    --clip L,U (--clip=-40,40 when L is negative)  --candidates 0,10,20 or FROM:TO:STEP
    regression terms: COLUMN[=CATEGORY][@OCCASION][~BASELINE][:L,U], e.g. arm=comparison,
    bridge_total, bridge_total@12~intake:-40,40 (the change from intake to 12 months,
    clipped to [-40, 40]); the regressors first, the response last.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bridgestat.coordinator.cli.options import KINDS

if TYPE_CHECKING:
    import pandas as pd

    from bridgestat.common.query import Occasion
    from bridgestat.coordinator.analyses import Kind, Output, Planned
    from bridgestat.coordinator.statistics.tables import QueryResult

Table = tuple[str, str, "pd.DataFrame"]  # name, caption, frame
OCCASION = re.compile(r"(\d+)(?::(\d+)-(\d+))?")
NAMED_MONTH = re.compile(r"month_(\d+)")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
TERM_CLIP = re.compile(rf":({NUMBER}),({NUMBER})$")
WINDOW = 3  # months either side of a bare MONTH (as the standard study's month_12)


# -- converters: text -> what the kind's model validates ----------------------------------------


def occasion(text: str) -> Occasion:
    """'12' (12 months, window +-3), '12:9-15', 'month_12' (the same as '12') or 'intake'."""
    from bridgestat.common.query import INTAKE, Occasion

    if text == "intake":
        return INTAKE
    named = NAMED_MONTH.fullmatch(text)
    found = OCCASION.fullmatch(text)
    if named:
        return Occasion.month(int(named.group(1)), WINDOW)
    if found and found.group(2) is None:
        return Occasion.month(int(found.group(1)), WINDOW)
    if found:
        return Occasion(int(found.group(1)), int(found.group(2)), int(found.group(3)))
    raise argparse.ArgumentTypeError(
        f"must be MONTH, MONTH:LOW-HIGH, month_MONTH or intake, got {text!r}")


def _list(text: str) -> list[str]:
    """Comma-separated parts; a comma inside brackets belongs to its part, so that a bin's
    label such as '[1.2, 4]' stays one category."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[(") - (char in "])")
        if char == "," and depth <= 0:
            parts.append(text[start:i])
            start = i + 1
    return [part.strip() for part in [*parts, text[start:]]]


def _numbers(text: str) -> list[float | str]:
    """Numbers separated by commas; a part that is no number is left for the model to name."""
    numbers: list[float | str] = []
    for part in _list(text):
        try:
            numbers.append(float(part))
        except ValueError:
            numbers.append(part)
    return numbers


def _where(text: str) -> tuple[str, list[str]]:
    column, sep, values = text.partition("=")
    if not sep or not column or not values:
        raise argparse.ArgumentTypeError(f"must be COLUMN=V1,V2, got {text!r}")
    return column, _list(values)


def _candidates(text: str) -> list[float | str] | dict[str, float | str]:
    """'0,10,20' or 'FROM:TO:STEP' (the study file's {from, to, step})."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"must be X,Y,... or FROM:TO:STEP, got {text!r}")
        return dict(zip(("from", "to", "step"), _numbers(",".join(parts)), strict=True))
    return _numbers(text)


def term(text: str) -> dict[str, Any]:
    """COLUMN[=CATEGORY][@OCCASION][~BASELINE][:L,U] as a study file's term mapping."""
    found: dict[str, Any] = {}
    clip = TERM_CLIP.search(text)
    if clip:
        found["clip"] = [float(clip.group(1)), float(clip.group(2))]
        text = text[:clip.start()]
    text, _, baseline = text.partition("~")
    text, _, when = text.partition("@")
    column, _, category = text.partition("=")
    if not column:
        raise argparse.ArgumentTypeError(
            f"must be COLUMN[=CATEGORY][@OCCASION][~BASELINE][:L,U], got {text!r}")
    found["column"] = column
    if category:
        found["category"] = category
    if when:
        found["occasion"] = occasion(when)
    if baseline:
        found["baseline"] = occasion(baseline)
    return found


def _value(text: str) -> Any:
    """A field of a type the CLI has no converter for: JSON if it parses, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


CONVERTERS: dict[str, Callable[[str], Any]] = {
    "text": str, "number": float, "whole": int, "names": _list, "list": _list,
    "numbers": _numbers, "pair": _numbers, "where": _where, "candidates": _candidates,
    "occasion": occasion, "terms": term, "value": _value,
}
REPEATED = frozenset({"names", "where"})  # options given once per value


# -- the parsers ------------------------------------------------------------------------------


def add_parsers(query: argparse.ArgumentParser,
                shared: Callable[[argparse.ArgumentParser, bool], None], epilog: str) -> None:
    """One subparser per kind under `query`; `shared(parser, suppress)` adds the options every
    query takes (--network, --json, ...), which may stand before or after KIND."""
    kinds = query.add_subparsers(dest="kind", metavar="KIND", required=True,
                                 title="analysis kinds (`bridgestat query KIND --help`)")
    for name, spec in KINDS.items():
        parser = kinds.add_parser(
            name, help=_escape(spec["description"]), epilog=epilog,
            description=_escape(f"{spec['title']}: {spec['description']}"),
            formatter_class=argparse.RawDescriptionHelpFormatter)
        for argument in spec["arguments"]:
            _add_argument(parser, argument)
        if spec["meta"]:
            parser.add_argument("--meta", action="store_true", default=argparse.SUPPRESS,
                                help="also meta-analyse the members' estimates (fixed and "
                                "random effects, HKSJ, Q, I2, tau2)")
        shared(parser, True)


def add_shared(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--key and --meta's default beside the network options (see `add_parsers`)."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--key", default=default,
                        help="idempotency key: the same key again replays the nodes' answers "
                        "(the same numbers, nothing spent twice)")
    if not suppress:
        parser.set_defaults(meta=False)


def _add_argument(parser: argparse.ArgumentParser, argument: dict[str, Any]) -> None:
    kind, dest = argument["type"], f"p_{argument['field']}"
    text = _escape(argument["help"])
    if not argument["flags"]:  # positional
        many = "+" if kind == "terms" else (None if argument["required"] else "?")
        parser.add_argument(dest, metavar=argument["metavar"], nargs=many,
                            type=CONVERTERS[kind], help=text)
        return
    if kind == "flag":
        parser.add_argument(*argument["flags"], dest=dest, action="store_true", default=None,
                            help=text)
        return
    repeated = kind in REPEATED or kind == "terms"
    parser.add_argument(*argument["flags"], dest=dest, metavar=argument["metavar"],
                        type=CONVERTERS[kind], action="append" if repeated else "store",
                        required=argument["required"], help=text)


def _escape(text: str) -> str:
    return text.replace("%", "%%")


# -- running ----------------------------------------------------------------------------------


def _label(argument: dict[str, Any]) -> str:
    """How a field is named on the command line: its first flag, or its metavar."""
    return str(argument["flags"][0] if argument["flags"] else argument["metavar"])


def values(args: argparse.Namespace) -> dict[str, Any]:
    """The fields given on the command line, as the kind's model takes them."""
    found: dict[str, Any] = {}
    for argument in KINDS[args.kind]["arguments"]:
        value = getattr(args, f"p_{argument['field']}", None)
        if value is None:
            continue
        if argument["type"] == "names" and argument["flags"]:
            value = [name for names in value for name in names]
        elif argument["type"] == "where":
            columns = [column for column, _ in value]
            twice = sorted({c for c in columns if columns.count(c) > 1})
            if twice:
                raise argparse.ArgumentTypeError(
                    f"{_label(argument)}: column {twice[0]!r} given twice; write "
                    f"{twice[0]}=V1,V2 once")
            value = dict(value)
        found[argument["field"]] = value
    return found


def params(args: argparse.Namespace) -> tuple[Kind, Any]:
    """The kind and its validated parameters; a refused value names its option (before any
    query is sent)."""
    from pydantic import ValidationError

    from bridgestat.common.files import problems
    from bridgestat.coordinator.analyses import REGISTRY

    kind = REGISTRY[args.kind]
    labels = {a["field"]: _label(a) for a in KINDS[args.kind]["arguments"]}
    try:
        return kind, kind.parse(**values(args))
    except ValidationError as exc:
        found = []
        for path, problem in problems(exc):
            field, dot, rest = path.partition(".")
            found.append(f"{labels.get(field, field)}{dot}{rest}: {problem}")
        raise argparse.ArgumentTypeError(f"query {args.kind}: " + "; ".join(found)) from None


def key_of(key: str | None, planned: Planned, single: bool) -> str | None:
    """The query's idempotency key, as the Python API derives it from the same `key`."""
    from bridgestat.coordinator.analyses.methods import query_key

    return query_key(key, planned, single)


def title(kind: Kind, p: Any) -> str:
    where = ".".join(str(getattr(p, a)) for a in ("table", "column") if getattr(p, a, ""))
    return f"{kind.title}: {where}" if where else kind.title


def output(kind: Kind, p: Any, results: Sequence[QueryResult], meta: bool
           ) -> tuple[list[Table], list[str]]:
    """The kind's tables, then with `meta` one meta-analysis table per pooled estimate; and
    the notes (a meta-analysis that was not possible says why)."""
    from bridgestat.coordinator.statistics import tables
    from bridgestat.coordinator.statistics.meta import MetaError

    named = title(kind, p)
    out: Output = kind.output(p, results, named)
    found = list(out.tables)
    notes = list(out.notes)
    if meta:
        for label, frame in kind.meta_frames(p, out, named):
            try:
                result = tables.meta_from_table(frame)
            except MetaError as exc:
                notes.append(f"meta-analysis not possible: {exc}")
                continue
            found.append(("meta", f"Meta-analysis: {label}", meta_frame(result, label)))
    return found, notes


def meta_frame(result: Any, label: str) -> pd.DataFrame:
    """One row per pooling model (fixed effect, random effects, HKSJ) with the
    heterogeneity (Q, I2, tau2) on every row."""
    import pandas as pd

    shared = {"k": result.k, "q": result.q, "q_df": result.q_df, "q_pvalue": result.q_pvalue,
              "i2": result.i2, "tau2": result.tau2}
    rows = [{"label": label, "model": model, "method": pooled.method,
             "estimate": pooled.estimate, "se": pooled.se, "ci_low": pooled.ci_low,
             "ci_high": pooled.ci_high, "df": pooled.df, **shared}
            for model, pooled in (("fixed", result.fixed), ("random", result.random),
                                  ("hksj", result.hksj))]
    return pd.DataFrame(rows)


def print_tables(found: Sequence[Table], notes: Sequence[str], style: str) -> None:
    """One table as before (records, CSV or text); several: JSON maps each name to its
    records, CSV adds a leading `table` column, text heads each with its caption."""
    import pandas as pd

    if style == "json":
        if len(found) == 1:
            print(_json(found[0][2], indent=2))
        else:
            print(json.dumps({_unique(found, i): json.loads(_json(f))
                              for i, (_, _, f) in enumerate(found)}, indent=2))
    elif style == "csv":
        if len(found) == 1:
            found[0][2].to_csv(sys.stdout, index=False)
        else:
            pd.concat([f.assign(table=_unique(found, i))[["table", *f.columns]]
                       for i, (_, _, f) in enumerate(found)]).to_csv(sys.stdout, index=False)
    else:
        for i, (_, caption, frame) in enumerate(found):
            if len(found) > 1:
                print(f"{'' if i == 0 else chr(10)}== {caption}")
            print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for note in notes:
            print(f"note: {note}")
    if style != "table":
        for note in notes:
            if note.startswith("meta-analysis not possible"):
                print(f"bridgestat: {note}", file=sys.stderr)


def _json(frame: pd.DataFrame, indent: int = 0) -> str:
    """Records with 15 decimals (pandas' default 10 would round small SEs)."""
    return frame.to_json(orient="records", indent=indent, double_precision=15)


def _unique(found: Sequence[Table], index: int) -> str:
    """The table's name, numbered when an earlier table has the same."""
    name = found[index][0]
    same = [n for n, _, _ in found[:index] if n == name]
    return f"{name}_{len(same) + 1}" if same else name
