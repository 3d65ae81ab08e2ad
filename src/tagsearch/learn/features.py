"""Featurizers: posts → model inputs, fitted on training posts; batches served without Python loops.

A featurizer is fitted scikit-learn style and saved as plain data:

- ``fit(texts) -> self`` learns from training posts; ``transform(texts)`` gives their batches
  (``BagBatches``, ``CsrBatches`` or ``DenseBatches``, with no labels);
- ``input_kind`` says what its batches hold, and so which first layer the model needs
  (``models.build_model``): ``"bags"`` (table rows with weights), ``"sparse"`` (CSR rows) or
  ``"dense"`` (float32 rows); ``input_size`` is the table's rows or the rows' width;
- ``state()`` is what ``preprocessing.json`` saves, and ``from_state(state)`` what ``predict`` loads;
- ``fit_corpus(corpus, cache)`` fits on the corpus's training split and encodes every post of the
  corpus once (``encoded_``); ``inputs(corpus, split)`` then slices a split's batches out of it.

``FEATURIZERS`` maps ``params["model"]`` (and a saved state's ``kind``) to the class: a new
representation is one more class registered there. The base ``fit_corpus`` is ``fit`` on the
training texts + ``transform`` of every text; the two below override it to start from a
``FeatureCache``'s token stream:

Dense bags (``DenseBags``): each post is its *distinct* table rows — vocabulary ids and, with
``word_ngrams`` > 1, hashed word n-grams (fastText's buckets, rows after the vocabulary) — with
weights count/entries, whose weighted sum is the post's mean embedding; all posts' entries live flat
in one tensor with per-post start/length, so a batch is a contiguous slice of a per-epoch permuted
copy and the bag product gets ``(ids, offsets, weights)`` directly.

TF-IDF (``TfidfFeatures``): n-grams of 1..``ngram_max`` codes counted into one posts × n-grams CSR
matrix, the columns kept as ``TfidfVectorizer(min_df, max_features)`` keeps them (fitted on the
training split), weighted by scikit-learn's ``TfidfTransformer``; a batch is a row slice of a
per-epoch permuted copy, handed to torch as a sparse CSR tensor (never densified). ``transform``
is a ``TfidfVectorizer`` rebuilt from the saved n-grams and idf (``rebuilt_vectorizer``).

What a study's trials share lives in a ``FeatureCache`` its caller owns (the objective keeps one
for its worker's trials): every post's tokens, dictionary-encoded once per data fingerprint
(``split_tokens``, in Arrow; the cross-validation folds of a corpus share them, and so the n-gram
counts), the vocabularies, and the fitted featurizers keyed by the fingerprint, the training
posts and the featurizer's settings.
"""

from __future__ import annotations

import importlib

import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

from tagsearch.data.corpus import Corpus, give_back_freed_memory
from tagsearch.errors import UserError

UNKNOWN = "<unk>"
# torch flags sparse CSR as beta on every construction; we only use its stable sparse × dense product.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
# Our sparse tensors are built from validated CSR/COO parts; opting out explicitly (the default
# anyway) stops torch from warning about it in every worker log.
torch.sparse.check_sparse_tensor_invariants.disable()


# ---------------------------------------------------------------------------------------------
# Batching: one split's rows + labels; ``take`` selects posts, ``batches`` serves them shuffled


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


# ---------------------------------------------------------------------------------------------
# Tokens, and the cache a study's trials share


@dataclass
class TokenStream:
    """All posts' tokens as codes into ``uniques`` (one factorize over the whole corpus)."""

    codes: np.ndarray  # int64, concatenated tokens of every post
    lengths: np.ndarray  # int64, tokens per post
    uniques: np.ndarray  # object array of token strings


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


def training_digest(corpus: Corpus) -> str:
    """Names the corpus's training posts (its folds and ``train_and_val`` share the fingerprint)."""
    return hashlib.sha1(np.ascontiguousarray(corpus.train_idx, dtype=np.int64).tobytes()).hexdigest()[:16]


