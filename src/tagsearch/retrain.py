"""``tagsearch retrain``: rebuild a study's best trial, train it again, and evaluate it once on the
held-back test split.

1. Load the study and its best trial (or ``--trial N``, which must be COMPLETE); refuse other data.
2. Retrain on the training split for at most the trial's ``best_epoch`` epochs, with early stopping
   on validation Hamming loss (``[training] patience``); keep the best epoch's weights.
3. Thresholds: the trial's global threshold, and one per tag fitted on validation
   (``metrics.fit_thresholds``). Predictions use the variant with the higher validation micro-F1
   (a tie keeps the global threshold); both are reported on test and the choice is recorded.
4. Write the results directory atomically (see results.py), with plots and report.md.
5. Upload plots, metrics.json and report.md as Optuna artifacts (of the study: Optuna refuses to
   change a finished trial), and put the per-class table in the trial's optuna-dashboard note.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path

import numpy as np
import torch

from . import features, metrics, plots, results
from .data import Corpus, load_corpus, resolve_data
from .errors import UserError
from .log import log
from .spec import coerce, load_spec
from .train import count_parameters, predict_proba, train_config

CRITERION = "validation micro-F1 (a tie keeps the global threshold)"
# One CPU thread, like each search worker: these small per-batch products gain little from more, and
# lose badly when the cores are busy (tfidf epoch on 2 busy cores: 3.9 s with 1 thread, 34-47 s with 2).
RETRAIN_THREADS = 1
VARIANTS = ("global", "per_tag")


def cmd_retrain(args) -> int:
    from . import search
    from .storage import masked

    spec = load_spec(args.spec)
    data_config = resolve_data(spec, args)
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
    log(f"retraining trial {trial.number} of study {study.study_name!r} ({params['model']}) on "
        f"{corpus.source}: up to {epochs} epoch(s), patience {spec.patience}")
    run = retrain(corpus, params, epochs, spec.patience, args.device or spec.device)
    evaluation = evaluate(run, corpus, params)
    info = {"study": study.study_name, "storage": masked(url), "trial": trial.number, "trial_value": trial.value,
            "data": data_record(data_config), "max_epochs": epochs, "patience": spec.patience}
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
    """A retrained model and what it took."""

    result: object  # train.TrainResult
    prepared: object  # train.Prepared
    seconds: float


def retrain(corpus: Corpus, params: dict, epochs: int, patience: int, device: str) -> Run:
    def show(epoch, record):
        log(f"  epoch {epoch:3d}  loss {record['train_loss']:.4f}  val_hamming {record['val_hamming_loss']:.4f}  "
            f"val_micro_f1 {record['val_micro_f1']:.4f}  {record['seconds']:.1f}s")

    start = time.perf_counter()
    result, prepared = train_config(corpus, params, max_epochs=epochs, patience=patience, device=device,
                                    on_epoch=show)
    return Run(result, prepared, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate(run: Run, corpus: Corpus, params: dict) -> dict:
    """Validation and test figures for the global and the per-tag thresholds, and the choice."""
    model = run.result.model
    test_data = features.model_inputs(corpus, params, "test").to(run.prepared.device)
    y_val, p_val = corpus.labels[corpus.val_idx], predict_proba(model, run.prepared.val)
    y_test, p_test = corpus.labels[corpus.test_idx], predict_proba(model, test_data)
    variants, chosen = threshold_variants(y_val, p_val, y_test, p_test, corpus.tag_names, params["threshold"])
    y_pred = (p_test >= np.asarray(variants[chosen]["thresholds"])).astype(np.uint8)
    return {"variants": variants, "chosen": chosen, "y_test": y_test, "y_pred": y_pred}


def threshold_variants(y_val, p_val, y_test, p_test, tags: list[str], global_threshold: float):
    """Figures for the global threshold and for per-tag thresholds fitted on validation, and the
    variant predictions use: per-tag only when its validation micro-F1 is higher."""
    thresholds = {"global": np.full(len(tags), global_threshold),
                  "per_tag": np.round(metrics.fit_thresholds(y_val, p_val).astype(np.float64), 6)}
    variants = {name: {"thresholds": [float(t) for t in th],
                       "validation": metrics.report(y_val, p_val, th, tags),
                       "test": metrics.report(y_test, p_test, th, tags)}
                for name, th in thresholds.items()}
    better = variants["per_tag"]["validation"]["micro_f1"] > variants["global"]["validation"]["micro_f1"]
    return variants, "per_tag" if better else "global"


def metrics_record(evaluation: dict, run: Run, corpus: Corpus, info: dict) -> dict:
    """metrics.json: the chosen variant's test and validation figures, both variants, the choice."""
    chosen = evaluation["variants"][evaluation["chosen"]]
    test, val = chosen["test"], chosen["validation"]
    return {
        "test_hamming_loss": test["hamming_loss"], "test_micro_f1": test["micro_f1"],
        "test_macro_f1": test["macro_f1"], "per_class": test["per_class"],
        "validation": {k: val[k] for k in ("hamming_loss", "micro_f1", "macro_f1", "per_class")},
        "thresholds": {"chosen": evaluation["chosen"], "criterion": CRITERION,
                       "global_threshold": evaluation["variants"]["global"]["thresholds"][0]},
        "threshold_variants": evaluation["variants"],
        "training": {"best_epoch": run.result.best_epoch, "epochs_run": run.result.epochs_run,
                     "max_epochs": info["max_epochs"], "patience": info["patience"],
                     "stopped_early": run.result.stopped_early, "train_seconds": round(run.seconds, 3),
                     "history": run.result.history},
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

    from . import __version__

    return {"tagsearch": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
            "sklearn": sklearn.__version__, "numpy": np.__version__}


def write_results(folder: Path, run: Run, evaluation: dict, corpus: Corpus, params: dict, info: dict) -> None:
    model = run.result.model
    digests = results.save_model(folder, model, results.preprocessing_state(corpus, params))
    variants = evaluation["variants"]
    config = {
        "format": results.FORMAT, "model": params["model"], "params": params, "tags": corpus.tag_names,
        "thresholds": variants[evaluation["chosen"]]["thresholds"], "threshold_choice": evaluation["chosen"],
        "threshold_criterion": CRITERION, "global_threshold": params["threshold"],
        "per_tag_thresholds": variants["per_tag"]["thresholds"],
        "input_size": features.input_size(corpus, params), "parameters": count_parameters(model),
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
    global_name = f"global {variants['global']['thresholds'][0]:.2f}"
    names = [
        plots.plot_curves(run.result.history, folder / "curves.png"),
        plots.plot_confusion(evaluation["y_test"], evaluation["y_pred"], corpus.tag_names, folder / "confusion.png"),
        plots.plot_f1({global_name: variants["global"]["test"]["per_class"],
                       "per-tag (validation-fitted)": variants["per_tag"]["test"]["per_class"]}, folder / "f1.png"),
        plots.plot_history(study, folder / "optimization_history.png", notes),
        plots.plot_importances(study, folder / "param_importances.png", notes),
    ]
    record = results.read_json(folder / results.METRICS, "metrics file")
    record["plots"], record["plot_notes"] = [n for n in names if n], notes
    results.write_json(folder / results.METRICS, record)


# ---------------------------------------------------------------------------------------------
# Report, dashboard, terminal


def summary_table(evaluation: dict) -> str:
    rows = []
    for split in ("validation", "test"):
        for name in VARIANTS:
            figures = evaluation["variants"][name][split]
            label = "per-tag" if name == "per_tag" else f"global {evaluation['variants'][name]['thresholds'][0]:.2f}"
            mark = " (chosen)" if name == evaluation["chosen"] else ""
            rows.append([split, label + mark, f"{figures['hamming_loss']:.4f}", f"{figures['micro_f1']:.4f}",
                         f"{figures['macro_f1']:.4f}"])
    return results.markdown_table(["split", "thresholds", "Hamming loss", "micro-F1", "macro-F1"], rows)


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
            f"{run.result.best_epoch}, the lowest validation Hamming loss. Predictions use the "
            f"**{evaluation['chosen'].replace('_', '-')}** thresholds, chosen by {CRITERION}.\n\n"
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

    from .storage import artifact_store

    store = artifact_store(url)
    files = sorted(out.glob("*.png")) + [out / results.METRICS, out / "report.md"]
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            named = shutil.copyfile(path, Path(tmp) / f"trial{trial.number}-{path.name}")
            upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study)
    live = optuna.trial.Trial(study, trial._trial_id)  # save_note takes a Study or a Trial handle
    save_note(live, f"## Retrained on the test split\n\nResults directory: `{out}`; plots and metrics are "
                    f"the study's artifacts `trial{trial.number}-*`.\n\n{summary_table(evaluation)}"
                    f"\n\n### Per class (test, chosen thresholds)\n\n{per_class_table(evaluation)}\n")
    return len(files)


def print_summary(out: Path, evaluation: dict, info: dict, run: Run, uploaded: int) -> None:
    variants, chosen = evaluation["variants"], evaluation["chosen"]
    test = variants[chosen]["test"]
    print(f"trial {info['trial']} of {info['study']!r}: {run.result.epochs_run} epoch(s) in {run.seconds:.1f}s, "
          f"weights of epoch {run.result.best_epoch}")
    print(f"thresholds: {chosen.replace('_', '-')} (validation micro-F1 per-tag "
          f"{variants['per_tag']['validation']['micro_f1']:.4f} vs global "
          f"{variants['global']['validation']['micro_f1']:.4f})")
    print(f"test: Hamming loss {test['hamming_loss']:.4f}  micro-F1 {test['micro_f1']:.4f}  "
          f"macro-F1 {test['macro_f1']:.4f}")
    print(f"wrote {out}/ ({uploaded} artifacts uploaded to study {info['study']!r}; browse them with "
          f"'tagsearch dashboard --storage {info['storage']}')")
