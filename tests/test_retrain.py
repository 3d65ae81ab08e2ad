"""tagsearch retrain: best trial → retrained model → test metrics, plots, results dir, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from conftest import write_spec
from tagsearch.results import retrain
from tagsearch.study import search
from tagsearch.study import objective
from tagsearch.cli import main
from tagsearch.data.corpus import DataConfig, load_corpus
from tagsearch.results.folder import sha256, write_manifest
from tagsearch.study.spec import load_spec
from tagsearch.runtime.trials import run_trials

FILES = ["model.safetensors", "preprocessing.json", "config.json", "metrics.json", "report.md", "curves.png",
         "confusion.png", "f1.png", "optimization_history.png"]


def make_study(folder: Path, model: str, data: Path, trials: int = 3, folds: int | str = "auto") -> tuple[Path, str]:
    """A tiny finished study (the search layer's own worker loop, in this process)."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder}/studies.db"
    spec_path = write_spec(folder / f"{model}.toml", model=model, data=data, storage=url,
                           edit=lambda raw: raw["training"].update(folds=folds))
    spec = load_spec(spec_path)
    corpus = load_corpus(spec.data_config())
    study = search.open_study(spec, corpus)
    run_trials(study, objective.Objective(spec, corpus), trials, wait_for_running=False)
    return spec_path, url


def make_results(folder: Path, model: str, data: Path) -> Path:
    """A study and its retrained best trial in ``folder/results``."""
    spec_path, _ = make_study(folder, model, data)
    out = folder / "results"
    assert main(["retrain", str(spec_path), "--out", str(out)]) == 0
    return out


_SHARED: dict[str, tuple[Path, Path]] = {}


def shared_results(model: str, tmp_path_factory, tiny_csv) -> tuple[Path, Path]:
    """One study + results dir per model for the whole session (read-only: copy before changing)."""
    if model not in _SHARED:
        folder = tmp_path_factory.mktemp(f"study-{model}")
        _SHARED[model] = folder, make_results(folder, model, tiny_csv)
    return _SHARED[model]


@pytest.fixture(params=["dense", "tfidf"])
def retrained(request, tmp_path_factory, tiny_csv):
    return (request.param, *shared_results(request.param, tmp_path_factory, tiny_csv))


def test_writes_every_file(retrained):
    model, folder, out = retrained
    names = {p.name for p in out.iterdir()}
    assert set(FILES) <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert ("param_importances.png" in names) != any("importances" in n for n in metrics["plot_notes"])
    assert not list(out.parent.glob(".results.*")), "no temp dir left beside the results"
    import matplotlib

    assert matplotlib.rcParams["axes.facecolor"] == "white", "optuna's ggplot style leaked out of plots.py"


def test_metrics_json(retrained):
    _, _, out = retrained
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_hamming_loss", "test_micro_f1", "test_macro_f1"):
        assert 0 <= metrics[key] <= 1
    assert {"hamming_loss", "micro_f1", "macro_f1", "per_class"} <= set(metrics["validation"])
    row = metrics["per_class"][0]
    assert set(row) == {"label", "precision", "recall", "f1", "support", "threshold"}
    assert len(metrics["per_class"]) == 10
    assert metrics["metric"] == "hamming_loss"
    choice = metrics["thresholds"]
    assert choice["chosen"] in ("fixed", "global", "per_tag") and "cross-fitted" in choice["how_fitted"]
    variants = metrics["threshold_variants"]
    assert set(variants) == {"fixed", "global", "per_tag"}
    chosen = variants[choice["chosen"]]
    assert chosen["test"]["micro_f1"] == metrics["test_micro_f1"]
    assert metrics["validation_value"] == chosen["cross_fitted_validation"] == metrics["validation"]["hamming_loss"]
    assert all(chosen["cross_fitted_validation"] <= v["cross_fitted_validation"] for v in variants.values())
    assert metrics["folds"] == 3  # 120 validation posts: "auto" cross-validates (3 folds) ...
    assert metrics["refit"]["done"] is False  # ... and the 3 fold models predict together
    assert metrics["final_model"] == "mean of the 3 fold models"


def test_reference_figures_place_the_others(retrained):
    """The threshold-free test figures: the no-tag Hamming loss is the test split's share of positive
    labels; P@1 and R@1 are those of the saved model's probabilities of the test posts (computed
    again from the results directory, as ``predict`` loads it); report.md states all three."""
    import numpy as np

    from tagsearch.learn import metrics as figures
    from tagsearch.results.folder import load

    _, _, out = retrained
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    corpus = load_corpus(DataConfig(**{**config["data"], "text_columns": tuple(config["data"]["text_columns"])}))
    y_test = corpus.labels[corpus.test_idx]
    assert metrics["test_hamming_loss_no_tags"] == float(y_test.mean())
    _, probs = load(out).predict([corpus.texts[i] for i in corpus.test_idx], cleaned=True)
    precision, recall = figures.at_one(y_test, probs)
    assert metrics["test_precision_at_1"] == pytest.approx(precision, abs=1e-12)
    assert metrics["test_recall_at_1"] == pytest.approx(recall, abs=1e-12)
    hits = metrics["test_precision_at_1"] * len(y_test)  # the same top-1 hits over posts and over true tags
    assert hits == pytest.approx(metrics["test_recall_at_1"] * int(np.sum(y_test)))
    report = (out / "report.md").read_text()
    assert f"P@1 {precision:.4f}" in report and f"R@1 {recall:.4f}" in report
    assert f"Hamming loss {metrics['test_hamming_loss_no_tags']:.4f}" in report


def test_config_json(retrained, tiny_csv):
    model, _, out = retrained
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == model and config["params"]["model"] == model
    assert config["sha256"]["model.safetensors"] == sha256(out / "model.safetensors")
    assert config["sha256"]["preprocessing.json"] == sha256(out / "preprocessing.json")
    assert set(config["versions"]) >= {"tagsearch", "torch", "optuna", "sklearn"}
    assert config["study"] == f"test-{model}" and isinstance(config["trial"], int)
    assert len(config["thresholds"]) == len(config["tags"]) == 10
    corpus = load_corpus(DataConfig(**{**config["data"], "text_columns": tuple(config["data"]["text_columns"])}))
    assert corpus.fingerprint == config["fingerprint"]
    report = (out / "report.md").read_text()
    assert "validation (cross-fitted)" in report and "![" in report


def test_retrain_reproduces_the_trial(retrained):
    """Same parameters, seed and epochs: the retrained validation value is the trial's value."""
    _, folder, out = retrained
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    best = min(r["val_hamming_loss"] for r in metrics["training"]["history"])
    assert best == pytest.approx(config["trial_value"], abs=1e-9)
    assert metrics["validation_value"] == pytest.approx(config["trial_value"], abs=1e-9)


def test_refit_trains_on_training_and_validation(tmp_path, tiny_csv):
    """--refit: the same epochs on train + val (features refitted), thresholds chosen before it.
    With one fold (the validation split alone) the refit is optional."""
    spec_path, _ = make_study(tmp_path, "tfidf", tiny_csv, trials=1, folds=1)
    plain, refit = tmp_path / "plain", tmp_path / "refit"
    assert main(["retrain", str(spec_path), "--out", str(plain), "--no-refit"]) == 0
    assert main(["retrain", str(spec_path), "--out", str(refit), "--refit"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (plain, refit))
    assert b["refit"]["done"] and b["refit"]["posts"] == a["posts"]["train"] + a["posts"]["val"]
    assert b["refit"]["epochs"] == a["training"]["best_epoch"]
    assert b["validation_value"] == a["validation_value"]  # chosen before the refit, on the same model
    assert b["thresholds"]["chosen"] == a["thresholds"]["chosen"]
    assert json.loads((refit / "config.json").read_text())["refit"] is True
    idf = [json.loads((d / "preprocessing.json").read_text())["idf"] for d in (plain, refit)]
    assert idf[0] != idf[1]  # the refit's TF-IDF was fitted on the validation posts too


def test_artifacts_and_note(retrained):
    model, folder, out = retrained
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name=f"test-{model}", storage=f"sqlite:///{folder}/studies.db")
    metas = optuna.artifacts.get_all_artifact_meta(study)
    trial = json.loads((out / "config.json").read_text())["trial"]
    assert {m.filename for m in metas} >= {f"trial{trial}-metrics.json", f"trial{trial}-f1.png"}
    note = get_note(optuna.trial.Trial(study, study.trials[trial]._trial_id))
    assert "Per class" in note and "| tag |" in note


def test_trial_option_errors(retrained, capsys):
    model, folder, _ = retrained
    spec = folder / f"{model}.toml"
    assert main(["retrain", str(spec), "--trial", "99", "--out", str(folder / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trial 99" in err
    assert not (folder / "x").exists()


def test_missing_study_and_other_data(tmp_path, retrained, capsys):
    model, folder, _ = retrained
    spec = folder / f"{model}.toml"
    assert main(["retrain", str(spec), "--study-name", "nope"]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    assert main(["retrain", str(spec), "--top-k", "5", "--out", str(tmp_path / "r")]) == 2
    assert "fingerprint" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_interrupted_write_keeps_old_results(tmp_path, tiny_csv, monkeypatch):
    """A failure while writing leaves the previous results dir as it was, and no temp dir."""
    spec_path, _ = make_study(tmp_path, "tfidf", tiny_csv, trials=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous")
    write_manifest(out)  # a results folder (only one is ever replaced)
    before = sorted(p.name for p in out.iterdir())

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrain, "write_plots", boom)
    assert main(["retrain", str(spec_path), "--out", str(out)]) == 130  # Ctrl-C while writing
    assert sorted(p.name for p in out.iterdir()) == before and (out / "old.txt").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert main(["retrain", str(spec_path), "--out", str(out)]) == 0
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()


def test_pruned_trial_is_refused(tmp_path, tiny_csv, capsys):
    spec_path, url = make_study(tmp_path, "tfidf", tiny_csv, trials=1)
    study = optuna.load_study(study_name="test-tfidf", storage=url)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={},
                                              distributions={}))
    assert main(["retrain", str(spec_path), "--trial", "1"]) == 2
    assert "is PRUNED; expected a COMPLETE trial" in capsys.readouterr().err


def test_trial_params_fallback(spec_factory):
    """Without the 'params' attribute the trial's suggested values overlay the spec's defaults."""
    spec = load_spec(spec_factory("tfidf"))
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    trial = optuna.trial.create_trial(params={"lr": 0.01}, distributions={"lr": lr}, value=0.1)
    params = retrain.trial_params(spec, trial)
    assert params == {**spec.defaults, "lr": 0.01}