class FeatureCache:
    """Features that several trainings on one data set share, owned by whoever runs them (a study's
    objective keeps one for all its trials; a one-off training uses a fresh one). Entries are
    keyed by what they are computed from — the data fingerprint, the training posts
    (``training_digest``), the settings — never by object identity; each kind keeps its ``KEEP``
    most recently used entries."""

    KEEP = {"tokens": 2, "ngrams": 2, "vocabulary": 8, "fitted": 8, "embeddings": 2, "hidden": 2}

    def __init__(self, embedding_dir: str | None = None, device: str = "cpu"):
        self._entries: dict[str, OrderedDict] = {}
        self.embedding_dir = embedding_dir  # where encoders' embeddings of a corpus persist (None: in memory)
        self.device = device  # where an encoder runs (a CUDA worker encodes on its GPU)
        self.encoding_guard = None  # encoder.Guard: may stop an encoding part-way (the search's plan)
        self.encoding_wait = True  # False: embedding_cache.Busy while another process encodes

    def get(self, kind: str, key: tuple, compute: Callable[[], object]):
        """The entry ``key`` of ``kind``, computed by ``compute()`` when absent."""
        entries = self._entries.setdefault(kind, OrderedDict())
        if key in entries:
            entries.move_to_end(key)
            return entries[key]
        value = compute()
        while len(entries) >= self.KEEP.get(kind, 4):
            entries.popitem(last=False)
        entries[key] = value
        return value

    def tokens(self, corpus: Corpus) -> TokenStream:
        """Every post's tokens, encoded once per data set (the folds of a corpus share its texts)."""
        def compute() -> TokenStream:
            stream = split_tokens(corpus.texts)
            give_back_freed_memory()  # Arrow's split and dictionary encoding: freed, but kept by its allocator
            return stream

        return self.get("tokens", (corpus.fingerprint,), compute)

    def fitted(self, featurizer: "Featurizer", corpus: Corpus) -> "Featurizer":
        """A featurizer with ``featurizer``'s settings fitted on ``corpus``'s training split
        (``fit_corpus``), or the equal one fitted on the same posts before. ``featurizer`` itself
        stays unfitted: one object may ask for several splits (the folds) and get one fit each."""
        settings = featurizer.settings()
        key = (featurizer.kind, tuple(sorted(settings.items())), corpus.fingerprint, training_digest(corpus))
        return self.get("fitted", key, lambda: type(featurizer)(**settings).fit_corpus(corpus, self))

    def clear(self) -> None:
        """Forget every entry and give its memory back (a one-off training once its inputs are built)."""
        self._entries.clear()
        give_back_freed_memory()


# ---------------------------------------------------------------------------------------------
# Featurizers


class Featurizer:
    """Posts → model inputs, fitted on training posts (see the module docstring). A subclass sets
    ``kind``, ``input_kind`` and ``SETTINGS`` (its constructor's arguments, taken from the trial's
    parameters) and implements ``fit``, ``transform``, ``input_size``, ``state``, ``from_state``."""

    kind: ClassVar[str]
    input_kind: ClassVar[str]  # "bags" | "sparse" | "dense": the batches' type, the model's first layer
    SETTINGS: ClassVar[tuple[str, ...]]
    encoded_ = None  # every post of the corpus fitted on, as batches (fit_corpus)
    encoded_on_: str | None = None  # that corpus's fingerprint

    @classmethod
    def from_params(cls, params: dict) -> "Featurizer":
        return cls(**{name: params[name] for name in cls.SETTINGS if name in params})

    def settings(self) -> dict:
        return {name: getattr(self, name) for name in self.SETTINGS}

    def fit(self, texts: list[str]) -> "Featurizer":
        raise NotImplementedError

    def transform(self, texts: list[str]):
        """Batches of ``texts`` (already cleaned), without labels."""
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        raise NotImplementedError

    def state(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict) -> "Featurizer":
        raise NotImplementedError

    def fit_corpus(self, corpus: Corpus, cache: FeatureCache | None = None) -> "Featurizer":
        """Fit on ``corpus``'s training posts and encode all its posts once (``encoded_``)."""
        self.fit([corpus.texts[i] for i in corpus.train_idx])
        self._encoded(self.transform(corpus.texts), corpus)
        return self

    def _encoded(self, batches, corpus: Corpus) -> None:
        batches.labels = all_labels(corpus)
        self.encoded_, self.encoded_on_ = batches, corpus.fingerprint

    def inputs(self, corpus: Corpus, split: str):
        """The batches of ``corpus``'s ``split`` ("train", "val" or "test"), with their labels, from
        the posts ``fit_corpus`` encoded (its folds and ``train_and_val`` share them)."""
        if self.encoded_ is None or self.encoded_on_ != corpus.fingerprint:
            raise ValueError(f"this {self.kind} featurizer encoded data {self.encoded_on_}, not {corpus.fingerprint}; "
                             f"expected fit_corpus on that corpus first")
        return self.encoded_.take(corpus.split_indices(split))

    def forget_encoding(self) -> None:
        """Drop the encoded posts (their batches are built): ``inputs`` needs ``fit_corpus`` again."""
        self.encoded_ = self.encoded_on_ = None


