"""The parameter types every analysis kind shares: validated once, the same way for a study
file entry and for an API keyword argument.

A validator raises ValueError with a message that reads after the key path, e.g.
`clip: must be [lower, upper] with lower < upper, got [3, 1]`. Occasions are written as
`Occasion` values in Python and as names (`month_12`) in a study file; the names are
resolved from the validation context `{"occasions": {name: Occasion}}`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainValidator, ValidationInfo

from bridgestat.common.numbers import finite
from bridgestat.coordinator.client.query import Occasion, Term

Where = tuple[tuple[str, tuple[str, ...]], ...]
MAX_CANDIDATES = 10_000


def _positive(value: Any) -> float:
    if not finite(value) or value <= 0:
        raise ValueError(f"must be a number > 0, got {value!r}")
    return float(value)


def _number(value: Any) -> float:
    if not finite(value):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be a whole number >= 0, got {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a whole number >= 1, got {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")  # noqa: TRY004
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value


def _names(value: Any, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if value is None and allow_empty:
        return ()
    if not isinstance(value, (list, tuple)) or (not value and not allow_empty) or \
            not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a {'' if allow_empty else 'non-empty '}list of names, "
                         f"got {value!r}")
    return tuple(value)


def _numbers(value: Any) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not all(finite(v) for v in value):
        raise ValueError(f"must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _clip(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    numbers = _numbers(value)
    if len(numbers) != 2 or not numbers[0] < numbers[1]:
        raise ValueError(f"must be [lower, upper] with lower < upper, got {value!r}")
    return numbers[0], numbers[1]


SPLIT_KEYS = ("count", "sum", "sum_squares")


def _split(value: Any) -> tuple[float, float, float] | None:
    """A mean's loss shares for count, sum and sum of squares: [c, s, q] or {count, sum,
    sum_squares}, each > 0, summing to 1 (the node checks it the same way, within 1e-9)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in SPLIT_KEYS)
        if unknown or len(value) != 3:
            raise ValueError(f"must be {{count, sum, sum_squares}} or three numbers, got "
                             f"{value!r}")
        value = [value[k] for k in SPLIT_KEYS]
    numbers = _numbers(value)
    if len(numbers) != 3 or not all(x > 0 for x in numbers):
        raise ValueError(f"must be three shares > 0 (count, sum, sum_squares), got {value!r}")
    if abs(math.fsum(numbers) - 1) > 1e-9:
        raise ValueError(f"the shares must sum to 1, got {math.fsum(numbers)!r}")
    return numbers[0], numbers[1], numbers[2]


def _where(value: Any) -> Where:
    if value is None:
        return ()
    if isinstance(value, tuple):  # already in query form
        value = dict(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"must map columns to lists of categories, got {value!r}")  # noqa: TRY004
    found = []
    for column, categories in value.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"column names must be strings, got {column!r}")
        try:
            found.append((column, _names(categories, allow_empty=False)))
        except ValueError as exc:
            raise ValueError(f"{column}: {exc}") from None
    return tuple(found)


def _groups(value: Any) -> tuple[str, str]:
    names = _names(value, allow_empty=False)
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"must name two different groups, got {value!r}")
    return names[0], names[1]


def _improvement(value: Any) -> str:
    if value not in ("increase", "decrease"):
        raise ValueError(f"must be increase or decrease, got {value!r}")
    return str(value)


def _share(value: Any) -> float:
    q = _number(value)
    if not 0 < q < 1:
        raise ValueError(f"must lie in (0, 1), got {q:g}")
    return q


def _candidates(value: Any) -> tuple[float, ...]:
    """At least two increasing numbers, or {from, to, step} (at most 10,000 steps)."""
    if isinstance(value, Mapping):
        unknown = sorted(str(k) for k in value if k not in ("from", "to", "step"))
        if unknown or len(value) != 3:
            raise ValueError(f"must be {{from, to, step}} or a list, got {value!r}")
        start, stop, step = (value[k] for k in ("from", "to", "step"))
        if not all(finite(v) for v in (start, stop, step)) or step <= 0 or stop <= start \
                or (stop - start) / step > MAX_CANDIDATES:
            raise ValueError(f"needs from < to and 0 < step, at most {MAX_CANDIDATES:,} steps")
        count = round((stop - start) / step)
        return tuple(float(start) + i * float(step) for i in range(count + 1))
    numbers = _numbers(value)
    if len(numbers) < 2 or list(numbers) != sorted(set(numbers)):
        raise ValueError("must be at least two increasing numbers")
    return numbers


def _occasion(value: Any, info: ValidationInfo) -> Occasion:
    if isinstance(value, Occasion):
        return value
    known: Mapping[str, Occasion] = (info.context or {}).get("occasions", {})
    if isinstance(value, str) and value in known:
        return known[value]
    raise ValueError(f"unknown occasion {value!r} (defined: {', '.join(known) or 'none'})")


def _optional_occasion(value: Any, info: ValidationInfo) -> Occasion | None:
    return None if value is None else _occasion(value, info)


Positive = Annotated[float, PlainValidator(_positive)]
Number = Annotated[float, PlainValidator(_number)]
Whole = Annotated[int, PlainValidator(_whole)]
Replicates = Annotated[int, PlainValidator(_count)]
Flag = Annotated[bool, PlainValidator(_flag)]
Name = Annotated[str, PlainValidator(_name)]
Names = Annotated[tuple[str, ...], PlainValidator(lambda v: _names(v, allow_empty=True))]
Categories = Annotated[tuple[str, ...], PlainValidator(lambda v: _names(v, allow_empty=False))]
Numbers = Annotated[tuple[float, ...], PlainValidator(lambda v: () if v is None else _numbers(v))]
Clip = Annotated[tuple[float, float] | None, PlainValidator(_clip)]
MeanSplitField = Annotated[tuple[float, float, float] | None, PlainValidator(_split)]
WhereField = Annotated[Where, PlainValidator(_where)]
Groups = Annotated[tuple[str, str], PlainValidator(_groups)]
Improvement = Annotated[Literal["increase", "decrease"], PlainValidator(_improvement)]
Share = Annotated[float, PlainValidator(_share)]
Candidates = Annotated[tuple[float, ...], PlainValidator(_candidates)]
OccasionField = Annotated[Occasion, PlainValidator(_occasion)]


def _optional(check: Any) -> PlainValidator:
    """`check`, letting None (the field left out) through."""
    return PlainValidator(lambda v: None if v is None else check(v))


OptionalPositive = Annotated[float | None, _optional(_positive)]
OptionalImprovement = Annotated[Literal["increase", "decrease"] | None, _optional(_improvement)]
OptionalCategories = Annotated[tuple[str, ...] | None,
                               _optional(lambda v: _names(v, allow_empty=False))]
OptionalOccasion = Annotated[Occasion | None, PlainValidator(_optional_occasion)]


class Frozen(BaseModel):
    """A value model: unknown keys refused, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TermSpec(Frozen):
    """A regression coordinate as a study file writes it (occasions by name)."""

    column: Name
    occasion: OptionalOccasion = None
    baseline: OptionalOccasion = None
    category: str = ""
    clip: Clip = None

    def term(self) -> Term:
        return Term(self.column, self.occasion, self.baseline, self.category, self.clip)


def _term_specs(value: Any) -> Any:
    """`Term` values (Python) become mappings for TermSpec; at least two terms."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) < 2:
        raise ValueError("must list regressors then the response (at least 2 terms)")
    return [vars(t).copy() if isinstance(t, Term) else t for t in value]


Terms = Annotated[tuple[TermSpec, ...], BeforeValidator(_term_specs)]
