"""``tagsearch retrain``: rebuild a study's best trial, train it again, and evaluate it once on the
held-back test split.

1. Load the study and its best trial (or ``--trial N``, which must be COMPLETE); refuse other data.
2. Retrain on the training split for at most the trial's ``best_epoch`` epochs, with early stopping
   on the study's validation metric (``[training] patience``); keep the best epoch's weights. Its
   cross-fitted validation value is the trial's value again (same seed, same data).
3. Thresholds, chosen on validation for the study's metric (``metrics.choose_thresholds``): fixed,
   global or per-tag, whichever has the best cross-fitted value; every variant is reported on test,
   none is chosen by it.
4. With ``--refit`` (or ``[training] refit = true``): train the same configuration again on training
   + validation (vocabulary / TF-IDF fitted on both) for the epochs step 2 kept, and predict the test
   split with it at the thresholds chosen in step 3.
5. Write the results directory atomically (see results.py), with plots and report.md.
6. Upload plots, metrics.json and report.md as Optuna artifacts (of the study: Optuna refuses to
   change a finished trial), and put the per-class table in the trial's optuna-dashboard note.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path

import numpy as np
import torch

from tagsearch.learn import features
from tagsearch.learn import metrics
from tagsearch.results import plots
from tagsearch.results import folder as results
from tagsearch.data.corpus import Corpus, cv_folds, load_corpus, n_folds, DataOptions, resolve_data, train_and_val
from tagsearch.errors import UserError
from tagsearch.log import log
from tagsearch.study.spec import coerce, load_spec
from tagsearch.learn.train import build_model, count_parameters, fit, predict_proba, train_config

# One CPU thread, like each search worker: these small per-batch products gain little from more, and
# lose badly when the cores are busy (tfidf epoch on 2 busy cores: 3.9 s with 1 thread, 34-47 s with 2).
RETRAIN_THREADS = 1


def cmd_retrain(args) -> int:
    from tagsearch.study import search
    from tagsearch.runtime.storage import masked

    spec = load_spec(args.spec)
    data_config = resolve_data(spec, DataOptions(args.data, tuple(args.text_columns or ()), args.tags_column, args.top_k))
    url = args.storage or spec.storage
    study = search.load_study(spec, url, args.study_name)
    trial = pick_trial(study, args.trial)
    corpus = load_corpus(data_config)
    search.check_fingerprint(study, corpus)
    params = trial_params(spec, trial)
    out = Path(args.out or Path("results") / study.study_name)
    if out.exists() and not out.is_dir():
        raise UserError(f"results path {str(out)!r} is a file; expected a directory (or nothing) there")
    epochs = int(trial.user_attrs.get("best_epoch") or spec.max_epochs)
    torch.set_num_threads(getattr(args, "threads", None) or RETRAIN_THREADS)
    folds = n_folds(corpus, spec.folds)
    refit = spec.refit if getattr(args, "refit", None) is None else args.refit
    log(f"retraining trial {trial.number} of study {study.study_name!r} ({params['model']}) on "
        f"{corpus.source}: up to {epochs} epoch(s), patience {spec.patience}, metric {spec.metric}"
        f"{f', {folds}-fold cross-validation' if folds > 1 else ''}"
        f"{', then a refit on training + validation' if refit else ''}")
    run = retrain(corpus, params, epochs, spec.patience, args.device or spec.device, spec.metric, refit, folds)
    evaluation = evaluate(run, corpus, params, spec.metric)
    info = {"study": study.study_name, "storage": masked(url), "trial": trial.number, "trial_value": trial.value,
            "data": data_record(data_config), "max_epochs": epochs, "patience": spec.patience,
            "metric": spec.metric, "refit": refit, "folds": folds}
    with results.atomic_dir(out) as folder:
        write_results(folder, run, evaluation, corpus, params, info)
        write_plots(folder, run, evaluation, corpus, study)
        (folder / "report.md").write_text(report_markdown(folder, evaluation, info, run), encoding="utf-8")
    uploaded = publish(study, trial, url, out, evaluation)
    print_summary(out, evaluation, info, run, uploaded)
    return 0


# ---------------------------------------------------------------------------------------------
# Trial and training


def pick_trial(study, number: int | None):
    """The best trial, or trial ``number``; it must be COMPLETE."""
    import optuna

    complete = optuna.trial.TrialState.COMPLETE
    if number is None:
        if not any(t.state == complete for t in study.get_trials(deepcopy=False)):
            raise UserError(f"study {study.study_name!r} has no complete trial yet; run 'tagsearch worker' or "
                            f"'tagsearch launch' first")
        return study.best_trial
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise UserError(f"--trial {number}: study {study.study_name!r} has no such trial; expected a number in "
                        f"0..{len(trials) - 1}")
    if trials[number].state != complete:
        done = [t.number for t in trials.values() if t.state == complete]
        raise UserError(f"--trial {number} is {trials[number].state.name}; expected a COMPLETE trial "
                        f"(complete: {', '.join(map(str, done[:20])) or 'none'})")
    return trials[number]


def trial_params(spec, trial) -> dict:
    """The complete parameters the trial trained with (checked like any other parameters)."""
    raw = trial.user_attrs.get("params") or spec.params(trial.params)
    where = f"trial {trial.number} params"
    return {name: coerce(name, value, where) for name, value in {**spec.defaults, **raw}.items()}


@dataclasses.dataclass
class Run:
    """A retrained model and what it took. ``final`` is what predicts, as (model, the corpus its
    features were fitted on) pairs whose probabilities are averaged: the refit model (training +
    validation), else the fold models of a cross-validated trial, else the training-split model."""

    result: object  # train.TrainResult of the trial's evaluation: validation predictions and thresholds
    final: list[tuple[torch.nn.Module, Corpus]]
    device: torch.device
    seconds: float
    refit_seconds: float | None = None

    @property
    def final_model(self) -> str:
        if self.refit_seconds is not None:
            return "refit on training + validation"
        return f"mean of the {len(self.final)} fold models" if len(self.final) > 1 else "the training-split model"


def retrain(corpus: Corpus, params: dict, epochs: int, patience: int, device: str, metric: str = "hamming_loss",
            refit: bool = False, folds: int = 1) -> Run:
    """Train as the trial did (on the training split, or on each of ``folds`` cross-validation
    folds), then optionally refit on training + validation."""
    splits = cv_folds(corpus, folds)
    def show(epoch, record):
        log(f"  epoch {epoch:3d}  loss {record['train_loss']:.4f}  val_{metric} {record[f'val_{metric}']:.4f}  "
            f"({record['thresholds']} thresholds)  {record['seconds']:.1f}s")

    start = time.perf_counter()
    result = train_config(splits, params, max_epochs=epochs, patience=patience, device=device, metric=metric,
                          on_epoch=show)
    device = next(result.model.parameters()).device
    run = Run(result, list(zip(result.models, splits)), device, time.perf_counter() - start)
    if refit:
        whole = train_and_val(corpus)
        run.final = [(refit_model(whole, params, result.best_epoch, run.device), whole)]
        run.refit_seconds = time.perf_counter() - start - run.seconds
    return run


def refit_model(whole: Corpus, params: dict, epochs: int, device) -> torch.nn.Module:
    """The configuration trained on ``whole``'s training posts for exactly ``epochs`` epochs."""
    log(f"  refit on training + validation ({len(whole.train_idx)} posts) for {epochs} epoch(s)")
    model = build_model(params, features.input_size(whole, params), len(whole.tag_names)).to(device)
    fit(model, features.model_inputs(whole, params, "train").to(device), None, params, max_epochs=epochs,
        patience=None)
    return model


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(run: Run, corpus: Corpus, params: dict, metric: str) -> dict:
    """Every threshold variant on validation (the predictions the trial was judged by: the
    training-split model's, or every fold's pooled) and on test (the final model), and the choice
    made on validation."""
    y_val, p_val = run.result.val_labels, run.result.val_probs
    p_test = np.mean([predict_proba(model, features.model_inputs(fitted_on, params, "test").to(run.device))
                      for model, fitted_on in run.final], axis=0)
    y_test = corpus.labels[corpus.test_idx]
    variants, choice = metrics.threshold_variants(y_val, p_val, y_test, p_test, corpus.tag_names, metric,
                                                  params["threshold"])
    y_pred = (p_test >= np.asarray(variants[choice["chosen"]]["thresholds"])).astype(np.uint8)
    return {"variants": variants, "chosen": choice["chosen"], "validation_value": choice["value"],
            "validation": choice["summary"], "y_test": y_test, "y_pred": y_pred}


