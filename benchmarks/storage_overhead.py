"""Storage overhead per trial: the share of a worker's wall time spent inside Optuna storage calls.

Runs a study in-process on a fresh SQLite file (the default storage, with its lock and WAL
settings) and times every public method call on the storage object. Short trials are the worst
case (the storage work per trial is fixed), so the default is the small robotics set when present.

    python -m benchmarks run storage_overhead [--data PATH] [--spec studies/tfidf.toml] [--trials 12]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch

from tagsearch.study import search

from tagsearch.study import objective
from tagsearch.runtime import trials as workers
from tagsearch.data.corpus import load_corpus
from tagsearch.study.spec import load_spec
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.storage import open_storage

REPO = Path(__file__).resolve().parents[1]
ROBOTICS = REPO.parent / "shared" / "data" / "stackexchange-robotics.csv"


def timed_storage(url: str):
    """The storage for ``url`` with every public method call timed into ``storage.seconds``."""
    storage = open_storage(url)
    storage.seconds, storage.calls = 0.0, 0

    def timer(method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                storage.seconds += time.perf_counter() - start
                storage.calls += 1
        return call

    for name in dir(storage):
        attr = getattr(storage, name)
        # "call": WorkerStorage's own dispatcher, which every storage method goes through (timed once, there)
        if not name.startswith("_") and callable(attr) and name not in ("seconds", "calls", "call"):
            setattr(storage, name, timer(attr))
    return storage


def measure(spec_path: str, data: str, trials: int) -> dict:
    spec = load_spec(spec_path)
    corpus = load_corpus(spec.data_config(data))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/overhead.db"
        storage = timed_storage(url)
        study = search.open_study(spec, corpus, url, "overhead", storage=storage)
        run = objective.Objective(spec, corpus, device="cpu")
        start = time.perf_counter()
        workers.run_trials(study, run, trials, lock=BudgetLock.of(study, url))
        wall = time.perf_counter() - start
    return {"trials": trials, "wall_s": round(wall, 2), "storage_s": round(storage.seconds, 3),
            "storage_calls": storage.calls, "storage_share": round(storage.seconds / wall, 4),
            "per_trial_ms": round(1000 * storage.seconds / trials, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "studies" / "tfidf.toml"))
    parser.add_argument("--data", default=str(ROBOTICS) if ROBOTICS.is_file() else None,
                        help="posts file (default: ../shared robotics set, else the built-in corpus)")
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    figures = measure(args.spec, args.data, args.trials)
    print(f"{figures['trials']} trials in {figures['wall_s']} s; storage calls {figures['storage_calls']} taking "
          f"{figures['storage_s']} s = {100 * figures['storage_share']:.2f}% of wall time "
          f"({figures['per_trial_ms']} ms per trial)")


if __name__ == "__main__":
    main()
