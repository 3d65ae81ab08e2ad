"""One training epoch of a ``finetune`` model (``learn.finetune.FinetuneTagger``), which
``train.Trainee`` runs instead of ``train.train_epoch``:

- the learning rate of every optimizer group (``base_lr``) warms up linearly over the first
  ``warmup`` fraction of the schedule's steps, then decays linearly to 0 at the end of
  ``finetune_epochs`` epochs; the schedule is a parameter of the trial (not of how many epochs a
  run may take), so ``retrain``'s shorter run follows the trial's steps exactly. After its last
  step the epoch is cut: training ends there, keeping the best validated weights;
- the gradient's global norm is clipped to ``MAX_GRAD_NORM``;
- a batch that runs out of memory (CUDA, or the CPU allocator) is split in halves, and halves of
  those, until it fits; their gradients accumulate to the whole batch's (each part's mean loss
  weighted by its share), and the rest of the trial keeps the smaller part. Only a single post
  that does not fit fails the trial (the worker goes on to the next);
- after a step, once ``CHECK_SECONDS`` have passed since its last look, ``stop_check()`` (the
  study's deadline, read from the storage) may cut the epoch short: ``trainee.cut`` tells
  ``train.fit_folds`` to validate what was trained so far and stop. A trial thus stops within
  ``CHECK_SECONDS`` + one step of its deadline (+ that validation), however long its epochs, and
  a fast GPU step does not read the storage every time. The cut's step count goes into
  ``params["max_steps"]`` (the trial records its params again when it ends), so the trial's other
  folds, and ``retrain`` of it, stop at that very step and reproduce its value.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from tagsearch.log import log

MAX_GRAD_NORM = 1.0
CHECK_SECONDS = 2.0  # between two looks at the deadline
clock = time.monotonic  # tests put a fake clock here


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Warm-up then linear decay: the factor of every group's ``base_lr`` at ``step`` (0-based) of ``total``."""
    warm = int(round(warmup * total))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


def accumulate(model, criterion, inputs, targets, parts: int) -> float:
    """Forward and backward of one batch in ``parts`` slices; returns the batch's mean loss."""
    states, mask = inputs
    total, n = 0.0, len(targets)
    for piece in np.array_split(np.arange(n), parts):
        lo, hi = int(piece[0]), int(piece[-1]) + 1
        loss = criterion(model((states[lo:hi], mask[lo:hi])), targets[lo:hi]) * ((hi - lo) / n)
        loss.backward()
        total += float(loss.detach())
    return total


def step_batch(model, criterion, inputs, targets) -> float:
    """Forward + backward of one batch, split into micro-batches after an out-of-memory error."""
    while True:
        micro = min(model.micro_batch_ or len(targets), len(targets))
        try:
            return accumulate(model, criterion, inputs, targets, math.ceil(len(targets) / micro))
        except Exception as error:
            if not is_out_of_memory(error) or micro <= 1:
                raise
            for param in model.parameters():
                param.grad = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            model.micro_batch_ = micro // 2
            log(f"finetune: a batch of {micro} posts ran out of memory; going on with {micro // 2} at a time "
                f"(gradients accumulated to the batch of {len(targets)})")


def train_epoch(model, trainee, params: dict, stop_check=None) -> float:
    """One pass over ``trainee.train_data`` in a fresh random order; returns the mean training loss."""
    data, optimizer = trainee.train_data, trainee.optimizers[0]
    model.train()
    batch_size = params["batch_size"]
    batch_norm = any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())
    full, rest = divmod(len(data), batch_size)
    steps_per_epoch = full + (rest >= (2 if batch_norm else 1))  # a lone last post is skipped with BatchNorm
    total_steps = params["finetune_epochs"] * steps_per_epoch
    order = torch.randperm(len(data), generator=trainee.generator)
    step = getattr(optimizer, "finetune_step", 0)
    losses, sizes, looked = [], [], clock()
    for inputs, targets in data.batches(batch_size, order):
        if len(targets) < 2 and batch_norm:
            continue  # BatchNorm needs two samples (as train.train_epoch)
        factor = lr_factor(step, total_steps, params["warmup"])
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_batch(model, criterion=trainee.criterion, inputs=inputs, targets=targets))
        sizes.append(len(targets))
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], MAX_GRAD_NORM)
        optimizer.step()
        step += 1
        optimizer.finetune_step = step
        if step >= total_steps:
            trainee.cut = "the learning-rate schedule ended"
            break
        if params.get("max_steps") and step >= params["max_steps"]:
            trainee.cut = f"the trial's step limit ({params['max_steps']})"
            break
        if stop_check is not None and not params.get("max_steps") and clock() - looked >= CHECK_SECONDS:
            # (once a fold was cut, the others stop at its step: max_steps above)
            looked = clock()
            if stop_check():
                trainee.cut = "the study's deadline came within the epoch"
                params["max_steps"] = step
                break
    mean = float(np.average(losses, weights=sizes)) if losses else float("nan")
    if losses and not np.isfinite(mean):
        from tagsearch.learn.train import NonFiniteLossError

        raise NonFiniteLossError(f"training loss became {mean} (diverged); try a lower encoder_lr")
    return mean
