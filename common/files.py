"""Reading the project's YAML files into typed (pydantic) models with errors that name the
file, the key path and the problem, the same way on both sides.

    try:
        model = Policy.model_validate(read_yaml(path))
    except FileProblem as exc:           # unreadable, not UTF-8, not YAML
        ...
    except ValidationError as exc:
        key, problem = first_problem(exc)  # ("budget.per_period.epsilon", "must be > 0 ...")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class FileProblem(ValueError):
    """A file that cannot be read as YAML at all; the message names the file."""


def read_yaml(path: Path, what: str = "file") -> Any:
    """The YAML document at `path` (safe loader), or FileProblem naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(f"{path}: the {what} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from exc
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read the {what}: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FileProblem(f"{path}: the {what} is not valid YAML: {exc}") from exc


def key_path(loc: Sequence[int | str]) -> str:
    """`("members", 0, "address")` -> `members[0].address`; the root is `(top level)`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def problems(error: ValidationError) -> list[tuple[str, str]]:
    """Every (key path, problem) of a validation error, in the model's field order.

    Pydantic adds the name of the union member or validator it tried to the location (a
    function name or a model name in brackets); those parts say nothing to a reader of the
    file and are dropped.
    """
    found = []
    for item in error.errors(include_url=False):
        loc = [p for p in item["loc"] if not _internal(p)]
        found.append((key_path(loc), _problem(item)))
    return found


def first_problem(error: ValidationError) -> tuple[str, str]:
    """The first (key path, problem): what a start-up error names."""
    return problems(error)[0]


def _internal(part: int | str) -> bool:
    return isinstance(part, str) and (part.startswith(("function-", "tagged-union["))
                                      or "[" in part)


def _problem(item: Any) -> str:
    kind, message = item["type"], str(item["msg"])
    if kind == "extra_forbidden":
        return "unknown key (not allowed here)"
    if kind == "missing":
        return "missing (required)"
    message = message.removeprefix("Value error, ")
    given = item.get("input")
    if kind not in ("value_error", "assertion_error") and not isinstance(given, (dict, list)):
        message += f", got {given!r}"
    return message