def vocabulary_of(stream: TokenStream, posts: np.ndarray, min_freq: int) -> list[str]:
    """Tokens of ``posts`` seen at least ``min_freq`` times, most frequent first; id 0 = unknown."""
    per_post = np.zeros(len(stream.lengths), dtype=bool)
    per_post[posts] = True
    counts = np.bincount(stream.codes[np.repeat(per_post, stream.lengths)], minlength=len(stream.uniques))
    kept = np.flatnonzero(counts >= min_freq)
    kept = kept[np.lexsort((kept, -counts[kept]))]
    return [UNKNOWN] + stream.uniques[kept].tolist()


# ---------------------------------------------------------------------------------------------
# Dense bags


def ids_of(uniques: np.ndarray, vocab: list[str]) -> np.ndarray:
    """Vocabulary id of each distinct token string (0 = unknown)."""
    return pd.Index(vocab[1:]).get_indexer(uniques) + 1


def hashed_ngrams(ids: np.ndarray, lengths: np.ndarray, word_ngrams: int, buckets: int):
    """fastText's word n-grams: every run of 2..``word_ngrams`` consecutive known ids within a
    post, hashed into ``buckets``. Returns (post of each n-gram, its bucket)."""
    post = np.repeat(np.arange(len(lengths)), lengths)
    posts, found = [], []
    key = ids.astype(np.uint64)
    for n in range(2, word_ngrams + 1):
        width = len(ids) - n + 1
        if width <= 0:
            break
        valid = (post[n - 1:] == post[:width]) & np.all([ids[k:k + width] > 0 for k in range(n)], axis=0)
        key = key[:width] * np.uint64(1_000_003) + ids[n - 1:].astype(np.uint64)  # wraps: a polynomial hash
        mixed = key ^ (key >> np.uint64(29))
        mixed *= np.uint64(0x9E3779B97F4A7C15)
        posts.append(post[:width][valid])
        found.append((mixed[valid] >> np.uint64(17)) % np.uint64(buckets))
    if not posts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(posts), np.concatenate(found).astype(np.int64)


def bag_arrays(ids: np.ndarray, lengths: np.ndarray, n_vocab: int, word_ngrams: int, buckets: int):
    """Every post's distinct table rows (vocabulary ids, then hashed n-grams at ``n_vocab + bucket``),
    their number per post, and weights count/entries: a weighted sum is the post's mean bag.

    The words' counts are built as CSR straight from the flat ids (already grouped by post, so no
    per-token row array and no COO conversion); hashed n-grams are added as a second matrix."""
    n_rows = n_vocab + (buckets if word_ngrams > 1 else 0)
    counts = bag_counts(ids, lengths, n_rows)
    entries = np.asarray(lengths, dtype=np.int64)
    if word_ngrams > 1:
        gram_posts, gram_buckets = hashed_ngrams(ids, lengths, word_ngrams, buckets)
        grams = sp.csr_matrix((np.ones(len(gram_posts), dtype=np.float32), (gram_posts, gram_buckets + n_vocab)),
                              shape=counts.shape)
        counts = counts + grams
        counts.sum_duplicates()
        entries = entries + np.bincount(gram_posts, minlength=len(lengths))
    return bags_of(counts, np.maximum(entries, 1))


