"""Batches: one split's model inputs + labels, served shuffled without Python loops per post.

Each kind of input has its container, with ``take(indices)`` (select posts, one gather) and
``batches(batch_size, order)`` (a per-epoch permuted copy sliced into batches):

- ``BagBatches``: each post's distinct table rows with weights, flat, with per-post start/length
  (the bag product gets ``(ids, offsets, weights)`` directly);
- ``CsrBatches``: a scipy CSR matrix, handed to torch as sparse CSR row slices (never densified);
- ``DenseBatches``: a (posts, width) float32 tensor.

The bag kernels (``bag_counts``, ``dedupe_bags``, ``bags_of``) turn flat token ids into those bags.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from tagsearch.data.corpus import Corpus

# torch flags sparse CSR as beta on every construction (hidden where we build one, ``sparse_rows``);
# we only use its stable sparse × dense product.
CSR_BETA = "Sparse CSR tensor support is in beta state"
# Our sparse tensors are built from validated CSR/COO parts; opting out explicitly (the default
# anyway) stops torch from warning about it in every worker log.
torch.sparse.check_sparse_tensor_invariants.disable()


class BagBatches:
    """One split for the bag model: each post as its distinct token ids with weights count/length
    (a weighted sum of them is the post's mean bag), flat, with per-post entry counts, + labels.

    ``BagBatches(tokens, lengths, labels)`` takes the posts' raw token ids and deduplicates them;
    ``weights`` skips that for ids that are already distinct per post."""

    def __init__(self, tokens: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                 weights: torch.Tensor | None = None):
        if weights is None:
            tokens, lengths, weights = (torch.from_numpy(a) for a in dedupe_bags(tokens.numpy(), lengths.numpy()))
        self.tokens, self.lengths, self.weights, self.labels = tokens, lengths, weights, labels
        self.starts = torch.cumsum(lengths, 0) - lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device) -> "BagBatches":
        return BagBatches(self.tokens.to(device), self.lengths.to(device), self.labels.to(device),
                          self.weights.to(device))

    def take(self, indices: np.ndarray) -> "BagBatches":
        """The posts ``indices``, in that order (one gather of their entries)."""
        order = torch.as_tensor(indices, dtype=torch.int64, device=self.lengths.device)
        lengths = self.lengths[order]
        n_entries = int(lengths.sum())
        entries = permuted_entries(self.starts[order], torch.cumsum(lengths, 0) - lengths, lengths, n_entries)
        return BagBatches(self.tokens[entries], lengths, self.labels[order], self.weights[entries])

    def batches(self, batch_size: int, order: torch.Tensor | None = None):
        """Yield ``((ids, offsets, weights), labels)``; ``order`` permutes the posts (one gather per epoch)."""
        tokens, weights, lengths, starts, labels = self.tokens, self.weights, self.lengths, self.starts, self.labels
        if order is not None:
            lengths, labels = lengths[order], labels[order]
            new_starts = torch.cumsum(lengths, 0) - lengths
            entries = permuted_entries(starts[order], new_starts, lengths, len(tokens))
            tokens, weights, starts = tokens[entries], weights[entries], new_starts
        bounds = torch.cat([starts, starts.new_tensor([len(tokens)])]).tolist()
        for lo in range(0, len(lengths), batch_size):
            hi = min(lo + batch_size, len(lengths))
            first, last = bounds[lo], bounds[hi]
            yield (tokens[first:last], starts[lo:hi] - first, weights[first:last]), labels[lo:hi]


def permuted_entries(old_starts: torch.Tensor, new_starts: torch.Tensor, lengths: torch.Tensor,
                     n_entries: int) -> torch.Tensor:
    """Index of each flat entry's source when posts move from ``old_starts`` to ``new_starts``."""
    shift = torch.repeat_interleave(old_starts - new_starts, lengths, output_size=n_entries)
    return shift + torch.arange(n_entries, device=lengths.device)


def bag_counts(tokens: np.ndarray, lengths: np.ndarray, n_ids: int | None = None) -> sp.csr_matrix:
    """Posts × ids matrix of token counts (float32, ids ascending within a post): scipy's C++
    duplicate summing over the flat tokens, O(n) plus one small sort per post."""
    tokens, lengths = np.asarray(tokens, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    n_ids = n_ids or (int(tokens.max()) + 1 if len(tokens) else 1)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    counts = sp.csr_matrix((np.ones(len(tokens), dtype=np.float32), tokens, indptr), shape=(len(lengths), n_ids))
    counts.sum_duplicates()
    return counts


def dedupe_bags(tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each post's distinct ids (ascending), the number of them per post, and their weights
    count/length (float32): a weighted sum of a post's distinct ids is its mean bag."""
    return bags_of(bag_counts(tokens, lengths), np.asarray(lengths))


def bags_of(counts: sp.csr_matrix, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entries = np.diff(counts.indptr)
    weights = (counts.data / np.repeat(lengths, entries)).astype(np.float32)
    return counts.indices.astype(np.int64), entries.astype(np.int64), weights


class CsrBatches:
    """One split for a sparse-input model: a CSR matrix + labels; batches are sparse row slices."""

    def __init__(self, matrix: sp.csr_matrix, labels: torch.Tensor, device="cpu"):
        self.matrix, self.labels = matrix.astype(np.float32, copy=False), labels
        self.device = torch.device(device)

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def to(self, device) -> "CsrBatches":
        return CsrBatches(self.matrix, self.labels.to(device), device)

    def take(self, indices: np.ndarray) -> "CsrBatches":
        return CsrBatches(self.matrix[indices], self.labels[torch.as_tensor(indices, device=self.labels.device)],
                          self.device)

    def batches(self, batch_size: int, order: torch.Tensor | None = None):
        matrix, labels = self.matrix, self.labels
        if order is not None:
            matrix, labels = matrix[order.cpu().numpy()], labels[order]
        indptr = torch.from_numpy(matrix.indptr.astype(np.int64)).to(self.device)
        indices = torch.from_numpy(matrix.indices.astype(np.int64)).to(self.device)
        values = torch.from_numpy(matrix.data).to(self.device)
        bounds = matrix.indptr.tolist()
        n_cols = matrix.shape[1]
        for lo in range(0, matrix.shape[0], batch_size):
            hi = min(lo + batch_size, matrix.shape[0])
            first, last = bounds[lo], bounds[hi]
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=CSR_BETA)
                rows = torch.sparse_csr_tensor(indptr[lo:hi + 1] - first, indices[first:last], values[first:last],
                                               size=(hi - lo, n_cols), check_invariants=False)
            yield rows, labels[lo:hi]


class DenseBatches:
    """One split for a dense-input model: a (posts, width) float32 tensor + labels; a batch is a
    contiguous slice of a per-epoch permuted copy."""

    def __init__(self, rows: torch.Tensor | np.ndarray, labels: torch.Tensor):
        self.rows = torch.as_tensor(rows, dtype=torch.float32)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device) -> "DenseBatches":
        return DenseBatches(self.rows.to(device), self.labels.to(device))

    def take(self, indices: np.ndarray) -> "DenseBatches":
        order = torch.as_tensor(indices, dtype=torch.int64, device=self.rows.device)
        return DenseBatches(self.rows[order], self.labels[order])

    def batches(self, batch_size: int, order: torch.Tensor | None = None):
        rows, labels = (self.rows, self.labels) if order is None else (self.rows[order], self.labels[order])
        for lo in range(0, len(rows), batch_size):
            yield rows[lo:lo + batch_size], labels[lo:lo + batch_size]


def no_labels(n_posts: int) -> torch.Tensor:
    return torch.zeros((n_posts, 0))


def all_labels(corpus: Corpus) -> torch.Tensor:
    return torch.from_numpy(corpus.labels.astype(np.float32))

