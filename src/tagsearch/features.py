"""Turn a ``Corpus`` into model inputs, once, and serve shuffled batches without Python loops.

Dense model: every post's tokens live in one flat int64 tensor with per-post start/length; a batch
is a contiguous slice of a per-epoch permuted copy, so ``EmbeddingBag`` gets ``(flat, offsets)``
directly. TF-IDF model: one scipy CSR matrix per split; a batch is a row slice of a per-epoch
permuted copy, handed to torch as a sparse CSR tensor (never densified).

Expensive state is cached per process: the token stream per corpus, the vocabulary per
``min_freq``, the fitted TF-IDF per ``(max_features, ngram_max, sublinear_tf)``.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from .data import Corpus

UNKNOWN = "<unk>"
# torch flags sparse CSR as beta on every construction; we only use its stable sparse × dense product.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


# ---------------------------------------------------------------------------------------------
# Batching


class BagBatches:
    """One split for the dense model: flat token ids + per-post start/length + labels."""

    def __init__(self, tokens: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor):
        self.tokens, self.lengths, self.labels = tokens, lengths, labels
        self.starts = torch.cumsum(lengths, 0) - lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def to(self, device) -> "BagBatches":
        return BagBatches(self.tokens.to(device), self.lengths.to(device), self.labels.to(device))

    def batches(self, batch_size: int, order: torch.Tensor | None = None):
        """Yield ``((flat, offsets), labels)``; ``order`` permutes the posts (one gather per epoch)."""
        tokens, lengths, starts, labels = self.tokens, self.lengths, self.starts, self.labels
        if order is not None:
            lengths, labels = lengths[order], labels[order]
            new_starts = torch.cumsum(lengths, 0) - lengths
            shift = torch.repeat_interleave(starts[order] - new_starts, lengths, output_size=len(tokens))
            tokens = tokens[shift + torch.arange(len(tokens), device=tokens.device)]
            starts = new_starts
        bounds = torch.cat([starts, starts.new_tensor([len(tokens)])]).tolist()
        for lo in range(0, len(lengths), batch_size):
            hi = min(lo + batch_size, len(lengths))
            first, last = bounds[lo], bounds[hi]
            yield (tokens[first:last], starts[lo:hi] - first), labels[lo:hi]


class CsrBatches:
    """One split for the TF-IDF model: a CSR matrix + labels; batches are sparse row slices."""

    def __init__(self, matrix: sp.csr_matrix, labels: torch.Tensor, device="cpu"):
        self.matrix, self.labels, self.device = matrix.astype(np.float32), labels, torch.device(device)

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def to(self, device) -> "CsrBatches":
        return CsrBatches(self.matrix, self.labels.to(device), device)

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
            rows = torch.sparse_csr_tensor(indptr[lo:hi + 1] - first, indices[first:last], values[first:last],
                                           size=(hi - lo, n_cols), check_invariants=False)
            yield rows, labels[lo:hi]


# ---------------------------------------------------------------------------------------------
# Dense model: token stream and vocabulary


@dataclass
class TokenStream:
    """All posts' tokens as codes into ``uniques`` (one factorize over the whole corpus)."""

    codes: np.ndarray  # int64, concatenated tokens of every post
    lengths: np.ndarray  # int64, tokens per post
    uniques: np.ndarray  # object array of token strings


@functools.lru_cache(maxsize=2)
def token_stream(corpus: Corpus) -> TokenStream:
    lengths = np.fromiter((t.count(" ") + 1 if t else 0 for t in corpus.texts), dtype=np.int64,
                          count=len(corpus.texts))
    words = " ".join(corpus.texts).split()
    codes, uniques = pd.factorize(pd.Series(words, dtype=object), sort=False)
    return TokenStream(codes.astype(np.int64), lengths, np.asarray(uniques, dtype=object))


def _split_token_mask(stream: TokenStream, indices: np.ndarray) -> np.ndarray:
    per_post = np.zeros(len(stream.lengths), dtype=bool)
    per_post[indices] = True
    return np.repeat(per_post, stream.lengths)


