"""`tagsearch train` and `tagsearch data synth` end to end (in-process, through ``cli.main``), and the
real console script once. Bad inputs of every command: test_bad_inputs.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, robotics_csv
from tagsearch.cli import main

JSON_KEYS = {"model", "params", "epochs_run", "best_epoch", "epoch_seconds", "val_hamming_loss",
             "best_val_hamming_loss", "val_micro_f1", "val_macro_f1", "train_posts", "val_posts", "fingerprint"}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("model", ["dense", "tfidf"])
def test_train_json(capsys, spec_factory, model):
    code, out, err = run_cli(capsys, "train", spec_factory(model), "--epochs", "2", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert JSON_KEYS <= set(record)
    assert record["model"] == model and record["epochs_run"] <= 2 and len(record["epoch_seconds"]) == record["epochs_run"]
    assert record["train_posts"] + record["val_posts"] < 600


def test_train_readable_lines_and_param_overrides(capsys, spec_factory):
    code, out, _ = run_cli(capsys, "train", spec_factory("dense"), "--epochs", "2", "--no-early-stop",
                           "--param", "model=tfidf", "--param", "dropout=0.1", "--param", "max_features=200")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("epoch   1") and "val_hamming" in lines[0] and lines[-1].startswith("best epoch")


@pytest.mark.parametrize("model, min_f1", [("tfidf", 0.3), ("dense", None)])
def test_robotics_acceptance(capsys, model, min_f1):
    data = robotics_csv()
    code, out, err = run_cli(capsys, "train", REPO / "studies" / f"{model}.toml", "--data", data,
                             "--epochs", "2", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert JSON_KEYS <= set(record) and record["train_posts"] == 1020
    if min_f1 is not None:
        assert record["val_micro_f1"] > min_f1


def test_console_script_prints_no_traceback(tmp_path):
    """The one subprocess: the installed ``tagsearch`` entry point turns a user error into one line."""
    script = shutil.which("tagsearch", path=str(Path(sys.executable).parent)) or shutil.which("tagsearch")
    if script is None:
        pytest.skip("the 'tagsearch' console script is not installed (pip install -e .)")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc = subprocess.run([script, "train", str(REPO / "studies" / "dense.toml"), "--data", str(empty)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: data file {str(empty)!r} is empty; expected a table of posts with text and tags"
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_synth_command_writes_a_kaggle_csv(capsys, tmp_path):
    out = tmp_path / "s.csv"
    code, _, err = run_cli(capsys, "data", "synth", "--out", out, "--posts", "50", "--seed", "3")
    assert code == 0 and "wrote 50" in err
    assert out.read_text().splitlines()[0] == "Id,Title,Body,Tags"
    code, _, err = run_cli(capsys, "data", "synth", "--out", out, "--posts", "0")
    assert code == 2 and err.startswith("error: ")
