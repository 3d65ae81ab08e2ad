"""The optimizers beside the training loop: AdamW or SGD with momentum for a model's dense
parameters, and their lazy forms (``LazyAdam``, ``LazySGD``) for the row-sparse gradients of the
embedding table and of TF-IDF's first layer, which change only the rows a batch touches
(``make_optimizers`` picks them from the trial's parameters)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.optim.adam import adam as adam_update  # Adam's functional form (the fused kernel)

from tagsearch.learn.models import SparseLinear, fused_supported


class LazyRows(torch.optim.Optimizer):
    """An optimizer for row-sparse gradients: each step hands every parameter's coalesced gradient
    to ``_update(param, grad, group)``, which changes only the rows present in it."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, coalesced(param.grad), group)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        raise NotImplementedError


class LazyAdam(LazyRows):
    """Lazy Adam for row-sparse gradients (the embedding table, TF-IDF's first layer): moments and
    parameter change only at the rows present in the gradient, bias-corrected by the parameter's
    step count, as in ``torch.optim.SparseAdam`` (which rebuilds uncoalesced sparse tensors and
    sorts them twice per step: ~5× slower here).

    On the CPU the touched rows are updated in place by a compiled loop (``kernels.lazy_adam_rows``,
    split over the threads torch has): one read and one write of each row of the parameter and
    both moments. Elsewhere (CUDA) they are gathered into scratch buffers kept between steps,
    updated by torch's fused Adam kernel, and scattered back (Adam's ε placement, which differs
    from SparseAdam's by ε·√(1-β₂ᵗ))."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self._scratch: dict[int, torch.Tensor] = {}

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
        from tagsearch.learn import kernels

        state["step"] += 1
        step, (beta1, beta2) = float(state["step"]), group["betas"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        f32 = np.float32
        kernels.lazy_adam_rows(torch.get_num_threads())(
            param.detach().numpy(), state["exp_avg"].numpy(), state["exp_avg_sq"].numpy(), rows.numpy(),
            values.contiguous().numpy(), f32(step_size), f32(beta1), f32(beta2), f32(group["eps"]),
            f32(1 - group["lr"] * group["weight_decay"]))

    def _update_gathered(self, param, state, rows, values, group) -> None:
        tables = (param, state["exp_avg"], state["exp_avg_sq"])
        gathered = [torch.index_select(table, 0, rows, out=buffer)
                    for table, buffer in zip(tables, self._buffers(param, len(rows)))]
        beta1, beta2 = group["betas"]
        gathered[0].mul_(1 - group["lr"] * group["weight_decay"])
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
    """Whether the ``kernels`` loops handle ``param``: a contiguous float32 CPU table."""
    return param.device.type == "cpu" and param.dtype == torch.float32 and param.is_contiguous()


class LazySGD(LazyRows):
    """SGD with momentum for row-sparse gradients, lazily: only the rows present in the gradient
    change, each by ``buf = momentum·buf + grad + weight_decay·row; row -= lr·buf`` (torch's SGD on
    those rows; a row the batch does not touch keeps its momentum until it is touched again). On
    the CPU in place by ``kernels.lazy_sgd_rows``; elsewhere by gathering and scattering the rows."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[param]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(param)
        buffer, rows, values = state["momentum_buffer"], grad.indices()[0], grad.values()
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        if in_place_kernel(param):
            from tagsearch.learn import kernels

            f32 = np.float32
            kernels.lazy_sgd_rows(torch.get_num_threads())(param.detach().numpy(), buffer.numpy(), rows.numpy(),
                                                           values.contiguous().numpy(), f32(lr), f32(momentum),
                                                           f32(weight_decay))
            return
        moved = buffer.index_select(0, rows).mul_(momentum).add_(values)
        if weight_decay:
            moved.add_(param.index_select(0, rows), alpha=weight_decay)
        buffer.index_copy_(0, rows, moved)
        param.index_add_(0, rows, moved, alpha=-lr)


SGD_MOMENTUM = 0.9


def make_optimizers(model: nn.Module, params: dict) -> list[torch.optim.Optimizer]:
    """``params['optimizer']`` for the model: the tables with row-sparse gradients (the embedding,
    without weight decay as SparseAdam; a TF-IDF model's first layer, with it) get its lazy form
    (``LazyAdam`` / ``LazySGD``), so a step costs the rows it touches, not the whole table; the
    rest AdamW (fused: one pass per tensor) at ``lr``, or SGD with momentum at ``sgd_lr``.
    SGD is there for the linear heads over sparse features, where Adam's per-coordinate steps give
    rare n-grams as much weight as common ones and generalise worse (BENCHMARKS.md). A model with
    its own ``make_optimizers(params)`` (per-group learning rates: ``finetune``) makes its own."""
    if hasattr(model, "make_optimizers"):
        return model.make_optimizers(params)
    embedding = [m.weight for m in model.modules() if isinstance(m, nn.EmbeddingBag) and m.sparse]
    first_layer = [m.weight for m in model.modules() if isinstance(m, SparseLinear)]
    sparse_ids = {id(p) for p in embedding + first_layer}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    weight_decay = params["weight_decay"]
    groups = [{"params": embedding, "weight_decay": 0.0}, {"params": first_layer, "weight_decay": weight_decay}]
    groups = [g for g in groups if g["params"]]
    kind = params.get("optimizer", "adamw")
    if kind == "adamw":
        lr = params["lr"]
        optimizers = [torch.optim.AdamW(dense, lr=lr, weight_decay=weight_decay, fused=fused_supported(dense))]
        return optimizers + ([LazyAdam(groups, lr=lr)] if groups else [])
    if kind == "sgd":
        lr = params["sgd_lr"]
        optimizers = [torch.optim.SGD(dense, lr=lr, momentum=SGD_MOMENTUM, weight_decay=weight_decay)]
        return optimizers + ([LazySGD(groups, lr=lr, momentum=SGD_MOMENTUM)] if groups else [])
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {kind!r}")


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
