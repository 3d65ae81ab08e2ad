"""The benchmarks' one entry point: ``python -m benchmarks list`` prints each benchmark's name and
the first line of its docstring; ``python -m benchmarks run NAME [ARGS ...]`` runs ``NAME.main(ARGS)``.

A benchmark is a module of this package that defines ``main``; ``list`` reads the modules' source
and imports none of them (so it loads no torch)."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
USAGE = "usage: python -m benchmarks list | run NAME [ARGS ...]   (run NAME --help: the benchmark's options)"


def benchmarks() -> dict[str, str]:
    """Every benchmark's name and one-line description (its docstring's first line), by name."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not path.stem.startswith("_") and any(isinstance(node, ast.FunctionDef) and node.name == "main"
                                                 for node in tree.body):
            found[path.stem] = (ast.get_docstring(tree) or "").strip().splitlines()[0]
    return found


def run(name: str, args: list[str]) -> int:
    """Run benchmark ``name`` with its own command-line ``args``; its exit code."""
    known = benchmarks()
    if name not in known:
        print(f"error: unknown benchmark {name!r}; expected one of: {', '.join(known)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    sys.argv = [f"python -m benchmarks run {name}", *args]  # what its --help and error lines show
    return module.main(args) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["list"] and len(argv) == 1:
        rows = benchmarks()
        width = max(map(len, rows))
        for name, description in rows.items():
            print(f"{name:{width}s}  {description}")
        return 0
    if argv[:1] == ["run"] and len(argv) >= 2:
        return run(argv[1], argv[2:])
    print(USAGE, file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(main())
