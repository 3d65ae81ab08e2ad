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
from tagsearch.learn.features import FeatureCache, Featurizer
from tagsearch.learn.metrics import ThresholdChoice, VariantFigures, val_key
from tagsearch.results import plots, report
from tagsearch.results import folder as results
from tagsearch.results.report import per_class_table, reference_line, report_markdown, summary_table, variant_label
from tagsearch.data.corpus import Corpus, cv_folds, load_corpus, n_folds, DataOptions, resolve_data, train_and_val
from tagsearch.errors import UserError
from tagsearch.log import log
from tagsearch.study.spec import Spec, check_study_name, coerce, load_spec
from tagsearch.learn.train import (EpochRecord, TrainResult, build_model, count_parameters, fit, pick_device,
                                   predict_proba, train_config)

# One CPU thread, like each search worker: these small per-batch products gain little from more, and
# lose badly when the cores are busy (tfidf epoch on 2 busy cores: 3.9 s with 1 thread, 34-47 s with 2).
RETRAIN_THREADS = 1


def retrain_trial(spec: Spec | str | Path, *, trial: int | None = None, out: str | Path | None = None,
                  data: DataOptions | str | None = None, storage: str | None = None, study_name: str | None = None,
                  device: str | None = None, threads: int | None = None, refit: bool | None = None) -> Path:
    """``tagsearch retrain``: retrain the best trial (or number ``trial``), evaluate it once on the
    test split, write the results directory (default ``results/<study>``) and return it. ``data``:
    overrides of the spec's ``[data]`` (a path alone, or ``DataOptions``); ``threads``: torch CPU
    threads while it runs (default 1); ``refit``: train again on training + validation first
    (default: the spec's ``[training] refit``). Its summary (``report.summary_text``) is logged."""
    done = retrained(spec, trial=trial, out=out, data=data, storage=storage, study_name=study_name, device=device,
                     threads=threads, refit=refit)
    log(summary_text(done))
    return done.out


@dataclasses.dataclass
class Retrained:
    """``retrained``'s: the results directory, and the predictions it was scored on (``tune`` keeps
    them to weigh the candidates: ``run.result.val_labels``/``val_probs``, out of fold, and
    ``evaluation.test_probs``)."""

    out: Path
    run: "Run"
    evaluation: "Evaluation"
    params: dict
    info: "RunInfo"
    uploaded: int = 0  # the artifacts uploaded to the study


def summary_text(done: Retrained) -> str:
    """The lines that sum up a retrain (``tagsearch retrain`` prints them)."""
    return report.summary_text(done.out, done.evaluation, done.info, done.run, done.uploaded)


def retrained(spec: Spec | str | Path, *, trial: int | None = None, out: str | Path | None = None,
              data: DataOptions | str | None = None, storage: str | None = None, study_name: str | None = None,
              device: str | None = None, threads: int | None = None, refit: bool | None = None) -> Retrained:
    """``retrain_trial``, returning what it wrote and the predictions it scored."""
    from tagsearch.study import search
    from tagsearch.runtime.location import Location

    spec = spec if isinstance(spec, Spec) else load_spec(spec)  # tune's candidates pass the value
    data_config = resolve_data(spec, data if isinstance(data, DataOptions) else DataOptions(data))
    where = Location.of(storage or spec.storage)
    url = where.url
    study = search.load_study(spec, where, study_name)
    chosen = pick_trial(study, trial)
    corpus = load_corpus(data_config)
    search.check_fingerprint(study, corpus)
    params = trial_params(spec, chosen)
    out = Path(out) if out else Path("results") / check_study_name(study.study_name)
    results.check_replaceable(out)  # before training: a mistyped --out is refused, never replaced
    epochs = int(chosen.user_attrs.get("best_epoch") or spec.max_epochs)
    folds = n_folds(corpus, spec.folds)
    refit = spec.refit if refit is None else refit
    log(f"retraining trial {chosen.number} of study {study.study_name!r} ({params['model']}) on "
        f"{corpus.source}: up to {epochs} epoch(s), patience {spec.patience}, metric {spec.metric}"
        f"{f', {folds}-fold cross-validation' if folds > 1 else ''}"
        f"{', then a refit on training + validation' if refit else ''}")
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or RETRAIN_THREADS)
    try:
        run = retrain(corpus, params, epochs, spec.patience, device or spec.device, spec.metric, refit, folds,
                      search.embedding_dir(where))
        evaluation = evaluate(run, corpus, params, spec.metric)
    finally:
        torch.set_num_threads(saved_threads)  # a caller's threads are its own
    info = RunInfo(study=study.study_name, storage=where.masked, trial=chosen.number, trial_value=chosen.value,
                   data=data_record(data_config), max_epochs=epochs, patience=spec.patience,
                   metric=spec.metric, refit=refit, folds=folds)
    with results.atomic_dir(out) as folder:
        write_results(folder, run, evaluation, corpus, params, info, study)
    uploaded = publish(study, chosen, url, out, evaluation)
    return Retrained(out, run, evaluation, params, info, uploaded)


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
    """A retrained model and what it took. ``final`` is what predicts, as (model, its fitted
    featurizer) pairs whose probabilities are averaged: the refit model (training + validation),
    else the fold models of a cross-validated trial, else the training-split model;
    ``final_posts`` the number of posts their featurizers and models were fitted on (each)."""

    result: TrainResult  # the trial's evaluation: validation predictions and thresholds
    final: list[tuple[torch.nn.Module, Featurizer]]
    final_posts: int
    device: torch.device
    seconds: float
    refit_seconds: float | None = None
    features: FeatureCache | None = None  # keeps every post as ``final``'s featurizers encoded them

    @property
    def final_model(self) -> str:
        if self.refit_seconds is not None:
            return "refit on training + validation"
        return f"mean of the {len(self.final)} fold models" if len(self.final) > 1 else "the training-split model"


