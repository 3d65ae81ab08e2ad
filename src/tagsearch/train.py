"""The training loop: BCE with pos_weight, AdamW (+ lazy Adam, SparseAdam's update, for the embedding
table's sparse gradients), clipping by value, early stopping on validation Hamming loss, and a
per-epoch hook for the search layer.

``train_config(corpus, params, ...)`` is the one-call entry used by ``tagsearch train``, the Optuna
objective and ``retrain``: build inputs → build model → ``fit``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.optim.adam import adam as adam_update  # Adam's functional form (the fused kernel)

from . import features, metrics
from .data import Corpus
from .models import build_model, count_parameters

EVAL_BATCH = 4096
POS_WEIGHT_CLIP = 50.0


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/inf loss); the search records the trial as FAIL with this reason."""


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


class LazyAdam(torch.optim.Optimizer):
    """Lazy Adam for row-sparse gradients (the embedding table): moments and parameter change only at
    the rows present in the gradient, bias-corrected by the parameter's step count, as in
    ``torch.optim.SparseAdam`` (which rebuilds uncoalesced sparse tensors and sorts them twice per
    step: ~5× slower here).

    On the CPU the touched rows are updated in place by a compiled loop (``kernels.lazy_adam_rows``):
    one read and one write of each row of the parameter and both moments. Elsewhere (CUDA) they are
    gathered into scratch buffers kept between steps, updated by torch's fused Adam kernel, and
    scattered back (Adam's ε placement, which differs from SparseAdam's by ε·√(1-β₂ᵗ))."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self._scratch: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, coalesced(param.grad), group)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:
            state.update(step=torch.zeros((), dtype=torch.float32, device=param.device),
                         exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        rows, values = grad.indices()[0], grad.values()
        if in_place_kernel(param):
            self._update_in_place(param, state, rows, values, group)
        else:
            self._update_gathered(param, state, rows, values, group)

    @staticmethod
    def _update_in_place(param, state, rows, values, group) -> None:
        from .kernels import lazy_adam_rows

        state["step"] += 1
        step, (beta1, beta2) = float(state["step"]), group["betas"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        f32 = np.float32
        lazy_adam_rows(param.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy(),
                       rows.numpy(), values.contiguous().numpy(), f32(step_size), f32(beta1), f32(beta2),
                       f32(group["eps"]))

    def _update_gathered(self, param, state, rows, values, group) -> None:
        tables = (param, state["exp_avg"], state["exp_avg_sq"])
        gathered = [torch.index_select(table, 0, rows, out=buffer)
                    for table, buffer in zip(tables, self._buffers(param, len(rows)))]
        beta1, beta2 = group["betas"]
        adam_update(gathered[:1], [values], gathered[1:2], gathered[2:], [], [state["step"]],
                    fused=fused_supported([param]), foreach=False, amsgrad=False, beta1=beta1, beta2=beta2,
                    lr=group["lr"], weight_decay=0.0, eps=group["eps"], maximize=False)
        for table, rows_now in zip(tables, gathered):
            table.index_copy_(0, rows, rows_now)

    def _buffers(self, param: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, ...]:
        """Three ``(n_rows, *row_shape)`` views of this parameter's scratch, grown by 25 % when short."""
        scratch = self._scratch.get(id(param))
        if scratch is None or scratch.shape[1] < n_rows:
            scratch = param.new_empty((3, n_rows + n_rows // 4, *param.shape[1:]))
            self._scratch[id(param)] = scratch
        return tuple(scratch[i, :n_rows] for i in range(3))


def in_place_kernel(param: torch.Tensor) -> bool:
    """Whether ``kernels.lazy_adam_rows`` handles ``param``: a contiguous float32 CPU table."""
    return param.device.type == "cpu" and param.dtype == torch.float32 and param.is_contiguous()


def make_optimizers(model: nn.Module, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """Lazy Adam (SparseAdam's update) for parameters with sparse gradients (the embedding table),
    AdamW for the rest (fused: one pass per tensor)."""
    sparse = [p for m in model.modules() if isinstance(m, nn.EmbeddingBag) and m.sparse for p in m.parameters()]
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    optimizers = [torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay, fused=fused_supported(dense))]
    if sparse:
        optimizers.append(LazyAdam(sparse, lr=lr))
    return optimizers


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether AdamW's fused kernel (one pass over each tensor instead of ~10) handles ``params``."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """``grad`` coalesced. A row-sparse gradient whose rows already increase strictly, as
    ``models.BagProduct`` builds them, is only flagged, not sorted again (autograd's gradient
    accumulation drops the flag)."""
    if grad.is_coalesced():
        return grad
    indices = grad._indices()
    if len(indices) == 1 and bool((indices[0, 1:] > indices[0, :-1]).all()):
        return torch.sparse_coo_tensor(indices, grad._values(), grad.shape, is_coalesced=True,
                                       check_invariants=False)
    return grad.coalesce()


def clip_gradients(model: nn.Module, clip_value: float) -> None:
    """Clamp every gradient entry to ±``clip_value`` (sparse gradients: their coalesced values)."""
    nn.utils.clip_grad_value_([p for p in model.parameters() if p.grad is not None and not p.grad.is_sparse],
                              clip_value)
    for p in model.parameters():
        if p.grad is not None and p.grad.is_sparse:
            p.grad = coalesced(p.grad)
            p.grad.values().clamp_(-clip_value, clip_value)


def train_epoch(model, data, criterion, optimizers, batch_size: int, clip_value: float,
                generator: torch.Generator) -> float:
    """One pass over ``data`` in a fresh random order; returns the mean training loss."""
    model.train()
    order = torch.randperm(len(data), generator=generator).to(data.labels.device)
    total = torch.zeros((), device=data.labels.device)
    seen = 0
    for inputs, targets in data.batches(batch_size, order):
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


def evaluate(model, data, criterion, threshold: float) -> dict:
    logits = predict_logits(model, data)
    loss = float(criterion(logits, data.labels))
    probs = torch.sigmoid(logits).cpu().numpy()
    y_true = data.labels.cpu().numpy().astype(np.uint8)
    return {"loss": loss, **metrics.summary(y_true, (probs >= threshold).astype(np.uint8))}


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_hamming_loss: float = float("inf")
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def best(self) -> dict:
        return self.history[self.best_epoch - 1]


EpochHook = Callable[[int, dict], None]


def fit(model, train_data, val_data, params: dict, *, max_epochs: int, patience: int | None,
        on_epoch: EpochHook | None = None) -> TrainResult:
    """Train up to ``max_epochs``; stop after ``patience`` epochs without a better validation Hamming
    loss (``None`` = never). ``on_epoch(epoch, record)`` runs after each epoch and may raise (e.g.
    ``optuna.TrialPruned``). The returned model carries the best epoch's weights."""
    device = train_data.labels.device
    weights = pos_weight(train_data.labels.cpu().numpy(), params["pos_weight"])
    criterion = nn.BCEWithLogitsLoss(pos_weight=None if weights is None else weights.to(device))
    optimizers = make_optimizers(model, params["lr"], params["weight_decay"])
    generator = torch.Generator().manual_seed(params["seed"])
    result, best_state = TrainResult(model), None
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        train_loss = train_epoch(model, train_data, criterion, optimizers, params["batch_size"],
                                 params["clip_value"], generator)
        val = evaluate(model, val_data, criterion, params["threshold"])
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
                  "val_hamming_loss": val["hamming_loss"], "val_micro_f1": val["micro_f1"],
                  "val_macro_f1": val["macro_f1"], "seconds": time.perf_counter() - start}
        result.history.append(record)
        if record["val_hamming_loss"] < result.best_val_hamming_loss:
            result.best_epoch, result.best_val_hamming_loss = epoch, record["val_hamming_loss"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if on_epoch is not None:
            on_epoch(epoch, record)
        if patience is not None and epoch - result.best_epoch >= patience:
            result.stopped_early = epoch < max_epochs
            break
    model.load_state_dict(best_state)
    return result


@dataclass
class Prepared:
    """Everything built from (corpus, params) before training: inputs on the device and the model."""

    model: nn.Module
    train: object
    val: object
    device: torch.device


def prepare(corpus: Corpus, params: dict, device: torch.device) -> Prepared:
    train_data = features.model_inputs(corpus, params, "train").to(device)
    val_data = features.model_inputs(corpus, params, "val").to(device)
    model = build_model(params, features.input_size(corpus, params), len(corpus.tag_names)).to(device)
    return Prepared(model, train_data, val_data, device)


def train_config(corpus: Corpus, params: dict, *, max_epochs: int, patience: int | None,
                 device: str = "auto", on_epoch: EpochHook | None = None) -> tuple[TrainResult, Prepared]:
    """Build inputs and model for ``params`` and train them."""
    prepared = prepare(corpus, params, pick_device(device))
    result = fit(prepared.model, prepared.train, prepared.val, params, max_epochs=max_epochs,
                 patience=patience, on_epoch=on_epoch)
    return result, prepared


def summary_record(result: TrainResult, corpus: Corpus, params: dict) -> dict:
    """The JSON-able record ``tagsearch train --json`` prints (and the search stores as attributes)."""
    best = result.best
    return {
        "model": params["model"],
        "params": params,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "epoch_seconds": [round(r["seconds"], 4) for r in result.history],
        "train_loss": [r["train_loss"] for r in result.history],
        "val_loss": [r["val_loss"] for r in result.history],
        "val_hamming_loss": [r["val_hamming_loss"] for r in result.history],
        "best_val_hamming_loss": result.best_val_hamming_loss,
        "val_micro_f1": best["val_micro_f1"],
        "val_macro_f1": best["val_macro_f1"],
        "parameters": count_parameters(result.model),
        "train_posts": len(corpus.train_idx),
        "val_posts": len(corpus.val_idx),
        "tags": corpus.tag_names,
        "fingerprint": corpus.fingerprint,
    }
