"""The training loop: BCE with pos_weight, the trial's optimizers (``optimizers.make_optimizers``:
AdamW or SGD with momentum, each with a lazy form for row-sparse gradients), clipping by value, early
stopping on the study's validation metric (Hamming loss by default), and a per-epoch hook for the
search layer.

``build`` fits the parameters' featurizer and makes the model and its inputs, ``fit`` trains them;
``train_config`` is both in one call (``tagsearch train``, ``retrain``). Each epoch leaves an
``EpochRecord``; ``summary_record`` is the JSON ``tagsearch train --json`` prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from tagsearch.learn import features
from tagsearch.learn import metrics
from tagsearch.data.corpus import Corpus
from tagsearch.learn.features import FeatureCache, Featurizer
from tagsearch.learn.metrics import ThresholdChoice, val_key
from tagsearch.learn.models import build_model, count_parameters
from tagsearch.learn.optimizers import LazyAdam, LazySGD, coalesced, make_optimizers  # noqa: F401

EVAL_BATCH = 4096
POS_WEIGHT_CLIP = 50.0
STOP_CHECK_EVERY = 8  # batches between two calls of an epoch's ``should_stop``


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss); the search records the trial as FAIL with this reason."""


class StopTraining(Exception):
    """Raised by an ``on_epoch`` hook to end training after this epoch as early stopping does: the
    best epoch's weights and value are kept (the search raises it once the study's deadline came)."""


