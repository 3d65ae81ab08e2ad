"""Dense bags (``DenseBags``): each post as its distinct table rows — vocabulary ids and, with
``word_ngrams`` > 1, hashed word n-grams (fastText's buckets, rows after the vocabulary) — with
weights count/entries, whose weighted sum is the post's mean embedding (``batches.BagBatches``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from tagsearch.data.corpus import Corpus
from tagsearch.learn.batches import BagBatches, bag_counts, bags_of, no_labels
from tagsearch.learn.feature_cache import FeatureCache
from tagsearch.learn.featurizers import Featurizer, check_is_fitted
from tagsearch.learn.tokens import TokenStream, split_tokens, training_digest, vocabulary_of


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
        cache.keep_encoding(self, corpus, self._bags(stream))
        return self

    def transform(self, texts: list[str]) -> BagBatches:
        check_is_fitted(self)
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
        check_is_fitted(self)
        return {"kind": self.kind, **self.settings(), "vocabulary": self.vocabulary_}

    @classmethod
    def from_state(cls, state: dict) -> "DenseBags":
        featurizer = cls(state.get("min_freq", 1), state.get("word_ngrams", 1), state.get("buckets", 1))
        featurizer.vocabulary_ = state["vocabulary"]
        return featurizer
