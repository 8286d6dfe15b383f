"""The package's three import rules, read from the source of every module (ast), including
imports inside functions: the node never imports the coordinator, the coordinator never
imports the node, and `bridgestat.common` imports neither. What both sides must agree on
lives in common; a side that needs something of the other's has found a piece of common."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"node": "bridgestat.node", "coordinator": "bridgestat.coordinator",
            "common": "bridgestat.common"}
FORBIDDEN = {"node": ("bridgestat.coordinator",), "coordinator": ("bridgestat.node",),
             "common": ("bridgestat.node", "bridgestat.coordinator")}


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, a module of `package`:
    top-level or lazy (inside a function), relative ones resolved, `from a import b`
    giving both `a` and `a.b` (b may be a module)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(folder: str) -> list[str]:
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, module in imported_modules(path.read_text(encoding="utf-8"),
                                             PACKAGES[folder]):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[folder]):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_no_forbidden_imports(folder: str) -> None:
    assert len(list((ROOT / folder).glob("*.py"))) >= 3, f"no modules found in {folder}/"
    assert violations(folder) == []


def test_both_sides_use_common() -> None:
    """The shared vocabulary is used from both sides (not a dead copy beside them)."""
    for folder in ("node", "coordinator"):
        modules = {m for path in (ROOT / folder).rglob("*.py")
                   for _, m in imported_modules(path.read_text(encoding="utf-8"),
                                                PACKAGES[folder])}
        assert any(m.startswith("bridgestat.common.") for m in modules), folder


@pytest.mark.parametrize(("source", "package", "expected"), [
    ("import bridgestat.coordinator.api", "bridgestat.node", "bridgestat.coordinator.api"),
    ("def f():\n    from bridgestat.coordinator import ca\n", "bridgestat.node",
     "bridgestat.coordinator.ca"),
    ("from ..coordinator import wire", "bridgestat.node", "bridgestat.coordinator.wire"),
    ("from .. import node", "bridgestat.common", "bridgestat.node"),
    ("class A:\n    def f(self):\n        import bridgestat.node.loss as l\n",
     "bridgestat.common", "bridgestat.node.loss"),
])
def test_the_check_sees_every_kind_of_import(source: str, package: str, expected: str) -> None:
    """The rule would catch top-level, lazy, aliased and relative imports."""
    assert expected in [m for _, m in imported_modules(source, package)]
