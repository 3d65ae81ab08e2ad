"""Turn a ``Corpus`` into model inputs, once, and serve shuffled batches without Python loops.

Every post's tokens are dictionary-encoded once (``token_stream``, in Arrow) and counted into one
posts × tokens CSR matrix (``_counts``); both models start from it.

Dense model: each post is its *distinct* vocabulary ids with weights count/length, whose weighted
sum is the post's mean embedding (a third fewer entries than the raw tokens); all posts' entries
live flat in one tensor with per-post start/length, so a batch is a contiguous slice of a
per-epoch permuted copy and ``EmbeddingBag`` gets ``(ids, offsets, weights)`` directly. TF-IDF
model: one scipy CSR matrix per split, built from the count matrix exactly as scikit-learn's
``TfidfVectorizer`` would (single tokens; n-grams go through scikit-learn); a batch is a row slice
of a per-epoch permuted copy, handed to torch as a sparse CSR tensor (never densified).

Expensive state is cached per process: the token stream and count matrix per corpus, the
vocabulary and bags per ``min_freq``, the fitted TF-IDF per ``(max_features, ngram_max, sublinear_tf)``.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from .data import Corpus

UNKNOWN = "<unk>"
# torch flags sparse CSR as beta on every construction; we only use its stable sparse × dense product.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
# Our sparse tensors are built from validated CSR/COO parts; opting out explicitly (the default
# anyway) stops torch from warning about it in every worker log.
torch.sparse.check_sparse_tensor_invariants.disable()


# ---------------------------------------------------------------------------------------------
# Batching


class BagBatches:
    """One split for the dense model: each post as its distinct token ids with weights count/length
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
    return split_tokens(corpus.texts)


def split_tokens(texts: list[str]) -> TokenStream:
    """Whitespace-separated tokens of every text, dictionary-encoded in first-seen order. Done in
    Arrow's C++ kernels: no Python string object per token (8M tokens: ~0.5 s instead of ~4 s)."""
    lists = pc.ascii_split_whitespace(pa.array(texts, type=pa.large_string()))
    words = pc.list_flatten(lists)
    posts = pc.list_parent_indices(lists).to_numpy()
    nonempty = pc.greater(pc.binary_length(words), 0)  # splitting "" or " a" yields empty strings
    words = words.filter(nonempty)
    posts = posts[nonempty.to_numpy(zero_copy_only=False)]
    encoded = words.dictionary_encode()
    return TokenStream(codes=encoded.indices.to_numpy().astype(np.int64),
                       lengths=np.bincount(posts, minlength=len(texts)).astype(np.int64),
                       uniques=encoded.dictionary.to_numpy(zero_copy_only=False).astype(object))


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


@functools.lru_cache(maxsize=2)
def _counts(corpus: Corpus) -> sp.csr_matrix:
    """Posts × token-stream codes matrix of token counts; both models' inputs start from it."""
    stream = token_stream(corpus)
    return bag_counts(stream.codes, stream.lengths, len(stream.uniques))


