"""The benchmarks a user can run quickly, run as a user runs them: ``python -m benchmarks ...`` from
the repository's root, in a child process (no test imports benchmarks/, see test_imports.py).
``list`` and ``run NAME --help``; ``study --quick`` (the study against Optuna around the notebooks'
code); ``floor`` (bytes a step must move, on a tiny corpus) and the paired bootstrap, their functions
called in a child that imports them."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import REPO


def benchmarks(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m benchmarks ARGS`` from the repository's root, its output captured."""
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def in_benchmarks(code: str, *args: str) -> dict:
    """Run ``code`` (which imports from benchmarks/) in a child at the repository's root; the JSON
    object on its last line of output."""
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_list_names_each_benchmark_with_its_one_line_description():
    done = benchmarks("list")
    assert done.returncode == 0, done.stderr
    rows = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert {"run", "study", "floor", "paired", "reliability_load", "ray_overhead", "seed_path"} <= set(rows)
    assert rows["floor"].startswith("The floor: the least time a training epoch can take")
    assert all(description.strip() for description in rows.values())


def test_a_benchmark_runs_with_its_own_options_and_an_unknown_one_is_refused():
    done = benchmarks("run", "paired", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m benchmarks run paired") and "--resamples" in done.stdout
    unknown = benchmarks("run", "nope")
    assert unknown.returncode == 2 and "unknown benchmark 'nope'" in unknown.stderr and "paired" in unknown.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)  # a child of its own now: its imports and its exit count too
def test_study_benchmark_quick_runs_both_sides_to_the_same_budget():
    done = benchmarks("run", "study", "--quick", "--json", timeout=580)  # its workers are subprocesses too
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    table, rows = out.rsplit("\n", 2)[0], json.loads(out.strip().splitlines()[-1])
    assert "| synthetic 800 (tfidf) | naive |" in table and "| synthetic 800 (tfidf) | tagsearch |" in table
    sides = rows[0]["sides"]
    assert sides["tagsearch"]["complete"] + sides["tagsearch"]["pruned"] == 3  # tagsearch's budget is exact
    assert sides["naive"]["complete"] + sides["naive"]["pruned"] >= 3  # MaxTrialsCallback may overshoot
    for side in sides.values():
        assert side["complete"] >= 1 and 0 < side["best"] < 1
    assert sides["naive"]["time_to_quality"] is not None  # the naive side reaches its own best


FLOOR = """
import json, sys
from benchmarks import floor

corpus = floor.data.load_corpus(floor.data.DataConfig(path=sys.argv[1]))
rows = {}
for kind in ("dense", "tfidf"):
    params = {**floor.seed_params(kind), "embedding_dim": 16, "hidden1": 8, "hidden2": 4, "max_features": 3000,
              "batch_size": 16}
    rows[kind] = floor.floor(corpus, kind, params, 1e10, epochs=1)
floor_out = {"train_posts": len(corpus.train_idx), "batch_size": 16, "rows": rows}
"""


PAIRED = """
import json
import numpy as np
from benchmarks import paired

rng = np.random.default_rng(1)
y = (rng.random((300, 5)) < 0.3).astype(np.uint8)
noisy = np.where(rng.random(y.shape) < 0.1, 1 - y, y).astype(np.uint8)  # 10 % of labels wrong
worse = np.where(rng.random(y.shape) < 0.3, 1 - y, y).astype(np.uint8)  # 30 % wrong
paired_out = {"figures_same": paired.figures(y, y), "same": paired.paired(y, noisy, noisy, resamples=200),
              "gap": paired.paired(y, noisy, worse, resamples=200)}
print(json.dumps({"floor": floor_out, "paired": paired_out}))
"""


def test_floor_counts_the_bytes_of_both_optimizer_semantics_and_the_paired_bootstrap_separates_a_gap_from_a_tie(
        tiny_csv):
    """Both benchmarks' functions in one child (one more process importing torch, not two)."""
    runs = in_benchmarks(FLOOR + PAIRED, str(tiny_csv))
    out = runs["floor"]
    for kind, row in out["rows"].items():
        assert row["steps"] == math.ceil(out["train_posts"] / out["batch_size"])
        assert row["epoch_seconds"] > 0 and row["ratio_exact"] > 0
        if kind == "tfidf":  # the lazy update touches fewer first-layer rows than the whole layer
            assert row["bytes_per_step_lazy"] < row["bytes_per_step_exact"]
        else:
            assert row["bytes_per_step_lazy"] == row["bytes_per_step_exact"]
    out = runs["paired"]
    same, gap = out["same"], out["gap"]
    assert tuple(out["figures_same"]) == (0.0, 1.0)
    assert same["hamming_loss"]["interval_95"] == [0.0, 0.0] and same["micro_f1"]["model_better_share"] == 0.0
    assert gap["hamming_loss"]["interval_95"][1] < 0 and gap["hamming_loss"]["model_better_share"] == 1.0
    assert gap["micro_f1"]["interval_95"][0] > 0 and gap["micro_f1"]["model_better_share"] == 1.0