def metrics_record(evaluation: dict, run: Run, corpus: Corpus, info: dict) -> dict:
    """metrics.json: the metric, the chosen variant's test figures and its honest (cross-fitted)
    validation figures, every variant, how thresholds were fitted, training and refit."""
    chosen = evaluation["variants"][evaluation["chosen"]]
    test = chosen["test"]
    return {
        "metric": info["metric"], "validation_value": evaluation["validation_value"],
        "test_hamming_loss": test["hamming_loss"], "test_micro_f1": test["micro_f1"],
        "test_macro_f1": test["macro_f1"], "per_class": test["per_class"],
        "validation": {**evaluation["validation"], "per_class": chosen["validation"]["per_class"],
                       "note": "hamming_loss, micro_f1, macro_f1: cross-fitted (honest); per_class: at the final "
                               "thresholds, fitted on these posts"},
        "thresholds": {"chosen": evaluation["chosen"], "how_fitted": metrics.HOW_FITTED, "metric": info["metric"],
                       "cross_fitted_scores": {v: f["cross_fitted_validation"]
                                               for v, f in evaluation["variants"].items()}},
        "threshold_variants": evaluation["variants"],
        "training": {"best_epoch": run.result.best_epoch, "epochs_run": run.result.epochs_run,
                     "max_epochs": info["max_epochs"], "patience": info["patience"],
                     "stopped_early": run.result.stopped_early, "train_seconds": round(run.seconds, 3),
                     "history": run.result.history},
        "folds": info["folds"],
        "final_model": run.final_model,
        "refit": {"done": info["refit"], "posts": len(run.final[0][1].train_idx), "epochs": run.result.best_epoch,
                  "seconds": None if run.refit_seconds is None else round(run.refit_seconds, 3)},
        "posts": {"train": len(corpus.train_idx), "val": len(corpus.val_idx), "test": len(corpus.test_idx)},
        "study": info["study"], "trial": info["trial"],
    }


