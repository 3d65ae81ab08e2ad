"""One study, top-down: a spec becomes a sampler, a pruner and an objective; the objective suggests
parameters, builds and trains a model, reports every epoch and returns the best validation value of
the study's metric (``[study] metric``, Hamming loss by default, at thresholds chosen as
``metrics.choose_thresholds`` does). Also the study's bookkeeping: trial 0 is the spec's [defaults], the data fingerprint is
recorded on the study, and a worker on other data is refused.

``runtime`` (the trial loop, launch) decides how many trials run and where, and ``study.workers`` wires the
two; this file only says what a trial is.
"""

from __future__ import annotations

import gc
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
import torch

from tagsearch.data import corpus as data
from tagsearch.learn import train
from tagsearch.learn.features import FeatureCache
from tagsearch.learn.metrics import val_key
from tagsearch.data.corpus import Corpus
from tagsearch.errors import UserError
from tagsearch.study.spec import ACTIVE_WHEN, PARAMS, Spec, is_active
from tagsearch.runtime import deadline as deadlines
from tagsearch.runtime.progress import Progress, progress  # noqa: F401  (search.progress, as before)
from tagsearch.runtime.storage import local_path, masked, open_storage

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
DESCRIBE_WAIT_SECONDS = 10


# ---------------------------------------------------------------------------------------------
# Sampler, pruner, search space


def build_sampler(spec: Spec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """TPE (constant liar, so parallel workers spread out) or random; ``seed_offset`` keeps workers
    that share a spec seed from drawing identical random startup trials."""
    cfg = spec.sampler
    seed = None if cfg.get("seed") is None else cfg["seed"] + seed_offset
    if cfg.get("kind", "tpe") == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.get("n_startup_trials", 10),
                                      multivariate=cfg.get("multivariate", False), constant_liar=True)


def build_pruner(spec: Spec) -> optuna.pruners.BasePruner:
    """median | halving | hyperband | none, wrapped in PatientPruner when ``patience`` > 0."""
    cfg, kind = spec.pruner, spec.pruner.get("kind", "median")
    try:
        if kind == "median":
            # Steps are 1-based epochs: n_warmup_steps = 1 means epoch 1 always runs, epoch 2 may be pruned.
            pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.get("n_startup_trials", 5),
                                                 n_warmup_steps=cfg.get("n_warmup_steps", 0) + 1)
        elif kind == "halving":
            pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.get("min_resource", "auto"),
                                                            reduction_factor=cfg.get("reduction_factor", 4))
        elif kind == "hyperband":
            pruner = optuna.pruners.HyperbandPruner(min_resource=cfg.get("min_resource", 1),
                                                    max_resource=spec.max_epochs,
                                                    reduction_factor=cfg.get("reduction_factor", 3))
        else:
            pruner = None
        if cfg.get("patience", 0) > 0:
            return optuna.pruners.PatientPruner(pruner, patience=cfg["patience"], min_delta=cfg.get("min_delta", 0.0))
    except ValueError as exc:
        raise UserError(f"{spec.path} [pruner]: {exc}") from None
    return pruner or optuna.pruners.NopPruner()


def check_space(spec: Spec) -> None:
    """Errors Optuna would only raise mid-trial: log with step, a default outside its choices, an
    encoder model that cannot be found (found only, not loaded: that is for the first trial)."""
    models = spec.search.get("model", {}).get("choices", [spec.model])
    if set(models) & set(PARAMS["encoder"].models):
        from tagsearch.learn.encoder import resolve_model

        resolve_model(spec.defaults["encoder"])
    for name, space in spec.search.items():
        where = f"{spec.path} [search.{name}]"
        if "choices" in space and spec.defaults[name] not in space["choices"]:
            raise UserError(f"{where}: [defaults] {name}={spec.defaults[name]!r} is not one of the choices "
                            f"{space['choices']}; trial 0 runs the defaults, so add it to the choices")
        if space.get("log") and space.get("step") is not None:
            raise UserError(f"{where}: log=true cannot be combined with step={space['step']!r}; expected one of them")


