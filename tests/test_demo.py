"""tagsearch demo: its specs, its data, and (slow) the whole run on a small corpus."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch

from tagsearch import demo
from tagsearch.data.builtin import BUILTIN_POSTS
from tagsearch.cli import main
from tagsearch.study.spec import load_spec


@pytest.mark.parametrize("model", ["dense", "tfidf"])
def test_demo_spec_round_trips_and_is_valid(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = demo.write_demo_spec(model, f"demo-{model}", "builtin", 6)
    assert tomllib.loads(path.read_text()) == demo.demo_spec(model, f"demo-{model}", "builtin", trials=6)
    spec = load_spec(path)
    assert spec.name == f"demo-{model}" and spec.storage == demo.STORAGE and spec.n_trials == 6
    assert spec.max_epochs == demo.EPOCHS and spec.pruner["kind"] == "median"
    assert spec.search == load_spec(demo.studies_dir().resolve() / f"{model}.toml").search


def test_demo_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.demo_data(None, BUILTIN_POSTS) == ("builtin", "")
    path, suffix = demo.demo_data(None, 300)
    assert path == "storage/builtin-synth-v2-300.csv" and suffix == "-300" and Path(path).is_file()
    assert demo.demo_data(path, BUILTIN_POSTS) == (str(Path(path).resolve()), "-builtin-synth-v2-300")


def test_demo_bad_data_is_one_error_line(tmp_path, monkeypatch, capsys):

    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--data", "nope.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data 'nope.csv' not found") and err.count("\n") == 1


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch, capsys):
    """The whole demo on 400 posts: two studies, two results dirs, a comparison, a prediction. In-process
    (its workers are subprocesses all the same): the pytest process has paid for the imports already."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        assert main(["demo", "--posts", "400", "--trials", "3", "--workers", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # retrain sets its own; the next tests keep theirs
    assert "tagsearch dashboard --storage sqlite:///storage/demo.db" in capsys.readouterr().out
    for model in ("dense", "tfidf"):
        folder = tmp_path / "results" / f"demo-{model}-400"
        for name in ("model.safetensors", "preprocessing.json", "config.json", "metrics.json", "report.md",
                     "curves.png", "confusion.png", "f1.png", "optimization_history.png"):
            assert (folder / name).is_file(), name
        assert json.loads((folder / "config.json").read_text())["study"] == f"demo-{model}-400"
    assert "demo-dense-400" in (tmp_path / "results" / "compare.md").read_text()
    assert main(["predict", "results/demo-tfidf-400", "How do I select a div with jquery?"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
