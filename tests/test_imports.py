"""Layering: no module imports the command line, and no import cycle in src/ or benchmarks/ (imports
inside functions count too: a lazy import is still a dependency)."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "src" / "tagsearch"
BENCHMARKS = REPO / "benchmarks"


def module_files() -> dict[str, object]:
    files = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    files.update({p.stem: p for p in BENCHMARKS.glob("*.py")})
    return files


def imports(name: str, path) -> set[str]:
    """Modules of this project that ``path`` imports. ``from . import __version__`` (the package
    itself, which every submodule needs anyway) is not an edge."""
    found = set()
    package = "tagsearch" if name.startswith("tagsearch") else ""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else (node.module or "")
            if node.level and node.module:
                base = f"{package}.{node.module}"
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports(name, path) & set(files) - {name, "tagsearch"} for name, path in files.items()}


def test_nothing_imports_the_cli():
    users = [name for name, deps in graph().items() if "tagsearch.cli" in deps]
    assert users == []


def test_no_import_cycles():
    edges, cycles, state = graph(), [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(edges[node]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


# What each layer may import (besides itself): the library below, the commands on top. The runtime
# sits beside data and learns nothing of models, studies or results; errors and log are for all.
LAYERS = {
    "data": {"data"},
    "runtime": {"runtime"},
    "learn": {"data", "learn"},
    "study": {"data", "learn", "runtime", "study"},
    "results": {"data", "learn", "runtime", "study", "results"},
    "tune": {"data", "learn", "runtime", "study", "results"},
    "api": {"data", "learn", "runtime", "study", "results", "tune", "demo"},  # it re-exports tune and run_demo
    "demo": {"data", "learn", "runtime", "study", "results", "tune"},
    "cli": {"data", "learn", "runtime", "study", "results", "api", "tune", "demo"},
    "testing": {"runtime", "study", "testing"},  # stub workers and helpers for the tests and benchmarks; torch-free
}
SHARED = {"errors", "log"}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "tagsearch" and len(parts) > 1 else None


def test_no_upward_imports():
    upward = []
    for name, deps in graph().items():
        own = layer(name)
        for dep in deps:
            target = layer(dep)
            if own in LAYERS and target is not None and target not in SHARED and target not in LAYERS[own]:
                upward.append(f"{name} imports {dep}")
    assert upward == []


def test_every_package_module_has_a_layer():
    assert {layer(name) for name in graph() if layer(name)} <= set(LAYERS) | SHARED
