"""The benchmarks a user can run quickly: ``benchmarks/study.py --quick`` (the study against Optuna
around the notebooks' code) and ``benchmarks/floor.py`` (bytes a step must move, on a tiny corpus)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import REPO


@pytest.mark.slow
def test_study_benchmark_quick_runs_both_sides_to_the_same_budget(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import study  # in-process: its workers are subprocesses all the same

    assert study.main(["--quick", "--json"]) == 0
    out = capsys.readouterr().out
    table, rows = out.rsplit("\n", 2)[0], json.loads(out.strip().splitlines()[-1])
    assert "| synthetic 800 (tfidf) | naive |" in table and "| synthetic 800 (tfidf) | tagsearch |" in table
    sides = rows[0]["sides"]
    assert sides["tagsearch"]["complete"] + sides["tagsearch"]["pruned"] == 3  # tagsearch's budget is exact
    assert sides["naive"]["complete"] + sides["naive"]["pruned"] >= 3  # MaxTrialsCallback may overshoot
    for side in sides.values():
        assert side["complete"] >= 1 and 0 < side["best"] < 1
    assert sides["naive"]["time_to_quality"] is not None  # the naive side reaches its own best


def test_floor_counts_the_bytes_of_both_optimizer_semantics(tiny_csv, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import floor

    corpus = floor.data.load_corpus(floor.data.DataConfig(path=str(tiny_csv)))
    bandwidth = 1e10
    for kind in ("dense", "tfidf"):
        params = {**floor.seed_params(kind), "embedding_dim": 16, "hidden1": 8, "hidden2": 4, "max_features": 3000,
                  "batch_size": 16}
        row = floor.floor(corpus, kind, params, bandwidth, epochs=1)
        assert row["steps"] == math.ceil(len(corpus.train_idx) / params["batch_size"])
        assert row["epoch_seconds"] > 0 and row["ratio_exact"] > 0
        if kind == "tfidf":  # the lazy update touches fewer first-layer rows than the whole layer
            assert row["bytes_per_step_lazy"] < row["bytes_per_step_exact"]
        else:
            assert row["bytes_per_step_lazy"] == row["bytes_per_step_exact"]


def test_the_paired_bootstrap_separates_a_clear_gap_and_not_a_tie(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import numpy as np
    import paired

    rng = np.random.default_rng(1)
    y = (rng.random((300, 5)) < 0.3).astype(np.uint8)
    noisy = np.where(rng.random(y.shape) < 0.1, 1 - y, y).astype(np.uint8)  # 10 % of labels wrong
    worse = np.where(rng.random(y.shape) < 0.3, 1 - y, y).astype(np.uint8)  # 30 % wrong
    assert paired.figures(y, y) == (0.0, 1.0)
    same = paired.paired(y, noisy, noisy, resamples=200)
    assert same["hamming_loss"]["interval_95"] == [0.0, 0.0] and same["micro_f1"]["model_better_share"] == 0.0
    gap = paired.paired(y, noisy, worse, resamples=200)
    assert gap["hamming_loss"]["interval_95"][1] < 0 and gap["hamming_loss"]["model_better_share"] == 1.0
    assert gap["micro_f1"]["interval_95"][0] > 0 and gap["micro_f1"]["model_better_share"] == 1.0
