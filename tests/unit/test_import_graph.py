"""The package's import graph: no cycle between plmdiff modules, no hidden in-function imports of
plmdiff's own modules, and each stage imports only the stages below it (ARCHITECTURE.md, "Layout")."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "plmdiff"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, known: set[str]) -> str | None:
    """The plmdiff module an import names (a `from pkg import module` names the module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def plmdiff_imports(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported plmdiff module, line, inside a function) of every import in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("plmdiff"):
                        target = _resolve(alias.name, known)
                        if target:
                            found.append((target, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("plmdiff"):
                base = child.module or ""
                for alias in child.names:
                    target = _resolve(f"{base}.{alias.name}", known)
                    if target:
                        found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {
        name: {target for target, _, _ in plmdiff_imports(path, known) if target != name}
        for name, path in mods.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_find_cycle_sees_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_plmdiff_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_in_function_imports_of_plmdiff_modules() -> None:
    mods = modules()
    known = set(mods)
    hidden = [
        f"{path.relative_to(SRC)}:{line} imports {target}"
        for name, path in mods.items()
        for target, line, in_function in plmdiff_imports(path, known)
        if in_function
    ]
    assert not hidden, "in-function imports of plmdiff modules:\n" + "\n".join(hidden)


# Stages in dependency order: a package may import itself and those listed before it.
LAYERS = [
    "plmdiff.core",
    "plmdiff.models",
    "plmdiff.config",
    "plmdiff.sampling",
    "plmdiff.activations",
    "plmdiff.probes",
    "plmdiff.sanity",
    "plmdiff.sae",
    "plmdiff.diff",
    "plmdiff.kl",
    "plmdiff.model_diff",
    "plmdiff.potts",
    "plmdiff.report",
    "plmdiff.demo",
    "plmdiff.testing",
]


def _layer(module: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


@pytest.mark.parametrize("module", sorted(modules()))
def test_stage_imports_only_lower_stages(module: str) -> None:
    own = _layer(module)
    if own is None:
        return
    upward = [t for t in import_graph()[module] if (_layer(t) or 0) > own]
    assert not upward, f"{module} imports later stages: {sorted(upward)}"
