"""Mutations of YAML documents (node configs, network and study files): delete a key, add
an unknown one, or put a junk value of any type at any path."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from .strategies import junk_values

WEIRD_PATHS = ["", " ", ".", "..", "/", "/nonexistent/x.pem", "a\x00b", "~", "*", "\\\\?\\C:",
               "ä/ö.yaml", "x" * 300, "ledger.sqlite/", "/dev/null", "node.yaml"]
weird_paths = st.sampled_from(WEIRD_PATHS)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `doc` (mapping keys and list indices)."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.extend(paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.extend(paths(value, (*prefix, i)))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        doc = doc[step]
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: Any, extra_values: st.SearchStrategy[Any] | None = None,
            max_mutations: int = 3) -> Any:
    """A deep copy of `base` with 1 to `max_mutations` mutations."""
    doc = copy.deepcopy(base)
    values = junk_values if extra_values is None else st.one_of(junk_values, extra_values)
    for _ in range(draw(st.integers(1, max_mutations))):
        path = draw(st.sampled_from(paths(doc)))
        op = draw(st.sampled_from(["set", "set", "delete", "add_key"]))
        if not path:  # the whole document
            if op == "set":
                doc = draw(values)
            continue
        parent = _parent(doc, path)
        if op == "set":
            parent[path[-1]] = draw(values)
        elif op == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[draw(st.one_of(st.text(max_size=8), st.integers()))] = draw(values)
            elif isinstance(target, list):
                target.append(draw(values))
            else:
                parent[path[-1]] = draw(values)
    return doc
