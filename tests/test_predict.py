"""Results directories loaded back (no pickle, checked hashes) and tagsearch predict."""

from __future__ import annotations

import io
import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from tagsearch.learn import features
from tagsearch.results import folder as results
from tagsearch.cli import main
from tagsearch.data.corpus import DataConfig, load_corpus
from tagsearch.learn.metrics import summary
from tagsearch.learn.train import predict_logits, train_config
from test_retrain import shared_results

POSTS = ["How do I select a div with jquery and hide it?", "NullPointerException in my android activity",
         "<p>PHP &amp; MySQL: insert a row</p>"]


@pytest.fixture(params=["dense", "tfidf"])
def saved(request, tmp_path_factory, tiny_csv):
    """A retrained results dir (shared: read-only; tests that damage it use ``copy_of``)."""
    return shared_results(request.param, tmp_path_factory, tiny_csv)[1]


@pytest.fixture
def copy_of(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "copy")


def tiny_corpus(tiny_csv):
    return load_corpus(DataConfig(path=str(tiny_csv)))


# ---------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("params", [
    {"model": "dense", "embedding_dim": 8, "min_freq": 2},
    {"model": "dense", "embedding_dim": 8, "word_ngrams": 3, "buckets": 1000, "hidden_layers": 0},
    {"model": "tfidf", "max_features": 300, "ngram_max": 2, "sublinear_tf": True},
    {"model": "tfidf", "max_features": 0, "min_df": 2, "ngram_max": 3, "hidden_layers": 1},
])
def test_round_trip_equals_in_memory_model(params, tiny_csv, tmp_path):
    """Probabilities from a saved-and-loaded model equal the trained model's on the test split."""
    from tagsearch.study.spec import SEED_DEFAULTS

    corpus = tiny_corpus(tiny_csv)
    params = {**SEED_DEFAULTS, "hidden1": 8, "hidden2": 8, "batch_size": 64, **params}
    cache = features.FeatureCache()
    result = train_config(corpus, params, max_epochs=1, patience=None, device="cpu", cache=cache)
    featurizer = result.featurizers[0]
    expected = torch.sigmoid(predict_logits(result.model, cache.inputs(featurizer, corpus, "test"))).numpy()
    digests = results.save_model(tmp_path, result.model, featurizer.state())
    results.write_json(tmp_path / "config.json", {
        "format": results.FORMAT, "params": params, "tags": corpus.tag_names, "thresholds": [0.5] * 10,
        "input_size": featurizer.input_size, "sha256": digests})
    loaded = results.load(tmp_path)
    got = loaded.probabilities([corpus.texts[i] for i in corpus.test_idx], cleaned=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("settings", [(300, 1, 1, False), (400, 1, 2, True), (0, 2, 3, True)])
def test_tfidf_rebuilt_from_saved_state_equals_training_transform(settings, tiny_csv):
    """Predict-time features (a TfidfVectorizer rebuilt from the saved vocabulary and idf) equal
    train-time features for the same text to 1e-7."""
    corpus = tiny_corpus(tiny_csv)
    max_features, min_df, ngram_max, sublinear = settings
    cache = features.FeatureCache()
    fitted = features.TfidfFeatures(max_features, min_df, ngram_max, sublinear).fit_corpus(corpus, cache)
    state = json.loads(json.dumps(fitted.state()))  # through JSON, as saved
    expected = cache.encoding(fitted, corpus).matrix
    got = features.featurizer_from_state(state).transform(corpus.texts).matrix
    assert got.shape == expected.shape
    assert abs(got - expected).max() < 1e-7
    assert (got != 0).nnz == (expected != 0).nnz


def test_loaded_dir_reproduces_test_metrics(saved):
    """The loaded model, at its saved thresholds, gives exactly the test figures retrain recorded."""
    loaded = results.load(saved)
    config = loaded.config
    corpus = load_corpus(DataConfig(**{**config["data"], "text_columns": tuple(config["data"]["text_columns"])}))
    y_pred, _ = loaded.predict([corpus.texts[i] for i in corpus.test_idx], cleaned=True)
    metrics = json.loads((saved / "metrics.json").read_text())
    figures = summary(corpus.labels[corpus.test_idx], y_pred)
    assert figures["micro_f1"] == pytest.approx(metrics["test_micro_f1"], abs=1e-12)
    assert figures["hamming_loss"] == pytest.approx(metrics["test_hamming_loss"], abs=1e-12)


def test_loading_never_unpickles(saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a results directory")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = results.load(saved)
    assert loaded.probabilities(POSTS).shape == (3, 10)


def test_predict_1000_posts_in_one_call(saved, tiny_csv):
    """One call tags every post, each as it would be alone: a post's scores do not depend on the
    posts batched with it (the 600 titles repeat), and its tags are its scores at the thresholds."""
    texts = (pd.read_csv(tiny_csv)["Title"].tolist() * 2)[:1000]
    loaded = results.load(saved)
    tags, probs = loaded.predict(texts)
    assert probs.shape == tags.shape == (1000, 10)
    np.testing.assert_allclose(probs[600:], probs[:400], rtol=1e-5, atol=1e-6)  # float sums differ by batch
    np.testing.assert_allclose(probs[[0, 599]], loaded.probabilities([texts[0], texts[599]]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tags, probs >= loaded.thresholds)


# ---------------------------------------------------------------------------------------------
# The command


def test_predict_texts(saved, capsys):
    assert main(["predict", str(saved), *POSTS]) == 0
    lines = capsys.readouterr().out.splitlines()
    tag_names = json.loads((saved / "config.json").read_text())["tags"]
    assert len(lines) == 3
    for line in lines:
        assert line == "-" or set(line.split()) <= set(tag_names)


def test_predict_json(saved, capsys):
    assert main(["predict", "--json", str(saved), *POSTS]) == 0
    config = json.loads((saved / "config.json").read_text())
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3
    for record in records:
        assert list(record["scores"]) == config["tags"]
        assert all(0 <= s <= 1 for s in record["scores"].values())
        expected = [t for t, th in zip(config["tags"], config["thresholds"]) if record["scores"][t] >= th]
        assert record["tags"] == expected


def test_predict_file_lines_csv_and_stdin(saved, tmp_path, capsys, monkeypatch):
    assert main(["predict", str(saved), *POSTS]) == 0
    expected = capsys.readouterr().out
    lines = tmp_path / "posts.txt"
    lines.write_text("\n".join(POSTS[:1] + [""] + POSTS[1:]) + "\n")
    assert main(["predict", str(saved), "--file", str(lines)]) == 0
    assert capsys.readouterr().out == expected
    table = tmp_path / "posts.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": POSTS}).to_csv(table, index=False)
    assert main(["predict", str(saved), "--file", str(table)]) == 0
    assert capsys.readouterr().out == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(POSTS) + "\n"))
    assert main(["predict", str(saved)]) == 0
    assert capsys.readouterr().out == expected


