"""TF-IDF (``TfidfFeatures``): n-grams of 1..``ngram_max`` codes counted from the token stream into
one posts × n-grams CSR matrix (``ngram_counts``), the columns kept as ``TfidfVectorizer(min_df,
max_features)`` keeps them, weighted by scikit-learn's ``TfidfTransformer``; ``transform`` is a
``TfidfVectorizer`` rebuilt from the saved n-grams and idf (``rebuilt_vectorizer``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfTransformer, TfidfVectorizer

from tagsearch.data.corpus import Corpus
from tagsearch.learn.batches import CsrBatches, no_labels
from tagsearch.learn.feature_cache import FeatureCache
from tagsearch.learn.featurizers import Featurizer, check_is_fitted
from tagsearch.learn.tokens import TokenStream, split_tokens


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
        self.vectorizer_ = rebuilt_vectorizer(self.state())
        return self

    def fit_corpus(self, corpus: Corpus, cache: FeatureCache | None = None) -> "TfidfFeatures":
        cache = FeatureCache() if cache is None else cache
        stream = cache.tokens(corpus)
        counts, keys = cache.get("ngrams", (corpus.fingerprint, self.ngram_max),
                                 lambda: ngram_counts(stream, self.ngram_max))
        cache.keep_encoding(self, corpus, CsrBatches(self._fit(stream, counts, keys, corpus.train_idx),
                                                     no_labels(len(corpus.texts))))
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
        return transformer.transform(counts).tocsr()

    def transform(self, texts: list[str]) -> CsrBatches:
        """``texts`` through the fitted ``TfidfVectorizer`` (``fit`` and ``from_state`` build it; after
        ``fit_corpus``, which never needs it, it is rebuilt for this call, as it is not kept)."""
        check_is_fitted(self)
        vectorizer = self.vectorizer_ if hasattr(self, "vectorizer_") else rebuilt_vectorizer(self.state())
        return CsrBatches(vectorizer.transform(texts).tocsr(), no_labels(len(texts)))

    @property
    def input_size(self) -> int:
        return len(self.vocabulary_)

    def state(self) -> dict:
        check_is_fitted(self)
        return {"kind": self.kind, **self.settings(), "norm": "l2", "vocabulary": self.vocabulary_,
                "idf": [float(v) for v in self.idf_]}

    @classmethod
    def from_state(cls, state: dict) -> "TfidfFeatures":
        featurizer = cls(**{name: state[name] for name in cls.SETTINGS})
        featurizer.vocabulary_, featurizer.idf_ = state["vocabulary"], np.asarray(state["idf"], dtype=np.float64)
        featurizer.vectorizer_ = rebuilt_vectorizer(state)
        return featurizer


def rebuilt_vectorizer(state: dict) -> TfidfVectorizer:
    """The training-time TF-IDF rebuilt from saved state (``TfidfFeatures.state``), without refitting."""
    vectorizer = TfidfVectorizer(lowercase=False, token_pattern=r"\S+", ngram_range=(1, state["ngram_max"]),
                                 sublinear_tf=state["sublinear_tf"], vocabulary=state["vocabulary"],
                                 dtype=np.float32)
    vectorizer.idf_ = np.asarray(state["idf"], dtype=np.float32)
    return vectorizer
