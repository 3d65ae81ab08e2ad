"""The one way to write a study spec: a spec dict (as ``tomllib`` reads a spec) → TOML text or a file.
The demo's specs, the tests' variants, the benchmarks' pruner variants and ``Spec.to_toml`` are all
written here."""

from __future__ import annotations

from pathlib import Path

import tomli_w


def spec_toml(raw: dict, comment: str = "") -> str:
    """``raw`` as TOML text, under ``comment`` as ``#`` lines."""
    header = "".join(f"# {line}\n" for line in comment.splitlines()) + ("\n" if comment else "")
    return header + tomli_w.dumps(raw)


def save_spec(raw: dict, path: str | Path, comment: str = "") -> Path:
    """Write ``raw`` as TOML to ``path`` (creating its folder), under ``comment`` as ``#`` lines."""
    return write_text(spec_toml(raw, comment), path)


def write_text(text: str, path: str | Path) -> Path:
    """Write a spec's ``text`` to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
