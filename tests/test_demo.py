"""tagsearch demo = tagsearch tune on the built-in corpus: its data, and (slow) the whole run on a
small corpus, stopped by one Ctrl-C once trials have finished, which still retrains, compares and
gives the verdict (the first Ctrl-C of tune only ends the search)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import optuna
import pytest
import torch

from tagsearch import demo
from tagsearch.cli import main
from tagsearch.data.builtin import BUILTIN_POSTS
from tagsearch.runtime.storage import open_storage


def test_demo_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert demo.demo_data(BUILTIN_POSTS) == ("builtin", "demo")
    path, name = demo.demo_data(300)
    assert path == "storage/builtin-synth-v2-300.csv" and name == "demo-300" and (tmp_path / path).is_file()


def press_ctrl_c_once_trials_finished(url: str, study: str, finished: int, stop: threading.Event) -> None:
    """Wait (without a clock assertion) until the study has ``finished`` complete trials, then send
    this process SIGINT, as a terminal's Ctrl-C reaches tune (its workers are in their own session)."""
    while not stop.wait(0.5):
        try:
            trials = optuna.load_study(study_name=study, storage=open_storage(url, create=False)).get_trials()
        except Exception:  # the storage or the study does not exist yet
            continue
        if sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= finished:
            os.kill(os.getpid(), signal.SIGINT)
            return


@pytest.mark.slow
def test_demo_end_to_end_and_one_ctrl_c_still_gives_the_best_model(tmp_path, monkeypatch, capsys):
    """In-process (its workers are subprocesses all the same): the pytest process has paid for the
    imports already. A 10-minute search that one Ctrl-C ends after 2 complete trials."""
    monkeypatch.chdir(tmp_path)
    threads, stop = torch.get_num_threads(), threading.Event()
    presser = threading.Thread(target=press_ctrl_c_once_trials_finished,
                               args=(f"sqlite:///{tmp_path}/storage/demo.db", "demo-400", 2, stop), daemon=True)
    presser.start()
    try:
        assert main(["demo", "--posts", "400", "--time", "10m", "--workers", "1"]) == 0
    finally:
        stop.set()
        torch.set_num_threads(threads)  # retrain sets its own; the next tests keep theirs
    out = capsys.readouterr().out
    assert "(stopped by Ctrl-C)" in out and "tagsearch dashboard --storage sqlite:///storage/demo.db" in out
    assert "tagsearch predict results/demo-400" in out and "baseline: TF-IDF + LogisticRegression" in out
    folder = tmp_path / "results" / "demo-400"
    for name in ("config.json", "metrics.json", "compare.md", "verdict.md", "candidates.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    # the best on validation of the networks, the baseline and their ensemble: whatever it is, predict loads it
    assert config["study"] == "demo-400" and config["model"] in ("dense", "tfidf", "linear", "ensemble")
    for kind in {t.params.get("model") for t in optuna.load_study(
            study_name="demo-400", storage=open_storage(f"sqlite:///{tmp_path}/storage/demo.db")).get_trials(
            states=(optuna.trial.TrialState.COMPLETE,))}:
        for name in ("model.safetensors", "preprocessing.json", "report.md", "curves.png", "optimization_history.png"):
            assert (tmp_path / "results" / "demo-400.candidates" / kind / name).is_file(), (kind, name)
    assert "TF-IDF ⊕ encoder" not in (folder / "compare.md").read_text()  # the demo searches no encoder
    study = optuna.load_study(study_name="demo-400", storage=open_storage(f"sqlite:///{tmp_path}/storage/demo.db"))
    assert {t.params.get("model") for t in study.get_trials()} <= {"dense", "tfidf"}
    assert study.user_attrs["deadline"] <= time.time()  # the Ctrl-C brought the 10-minute deadline to then
    assert main(["predict", "results/demo-400", "How do I select a div with jquery?"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