class DenseBags(Featurizer):
    """Posts → bags of vocabulary ids (tokens seen ``min_freq`` times in training) and, with
    ``word_ngrams`` > 1, of hashed word n-grams in ``buckets`` extra table rows."""

    kind, input_kind = "dense", "bags"
    SETTINGS = ("min_freq", "word_ngrams", "buckets")

    def __init__(self, min_freq: int = 1, word_ngrams: int = 1, buckets: int = 1):
        self.min_freq, self.word_ngrams, self.buckets = min_freq, word_ngrams, buckets

    def fit(self, texts: list[str]) -> "DenseBags":
        """The vocabulary of ``texts`` (equal counts: first seen first; ``fit_corpus``: first seen in the corpus)."""
        stream = split_tokens(texts)
        self.vocabulary_ = vocabulary_of(stream, np.arange(len(texts)), self.min_freq)
        return self

    def fit_corpus(self, corpus: Corpus, cache: FeatureCache | None = None) -> "DenseBags":
        cache = FeatureCache() if cache is None else cache
        stream = cache.tokens(corpus)
        self.vocabulary_ = cache.get("vocabulary", (corpus.fingerprint, training_digest(corpus), self.min_freq),
                                     lambda: vocabulary_of(stream, corpus.train_idx, self.min_freq))
        self._encoded(self._bags(stream), corpus)
        return self

    def transform(self, texts: list[str]) -> BagBatches:
        return self._bags(split_tokens(texts))

    def _bags(self, stream: TokenStream) -> BagBatches:
        ids = ids_of(stream.uniques, self.vocabulary_)[stream.codes]
        tokens, lengths, weights = bag_arrays(ids, stream.lengths, len(self.vocabulary_), self.word_ngrams,
                                              self.buckets)
        return BagBatches(torch.from_numpy(tokens), torch.from_numpy(lengths), no_labels(len(lengths)),
                          torch.from_numpy(weights))

    @property
    def input_size(self) -> int:
        """Rows of the embedding table: the vocabulary, plus the n-gram buckets."""
        return len(self.vocabulary_) + (self.buckets if self.word_ngrams > 1 else 0)

    def state(self) -> dict:
        return {"kind": self.kind, **self.settings(), "vocabulary": self.vocabulary_}

    @classmethod
    def from_state(cls, state: dict) -> "DenseBags":
        featurizer = cls(state.get("min_freq", 1), state.get("word_ngrams", 1), state.get("buckets", 1))
        featurizer.vocabulary_ = state["vocabulary"]
        return featurizer


# ---------------------------------------------------------------------------------------------
# TF-IDF: n-gram counts from the token stream, then scikit-learn's TfidfTransformer


