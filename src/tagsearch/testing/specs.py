"""Small, fast study specs (a tiny network, 2 epochs, 4 trials) for the tests and the load
benchmarks, as plain data or written to a TOML file."""

from __future__ import annotations

import tomllib
from pathlib import Path

from tagsearch.study.specfile import save_spec


def spec_dict(model: str = "dense", data: Path | str = "builtin", storage: str | None = None,
              name: str | None = None) -> dict:
    """A small, fast study spec (tiny network, 2 epochs) for tests, as ``tomllib`` would read it."""
    study = {"name": name or f"test-{model}", **({"storage": storage} if storage else {}), "n_trials": 4}
    model_params = ({"embedding_dim": 16, "min_freq": 1} if model == "dense" else
                    {"max_features": 500, "ngram_max": 1})
    return {
        "study": study,
        "sampler": {"seed": 0, "n_startup_trials": 2},
        "pruner": {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        "data": {"path": str(data)},
        "training": {"max_epochs": 2, "patience": 2, "device": "cpu"},
        "defaults": {"model": model, "hidden1": 16, "hidden2": 8, "batch_size": 64, **model_params},
        "search": {"dropout": {"low": 0.0, "high": 0.5}, "lr": {"low": 1e-4, "high": 1e-1, "log": True}},
    }


def write_spec(path: Path, model: str = "dense", data: Path | str = "builtin", storage: str | None = None,
               extra: str = "", name: str | None = None, edit=None) -> Path:
    """``spec_dict`` written to ``path``, plus the tables of the TOML text ``extra`` (e.g. one more
    ``[search.X]``), then changed in place by ``edit(raw)``."""
    raw = spec_dict(model, data, storage, name)
    for section, table in tomllib.loads(extra).items():
        raw.setdefault(section, {}).update(table)
    if edit is not None:
        edit(raw)
    return save_spec(raw, path)
