"""The two taggers. Both end in the same MLP head and output one logit per tag.

- ``DenseTagger``: ``EmbeddingBag(mode="mean", sparse=True)`` over the vocabulary → head.
- ``TfidfTagger``: the head applied straight to a sparse CSR batch of TF-IDF rows (the first
  ``Linear`` multiplies sparse × dense, so the corpus is never densified).

Probabilities are ``sigmoid(logits)``; a tag is predicted when its probability ≥ threshold.
"""

from __future__ import annotations

import torch
from torch import nn


class WarmBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm whose running statistics are a plain average over the first batches, then the usual
    exponential average (momentum 0.1). Plain BatchNorm starts its running variance at 1 and needs
    ~20 steps to forget it, so a model evaluated after a short epoch on a small corpus predicts
    from wrong statistics; this removes that bias the way Adam corrects its moment estimates."""

    def __init__(self, n_features: int, momentum: float = 0.1):
        super().__init__(n_features, momentum=momentum)
        self.final_momentum, self.steps = momentum, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.steps += 1
            self.momentum = max(self.final_momentum, 1.0 / self.steps)
        return super().forward(x)


class Block(nn.Sequential):
    """Linear → BatchNorm → ReLU → Dropout."""

    def __init__(self, n_in: int, n_out: int, dropout: float):
        super().__init__(nn.Linear(n_in, n_out), WarmBatchNorm1d(n_out), nn.ReLU(), nn.Dropout(dropout))


class MLPHead(nn.Module):
    def __init__(self, n_in: int, hidden1: int, hidden2: int, n_tags: int, dropout: float):
        super().__init__()
        self.block1 = Block(n_in, hidden1, dropout)
        self.block2 = Block(hidden1, hidden2, dropout)
        self.out = nn.Linear(hidden2, n_tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.block2(self.block1(x)))


class DenseTagger(nn.Module):
    kind = "dense"

    def __init__(self, vocab_size: int, embedding_dim: int, hidden1: int, hidden2: int, n_tags: int,
                 dropout: float):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embedding_dim, mode="mean", sparse=True)
        self.head = MLPHead(embedding_dim, hidden1, hidden2, n_tags, dropout)

    def forward(self, batch) -> torch.Tensor:
        tokens, offsets = batch
        return self.head(self.embedding(tokens, offsets))


class TfidfTagger(nn.Module):
    kind = "tfidf"

    def __init__(self, n_features: int, hidden1: int, hidden2: int, n_tags: int, dropout: float):
        super().__init__()
        self.head = MLPHead(n_features, hidden1, hidden2, n_tags, dropout)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.head(rows)


def build_model(params: dict, input_size: int, n_tags: int) -> nn.Module:
    """The model ``params['model']`` names, seeded by ``params['seed']``."""
    torch.manual_seed(params["seed"])
    if params["model"] == "dense":
        return DenseTagger(input_size, params["embedding_dim"], params["hidden1"], params["hidden2"], n_tags,
                           params["dropout"])
    if params["model"] == "tfidf":
        return TfidfTagger(input_size, params["hidden1"], params["hidden2"], n_tags, params["dropout"])
    raise ValueError(f"model must be 'dense' or 'tfidf', got {params['model']!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