class EpochCut(StopTraining):
    """``should_stop`` said yes in the middle of an epoch: that epoch is dropped unscored, training
    ends with the best epoch before it (none, when it was the first)."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pos_weight(labels: np.ndarray, scheme: str) -> torch.Tensor | None:
    """``seed``: N/(K·count_k) as in the notebooks; ``neg_pos``: negatives/positives, clipped; ``none``."""
    n_posts, n_tags = labels.shape
    counts = np.maximum(labels.sum(axis=0).astype(np.float64), 1.0)
    if scheme == "none":
        return None
    if scheme == "seed":
        weights = n_posts / (n_tags * counts)
    elif scheme == "neg_pos":
        weights = np.clip((n_posts - counts) / counts, 1.0 / POS_WEIGHT_CLIP, POS_WEIGHT_CLIP)
    else:
        raise ValueError(f"pos_weight must be 'seed', 'neg_pos' or 'none', got {scheme!r}")
    return torch.tensor(weights, dtype=torch.float32)


def clip_gradients(model: nn.Module, clip_value: float) -> None:
    """Clamp every gradient entry to ±``clip_value`` (sparse gradients: their coalesced values)."""
    nn.utils.clip_grad_value_([p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse],
                              clip_value)
    for p in model.parameters():
        if p.grad is not None and p.grad.is_sparse:
            p.grad = coalesced(p.grad)
            p.grad.values().clamp_(-clip_value, clip_value)


def train_epoch(model, data, criterion, optimizers, batch_size: int, clip_value: float,
                generator: torch.Generator, should_stop: Callable[[], bool] | None = None) -> float:
    """One pass over ``data`` in a fresh random order; returns the mean training loss. Every
    ``STOP_CHECK_EVERY`` batches ``should_stop()`` (e.g. the study's deadline came) may cut the
    epoch short: ``EpochCut``."""
    model.train()
    order = torch.randperm(len(data), generator=generator).to(data.labels.device)
    total = torch.zeros((), device=data.labels.device)
    seen = 0
    for step, (inputs, targets) in enumerate(data.batches(batch_size, order), start=1):
        if should_stop is not None and step % STOP_CHECK_EVERY == 0 and should_stop():
            raise EpochCut(f"stopped after {step - 1} batches of an epoch")
        if len(targets) < 2:  # BatchNorm needs two samples; a lone last post waits for the next epoch
            continue
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = criterion(model(inputs), targets)
        loss.backward()
        clip_gradients(model, clip_value)
        for opt in optimizers:
            opt.step()
        total += loss.detach() * len(targets)
        seen += len(targets)
    mean = total.item() / max(seen, 1)
    if not np.isfinite(mean):
        raise NonFiniteLossError(f"training loss became {mean} (diverged); try a lower lr")
    return mean


@torch.inference_mode()
def predict_logits(model: nn.Module, data, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    model.eval()
    return torch.cat([model(inputs) for inputs, _ in data.batches(batch_size)])


def predict_proba(model: nn.Module, data) -> np.ndarray:
    """(posts, tags) probabilities, ``sigmoid(logits)``, as a numpy array on the CPU."""
    return torch.sigmoid(predict_logits(model, data)).cpu().numpy()


@dataclass
class EpochRecord:
    """One epoch: the mean training loss and its seconds; when validating, the validation loss,
    the three metrics at the thresholds chosen this epoch (``val``, cross-fitted), that variant's
    name (``thresholds``) and the best epoch and value so far."""

    epoch: int
    train_loss: float
    seconds: float = 0.0
    val_loss: float | None = None
    val: dict[str, float] | None = None  # metric name -> cross-fitted value
    thresholds: str | None = None
    best_epoch: int | None = None
    best_value: float | None = None

    def value(self, metric: str) -> float:
        """This epoch's validation ``metric``."""
        return self.val[metric]

    def to_json(self) -> dict:
        """``{"epoch", "train_loss", "val_<metric>"..., "val_loss", "thresholds", "best_epoch",
        "best_value", "seconds"}`` (metrics.json's training history)."""
        record = {"epoch": self.epoch, "train_loss": self.train_loss}
        if self.val is not None:
            record.update({val_key(k): v for k, v in self.val.items()}, val_loss=self.val_loss,
                          thresholds=self.thresholds, best_epoch=self.best_epoch, best_value=self.best_value)
        record["seconds"] = self.seconds
        return record


@dataclass
class TrainResult:
    model: nn.Module  # the first (usually only) model, with its best epoch's weights
    metric: str = "hamming_loss"
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = float("nan")
    thresholds: ThresholdChoice | None = None  # at the best epoch
    val_labels: np.ndarray | None = None  # the validation posts at the best epoch (all folds pooled)
    val_probs: np.ndarray | None = None
    stopped_early: bool = False
    models: list[nn.Module] = field(default_factory=list)
    featurizers: list[Featurizer] = field(default_factory=list)  # each model's, fitted (train_config)
    cut_in_epoch: int = 0  # the epoch should_stop cut short (0: none)

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def best(self) -> EpochRecord:
        return self.history[self.best_epoch - 1]


EpochHook = Callable[[int, EpochRecord], None]


@dataclass
class Trainee:
    """One model being trained: its data, loss, optimizers and shuffling generator."""

    model: nn.Module
    train_data: object
    val_data: object
    criterion: nn.Module
    optimizers: list
    generator: torch.Generator
    cut: str | None = None  # why the last epoch ended before its last batch (a model's own epoch sets it)

    @classmethod
    def start(cls, model, train_data, val_data, params: dict) -> "Trainee":
        weights = pos_weight(train_data.labels.cpu().numpy(), params["pos_weight"])
        device = train_data.labels.device
        criterion = nn.BCEWithLogitsLoss(pos_weight=None if weights is None else weights.to(device))
        return cls(model, train_data, val_data, criterion, make_optimizers(model, params),
                   torch.Generator().manual_seed(params["seed"]))

    def epoch(self, params: dict, should_stop: Callable[[], bool] | None = None, fraction: float = 1.0) -> float:
        """One epoch on all the training posts or a fixed ``fraction`` of them; a model with its own
        ``train_epoch`` (``finetune``) runs it, and may cut the epoch once ``should_stop()`` is true
        (setting ``cut``; that epoch is still validated)."""
        if hasattr(self.model, "train_epoch"):
            return self.model.train_epoch(self, params, should_stop)
        return train_epoch(self.model, self.subsample(fraction, params["seed"]), self.criterion, self.optimizers,
                           params["batch_size"], params["clip_value"], self.generator, should_stop)

    def subsample(self, fraction: float, seed: int):
        """The training data, or a fixed random ``fraction`` of its posts (the same every epoch)."""
        if fraction >= 1.0:
            return self.train_data
        cached = getattr(self, "_subsample", None)
        if cached is None or cached[0] != fraction:
            n = len(self.train_data)
            keep = np.sort(np.random.default_rng(seed).permutation(n)[:max(2, int(round(n * fraction)))])
            self._subsample = cached = (fraction, self.train_data.take(keep))
        return cached[1]

    def validate(self) -> tuple[float, np.ndarray, np.ndarray]:
        """Validation loss, labels and probabilities."""
        logits = predict_logits(self.model, self.val_data)
        labels = self.val_data.labels
        return (float(self.criterion(logits, labels)), labels.cpu().numpy().astype(np.uint8),
                torch.sigmoid(logits).cpu().numpy())


def kept(model: nn.Module, copy: dict | None) -> dict:
    """A copy of ``model``'s state, written into ``copy``'s tensors when given (so keeping a better
    epoch never holds two copies of the embedding table at once)."""
    if copy is None:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k, v in model.state_dict().items():
        copy[k].copy_(v)
    return copy


def fit(model, train_data, val_data, params: dict, *, max_epochs: int, patience: int | None,
        metric: str = "hamming_loss", on_epoch: EpochHook | None = None,
        should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train up to ``max_epochs``, scoring validation ``metric`` after every epoch (thresholds fitted
    as ``metrics.choose_thresholds`` does); stop after ``patience`` epochs without a better value
    (``None`` = never). ``on_epoch(epoch, record)`` runs after each epoch and may raise (e.g.
    ``optuna.TrialPruned``; ``StopTraining`` ends training there as early stopping would). The
    returned model carries the best epoch's weights. ``val_data=None`` (a refit on training +
    validation) trains exactly ``max_epochs`` and keeps the last weights."""
    return fit_folds([(model, train_data, val_data)], params, max_epochs=max_epochs, patience=patience,
                     metric=metric, on_epoch=on_epoch, should_stop=should_stop)


def fit_folds(folds: list[tuple], params: dict, *, max_epochs: int, patience: int | None,
              metric: str = "hamming_loss", on_epoch: EpochHook | None = None, keep_best: bool = True,
              should_stop: Callable[[], bool] | None = None,
              fidelity: Callable[[int], float] | None = None) -> TrainResult:
    """``fit`` for one or more ``(model, train_data, val_data)`` (or ``Built``): cross-validation folds train in
    lockstep, and each epoch their validation predictions are pooled — every post predicted by the
    model that did not train on it — and scored once, so the metric, early stopping and the pruner
    see all folds' posts. ``keep_best=False`` (the search, which needs the best epoch's value and
    predictions, not its weights) keeps no copy of the best epoch's weights: the models end with
    the last epoch's, and the trial holds a quarter less memory. ``should_stop()``, asked every few
    batches, ends training mid-epoch (``EpochCut``): that epoch is not scored; a model with its own
    epoch (``finetune``) cuts it instead, and that epoch is validated before training ends. ``fidelity(epoch)``:
    the share of each fold's training posts that epoch trains on (a fixed random subsample; the
    search's early rungs on large data), 1 by default."""
    runs = [Trainee.start(model, train_data, val_data, params) for model, train_data, val_data, *_ in folds]
    validating = all(run.val_data is not None for run in runs)
    result = TrainResult(runs[0].model, metric, best_value=metrics.worst(metric), models=[r.model for r in runs],
                         featurizers=[fold.featurizer for fold in folds if isinstance(fold, Built)])
    best_states = None
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        try:
            fraction = 1.0 if fidelity is None else fidelity(epoch)
            record = EpochRecord(epoch, float(np.mean([run.epoch(params, should_stop, fraction) for run in runs])))
        except EpochCut:
            result.cut_in_epoch, result.stopped_early = epoch, True
            break
        if validating:
            losses, labels, probs = zip(*(run.validate() for run in runs))
            labels, probs = np.concatenate(labels), np.concatenate(probs)
            choice = metrics.choose_thresholds(labels, probs, metric, params["threshold"])
            if metrics.better(metric, choice.value, result.best_value):
                result.best_epoch, result.best_value, result.thresholds = epoch, choice.value, choice
                result.val_labels, result.val_probs = labels, probs
                if keep_best:
                    best_states = [kept(r.model, old) for r, old in zip(runs, best_states or [None] * len(runs))]
            record.val_loss, record.val, record.thresholds = float(np.mean(losses)), choice.summary, choice.chosen
            record.best_epoch, record.best_value = result.best_epoch, result.best_value
        record.seconds = time.perf_counter() - start
        result.history.append(record)
        if on_epoch is not None:
            try:
                on_epoch(epoch, record)
            except StopTraining:
                result.stopped_early = epoch < max_epochs
                break
        if any(run.cut for run in runs) or (validating and patience is not None
                                            and epoch - result.best_epoch >= patience):
            result.stopped_early = epoch < max_epochs
            break
    if best_states is not None:
        for run, state in zip(runs, best_states):
            run.model.load_state_dict(state)
    elif not (validating and result.best_epoch):
        result.best_epoch = result.epochs_run
    return result


