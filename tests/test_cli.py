"""`tagsearch train` end to end, its JSON, and every user mistake ending in one `error:` line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, robotics_csv, write_spec
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


def test_seed_split_on_builtin_size_is_reported(capsys, spec_factory):
    code, out, _ = run_cli(capsys, "train", spec_factory("tfidf"), "--epochs", "1", "--json")
    record = json.loads(out)
    assert record["params"]["model"] == "tfidf" and len(record["fingerprint"]) == 16


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


BAD_ARGS = [
    (["--data", "/nonexistent/posts.csv"], "not found"),
    (["--param", "colour=red"], "unknown hyperparameter 'colour'"),
    (["--param", "dropout=1.5"], "dropout=1.5 is out of range"),
    (["--param", "lr=0"], "lr=0.0 is out of range"),
    (["--param", "batch_size=big"], "batch_size='big' is not an integer"),
    (["--param", "model=cnn"], "expected one of dense, tfidf"),
    (["--param", "noequals"], "is not KEY=VALUE"),
    (["--epochs", "0"], "expected an integer >= 1"),
    (["--top-k", "500"], "top_k=500 is larger"),
    (["--text-column", "nope"], "text column 'nope' not found"),
]


@pytest.mark.parametrize("extra, message", BAD_ARGS)
def test_bad_arguments_end_in_one_error_line(capsys, spec_factory, extra, message):
    code, out, err = run_cli(capsys, "train", spec_factory("tfidf"), *extra)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert out == ""


def test_bad_spec_files(capsys, tmp_path, tiny_csv):
    broken = tmp_path / "broken.toml"
    broken.write_text("[study\nname=")
    cases = {
        "unknown key": (lambda raw: raw["training"].update(colour=1), "unknown key 'colour'"),
        "wrong type": (lambda raw: raw["training"].update(max_epochs="two"), "max_epochs='two' has the wrong type"),
        "inverted range": (lambda raw: raw["search"]["dropout"].update(low=0.4, high=0.1), "inverted range"),
        "unknown section": (lambda raw: raw.update(extras={"a": 1}), "unknown section [extras]"),
    }
    specs = {name: (write_spec(tmp_path / f"{name.replace(' ', '_')}.toml", data=tiny_csv, edit=edit), message)
             for name, (edit, message) in cases.items()}
    specs["bad toml"] = (broken, "not valid TOML")
    for name, (path, message) in specs.items():
        code, _, err = run_cli(capsys, "train", path)
        assert code == 2 and err.startswith("error: ") and message in err, (name, err)
    code, _, err = run_cli(capsys, "train", tmp_path / "missing.toml")
    assert code == 2 and "study spec" in err


def test_console_script_prints_no_traceback(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc = subprocess.run([sys.executable, "-m", "tagsearch.cli", "train", str(REPO / "studies" / "dense.toml"),
                           "--data", str(empty)], capture_output=True, text=True, timeout=120)
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
