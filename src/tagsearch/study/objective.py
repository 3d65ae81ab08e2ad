"""What a trial is, top-down like Optuna's PyTorch example: suggest parameters from the spec, build
the model and its inputs, train it reporting every epoch to the pruner (and stopping at the study's
deadline as early stopping does), record the trial's attributes, and return the best validation
value of the study's metric (``[study] metric``, Hamming loss by default, at thresholds chosen as
``metrics.choose_thresholds`` does)."""

from __future__ import annotations

import gc
import os
import socket
import time

import optuna
import torch

from tagsearch.data import corpus as data
from tagsearch.data.corpus import Corpus
from tagsearch.errors import UserError
from tagsearch.learn import train
from tagsearch.learn.features import FeatureCache
from tagsearch.learn.metrics import val_key
from tagsearch.runtime import deadline as deadlines
from tagsearch.study.search import embedding_dir, suggest
from tagsearch.study.spec import Spec


class Objective:
    """Suggest → build → train, reporting each epoch to the pruner → record → return the best
    validation value of the study's metric. Once the study's deadline has come (runtime/deadline.py,
    read from the study after each epoch: tune's Ctrl-C may bring it forward), training stops after
    the current epoch as early stopping does: the trial is COMPLETE with its best epoch's value. (Ctrl-C and SIGTERM are ``runtime.interrupts.Interrupts``'.)"""

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
            if epoch < self.max_epochs and deadlines.passed(deadlines.recorded(trial.study)):
                at_deadline.append(epoch)
                raise train.StopTraining(f"the study's deadline came during epoch {epoch}")

        try:
            result = train.fit_folds(folds, params, max_epochs=self.max_epochs, patience=self.spec.patience,
                                     metric=metric, on_epoch=report_and_prune,
                                     stop_check=lambda: deadlines.passed(deadlines.recorded(trial.study)))
        except optuna.TrialPruned as pruned:
            set_user_attrs(trial, pruned_reason=str(pruned), epochs_run=len(curve),
                           best_epoch=int(curve[-1]["best_epoch"]), learning_curve=curve)
            raise
        choice = result.thresholds
        set_user_attrs(trial, params=params, epochs_run=result.epochs_run, best_epoch=result.best_epoch,
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