def retrain(corpus: Corpus, params: dict, epochs: int, patience: int, device: str, metric: str = "hamming_loss",
            refit: bool = False, folds: int = 1, embedding_dir: str | None = None) -> Run:
    """Train as the trial did (on the training split, or on each of ``folds`` cross-validation
    folds), then optionally refit on training + validation. ``embedding_dir``: the study's stored
    encodings (an encoder model reuses them instead of encoding the posts again)."""
    splits = cv_folds(corpus, folds)
    # the folds and the refit share the token stream and the encoding
    cache = FeatureCache(embedding_dir, str(pick_device(device)))

    def show(epoch: int, record: EpochRecord) -> None:
        log(f"  epoch {epoch:3d}  loss {record.train_loss:.4f}  {val_key(metric)} {record.value(metric):.4f}  "
            f"({record.thresholds} thresholds)  {record.seconds:.1f}s")

    start = time.perf_counter()
    result = train_config(splits, params, max_epochs=epochs, patience=patience, device=device, metric=metric,
                          on_epoch=show, cache=cache)
    device = next(result.model.parameters()).device
    run = Run(result, list(zip(result.models, result.featurizers)), len(splits[0].train_idx), device,
              time.perf_counter() - start, features=cache)
    if refit:
        whole = train_and_val(corpus)
        run.final = [refit_model(whole, params, result.best_epoch, run.device, cache)]
        run.final_posts = len(whole.train_idx)
        run.refit_seconds = time.perf_counter() - start - run.seconds
    return run


