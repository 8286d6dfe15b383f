"""Reading the project's files into typed (pydantic) models with errors that name the file,
the key path and the problem, the same way on both sides.

Each file is described once, as a `FileModel`: unknown keys are refused (`extra="forbid"`),
types are strict (YAML `"1"` is not the number 1, `yes` is not a name), and the model is frozen.
Checks that cross keys or need something outside the file (the config's budget, the schema's
columns, a file on disk) run after validation and raise `KeyProblem` naming the key.

    try:
        model = PolicyFile.model_validate(read_yaml(path, "policy"))
        model.check(...)                  # cross-key checks: KeyProblem(key, problem)
    except FileProblem as exc:            # unreadable, not UTF-8, not YAML
        ...
    except (ValidationError, KeyProblem) as exc:
        key, problem = first_problem(exc)  # ("budget.per_period.epsilon", "must be > 0 ...")
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, WithJsonSchema

from bridgestat.common.names import NAME_PATTERN, NAME_RULE, is_name, parse_address
from bridgestat.common.numbers import finite


class FileProblem(ValueError):
    """A file that cannot be read as YAML at all; the message names the file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path}: {problem}")


class KeyProblem(ValueError):
    """A check across keys (or against something outside the file) failed at `key`."""

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")


class FileModel(BaseModel):
    """A file (or a section of one) as the user writes it: every key declared, nothing else
    accepted, no type coerced, no value changed after reading."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False,
                              populate_by_name=False)


def read_yaml(path: Path, what: str = "file") -> Any:
    """The YAML document at `path` (safe loader), or FileProblem naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(path, f"cannot read {what}: not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from exc
    except OSError as exc:
        raise FileProblem(path, f"cannot read {what}: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FileProblem(path, f"cannot read {what}: not valid YAML: {exc}") from exc


# -- value types shared by the file models ----------------------------------------------------


def number(rule: str, holds: Callable[[float], bool]) -> Callable[[object], float]:
    """A check for a finite number (int or float, not a bool) for which `holds`; its message
    says `rule` ("> 0"). Checked by hand rather than by `Field(gt=...)` so that a huge YAML
    integer (beyond float range) gets the same message as -1, not "not a valid number"."""
    def check(value: object) -> float:
        if not finite(value) or not holds(float(value)):  # type: ignore[arg-type]
            raise ValueError(f"must be a number {rule}, got {shown(value)}")
        return float(value)  # type: ignore[arg-type]
    return check


def shown(value: object, limit: int = 60) -> str:
    """repr(value) for a message, cut short (a 400-digit YAML integer is not worth quoting)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 5]}...{text[-2:]}"


def not_null(value: object) -> object:
    """For optional keys: a key that is given must have a value (YAML `tls:` with nothing
    under it is a mistake, not a request for the default)."""
    if value is None:
        raise ValueError("has no value (leave the key out for the default)")
    return value


def _name(value: object) -> str:
    if not is_name(value):
        raise ValueError(f"must be a name: {NAME_RULE}, got {value!r}")
    return str(value)


def _certificate_name(value: object) -> str:
    if not is_name(value):
        raise ValueError(f"must be the name on the certificate (as `bridgestat ca` issued "
                         f"it: {NAME_RULE}), got {value!r}")
    return str(value)


def address(value: object, *, bind: bool = False) -> str:
    """`value` if it is host:port (`common.names.parse_address`), else ValueError saying so."""
    try:
        parse_address(value, bind=bind)
    except ValueError:
        raise ValueError(f"must be host:port (port {0 if bind else 1}-65535), "
                         f"got {value!r}") from None
    return str(value)


def _dial(value: object) -> str:
    return address(value)


def _bind(value: object) -> str:
    return address(value, bind=True)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


_NAME_SCHEMA = {"type": "string", "pattern": NAME_PATTERN.pattern}
_ADDRESS_SCHEMA = {"type": "string", "pattern": r"^.+:[0-9]+$"}

Positive = Annotated[float, PlainValidator(number("> 0", lambda x: x > 0)),
                     WithJsonSchema({"type": "number", "exclusiveMinimum": 0})]
NonNegative = Annotated[float, PlainValidator(number(">= 0", lambda x: x >= 0)),
                        WithJsonSchema({"type": "number", "minimum": 0})]
Name = Annotated[str, PlainValidator(_name), WithJsonSchema(_NAME_SCHEMA)]
"""A member's name, as `common.names` defines it."""
CertificateName = Annotated[str, PlainValidator(_certificate_name), WithJsonSchema(_NAME_SCHEMA)]
"""The name a peer's certificate must carry (a name too, worded for the reader)."""
Address = Annotated[str, PlainValidator(_dial), WithJsonSchema(_ADDRESS_SCHEMA)]
"""host:port to dial (port 1-65535)."""
BindAddress = Annotated[str, PlainValidator(_bind), WithJsonSchema(_ADDRESS_SCHEMA)]
"""host:port to listen on (port 0 too: the system picks one)."""
Text = Annotated[str, PlainValidator(_text), WithJsonSchema({"type": "string", "minLength": 1})]
"""A non-empty string (a path, a dataset name, a DSN)."""


# -- errors -----------------------------------------------------------------------------------


def key_path(loc: Sequence[int | str]) -> str:
    """`("members", 0, "address")` -> `members[0].address`; the root is `(top level)`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def problems(error: ValidationError | KeyProblem,
             model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """Every (key path, problem) of a validation error, in the model's field order.

    Pydantic adds the name of the union member or validator it tried to the location (a
    function name or a model name in brackets); those parts say nothing to a reader of the
    file and are dropped. Given the `model` validated, an unknown key's problem lists the
    keys allowed where it stands.
    """
    if isinstance(error, KeyProblem):
        return [(error.key, error.problem)]
    found = []
    for item in error.errors(include_url=False):
        loc = [p for p in item["loc"] if not _internal(p)]
        problem = _problem(item)
        if item["type"] == "extra_forbidden" and model is not None:
            allowed = _allowed_keys(model, loc[:-1])
            if allowed:
                problem = f"unknown key (allowed: {', '.join(allowed)})"
        found.append((key_path(loc), problem))
    return found


def first_problem(error: ValidationError | KeyProblem,
                  model: type[BaseModel] | None = None) -> tuple[str, str]:
    """The first (key path, problem): what a start-up error names."""
    return problems(error, model)[0]


def _internal(part: int | str) -> bool:
    return isinstance(part, str) and (part.startswith(("function-", "tagged-union["))
                                      or "[" in part)


_MESSAGES = {
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_too_short": "must be a non-empty string",
    "too_short": "must not be empty",
    "invalid_key": "keys must be strings",
}


def _problem(item: Any) -> str:
    kind, message = item["type"], str(item["msg"])
    given = item.get("input")
    if kind == "extra_forbidden":
        return "unknown key (not allowed here)"
    if kind == "missing":
        return "missing (required)"
    if kind == "literal_error":
        expected = str(item.get("ctx", {}).get("expected", ""))
        allowed = expected.replace("'", "").replace(" or ", ", ")
        return f"must be one of {allowed}, got {shown(given)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
                 "less_than_equal": "<="}[kind]
        limit = next(iter(item.get("ctx", {}).values()), "")
        return f"must be {bound} {limit}, got {shown(given)}"
    message = _MESSAGES.get(kind, message.removeprefix("Value error, "))
    if kind in _MESSAGES and not isinstance(given, (dict, list)) and kind != "invalid_key":
        message += f", got {shown(given)}"
    return message


def _allowed_keys(model: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """The keys of the model section at `loc` (list indexes and mapping keys pass through)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        if isinstance(part, str) and part in fields:
            current = _model_in(fields[part].annotation)
    if current is None:
        return []
    return sorted(f.alias or n for n, f in current.model_fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The first model class inside an annotation (`list[X]`, `dict[str, X]`, `X | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return None
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