# ---------------------------------------------------------------------------------------------
# Writing


def data_record(config) -> dict:
    """The data settings as plain data, with the file's absolute path (compare reloads it)."""
    record = dataclasses.asdict(config)
    record["path"] = str(Path(config.path).resolve())
    record["text_columns"] = list(config.text_columns)
    return record


def versions() -> dict:
    import optuna
    import sklearn

    from tagsearch import __version__

    return {"tagsearch": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "sklearn": sklearn.__version__, "numpy": np.__version__}


def write_results(folder: Path, run: Run, evaluation: dict, corpus: Corpus, params: dict, info: dict) -> None:
    models = [model for model, _ in run.final]
    states = [features.preprocessing_state(fitted_on, params) for _, fitted_on in run.final]
    digests = results.save_model(folder, models if len(models) > 1 else models[0],
                                 states if len(states) > 1 else states[0])
    variants = evaluation["variants"]
    config = {
        "format": results.FORMAT, "model": params["model"], "params": params, "tags": corpus.tag_names,
        "metric": info["metric"], "validation_value": evaluation["validation_value"], "refit": info["refit"],
        "thresholds": variants[evaluation["chosen"]]["thresholds"], "threshold_choice": evaluation["chosen"],
        "threshold_criterion": metrics.HOW_FITTED, "global_threshold": variants["global"]["thresholds"][0],
        "per_tag_thresholds": variants["per_tag"]["thresholds"],
        "input_size": features.input_size(run.final[0][1], params),
        "input_sizes": [features.input_size(fitted_on, params) for _, fitted_on in run.final],
        "final_model": run.final_model, "parameters": sum(count_parameters(m) for m in models),
        "weights": results.WEIGHTS, "preprocessing": results.PREPROCESSING, "sha256": digests,
        "fingerprint": corpus.fingerprint, "data": info["data"], "study": info["study"],
        "storage": info["storage"], "trial": info["trial"], "trial_value": info["trial_value"],
        "best_epoch": run.result.best_epoch, "epochs_run": run.result.epochs_run,
        "train_seconds": round(run.seconds, 3), "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    results.write_json(folder / results.CONFIG, config)
    results.write_json(folder / results.METRICS, metrics_record(evaluation, run, corpus, info))


def write_plots(folder: Path, run: Run, evaluation: dict, corpus: Corpus, study) -> None:
    """The PNGs; skipped study plots leave a reason in metrics.json (``plot_notes``)."""
    notes: list[str] = []
    variants = evaluation["variants"]
    names = [
        plots.plot_curves(run.result.history, run.result.metric, folder / "curves.png"),
        plots.plot_confusion(evaluation["y_test"], evaluation["y_pred"], corpus.tag_names, folder / "confusion.png"),
        plots.plot_f1({variant_label(evaluation, v): variants[v]["test"]["per_class"] for v in metrics.VARIANTS},
                      folder / "f1.png"),
        plots.plot_history(study, folder / "optimization_history.png", notes),
        plots.plot_importances(study, folder / "param_importances.png", notes),
    ]
    record = results.read_json(folder / results.METRICS, "metrics file")
    record["plots"], record["plot_notes"] = [n for n in names if n], notes
    results.write_json(folder / results.METRICS, record)


# ---------------------------------------------------------------------------------------------
# Report, dashboard, terminal


def variant_label(evaluation: dict, name: str) -> str:
    label = "per-tag" if name == "per_tag" else f"{name} {evaluation['variants'][name]['thresholds'][0]:.2f}"
    return label + (" (chosen)" if name == evaluation["chosen"] else "")


def summary_table(evaluation: dict) -> str:
    """Each variant: its cross-fitted validation value (what chose it), then its test figures."""
    rows = [[variant_label(evaluation, name), f"{figures['cross_fitted_validation']:.4f}",
             f"{figures['test']['hamming_loss']:.4f}", f"{figures['test']['micro_f1']:.4f}",
             f"{figures['test']['macro_f1']:.4f}"] for name, figures in evaluation["variants"].items()]
    return results.markdown_table(["thresholds", "validation (cross-fitted)", "test Hamming loss", "test micro-F1",
                                   "test macro-F1"], rows)


def per_class_table(evaluation: dict) -> str:
    rows = [[r["label"], f"{r['threshold']:.2f}", f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
             str(r["support"])] for r in evaluation["variants"][evaluation["chosen"]]["test"]["per_class"]]
    return results.markdown_table(["tag", "threshold", "precision", "recall", "F1", "support"], rows)


def report_markdown(folder: Path, evaluation: dict, info: dict, run: Run) -> str:
    record = results.read_json(folder / results.METRICS, "metrics file")
    captions = {"curves.png": "Training and validation curves", "confusion.png": "Per-class confusion (test)",
                "f1.png": "Per-class F1 (test)", "optimization_history.png": "Optimization history",
                "param_importances.png": "Parameter importances"}
    images = "\n\n".join(f"![{captions[name]}]({name})" for name in record["plots"])
    notes = "".join(f"\n- {note}" for note in record["plot_notes"])
    return (f"# {info['study']}: trial {info['trial']} retrained\n\n"
            f"Data `{info['data']['path']}`: {record['posts']['train']} train / {record['posts']['val']} validation "
            f"/ {record['posts']['test']} test posts. Retrained for {run.result.epochs_run} epoch(s) "
            f"(at most {info['max_epochs']}, patience {info['patience']}); weights of epoch "
            f"{run.result.best_epoch}, the best validation {info['metric']}"
            f"{'; then refit on training + validation for as many epochs' if info['refit'] else ''}. Predictions "
            f"use the **{evaluation['chosen'].replace('_', '-')}** thresholds ({metrics.HOW_FITTED}).\n\n"
            f"{summary_table(evaluation)}\n\n## Per class (test, chosen thresholds)\n\n"
            f"{per_class_table(evaluation)}\n\n## Plots\n\n{images}\n{notes}\n")


def publish(study, trial, url: str, out: Path, evaluation: dict) -> int:
    """Upload the plots, metrics and report as artifacts and write the trial's dashboard note.

    Optuna refuses to change a finished trial (``UpdateFinishedTrialError``), so the artifacts go to
    the study, named ``trial<N>-<file>``; the note (kept in study attributes) goes to the trial."""
    import shutil
    import tempfile

    import optuna
    from optuna.artifacts import upload_artifact
    from optuna_dashboard import save_note

    from tagsearch.runtime._optuna import live_trial
    from tagsearch.runtime.storage import artifact_store

    store = artifact_store(url)
    files = sorted(out.glob("*.png")) + [out / results.METRICS, out / "report.md"]
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            named = shutil.copyfile(path, Path(tmp) / f"trial{trial.number}-{path.name}")
            upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study)
    live = live_trial(study, trial)  # save_note takes a Study or a Trial handle
    save_note(live, f"## Retrained on the test split\n\nResults directory: `{out}`; plots and metrics are "
                    f"the study's artifacts `trial{trial.number}-*`.\n\n{summary_table(evaluation)}"
                    f"\n\n### Per class (test, chosen thresholds)\n\n{per_class_table(evaluation)}\n")
    return len(files)


def print_summary(out: Path, evaluation: dict, info: dict, run: Run, uploaded: int) -> None:
    variants, chosen = evaluation["variants"], evaluation["chosen"]
    test = variants[chosen]["test"]
    print(f"trial {info['trial']} of {info['study']!r}: {run.result.epochs_run} epoch(s) in {run.seconds:.1f}s, "
          f"weights of epoch {run.result.best_epoch}")
    scores = ", ".join(f"{v.replace('_', '-')} {f['cross_fitted_validation']:.4f}" for v, f in variants.items())
    print(f"thresholds: {chosen.replace('_', '-')} (cross-fitted validation {info['metric']}: {scores})"
          f"{'; predictions by the model refit on training + validation' if info['refit'] else ''}")
    print(f"test: Hamming loss {test['hamming_loss']:.4f}  micro-F1 {test['micro_f1']:.4f}  "
          f"macro-F1 {test['macro_f1']:.4f}")
    print(f"wrote {out}/ ({uploaded} artifacts uploaded to study {info['study']!r}; browse them with "
          f"'tagsearch dashboard --storage {info['storage']}')")