@functools.lru_cache(maxsize=8)
def _bags(corpus: Corpus, min_freq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every post's distinct vocabulary ids, their number per post, and weights count/length:
    the count matrix with codes mapped to ids (tokens out of the vocabulary merge into id 0)."""
    stream, counts = token_stream(corpus), _counts(corpus)
    ids_of_code = pd.Index(vocabulary(corpus, min_freq)[1:]).get_indexer(stream.uniques) + 1  # -1 → 0 = unknown
    by_id = sp.csr_matrix((counts.data, ids_of_code[counts.indices], counts.indptr),
                          shape=(counts.shape[0], len(vocabulary(corpus, min_freq))), copy=True)
    by_id.sum_duplicates()
    return bags_of(by_id, stream.lengths)


def bag_split(corpus: Corpus, min_freq: int, split: str) -> BagBatches:
    ids, lengths, weights = _bags(corpus, min_freq)
    indices = corpus.split_indices(split)
    in_split = np.zeros(len(lengths), dtype=bool)
    in_split[indices] = True
    entries = np.repeat(in_split, lengths)
    return BagBatches(torch.from_numpy(ids[entries]), torch.from_numpy(lengths[indices]),
                      torch.from_numpy(corpus.labels[indices].astype(np.float32)),
                      torch.from_numpy(weights[entries]))


def encode_texts(texts: list[str], vocab: list[str]) -> BagBatches:
    """Encode already-cleaned texts with a saved vocabulary (prediction time)."""
    stream = split_tokens(texts)
    ids = pd.Index(vocab[1:]).get_indexer(stream.uniques) + 1
    labels = torch.zeros((len(texts), 0))
    return BagBatches(torch.from_numpy(ids[stream.codes].astype(np.int64)), torch.from_numpy(stream.lengths), labels)


# ---------------------------------------------------------------------------------------------
# TF-IDF model


def make_vectorizer(max_features: int, ngram_max: int, sublinear_tf: bool) -> TfidfVectorizer:
    # Texts are already cleaned and tokenised: tokens are separated by single spaces.
    return TfidfVectorizer(lowercase=False, token_pattern=r"\S+", max_features=max_features,
                           ngram_range=(1, ngram_max), sublinear_tf=sublinear_tf, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def fitted_tfidf(corpus: Corpus, max_features: int, ngram_max: int, sublinear_tf: bool):
    """The vectorizer fitted on the training split and the CSR matrix of every post."""
    if ngram_max == 1:
        return unigram_tfidf(corpus, max_features, sublinear_tf)
    vectorizer = make_vectorizer(max_features, ngram_max, sublinear_tf)
    vectorizer.fit([corpus.texts[i] for i in corpus.train_idx])
    return vectorizer, vectorizer.transform(corpus.texts).tocsr()


def unigram_tfidf(corpus: Corpus, max_features: int, sublinear_tf: bool):
    """``fitted_tfidf`` for single tokens from the cached count matrix, without re-tokenising the
    corpus (~1 s instead of ~10 s on 47k posts). Same vocabulary, idf and matrix as scikit-learn's
    ``TfidfVectorizer.fit`` + ``transform`` (``tests/test_fastpath.py``): the same steps on the same
    arrays (alphabetical features; the ``max_features`` most frequent by scikit-learn's own argsort;
    smoothed idf in float32; ``normalize``). The returned vectorizer holds that vocabulary and idf,
    so it transforms new text exactly as a fitted one does."""
    terms, counts = token_stream(corpus).uniques, _counts(corpus)
    train = counts[corpus.train_idx]
    seen = np.flatnonzero(np.bincount(train.indices, minlength=len(terms)))
    features = seen[sorted(range(len(seen)), key=terms[seen].__getitem__)]  # alphabetical, as scikit-learn
    train = train[:, features]
    if len(features) > max_features:  # scikit-learn's _limit_features, on the same float32 column sums
        frequencies = np.asarray(train.sum(axis=0)).ravel()
        kept = np.zeros(len(features), dtype=bool)
        kept[(-frequencies).argsort()[:max_features]] = True
        features, train = features[kept], train[:, np.flatnonzero(kept)]
    vectorizer = make_vectorizer(max_features, 1, sublinear_tf)
    vectorizer.set_params(vocabulary={term: i for i, term in enumerate(terms[features])})
    vectorizer.idf_ = smoothed_idf(train)
    return vectorizer, tfidf_rows(counts[:, features], vectorizer.idf_, sublinear_tf)


def smoothed_idf(train_counts: sp.csr_matrix) -> np.ndarray:
    """``TfidfTransformer(smooth_idf=True).fit`` on float32 counts: log((n + 1) / (df + 1)) + 1."""
    df = np.bincount(train_counts.indices, minlength=train_counts.shape[1]).astype(np.float32) + 1.0
    idf = np.full_like(df, fill_value=train_counts.shape[0] + 1, dtype=np.float32) / df
    return np.log(idf, out=idf) + np.float32(1.0)


def tfidf_rows(counts: sp.csr_matrix, idf: np.ndarray, sublinear_tf: bool) -> sp.csr_matrix:
    """``TfidfTransformer.transform`` of a count matrix: optional 1 + log(tf), × idf, unit L2 rows."""
    matrix = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    matrix.sort_indices()
    if sublinear_tf:
        np.log(matrix.data, out=matrix.data)
        matrix.data += 1.0
    matrix.data *= idf[matrix.indices]
    return normalize(matrix, norm="l2", copy=False)


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