def ngram_counts(stream: TokenStream, ngram_max: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Posts × n-grams (1..``ngram_max`` tokens) count matrix over every n-gram of the stream, and
    the n-grams' keys (``ngram_strings`` spells them). Built from the stream's integer codes, so
    the text is never tokenised again."""
    n_codes = np.int64(len(stream.uniques) + 1)
    post = np.repeat(np.arange(len(stream.lengths)), stream.lengths)
    posts, keys, key = [post], [stream.codes], stream.codes.copy()
    for n in range(2, ngram_max + 1):
        width = len(key) - 1
        key = key[:width] * n_codes + stream.codes[n - 1:]
        valid = post[n - 1:] == post[:len(key)]
        posts.append(post[:len(key)][valid])
        keys.append(key[valid] + np.int64(n_codes ** n))  # offset: no collision across orders
    key_all = np.concatenate(keys)
    uniques, columns = np.unique(key_all, return_inverse=True)
    counts = sp.csr_matrix((np.ones(len(key_all), dtype=np.float32), (np.concatenate(posts), columns)),
                           shape=(len(stream.lengths), len(uniques)))
    counts.sum_duplicates()
    return counts, uniques


def ngram_strings(stream: TokenStream, ngram_max: int, keys: np.ndarray) -> list[str]:
    """The n-grams ``keys`` of ``ngram_counts`` as strings (tokens joined by a space, as
    scikit-learn's analyzer writes them)."""
    n_codes = np.int64(len(stream.uniques) + 1)
    strings = []
    for key in keys.tolist():
        order = 1
        while order < ngram_max and key >= n_codes ** (order + 1):
            order += 1
        key -= n_codes ** order if order > 1 else 0
        codes = []
        for _ in range(order):
            key, code = divmod(key, int(n_codes))
            codes.append(code)
        strings.append(" ".join(stream.uniques[c] for c in reversed(codes)))
    return strings


class TfidfFeatures(Featurizer):
    """Posts → TF-IDF rows, fitted on training posts as ``TfidfVectorizer(ngram_range=(1,
    ngram_max), min_df, max_features (0 = all), sublinear_tf)`` would fit it: n-grams seen in at
    least ``min_df`` training posts, the ``max_features`` most frequent of them; smoothed idf,
    unit rows."""

    kind, input_kind = "tfidf", "sparse"
    SETTINGS = ("max_features", "min_df", "ngram_max", "sublinear_tf")

    def __init__(self, max_features: int = 0, min_df: int = 1, ngram_max: int = 1, sublinear_tf: bool = False):
        self.max_features, self.min_df = max_features, min_df
        self.ngram_max, self.sublinear_tf = ngram_max, sublinear_tf

    def fit(self, texts: list[str]) -> "TfidfFeatures":
        stream = split_tokens(texts)
        self._fit(stream, *ngram_counts(stream, self.ngram_max), np.arange(len(texts)))
        return self

    def fit_corpus(self, corpus: Corpus, cache: FeatureCache | None = None) -> "TfidfFeatures":
        cache = FeatureCache() if cache is None else cache
        stream = cache.tokens(corpus)
        counts, keys = cache.get("ngrams", (corpus.fingerprint, self.ngram_max),
                                 lambda: ngram_counts(stream, self.ngram_max))
        self._encoded(CsrBatches(self._fit(stream, counts, keys, corpus.train_idx), no_labels(len(corpus.texts))),
                      corpus)
        return self

    def _fit(self, stream: TokenStream, counts: sp.csr_matrix, keys: np.ndarray, train: np.ndarray) -> sp.csr_matrix:
        """Fit on the ``train`` rows of ``counts``; returns every row transformed."""
        train_counts = counts[train]
        df = np.bincount(train_counts.indices, minlength=counts.shape[1])
        kept = np.flatnonzero(df >= self.min_df)
        if self.max_features and len(kept) > self.max_features:
            frequency = np.asarray(train_counts[:, kept].sum(axis=0)).ravel()
            kept = np.sort(kept[np.argsort(-frequency, kind="stable")[:self.max_features]])
        counts = counts[:, kept]
        transformer = TfidfTransformer(sublinear_tf=self.sublinear_tf).fit(counts[train])
        self.vocabulary_, self.idf_ = ngram_strings(stream, self.ngram_max, keys[kept]), transformer.idf_
        self._vectorizer = None
        return transformer.transform(counts).tocsr()

    def transform(self, texts: list[str]) -> CsrBatches:
        if getattr(self, "_vectorizer", None) is None:
            self._vectorizer = rebuilt_vectorizer(self.state())
        return CsrBatches(self._vectorizer.transform(texts).tocsr(), no_labels(len(texts)))

    @property
    def input_size(self) -> int:
        return len(self.vocabulary_)

    def state(self) -> dict:
        return {"kind": self.kind, **self.settings(), "norm": "l2", "vocabulary": self.vocabulary_,
                "idf": [float(v) for v in self.idf_]}

    @classmethod
    def from_state(cls, state: dict) -> "TfidfFeatures":
        featurizer = cls(**{name: state[name] for name in cls.SETTINGS})
        featurizer.vocabulary_, featurizer.idf_ = state["vocabulary"], np.asarray(state["idf"], dtype=np.float64)
        return featurizer


def rebuilt_vectorizer(state: dict) -> TfidfVectorizer:
    """The training-time TF-IDF rebuilt from saved state (``TfidfFeatures.state``), without refitting."""
    vectorizer = TfidfVectorizer(lowercase=False, token_pattern=r"\S+", ngram_range=(1, state["ngram_max"]),
                                 sublinear_tf=state["sublinear_tf"], vocabulary=state["vocabulary"],
                                 dtype=np.float32)
    vectorizer.idf_ = np.asarray(state["idf"], dtype=np.float32)
    return vectorizer


# ---------------------------------------------------------------------------------------------
# Pretrained sentence encoders: embeddings alone, or beside TF-IDF


class Embeddings(Featurizer):
    """Posts → a frozen pretrained sentence encoder's embeddings (L2-normalised float32 rows).
    Nothing is learned from the posts: ``fit`` loads the encoder (``encoder.SentenceEncoder``), and
    a corpus is encoded once per host and data set (its ``EmbeddingCache`` under the cache's
    ``embedding_dir``), whatever the trial."""

    kind, input_kind = "encoder", "dense"
    SETTINGS = ("encoder", "max_seq_length")

    def __init__(self, encoder: str = "sentence-transformers/all-MiniLM-L6-v2", max_seq_length: int = 256,
                 device: str = "cpu"):
        self.encoder, self.max_seq_length, self.device = encoder, max_seq_length, device

    def fit(self, texts: list[str] | None = None) -> "Embeddings":
        from tagsearch.learn.encoder import SentenceEncoder

        self.encoder_ = SentenceEncoder(self.encoder, self.max_seq_length, device=self.device).fit()
        return self

    def transform(self, texts: list[str]) -> DenseBatches:
        return DenseBatches(self.encoder_.transform(texts), no_labels(len(texts)))

    def fit_corpus(self, corpus: Corpus, cache: FeatureCache | None = None) -> "Embeddings":
        """Every post's embedding, from the host's ``EmbeddingCache`` or encoded into it, shared in
        ``cache`` across trials and folds (nothing here depends on which posts are training posts)."""
        cache = FeatureCache() if cache is None else cache
        self.device = cache.device
        self.fit()
        key = (self.encoder, self.encoder_.weights_hash_, self.max_seq_length, corpus.fingerprint)
        rows = cache.get("embeddings", key, lambda: self.encoder_.transform_corpus(
            corpus.texts, corpus.fingerprint, cache.embedding_dir, cache.encoding_guard, cache.encoding_wait))
        self._encoded(DenseBatches(rows, no_labels(len(corpus.texts))), corpus)
        return self

    @property
    def input_size(self) -> int:
        return self.encoder_.dim_

    def state(self) -> dict:
        return {**self.encoder_.state(), "kind": self.kind, "encoder": self.encoder}

    @classmethod
    def from_state(cls, state: dict) -> "Embeddings":
        from tagsearch.learn.encoder import SentenceEncoder

        featurizer = cls(state["encoder"], int(state["max_seq_length"]))
        featurizer.encoder_ = SentenceEncoder.from_state(state)
        return featurizer


class EncoderTfidf(Featurizer):
    """A sentence encoder's embedding times ``encoder_weight`` beside the post's TF-IDF row, as one
    sparse row: the linear models' winning representation on small real sets (issue #20). The
    weight sets how much the dense block counts next to the unit-length TF-IDF row."""

    kind, input_kind = "encoder_tfidf", "sparse"
    SETTINGS = TfidfFeatures.SETTINGS + Embeddings.SETTINGS + ("encoder_weight",)

    def __init__(self, max_features: int = 0, min_df: int = 1, ngram_max: int = 1, sublinear_tf: bool = False,
                 encoder: str = "sentence-transformers/all-MiniLM-L6-v2", max_seq_length: int = 256,
                 encoder_weight: float = 0.5):
        self.max_features, self.min_df, self.ngram_max, self.sublinear_tf = max_features, min_df, ngram_max, sublinear_tf
        self.encoder, self.max_seq_length, self.encoder_weight = encoder, max_seq_length, encoder_weight

    def _parts(self) -> tuple[TfidfFeatures, Embeddings]:
        settings = self.settings()
        return (TfidfFeatures(**{k: settings[k] for k in TfidfFeatures.SETTINGS}),
                Embeddings(**{k: settings[k] for k in Embeddings.SETTINGS}))

    def fit(self, texts: list[str]) -> "EncoderTfidf":
        tfidf, embeddings = self._parts()
        self.tfidf_, self.embeddings_ = tfidf.fit(texts), embeddings.fit()
        return self

    def _joined(self, tfidf: sp.csr_matrix, rows) -> sp.csr_matrix:
        dense = np.asarray(rows, dtype=np.float32) * np.float32(self.encoder_weight)
        return sp.hstack([tfidf.astype(np.float32), sp.csr_matrix(dense)], format="csr")

    def transform(self, texts: list[str]) -> CsrBatches:
        return CsrBatches(self._joined(self.tfidf_.transform(texts).matrix, self.embeddings_.transform(texts).rows),
                          no_labels(len(texts)))

    def fit_corpus(self, corpus: Corpus, cache: FeatureCache | None = None) -> "EncoderTfidf":
        """Both parts through ``cache`` (a study's trials share the fitted TF-IDF and the encoding)."""
        cache = FeatureCache() if cache is None else cache
        tfidf, embeddings = (cache.fitted(part, corpus) for part in self._parts())
        self.tfidf_, self.embeddings_ = tfidf, embeddings
        matrix = self._joined(tfidf.encoded_.matrix, embeddings.encoded_.rows.numpy())
        self._encoded(CsrBatches(matrix, no_labels(len(corpus.texts))), corpus)
        return self

    @property
    def input_size(self) -> int:
        return self.tfidf_.input_size + self.embeddings_.input_size

    def state(self) -> dict:
        return {"kind": self.kind, "encoder_weight": self.encoder_weight, "tfidf": self.tfidf_.state(),
                "embeddings": self.embeddings_.state()}

    @classmethod
    def from_state(cls, state: dict) -> "EncoderTfidf":
        tfidf, embeddings = TfidfFeatures.from_state(state["tfidf"]), Embeddings.from_state(state["embeddings"])
        featurizer = cls(**tfidf.settings(), **embeddings.settings(), encoder_weight=float(state["encoder_weight"]))
        featurizer.tfidf_, featurizer.embeddings_ = tfidf, embeddings
        return featurizer


# ---------------------------------------------------------------------------------------------
# Registry


FEATURIZERS: dict[str, type[Featurizer]] = {"dense": DenseBags, "tfidf": TfidfFeatures, "encoder": Embeddings,
                                            "encoder_tfidf": EncoderTfidf}


# kinds whose module registers their featurizer and model on import (imported at the first lookup)
REGISTERED_ON_IMPORT = {"finetune": "tagsearch.learn.finetune"}


def featurizer_class(kind: str) -> type[Featurizer]:
    """The featurizer class of a model kind (a kind of ``REGISTERED_ON_IMPORT`` is imported here)."""
    if kind not in FEATURIZERS and kind in REGISTERED_ON_IMPORT:
        importlib.import_module(REGISTERED_ON_IMPORT[kind])
    try:
        return FEATURIZERS[kind]
    except KeyError:
        known = dict.fromkeys([*FEATURIZERS, *REGISTERED_ON_IMPORT])
        raise UserError(f"unknown features kind {kind!r}; expected one of {', '.join(known)}") from None


def featurizer_for(params: dict) -> Featurizer:
    """The (unfitted) featurizer of ``params["model"]``, with its settings from ``params``."""
    return featurizer_class(params["model"]).from_params(params)


def featurizer_from_state(state: dict) -> Featurizer:
    """The fitted featurizer ``Featurizer.state`` saved (``preprocessing.json``)."""
    try:
        return featurizer_class(state.get("kind")).from_state(state)
    except KeyError as missing:
        raise UserError(f"saved {state.get('kind')} features lack {missing}; expected a preprocessing.json written "
                        f"by 'tagsearch retrain'") from None