def suggest(trial: optuna.Trial, spec: Spec) -> dict:
    """The complete parameter dict: the spec's defaults overlaid with this trial's suggestions. A
    parameter that cannot matter (``hidden2`` of a 1-layer head, ``buckets`` without n-grams, a
    TF-IDF setting when the trial's ``model`` is dense) is not suggested; its default stays in the
    dict, unused."""
    params = dict(spec.defaults)
    parents = {parent for parent, _ in ACTIVE_WHEN.values()}
    for name in sorted(spec.search, key=lambda n: (n != "model", n not in parents)):  # what others depend on first
        space = spec.search[name]
        if not is_active(name, params):
            continue
        if "choices" in space:
            params[name] = trial.suggest_categorical(name, space["choices"])
        elif PARAMS[name].type is int:
            params[name] = trial.suggest_int(name, space["low"], space["high"], step=space.get("step", 1),
                                             log=space["log"])
        else:
            params[name] = trial.suggest_float(name, space["low"], space["high"], step=space.get("step"),
                                               log=space["log"])
    return params


# ---------------------------------------------------------------------------------------------
# The objective


class Objective:
    """Suggest → build → train, reporting each epoch to the pruner → record → return the best
    validation value of the study's metric. Once the study's deadline has come (runtime/deadline.py,
    read when the trial starts), training stops after the current epoch as early stopping does: the
    trial is COMPLETE with its best epoch's value. (Ctrl-C and SIGTERM are ``runtime.interrupts.Interrupts``'.)"""

    def __init__(self, spec: Spec, corpus: Corpus, device: str | None = None, max_epochs: int | None = None,
                 storage: str | None = None):
        self.spec, self.corpus = spec, corpus
        self.device = device or spec.device
        self.max_epochs = max_epochs or spec.max_epochs
        self.device_name = describe_device(self.device)
        self.folds = data.cv_folds(corpus, spec.folds)
        # this worker's trials share token streams, fitted featurizers and the host's encodings
        self.features = FeatureCache(embedding_dir(storage or spec.storage), str(train.pick_device(self.device)))

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self.run_trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # diverged, CUDA OOM, ...: FAIL with the reason; the worker goes on
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:1000])
            raise
        finally:
            release_memory()

    def run_trial(self, trial: optuna.Trial) -> float:
        start, metric = time.perf_counter(), self.spec.metric
        deadline = deadlines.recorded(trial.study)
        params = suggest(trial, self.spec)
        set_user_attrs(trial, params=params, model=params["model"], device=self.device_name, metric=metric,
                       worker=f"{socket.gethostname()}:{os.getpid()}")
        folds = [train.build(fold, params, self.device, self.features) for fold in self.folds]
        curve: list[dict] = []  # per epoch: losses, the metric, the best epoch so far
        at_deadline: list[int] = []  # the epoch after which the study's deadline stopped training

        def report_and_prune(epoch: int, record: train.EpochRecord) -> None:
            value = record.value(metric)
            curve.append(curve_point(record, metric))
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {val_key(metric)} {value:.4f} "
                                         f"(best {record.best_value:.4f} at epoch {record.best_epoch}) is "
                                         f"not promising next to the other trials at this epoch")
            if epoch < self.max_epochs and deadlines.passed(deadline):
                at_deadline.append(epoch)
                raise train.StopTraining(f"the study's deadline came during epoch {epoch}")

        try:
            result = train.fit_folds(folds, params, max_epochs=self.max_epochs, patience=self.spec.patience,
                                     metric=metric, on_epoch=report_and_prune)
        except optuna.TrialPruned as pruned:
            set_user_attrs(trial, pruned_reason=str(pruned), epochs_run=len(curve),
                           best_epoch=int(curve[-1]["best_epoch"]), learning_curve=curve)
            raise
        choice = result.thresholds
        set_user_attrs(trial, epochs_run=result.epochs_run, best_epoch=result.best_epoch,
                       stopped_early=result.stopped_early, learning_curve=curve,
                       train_seconds=round(time.perf_counter() - start, 3),
                       parameters=train.count_parameters(result.model), folds=len(self.folds),
                       threshold_choice=choice.chosen, thresholds=choice.thresholds, threshold_scores=choice.scores,
                       val_per_class_f1=dict(zip(self.corpus.tag_names, choice.per_tag_f1)),
                       **choice.val_figures(digits=6), **({"stopped_at_deadline": True} if at_deadline else {}))
        return result.best_value


def curve_point(record: train.EpochRecord, metric: str) -> dict:
    """One epoch of the ``learning_curve`` user attribute: losses, the metric, the best epoch so far."""
    return {"train_loss": round(record.train_loss, 6), "val_loss": round(record.val_loss, 6),
            val_key(metric): round(record.value(metric), 6), "best_epoch": record.best_epoch}


