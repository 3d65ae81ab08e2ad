"""The one way to write a study spec: a spec dict (as ``tomllib`` reads a spec) → a TOML file.
The demo's specs, the tests' variants and the benchmarks' pruner variants are all written here."""

from __future__ import annotations

from pathlib import Path

import tomli_w


def save_spec(raw: dict, path: str | Path, comment: str = "") -> Path:
    """Write ``raw`` as TOML to ``path`` (creating its folder), under ``comment`` as ``#`` lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines()) + ("\n" if comment else "")
    path.write_text(header + tomli_w.dumps(raw), encoding="utf-8")
    return path
