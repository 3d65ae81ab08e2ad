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

from tagsearch.data.corpus import Corpus, cv_folds
from tagsearch.durations import span_text
from tagsearch.errors import UserError
from tagsearch.learn import features, train
from tagsearch.learn.embedding_cache import Busy
from tagsearch.learn.features import FeatureCache
from tagsearch.learn.metrics import val_key
from tagsearch.runtime import deadline as deadlines
from tagsearch.runtime.location import Location
from tagsearch.log import log
from tagsearch.study import memory, planner
from tagsearch.study.search import suggest
from tagsearch.study.spec import EMBEDDING_MODELS, Spec

ENCODING_PLAN = "planner:encoding"  # the study attribute recording the encoding's cost and verdict
FINETUNE_PLAN = "planner:finetune"  # the same for the finetune kind's frozen prefix and one trial


class Objective:
    """Suggest → build → train, reporting each epoch to the pruner → record → return the best
    validation value of the study's metric. Once the study's deadline has come (runtime/deadline.py,
    read from the study after each epoch: tune's Ctrl-C may bring it forward; asked every few
    batches within one), training stops as early stopping does: the trial is COMPLETE with its
    best whole epoch's value (PRUNED when the first epoch was cut). Before it allocates, a trial
    may be pruned by the worker's memory (``check_memory``) or the cost plan (``plan_encoding``);
    its first epochs may train on a subsample (``plan_fidelity``). (Ctrl-C and SIGTERM are ``runtime.interrupts.Interrupts``'.)"""

    def __init__(self, spec: Spec, corpus: Corpus, device: str | None = None, max_epochs: int | None = None,
                 storage: str | Location | None = None, memory_limit: int | None = None):
        self.spec, self.corpus = spec, corpus
        self.memory_limit = memory_limit  # bytes this worker may hold (--memory); None: no limit
        self.device = device or spec.device
        self.max_epochs = max_epochs or spec.max_epochs
        self.device_name = describe_device(self.device)
        self.folds = cv_folds(corpus, spec.folds)
        # this worker's trials share token streams, fitted featurizers and the host's encodings
        embeddings = Location.of(storage or spec.storage).embeddings
        self.features = FeatureCache(str(embeddings), str(train.pick_device(self.device)))
        # while another worker encodes, this one searches other kinds (a one-kind study waits)
        self.features.encoding_wait = len(spec.models) == 1
        self.epoch_seconds: dict[str, list[float]] = {}  # per kind: this worker's recent full epochs
        self.trial_epochs: dict[str, list[int]] = {}  # per kind: epochs its recent trials ran

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
        self.features.encoding_guard = self.plan_encoding(trial, params)
        try:
            self.check_memory(trial, params)
            folds = [train.build(fold, params, self.device, self.features) for fold in self.folds]
        except Busy:
            raise pruned(trial, f"deferred: another worker on this host is encoding the posts for the "
                                f"{params['model']} kind; the search goes on with the other kinds meanwhile") from None
        curve: list[dict] = []  # per epoch: losses, the metric, the best epoch so far
        at_deadline: list[int] = []  # the epoch after which the study's deadline stopped training
        deadline = [deadlines.recorded(trial.study)]  # read again after every epoch (Ctrl-C brings it forward)
        fidelity = self.plan_fidelity(trial, params["model"], deadline[0])

        def report_and_prune(epoch: int, record: train.EpochRecord) -> None:
            if fidelity.at(epoch) >= 1.0:
                remember(self.epoch_seconds, params["model"], record.seconds)
            value = record.value(metric)
            curve.append(curve_point(record, metric))
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}: {val_key(metric)} {value:.4f} "
                                         f"(best {record.best_value:.4f} at epoch {record.best_epoch}) is "
                                         f"not promising next to the other trials at this epoch")
            deadline[0] = deadlines.recorded(trial.study)
            if epoch < self.max_epochs and deadlines.passed(deadline[0]):
                at_deadline.append(epoch)
                raise train.StopTraining(f"the study's deadline came during epoch {epoch}")

        try:
            result = train.fit_folds(folds, params, max_epochs=self.max_epochs, patience=self.spec.patience,
                                     metric=metric, on_epoch=report_and_prune, keep_best=False,
                                     should_stop=lambda: deadlines.passed(deadline[0]), fidelity=fidelity.at)
            if not result.history:  # the deadline came during the first epoch: nothing to score
                raise optuna.TrialPruned("the study's deadline came during epoch 1, before anything was scored")
        except optuna.TrialPruned as stopped:
            remember(self.trial_epochs, params["model"], len(curve))
            set_user_attrs(trial, pruned_reason=str(stopped), epochs_run=len(curve),
                           best_epoch=int(curve[-1]["best_epoch"]) if curve else 0, learning_curve=curve)
            raise
        remember(self.trial_epochs, params["model"], result.epochs_run)
        choice = result.thresholds
        set_user_attrs(trial, params=params, epochs_run=result.epochs_run, best_epoch=result.best_epoch,
                       stopped_early=result.stopped_early, learning_curve=curve,
                       train_seconds=round(time.perf_counter() - start, 3),
                       parameters=train.count_parameters(result.model), folds=len(self.folds),
                       threshold_choice=choice.chosen, thresholds=choice.thresholds, threshold_scores=choice.scores,
                       val_per_class_f1=dict(zip(self.corpus.tag_names, choice.per_tag_f1)),
                       **choice.val_figures(digits=6),
                       **({"stopped_at_deadline": True} if at_deadline or result.cut_in_epoch else {}))
        return result.best_value

    def plan_fidelity(self, trial: optuna.Trial, kind: str, deadline: float | None) -> planner.Fidelity:
        """How this trial's first epochs train (``planner.fidelity_plan``): from this worker's
        measured full epochs of ``kind``, the epochs its trials ran, the time left and the trials
        running beside it. Recorded as the ``fidelity`` user attribute the pruner compares by."""
        seconds, epochs = self.epoch_seconds.get(kind), self.trial_epochs.get(kind)
        remaining = None if deadline is None else deadline - deadlines.clock()
        running = len(trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
        fidelity = planner.fidelity_plan(sum(seconds) / len(seconds) if seconds else None,
                                         round(sum(epochs) / len(epochs)) if epochs else self.max_epochs,
                                         remaining, workers=max(running, 1))
        if fidelity != planner.FULL:
            trial.set_user_attr("fidelity", f"{fidelity.fraction:g}x{fidelity.full_from - 1}")
        return fidelity

    def plan_encoding(self, trial: optuna.Trial, params: dict):
        """For a kind with a fixed cost (an encoder kind's encodings; a finetune trial's frozen
        prefix, planned only where the study searches other kinds too): prune it at once where
        this search's plan left that cost out; else the guard its computation runs under
        (``encoder.Guard``), which measures the rate on the first chunk, decides by
        ``planner.fixed_cost_plan`` (one log line, and the study attribute the verdict shows), and
        stops at the deadline (an encoding keeps what it encoded)."""
        kind = params["model"]
        if kind not in EMBEDDING_MODELS and kind != "finetune":
            return None
        deadline = deadlines.recorded(trial.study)
        attr, label = (ENCODING_PLAN, ", ".join(EMBEDDING_MODELS)) if kind in EMBEDDING_MODELS else (FINETUNE_PLAN, "finetune")
        planned = kind in EMBEDDING_MODELS or len(self.spec.models) > 1
        plan = trial.study.user_attrs.get(attr)
        left_out = bool(plan) and not plan["included"] and plan.get("deadline") == deadline
        if kind == "finetune":  # each trained-layer count has a prefix of its own
            left_out = left_out and plan.get("train_layers") == params.get("train_layers")
        if planned and left_out:
            raise pruned(trial, plan["note"])
        decided: list[bool] = []

        def guard(progress) -> None:
            if deadlines.passed(deadline):
                raise pruned(trial, f"the study's deadline came while computing the {kind} kind's inputs "
                                    f"({progress.done}/{progress.total} posts done)")
            if decided or not planned:
                return
            decided.append(True)
            seconds, what = progress.seconds + progress.seconds_left, ""
            if kind == "finetune":
                training = self.finetune_training_seconds(params, seconds, progress.total)
                if training is not None:
                    seconds, what = seconds + training, f" (its frozen prefix and one trial of ~{span_text(training)})"
            cost = planner.fixed_cost_plan(label, seconds, now=deadlines.clock() - progress.seconds,
                                           deadline=deadline, budget=self.spec.time_budget)
            log(f"planner: {cost.note()}{what} (measured on the first {progress.done} of {progress.total} posts)")
            trial.study.set_user_attr(attr, {**cost.record(), "note": cost.note(), "deadline": deadline,
                                             **({"train_layers": params.get("train_layers")} if kind == "finetune" else {})})
            if not cost.included:
                raise pruned(trial, cost.note())

        return guard

    def finetune_training_seconds(self, params: dict, prefix_seconds: float, n_posts: int) -> float | None:
        """``planner.finetune_seconds`` for a finetune trial of ``params`` on this worker's folds."""
        featurizer = features.featurizer_for(params).fit()
        fold = self.folds[0]
        return planner.finetune_seconds(prefix_seconds, n_posts, featurizer.frozen_layers_, featurizer.trained_,
                                        len(fold.train_idx), len(fold.val_idx),
                                        min(int(params["finetune_epochs"]), self.max_epochs), len(self.folds))

    def check_memory(self, trial: optuna.Trial, params: dict) -> None:
        """Prune (before its models exist) a trial whose models, optimizer state and gradients for
        every fold (``memory.trial_bytes``) would not fit beside what this worker holds now within
        its ``memory_limit``. Its featurizer is fitted here (cached: ``build`` reuses it) for the
        size of its first layer. Where the trial would fit alone, the worker's feature cache (fitted
        featurizers of earlier trials) is let go first."""
        if self.memory_limit is None:
            return
        featurizer = self.features.fitted(features.featurizer_for(params), self.folds[0])
        need = memory.trial_bytes(params, featurizer.input_size, len(self.corpus.tag_names), len(self.folds))
        trial.set_user_attr("memory_estimate", need)
        held = memory.resident_bytes()
        if held + need > self.memory_limit and need < self.memory_limit:
            del featurizer
            self.features.clear()
            release_memory()
            held = memory.resident_bytes()
        if held + need > self.memory_limit:
            reason = (f"needs ~{memory.describe(need)} for {len(self.folds)} fold model(s) and their optimizer "
                      f"state beside the {memory.describe(held)} this worker holds: over its --memory "
                      f"{memory.describe(self.memory_limit)}")
            raise pruned(trial, reason)


def remember(measured: dict[str, list], kind: str, value, keep: int = 40) -> None:
    """Append ``value`` to ``kind``'s recent measurements (the last ``keep``)."""
    values = measured.setdefault(kind, [])
    values.append(value)
    del values[:-keep]


def pruned(trial: optuna.Trial, reason: str) -> optuna.TrialPruned:
    """A ``TrialPruned`` for ``reason``, recorded as the trial's ``pruned_reason``."""
    trial.set_user_attr("pruned_reason", reason)
    return optuna.TrialPruned(reason)


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