def refit_model(whole: Corpus, params: dict, epochs: int, device,
                cache: FeatureCache | None = None) -> tuple[torch.nn.Module, Featurizer]:
    """The configuration trained on ``whole``'s training posts for exactly ``epochs`` epochs, and its featurizer."""
    log(f"  refit on training + validation ({len(whole.train_idx)} posts) for {epochs} epoch(s)")
    cache = FeatureCache() if cache is None else cache
    featurizer = cache.fitted(features.featurizer_for(params), whole)
    model = build_model(params, featurizer.input_size, len(whole.tag_names), featurizer.input_kind).to(device)
    fit(model, cache.inputs(featurizer, whole, "train").to(device), None, params, max_epochs=epochs, patience=None)
    return model, featurizer


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What was retrained, and how: recorded in config.json, metrics.json and the report."""

    study: str
    storage: str
    trial: int
    trial_value: float
    data: dict
    max_epochs: int
    patience: int | None
    metric: str
    refit: bool
    folds: int


@dataclasses.dataclass
class Evaluation:
    """Every threshold variant's figures (validation and test) and the choice made on validation;
    the test labels and the chosen variant's predictions of them; the threshold-free test figures
    that place the others (``metrics.reference_figures``: the Hamming loss of predicting no tag,
    P@1 and R@1)."""

    variants: dict[str, VariantFigures]
    choice: ThresholdChoice
    y_test: np.ndarray
    y_pred: np.ndarray
    reference: dict[str, float]
    test_probs: np.ndarray | None = None  # what y_pred cuts at the chosen thresholds

    @property
    def chosen(self) -> str:
        return self.choice.chosen

    @property
    def figures(self) -> VariantFigures:
        return self.variants[self.choice.chosen]


def evaluate(run: Run, corpus: Corpus, params: dict, metric: str) -> Evaluation:
    """Every threshold variant on validation (the predictions the trial was judged by: the
    training-split model's, or every fold's pooled) and on test (the final model), and the choice
    made on validation."""
    y_val, p_val = run.result.val_labels, run.result.val_probs
    p_test = np.mean([predict_proba(model, run.features.inputs(featurizer, corpus, "test").to(run.device))
                      for model, featurizer in run.final], axis=0)
    y_test = corpus.labels[corpus.test_idx]
    variants, choice = metrics.threshold_variants(y_val, p_val, y_test, p_test, corpus.tag_names, metric,
                                                  params["threshold"])
    y_pred = (p_test >= np.asarray(variants[choice.chosen].thresholds)).astype(np.uint8)
    return Evaluation(variants, choice, y_test, y_pred, metrics.reference_figures(y_test, p_test), p_test)


def metrics_record(evaluation: Evaluation, run: Run, corpus: Corpus, info: RunInfo, plot_names: list[str],
                   plot_notes: list[str]) -> dict:
    """metrics.json: the metric, the chosen variant's test figures and its honest (cross-fitted)
    validation figures, the threshold-free test figures that place them (the Hamming loss of
    predicting no tag, P@1, R@1), every variant, how thresholds were fitted, training and refit, the plots
    (and why any study plot is missing)."""
    chosen, choice = evaluation.figures, evaluation.choice
    test = chosen.test
    return {
        "metric": info.metric, "validation_value": choice.value,
        "test_hamming_loss": test["hamming_loss"], "test_micro_f1": test["micro_f1"],
        "test_macro_f1": test["macro_f1"], "per_class": test["per_class"],
        **{f"test_{name}": value for name, value in evaluation.reference.items()},
        "validation": {**choice.summary, "per_class": chosen.validation["per_class"],
                       "note": "hamming_loss, micro_f1, macro_f1: cross-fitted (honest); per_class: at the final "
                               "thresholds, fitted on these posts"},
        "thresholds": {"chosen": choice.chosen, "how_fitted": metrics.HOW_FITTED, "metric": info.metric,
                       "cross_fitted_scores": {v: f.cross_fitted_validation for v, f in evaluation.variants.items()}},
        "threshold_variants": {v: f.to_json() for v, f in evaluation.variants.items()},
        "training": {"best_epoch": run.result.best_epoch, "epochs_run": run.result.epochs_run,
                     "max_epochs": info.max_epochs, "patience": info.patience,
                     "stopped_early": run.result.stopped_early, "train_seconds": round(run.seconds, 3),
                     "history": [r.to_json() for r in run.result.history]},
        "folds": info.folds,
        "final_model": run.final_model,
        "refit": {"done": info.refit, "posts": run.final_posts, "epochs": run.result.best_epoch,
                  "seconds": None if run.refit_seconds is None else round(run.refit_seconds, 3)},
        "posts": {"train": len(corpus.train_idx), "val": len(corpus.val_idx), "test": len(corpus.test_idx)},
        "study": info.study, "trial": info.trial,
        "plots": plot_names, "plot_notes": plot_notes,
    }


# ---------------------------------------------------------------------------------------------
# Writing


def data_record(config) -> dict:
    """The data settings as plain data, with the file's absolute path (compare reloads it)."""
    record = dataclasses.asdict(config)
    record.pop("allow_pickle", None)  # how this run was allowed to read it, not what the data is
    record["path"] = str(Path(config.path).resolve())
    record["text_columns"] = list(config.text_columns)
    return record


def versions() -> dict:
    import optuna
    import sklearn

    from tagsearch import __version__

    return {"tagsearch": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "sklearn": sklearn.__version__, "numpy": np.__version__}


