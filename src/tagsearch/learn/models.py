"""The taggers, one per kind of input a featurizer gives (``features.Featurizer.input_kind``). All
end in the same MLP head (0, 1 or 2 hidden blocks) and output one logit per tag.

- ``DenseTagger`` (``"bags"``): a weighted bag sum over an ``EmbeddingBag`` table of the vocabulary
  and, with ``word_ngrams`` > 1, hashed word n-gram buckets (fastText's trick) → head.
- ``TfidfTagger`` (``"sparse"``): the head applied straight to a sparse CSR batch of rows such as
  TF-IDF's (its first layer, ``SparseLinear``, multiplies sparse × dense, so the corpus is never
  densified).
- ``VectorTagger`` (``"dense"``): the head applied to dense float rows (e.g. sentence embeddings).

Probabilities are ``sigmoid(logits)``; a tag is predicted when its probability ≥ threshold.

Both first layers are the same product, a weighted bag sum ``out[b] = Σ_j w_j · table[ids_j]``
over bag ``b``'s entries: a dense post's distinct token ids weighted count/length (= its mean bag),
or a TF-IDF row's column indices weighted by its values (= ``rows @ W`` for ``W`` stored
``(in, out)``). ``BagProduct`` computes it with ``embedding_bag`` and has a hand-written gradient
for the table: the transpose of the batch (a counting sort, ``transpose_csr``) turns
``Aᵀ · grad`` into one more ``embedding_bag`` over ``grad``. For the embedding that gradient is a
*coalesced* sparse tensor of only the rows the batch touches (torch's own is one row per token
occurrence, coalesced by a sort before every optimizer step); so is TF-IDF's first layer's, whose
rows are the features the batch's posts contain (``train.LazyAdam`` updates only those rows).
``tests/test_fastpath.py`` checks both against torch's own gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------
# The weighted bag product and its gradient


def transpose_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n_cols: int):
    """The CSR arrays of the transpose of a CSR matrix with ``n_cols`` columns, by a counting sort,
    O(nnz + n_cols): scipy's C routine on CPU (~10× faster than torch's sort on a batch), a stable
    sort elsewhere."""
    n_rows = len(crow) - 1
    if crow.device.type == "cpu" and _csr_tocsc is not None:
        crow, col, values = crow.contiguous(), col.contiguous(), values.contiguous()
        t_crow = torch.empty(n_cols + 1, dtype=crow.dtype)
        t_col, t_values = torch.empty_like(col), torch.empty_like(values)
        _csr_tocsc(n_rows, n_cols, crow.numpy(), col.numpy(), values.numpy(), t_crow.numpy(), t_col.numpy(),
                   t_values.numpy())
        return t_crow, t_col, t_values
    order = torch.sort(col, stable=True).indices
    row_of_entry = torch.repeat_interleave(torch.arange(n_rows, device=col.device), torch.diff(crow),
                                           output_size=len(col))
    counts = torch.bincount(col, minlength=n_cols)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]), row_of_entry[order], values[order]


def _scipy_csr_tocsc():
    try:  # private, but unchanged for over a decade; without it transpose_csr falls back to torch.sort
        from scipy.sparse._sparsetools import csr_tocsc
    except ImportError:
        return None
    return csr_tocsc


_csr_tocsc = _scipy_csr_tocsc()


def bag_product(table: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor,
                sparse_grad: bool) -> torch.Tensor:
    """``out[b] = Σ_j weights[j] · table[ids[j]]`` over bag ``b``'s entries (bag ``b`` starts at
    ``offsets[b]``); while training, ``BagProduct``'s gradient for ``table``."""
    if torch.is_grad_enabled() and table.requires_grad:
        return BagProduct.apply(table, ids, offsets, weights, sparse_grad)
    return F.embedding_bag(ids, table, offsets, mode="sum", per_sample_weights=weights)


class BagProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, ids, offsets, weights, sparse_grad: bool):
        ctx.save_for_backward(ids, offsets, weights)
        ctx.table_shape, ctx.sparse_grad = table.shape, sparse_grad
        return F.embedding_bag(ids, table, offsets, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx, grad_bags):
        ids, offsets, weights = ctx.saved_tensors
        n_rows = ctx.table_shape[0]
        crow = torch.cat([offsets, offsets.new_tensor([len(ids)])])
        t_crow, t_bags, t_weights = transpose_csr(crow, ids, weights, n_rows)  # row r's (bag, weight) pairs
        if not ctx.sparse_grad:
            grad = F.embedding_bag(t_bags, grad_bags, t_crow[:-1], mode="sum", per_sample_weights=t_weights)
            return grad, None, None, None, None
        rows = torch.nonzero(torch.diff(t_crow)).squeeze(1)  # the rows the batch touches, ascending
        values = F.embedding_bag(t_bags, grad_bags, t_crow[rows], mode="sum", per_sample_weights=t_weights)
        grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, ctx.table_shape, is_coalesced=True,
                                       check_invariants=False)
        return grad, None, None, None, None


