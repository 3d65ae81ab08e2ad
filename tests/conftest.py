"""Shared fixtures: tiny corpora and spec files, built in temp dirs (no shipped data needed)."""

from __future__ import annotations

import os
import signal
import tomllib
from pathlib import Path

import pytest
import torch

from tagsearch.study.specfile import save_spec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "stackexchange-robotics.csv"

# Two cores: keep each test process on one thread so parallel workers in tests do not thrash.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """``tagsearch worker`` run in-process installs SIGINT/SIGTERM handlers; put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def robotics_csv() -> Path:
    """The real robotics posts from ../shared, or skip with the reason."""
    if not SHARED_DATA.is_file():
        pytest.skip(f"{SHARED_DATA} is absent (the ../shared folder is not beside this checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """600 synthetic posts in the Kaggle layout (Id, Title, Body, Tags)."""
    from tagsearch.data.synth import write_corpus

    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    write_corpus(path, n_posts=600, seed=1)
    return path


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


@pytest.fixture
def spec_factory(tmp_path, tiny_csv):
    def make(model="dense", **kwargs):
        kwargs.setdefault("data", tiny_csv)
        return write_spec(tmp_path / f"{model}.toml", model=model, **kwargs)

    return make


class FakeClock:
    """``runtime.deadline.clock`` for tests of the study's deadline: time moves only when told."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    from tagsearch.runtime import deadline

    fake = FakeClock()
    monkeypatch.setattr(deadline, "clock", fake)
    return fake