def write_results(folder: Path, run: Run, evaluation: Evaluation, corpus: Corpus, params: dict, info: RunInfo,
                  study) -> None:
    """The model, its preprocessing, config.json, the plots, metrics.json and report.md."""
    models = [model for model, _ in run.final]
    states = [featurizer.state() for _, featurizer in run.final]
    digests = results.save_model(folder, models if len(models) > 1 else models[0],
                                 states if len(states) > 1 else states[0])
    variants, choice = evaluation.variants, evaluation.choice
    config = {
        "format": results.FORMAT, "model": params["model"], "params": params, "tags": corpus.tag_names,
        "metric": info.metric, "validation_value": choice.value, "refit": info.refit,
        "thresholds": evaluation.figures.thresholds, "threshold_choice": choice.chosen,
        "threshold_criterion": metrics.HOW_FITTED, "global_threshold": variants["global"].thresholds[0],
        "per_tag_thresholds": variants["per_tag"].thresholds,
        "input_size": run.final[0][1].input_size,
        "input_sizes": [featurizer.input_size for _, featurizer in run.final],
        "final_model": run.final_model, "parameters": sum(count_parameters(m) for m in models),
        "weights": results.WEIGHTS, "preprocessing": results.PREPROCESSING, "sha256": digests,
        "fingerprint": corpus.fingerprint, "data": info.data, "study": info.study,
        "storage": info.storage, "trial": info.trial, "trial_value": info.trial_value,
        "best_epoch": run.result.best_epoch, "epochs_run": run.result.epochs_run,
        "train_seconds": round(run.seconds, 3), "versions": versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    results.write_json(folder / results.CONFIG, config)
    notes: list[str] = []
    plot_names = write_plots(folder, run, evaluation, corpus, study, notes)
    record = metrics_record(evaluation, run, corpus, info, plot_names, notes)
    results.write_json(folder / results.METRICS, record)
    (folder / "report.md").write_text(report_markdown(record, evaluation, info, run), encoding="utf-8")


def write_plots(folder: Path, run: Run, evaluation: Evaluation, corpus: Corpus, study, notes: list[str]) -> list[str]:
    """The PNGs written; a skipped study plot leaves a reason in ``notes`` (metrics.json's ``plot_notes``)."""
    names = [
        plots.plot_curves(run.result.history, run.result.metric, folder / "curves.png"),
        plots.plot_confusion(evaluation.y_test, evaluation.y_pred, corpus.tag_names, folder / "confusion.png"),
        plots.plot_f1({variant_label(evaluation, v): evaluation.variants[v].test["per_class"]
                       for v in metrics.VARIANTS}, folder / "f1.png"),
        plots.plot_history(study, folder / "optimization_history.png", notes),
        plots.plot_importances(study, folder / "param_importances.png", notes),
    ]
    return [n for n in names if n]


# ---------------------------------------------------------------------------------------------
# Dashboard


def publish(study, trial, url: str, out: Path, evaluation: Evaluation) -> int:
    """Upload the plots, metrics and report as artifacts and write the trial's dashboard note.

    Optuna refuses to change a finished trial (``UpdateFinishedTrialError``), so the artifacts go to
    the study, named ``trial<N>-<file>``; the note (kept in study attributes) goes to the trial."""
    import shutil
    import tempfile

    import optuna
    from optuna.artifacts import upload_artifact
    from optuna_dashboard import save_note

    from tagsearch.runtime._optuna import live_trial
    from tagsearch.runtime.location import artifact_store

    store = artifact_store(url)
    files = sorted(out.glob("*.png")) + [out / results.METRICS, out / "report.md"]
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            named = shutil.copyfile(path, Path(tmp) / f"trial{trial.number}-{path.name}")
            upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study)
    live = live_trial(study, trial)  # save_note takes a Study or a Trial handle
    save_note(live, f"## Retrained on the test split\n\nResults directory: `{out}`; plots and metrics are "
                    f"the study's artifacts `trial{trial.number}-*`.\n\n{summary_table(evaluation)}"
                    f"\n\n{reference_line(evaluation.reference)}"
                    f"\n\n### Per class (test, chosen thresholds)\n\n{per_class_table(evaluation)}\n")
    return len(files)