class SparseLinear(nn.Module):
    """A ``Linear`` layer for sparse CSR input. Its weight is stored ``(in_features, out_features)``
    so that the product reads, and the gradient writes, whole contiguous rows of it (each
    column of the input selects one); initialised exactly like ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        reference = nn.Linear(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(reference.weight.detach().t().contiguous())
        self.bias = nn.Parameter(reference.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.layout != torch.sparse_csr:
            return torch.addmm(self.bias, x, self.weight)
        crow = x.crow_indices()  # gradient: the rows (input features) the batch touches, for lazy Adam
        return bag_product(self.weight, x.col_indices(), crow[:-1], x.values(), sparse_grad=True) + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        weight = state_dict.get(prefix + "weight")
        if weight is not None and weight.shape == (self.out_features, self.in_features) != self.weight.shape:
            state_dict[prefix + "weight"] = weight.t()  # saved by nn.Linear, (out, in), before this layout
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Modules


class WarmBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm whose running statistics are a plain average over the first batches, then the usual
    exponential average (momentum 0.1). Plain BatchNorm starts its running variance at 1 and needs
    ~20 steps to forget it, so a model evaluated after a short epoch on a small corpus predicts
    from wrong statistics; this removes that bias the way Adam corrects its moment estimates."""

    def __init__(self, n_features: int, momentum: float = 0.1):
        super().__init__(n_features, momentum=momentum)
        self.final_momentum = momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # BatchNorm counts the batches itself (num_batches_tracked, + 1 in forward)
            self.momentum = max(self.final_momentum, 1.0 / (int(self.num_batches_tracked) + 1))
        return super().forward(x)


class Block(nn.Sequential):
    """Linear → BatchNorm → ReLU → Dropout (``linear`` = ``SparseLinear`` for sparse input)."""

    def __init__(self, n_in: int, n_out: int, dropout: float, linear: type[nn.Module] = nn.Linear):
        super().__init__(linear(n_in, n_out), WarmBatchNorm1d(n_out), nn.ReLU(), nn.Dropout(dropout))


class MLPHead(nn.Module):
    """``hidden_layers`` (0, 1 or 2) blocks of ``hidden1`` then ``hidden2`` units, then a linear
    layer to one logit per tag; with 0 blocks it is a linear model of its input. The first layer is
    ``SparseLinear`` for sparse input."""

    def __init__(self, n_in: int, n_tags: int, *, hidden_layers: int = 2, hidden1: int | None = None,
                 hidden2: int | None = None, dropout: float = 0.0, sparse_input: bool = False):
        super().__init__()
        linear = SparseLinear if sparse_input else nn.Linear
        widths = [n_in] + [hidden1, hidden2][:hidden_layers]
        for i, (a, b) in enumerate(zip(widths, widths[1:]), start=1):
            self.add_module(f"block{i}", Block(a, b, dropout, linear if i == 1 else nn.Linear))
        self.out = (linear if len(widths) == 1 else nn.Linear)(widths[-1], n_tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def head_options(params: dict) -> dict:
    """The values of a trial's ``params`` that shape its ``MLPHead`` (parameters saved before
    hidden_layers existed had two blocks)."""
    return {"hidden_layers": params.get("hidden_layers", 2), "hidden1": params.get("hidden1"),
            "hidden2": params.get("hidden2"), "dropout": params["dropout"]}


class DenseTagger(nn.Module):
    """Weighted bag sum over the vocabulary (and hashed word n-grams) → head."""

    input_kind = "bags"

    def __init__(self, n_rows: int, n_tags: int, *, embedding_dim: int, head: dict):
        super().__init__()
        self.embedding = nn.EmbeddingBag(n_rows, embedding_dim, mode="sum", sparse=True)
        self.head = MLPHead(embedding_dim, n_tags, **head)

    @classmethod
    def from_params(cls, n_rows: int, params: dict, n_tags: int) -> DenseTagger:
        """The tagger a trial's ``params`` describe."""
        return cls(n_rows, n_tags, embedding_dim=params["embedding_dim"], head=head_options(params))

    def forward(self, batch) -> torch.Tensor:
        """``batch`` = ``(ids, offsets, weights)`` as ``BagBatches`` yields it."""
        return self.head(bag_product(self.embedding.weight, *batch, sparse_grad=True))


class TfidfTagger(nn.Module):
    """The head over sparse CSR rows (``CsrBatches``)."""

    input_kind = "sparse"

    def __init__(self, n_features: int, n_tags: int, *, head: dict):
        super().__init__()
        self.head = MLPHead(n_features, n_tags, **head, sparse_input=True)

    @classmethod
    def from_params(cls, n_features: int, params: dict, n_tags: int) -> TfidfTagger:
        """The tagger a trial's ``params`` describe."""
        return cls(n_features, n_tags, head=head_options(params))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.head(rows)


class VectorTagger(nn.Module):
    """The head over dense float rows (``DenseBatches``)."""

    input_kind = "dense"

    def __init__(self, n_features: int, n_tags: int, *, head: dict):
        super().__init__()
        self.head = MLPHead(n_features, n_tags, **head)

    @classmethod
    def from_params(cls, n_features: int, params: dict, n_tags: int) -> VectorTagger:
        """The tagger a trial's ``params`` describe."""
        return cls(n_features, n_tags, head=head_options(params))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.head(rows)


TAGGERS = {tagger.input_kind: tagger for tagger in (DenseTagger, TfidfTagger, VectorTagger)}


def build_model(params: dict, input_size: int, n_tags: int, input_kind: str) -> nn.Module:
    """The tagger for a featurizer's ``input_kind`` ("bags", "sparse", "dense") and ``input_size``
    (rows of the embedding table, or the width of a row), seeded by ``params['seed']``: each
    tagger's ``from_params`` picks the few values of ``params`` it takes."""
    if input_kind not in TAGGERS:
        raise ValueError(f"input_kind must be one of {', '.join(TAGGERS)}, got {input_kind!r}")
    torch.manual_seed(params["seed"])
    return TAGGERS[input_kind].from_params(input_size, params, n_tags)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether AdamW's fused kernel (one pass over each tensor instead of ~10) handles ``params``."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