def embedding_dir(storage_url: str) -> str:
    """Where encoders' embeddings of a corpus persist on this host, shared by its workers: beside a
    local storage file (``storage/x.db`` → ``storage/embeddings``), else ``storage/embeddings``."""
    path = local_path(storage_url)
    return str((Path("storage") if path is None else path.parent) / "embeddings")


def set_user_attrs(trial: optuna.Trial, **attrs) -> None:
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def describe_device(name: str) -> str:
    """``"auto"`` → ``"cpu"`` or ``"cuda:0 (NVIDIA H100)"``; a UserError for a device we cannot use."""
    try:
        device = train.pick_device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r} is not a device ({exc}); expected auto, cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        return device.type
    if not torch.cuda.is_available():
        raise UserError(f"--device {name!r}: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); expected cpu or auto")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def release_memory() -> None:
    """Drop the finished trial's tensors (a failed CUDA trial must not starve the next one)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Studies


def open_study(spec: Spec, corpus: Corpus, storage_url: str | None = None, study_name: str | None = None,
               seed_offset: int = 0, storage=None) -> optuna.Study:
    """Create the study (recording the data, queueing the defaults as trial 0) or join it (refusing
    other data). Safe when several workers start at once: exactly one of them creates it.
    ``storage``: the already opened storage of ``storage_url``, if the caller has it."""
    check_space(spec)
    name = study_name or spec.name
    storage = storage or open_storage(storage_url or spec.storage)
    sampler, pruner = build_sampler(spec, seed_offset), build_pruner(spec)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=spec.direction,
                                    sampler=sampler, pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        join_study(study, spec, corpus)
        return study
    start_study(study, spec, corpus)
    return study


def start_study(study: optuna.Study, spec: Spec, corpus: Corpus) -> None:
    """Queue the defaults as trial 0, then record data and model (the fingerprint goes last: joining
    workers wait for it, so they never race trial 0)."""
    if not study.trials:
        study.enqueue_trial({name: spec.defaults[name] for name in spec.search}, user_attrs={"config": "defaults"})
    study.set_metric_names([f"val_{spec.metric}"])
    attrs = {"model": spec.model, "spec": spec.path, "data_source": corpus.source, "split": corpus.split,
             "tags": corpus.tag_names, "posts": {"train": len(corpus.train_idx), "val": len(corpus.val_idx),
                                                 "test": len(corpus.test_idx)}, "fingerprint": corpus.fingerprint}
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def join_study(study: optuna.Study, spec: Spec, corpus: Corpus) -> None:
    """Check an existing study is ours and on this data; adopt one left undescribed by a dead creator."""
    deadline = time.monotonic() + DESCRIBE_WAIT_SECONDS
    while "fingerprint" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)  # its creator is still writing trial 0 and the attributes
    if "fingerprint" not in study.user_attrs:
        start_study(study, spec, corpus)
        return
    check_fingerprint(study, corpus)
    model = study.user_attrs.get("model")
    if model != spec.model:
        raise UserError(f"study {study.study_name!r} searches the {model!r} model but {spec.path} is a "
                        f"{spec.model!r} spec; expected the spec the study was created with, or a new --study-name")


def check_fingerprint(study: optuna.Study, corpus: Corpus) -> None:
    """UserError unless ``corpus`` is the data the study was created on (same posts, tags, split)."""
    theirs = study.user_attrs.get("fingerprint")
    if theirs is None or theirs == corpus.fingerprint:
        return
    raise UserError(f"study {study.study_name!r} was created on data with fingerprint {theirs} "
                    f"({study.user_attrs.get('data_source')}, {study.user_attrs.get('split')}), but this data "
                    f"has fingerprint {corpus.fingerprint} ({corpus.source}, {corpus.split}); expected the same "
                    f"file, --top-k and split settings, or a new --study-name")


def load_study(spec: Spec, storage_url: str | None = None, study_name: str | None = None) -> optuna.Study:
    """An existing study (UserError listing the studies present when it is missing)."""
    url, name = storage_url or spec.storage, study_name or spec.name
    storage = open_storage(url, create=False)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise UserError(f"no study {name!r} in {masked(url)}; expected one of: {', '.join(sorted(names)) or '(none)'}")
    return optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(spec), pruner=build_pruner(spec))

