"""The import rules of docs/architecture.md that import-linter's contracts do not cover: no import cycle between
modules (imports under ``if TYPE_CHECKING:`` run only for type checkers and do not count), no private name
imported from another package, and imports inside functions only for optional dependencies (each with a
one-line reason)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"vlsafe": ROOT / "src" / "vlsafe", "vlsafe_organism": ROOT / "organism" / "src" / "vlsafe_organism"}
#: top-level modules that may be imported inside a function: optional dependencies, not installed by default
OPTIONAL = {"onnx", "gguf", "onnxruntime", "huggingface_hub", "deepspeed", "playwright", "pyarrow"}


def _cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a list of modules."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:  # recursion depth is bounded by the module count (~200)
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if not nxt.startswith(package):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return found


@pytest.mark.parametrize("package", sorted(SOURCES))
def test_no_import_cycle_between_modules(package: str) -> None:
    graph = grimp.build_graph(package, exclude_type_checking_imports=True)
    assert _cycles(graph, package) == []


def _python_files() -> Iterator[tuple[str, Path]]:
    for folder in SOURCES.values():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder.parent).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield module, path


def _package_of(module: str) -> str:
    """The package a module belongs to for the private-name rule: ``vlsafe.<layer>[.<sub>]`` or the organism."""
    parts = module.split(".")
    if parts[0] != "vlsafe":
        return parts[0]
    return ".".join(parts[:3]) if len(parts) > 2 and parts[1] == "methods" else ".".join(parts[:2])


def test_no_private_name_is_imported_from_another_package() -> None:
    bad = []
    for module, path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                continue
            if not node.module.startswith("vlsafe") or _package_of(node.module) == _package_of(module):
                continue
            private_module = any(part.startswith("_") for part in node.module.split("."))
            names = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
            if private_module or names:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {names or '...'}")
    assert bad == []


def test_imports_inside_functions_are_optional_dependencies_with_a_reason() -> None:
    bad = []
    for _, path in _python_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                top = (node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                reason = "#" in lines[node.lineno - 1] or lines[node.lineno - 2].strip().startswith("#")
                if top not in OPTIONAL or not reason:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert bad == []