class Built(NamedTuple):
    """A model ready to train: its training and validation batches, and the featurizer that made them."""

    model: nn.Module
    train_data: object
    val_data: object
    featurizer: Featurizer


def build(corpus: Corpus, params: dict, device: str | torch.device = "cpu", cache: FeatureCache | None = None) -> Built:
    """The model for ``params`` and its training and validation inputs, on ``device``: the
    parameters' featurizer fitted on ``corpus``'s training split (through ``cache`` when given: a
    study's trials share it), the model's first layer as the featurizer's ``input_kind`` needs."""
    device = pick_device(device) if isinstance(device, str) else device
    cache = FeatureCache() if cache is None else cache
    featurizer = cache.fitted(features.featurizer_for(params), corpus)
    train_data = cache.inputs(featurizer, corpus, "train").to(device)
    val_data = cache.inputs(featurizer, corpus, "val").to(device)
    model = build_model(params, featurizer.input_size, len(corpus.tag_names), featurizer.input_kind).to(device)
    return Built(model, train_data, val_data, featurizer)


def train_config(corpus: Corpus | list[Corpus], params: dict, *, max_epochs: int, patience: int | None,
                 device: str = "auto", metric: str = "hamming_loss", on_epoch: EpochHook | None = None,
                 keep_features: bool = True, cache: FeatureCache | None = None) -> TrainResult:
    """Build inputs and model for ``params`` and train them (``tagsearch train``, ``retrain``); a list
    of corpora (``data.cv_folds``) trains one model per fold, in lockstep, sharing ``cache`` (a fresh
    one by default). ``cache`` keeps every post encoded by the result's ``featurizers``
    (``cache.inputs(featurizer, corpus, "test")``) unless ``keep_features=False``, which clears it
    once the inputs are built (a one-off training: less peak memory)."""
    cache = FeatureCache() if cache is None else cache
    folds = [build(fold, params, device, cache) for fold in (corpus if isinstance(corpus, list) else [corpus])]
    if not keep_features:
        cache.clear()
    return fit_folds(folds, params, max_epochs=max_epochs, patience=patience, metric=metric, on_epoch=on_epoch)


def summary_record(result: TrainResult, corpus: Corpus, params: dict) -> dict:
    """The JSON-able record ``tagsearch train --json`` prints."""
    best, metric, history = result.best, result.metric, result.history
    return {
        "model": params["model"],
        "params": params,
        "metric": metric,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "epoch_seconds": [round(r.seconds, 4) for r in history],
        "train_loss": [r.train_loss for r in history],
        "val_loss": [r.val_loss for r in history],
        val_key(metric): [r.value(metric) for r in history],
        "val_hamming_loss": [r.value("hamming_loss") for r in history],
        f"best_{val_key(metric)}": result.best_value,
        "best_val_hamming_loss": best.value("hamming_loss"),
        "val_micro_f1": best.value("micro_f1"),
        "val_macro_f1": best.value("macro_f1"),
        "thresholds": result.thresholds.chosen,
        "parameters": count_parameters(result.model),
        "train_posts": len(corpus.train_idx),
        "val_posts": len(corpus.val_idx),
        "tags": corpus.tag_names,
        "fingerprint": corpus.fingerprint,
    }