@functools.lru_cache(maxsize=8)
def vocabulary(corpus: Corpus, min_freq: int) -> list[str]:
    """Training-split tokens seen at least ``min_freq`` times, most frequent first; id 0 = unknown."""
    stream = token_stream(corpus)
    train_codes = stream.codes[_split_token_mask(stream, corpus.train_idx)]
    counts = np.bincount(train_codes, minlength=len(stream.uniques))
    kept = np.flatnonzero(counts >= min_freq)
    kept = kept[np.lexsort((kept, -counts[kept]))]
    return [UNKNOWN] + stream.uniques[kept].tolist()


@functools.lru_cache(maxsize=8)
def _encoded_stream(corpus: Corpus, min_freq: int) -> np.ndarray:
    stream = token_stream(corpus)
    ids = pd.Index(vocabulary(corpus, min_freq)[1:]).get_indexer(stream.uniques) + 1  # -1 → 0 = unknown
    return ids[stream.codes]


def bag_split(corpus: Corpus, min_freq: int, split: str) -> BagBatches:
    stream = token_stream(corpus)
    indices = corpus.split_indices(split)
    tokens = _encoded_stream(corpus, min_freq)[_split_token_mask(stream, indices)]
    return BagBatches(torch.from_numpy(tokens), torch.from_numpy(stream.lengths[indices]),
                      torch.from_numpy(corpus.labels[indices].astype(np.float32)))


def encode_texts(texts: list[str], vocab: list[str]) -> BagBatches:
    """Encode already-cleaned texts with a saved vocabulary (prediction time)."""
    words = " ".join(texts).split()
    lengths = np.fromiter((t.count(" ") + 1 if t else 0 for t in texts), dtype=np.int64, count=len(texts))
    ids = pd.Index(vocab[1:]).get_indexer(pd.Series(words, dtype=object)) + 1
    labels = torch.zeros((len(texts), 0))
    return BagBatches(torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(lengths), labels)


# ---------------------------------------------------------------------------------------------
# TF-IDF model


def make_vectorizer(max_features: int, ngram_max: int, sublinear_tf: bool) -> TfidfVectorizer:
    # Texts are already cleaned and tokenised: tokens are separated by single spaces.
    return TfidfVectorizer(lowercase=False, token_pattern=r"\S+", max_features=max_features,
                           ngram_range=(1, ngram_max), sublinear_tf=sublinear_tf, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def fitted_tfidf(corpus: Corpus, max_features: int, ngram_max: int, sublinear_tf: bool):
    """The vectorizer fitted on the training split and the CSR matrix of every post."""
    vectorizer = make_vectorizer(max_features, ngram_max, sublinear_tf)
    vectorizer.fit([corpus.texts[i] for i in corpus.train_idx])
    return vectorizer, vectorizer.transform(corpus.texts).tocsr()


def csr_split(corpus: Corpus, max_features: int, ngram_max: int, sublinear_tf: bool, split: str) -> CsrBatches:
    _, matrix = fitted_tfidf(corpus, max_features, ngram_max, sublinear_tf)
    indices = corpus.split_indices(split)
    return CsrBatches(matrix[indices], torch.from_numpy(corpus.labels[indices].astype(np.float32)))


def model_inputs(corpus: Corpus, params: dict, split: str):
    """The batches for ``split`` in the representation ``params['model']`` needs."""
    if params["model"] == "dense":
        return bag_split(corpus, params["min_freq"], split)
    return csr_split(corpus, params["max_features"], params["ngram_max"], params["sublinear_tf"], split)


def input_size(corpus: Corpus, params: dict) -> int:
    """Vocabulary size (dense) or number of TF-IDF features (tfidf)."""
    if params["model"] == "dense":
        return len(vocabulary(corpus, params["min_freq"]))
    vectorizer, _ = fitted_tfidf(corpus, params["max_features"], params["ngram_max"], params["sublinear_tf"])
    return len(vectorizer.vocabulary_)
