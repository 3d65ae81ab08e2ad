"""Layering: no module imports the command line, and no import cycle in src/ or benchmarks/ (imports
inside functions count too: a lazy import is still a dependency). The benchmarks and the tests do not
import each other (what they share is ``tagsearch.testing``), and neither edits the import path."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "src" / "tagsearch"
BENCHMARKS = REPO / "benchmarks"
TESTS = REPO / "tests"


def module_name(path, root) -> str:
    """``tagsearch.study.spec`` for src/tagsearch/study/spec.py under src/; a package is its ``__init__``."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_files() -> dict[str, object]:
    files = {module_name(p, PACKAGE.parent): p for p in PACKAGE.rglob("*.py")}
    files.update({module_name(p, REPO): p for p in BENCHMARKS.glob("*.py")})  # benchmarks.floor, ...
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
# sits beside data and learns nothing of models, studies or results; errors, log and durations are for all.
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
SHARED = {"errors", "log", "durations"}


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


def top_names(path) -> set[str]:
    """The top-level names of every module ``path`` imports (``a`` for ``import a.b``), lazy imports too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_benchmarks_and_tests_do_not_import_each_other():
    test_modules = {"tests"} | {p.stem for p in TESTS.glob("*.py")}  # conftest, test_stress, ...
    both = [f"{p.relative_to(REPO)} imports {sorted(top_names(p) & test_modules)}" for p in BENCHMARKS.glob("*.py")
            if top_names(p) & test_modules]
    both += [f"{p.relative_to(REPO)} imports benchmarks" for p in TESTS.glob("*.py") if "benchmarks" in top_names(p)]
    assert both == []


def test_neither_benchmarks_nor_tests_edit_the_import_path():
    """Nothing appends to or inserts into the interpreter's module search path (nor calls
    ``monkeypatch.syspath_prepend``): benchmarks are a package run from the repository's root, and
    what the tests share is in ``conftest`` and ``tagsearch.testing``."""
    edits = []
    for path in [*BENCHMARKS.glob("*.py"), *TESTS.glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and (
                    node.attr == "syspath_prepend" or
                    (node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys")):
                edits.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert edits == []
