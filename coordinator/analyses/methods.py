"""Every registered kind as a method of a client class: `net.mean(...)`.

The methods are generated from the registry, so a new kind needs no second definition here.
Each has a real `inspect.Signature` (the kind's parameters: the positional ones first, the
rest keyword-only, then `key`) and a docstring, so `help(net.mean)`, Jupyter's `net.mean?`
and tab completion show the arguments. A method validates its arguments with the kind's
pydantic model, runs the kind's queries through the client's `run(query, key)` and returns
`kind.value(params, results)`.

    attach_sync(Network)        # run(query, key) -> QueryResult
    attach_async(AsyncNetwork)  # async run(query, key) -> QueryResult; `await net.mean(...)`
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from bridgestat.common.files import problems
from bridgestat.coordinator.analyses.base import Kind, Planned
from bridgestat.coordinator.analyses.kinds import REGISTRY

# How Python callers write what the models normalise (a dict for `where`, any sequence).
API_TYPES = {"where": "dict[str, Sequence[str]] | None", "group_by": "Sequence[str]",
             "bin_edges": "Sequence[float]", "candidates": "Sequence[float]",
             "categories": "Sequence[str]", "terms": "Sequence[Term]",
             "clip": "tuple[float, float] | None"}


class ArgumentError(ValueError):
    """An API argument the kind refuses; the message names the method and the argument."""


def params_of(kind: Kind, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """The kind's validated parameters and the key from a method call's arguments."""
    bound = signature(kind).bind(*args, **kwargs)
    values = dict(bound.arguments)
    values.pop("self", None)
    key = values.pop("key", None)
    try:
        return kind.parse(**values), key
    except ValidationError as exc:
        text = "; ".join(f"{path}: {problem}" for path, problem in problems(exc))
        raise ArgumentError(f"{kind.name}(): {text}") from None


def query_key(key: str | None, planned: Planned, single: bool) -> str | None:
    """The idempotency key of one query: the caller's key as given for a one-query kind,
    `<key>:<suffix>` otherwise; None lets the client draw a fresh one."""
    if key is None:
        return None
    return key if single else f"{key}:{planned.suffix}"


def signature(kind: Kind) -> inspect.Signature:
    """`(self, <positional>, *, <keyword-only>, key=None)` from the kind's model."""
    fields = kind.Params.model_fields
    order = [*kind.positional, *(n for n in fields if n not in kind.positional)]
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for name in order:
        info = fields[name]
        kind_of = inspect.Parameter.POSITIONAL_OR_KEYWORD if name in kind.positional \
            else inspect.Parameter.KEYWORD_ONLY
        default = inspect.Parameter.empty if info.default is PydanticUndefined else info.default
        parameters.append(inspect.Parameter(name, kind_of, default=default,
                                            annotation=API_TYPES.get(name, info.annotation)))
    parameters.append(inspect.Parameter("key", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation="str | None"))
    return inspect.Signature(parameters)


def docstring(kind: Kind) -> str:
    return (f"{kind.title}: {kind.description}\n\nThe arguments are the fields of "
            f"`{type(kind).__name__}.Params` in bridgestat.coordinator.analyses.kinds (also "
            f"the keys of a `statistic: {kind.name}` study analysis); the same `key` makes a "
            "retry free on every node.")


def _sync_method(kind: Kind) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        p, key = params_of(kind, (self, *args), kwargs)
        planned = kind.plan(p)
        run = self.run_secure if getattr(p, "secure", False) else self.run
        results = [run(q.query, query_key(key, q, len(planned) == 1)) for q in planned]
        return kind.value(p, results)
    return _named(method, kind)


def _async_method(kind: Kind) -> Callable[..., Any]:
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        p, key = params_of(kind, (self, *args), kwargs)
        planned = kind.plan(p)
        run = self.run_secure if getattr(p, "secure", False) else self.run
        results = [await run(q.query, query_key(key, q, len(planned) == 1)) for q in planned]
        return kind.value(p, results)
    return _named(method, kind)


def _named(method: Callable[..., Any], kind: Kind) -> Callable[..., Any]:
    method.__name__ = method.__qualname__ = kind.name
    method.__doc__ = docstring(kind)
    method.__signature__ = signature(kind)  # type: ignore[attr-defined]
    return method


def attach_sync(cls: type) -> type:
    """Give `cls` (which has `run(query, key)`) one method per registered kind."""
    for name, kind in REGISTRY.items():
        setattr(cls, name, _sync_method(kind))
    return cls


def attach_async(cls: type) -> type:
    """Give `cls` (which has `async run(query, key)`) one coroutine method per kind."""
    for name, kind in REGISTRY.items():
        setattr(cls, name, _async_method(kind))
    return cls
