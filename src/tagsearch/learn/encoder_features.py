"""Pretrained sentence encoders as featurizers: their embeddings alone (``Embeddings``), or beside
TF-IDF in one sparse row (``EncoderTfidf``)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tagsearch.data.corpus import Corpus
from tagsearch.learn.batches import CsrBatches, DenseBatches, no_labels
from tagsearch.learn.feature_cache import FeatureCache
from tagsearch.learn.featurizers import Featurizer, check_is_fitted
from tagsearch.learn.tfidf import TfidfFeatures


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
        check_is_fitted(self)
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
        cache.keep_encoding(self, corpus, DenseBatches(rows, no_labels(len(corpus.texts))))
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
        check_is_fitted(self)
        return CsrBatches(self._joined(self.tfidf_.transform(texts).matrix, self.embeddings_.transform(texts).rows),
                          no_labels(len(texts)))

    def fit_corpus(self, corpus: Corpus, cache: FeatureCache | None = None) -> "EncoderTfidf":
        """Both parts through ``cache`` (a study's trials share the fitted TF-IDF and the encoding)."""
        cache = FeatureCache() if cache is None else cache
        tfidf, embeddings = (cache.fitted(part, corpus) for part in self._parts())
        self.tfidf_, self.embeddings_ = tfidf, embeddings
        matrix = self._joined(cache.encoding(tfidf, corpus).matrix, cache.encoding(embeddings, corpus).rows.numpy())
        cache.keep_encoding(self, corpus, CsrBatches(matrix, no_labels(len(corpus.texts))))
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