@pytest.mark.parametrize("argv, message", [
    (["TEXT", "--file", "x.txt"], "not both"),
    (["--file", "nope.txt"], "'nope.txt' not found"),
    (["--file", "nope.csv"], "'nope.csv' not found"),
])
def test_predict_input_errors(saved, argv, message, capsys, monkeypatch):
    assert main(["predict", str(saved), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err


def test_predict_no_input(saved, capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    assert main(["predict", str(saved)]) == 2
    assert "no posts to tag" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("\n  \n"))
    assert main(["predict", str(saved)]) == 2
    assert "stdin holds no posts" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Damaged results directories


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error:") and captured.err.count("\n") == 1
    return captured.err


def test_tampered_weights_are_rejected(copy_of, capsys):
    weights = copy_of / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    err = _error(["predict", str(copy_of), "hello"], capsys)
    assert "model.safetensors" in err and "sha256" in err


def test_tampered_preprocessing_is_rejected(copy_of, capsys):
    path = copy_of / "preprocessing.json"
    path.write_text(path.read_text() + " ")  # still valid JSON, but not the file retrain wrote
    assert "preprocessing.json" in _error(["predict", str(copy_of), "hello"], capsys)


@pytest.mark.parametrize("name", ["model.safetensors", "preprocessing.json", "config.json"])
def test_missing_file_is_rejected(copy_of, name, capsys):
    (copy_of / name).unlink()
    err = _error(["predict", str(copy_of), "hello"], capsys)
    assert name in err and "missing" in err


def test_broken_config_is_rejected(copy_of, capsys):
    (copy_of / "config.json").write_text("{not json")
    assert "not valid JSON" in _error(["predict", str(copy_of), "hello"], capsys)
    assert "not found" in _error(["predict", str(copy_of / "nope"), "hello"], capsys)


def test_weights_of_another_shape_are_rejected(copy_of, capsys):
    """Weights whose hash matches but whose tensors do not fit the recorded model: clear error."""
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(copy_of / "model.safetensors"))
    config = json.loads((copy_of / "config.json").read_text())
    config["sha256"]["model.safetensors"] = results.sha256(copy_of / "model.safetensors")
    (copy_of / "config.json").write_text(json.dumps(config))
    results.write_manifest(copy_of)  # the whole folder consistent again: only the shapes are wrong
    assert "cannot load the weights" in _error(["predict", str(copy_of), "hello"], capsys)
