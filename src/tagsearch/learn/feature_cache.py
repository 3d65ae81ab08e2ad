"""The cache a study's trials share: every post's tokens, the n-gram counts, vocabularies, encodings
and the fitted featurizers, each keyed by what it is computed from (``FeatureCache``)."""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Callable

from tagsearch.data.corpus import Corpus, give_back_freed_memory
from tagsearch.learn.batches import all_labels
from tagsearch.learn.tokens import TokenStream, split_tokens, training_digest


class FeatureCache:
    """Features that several trainings on one data set share, owned by whoever runs them (a study's
    objective keeps one for all its trials; a one-off training uses a fresh one). Entries are
    keyed by what they are computed from — the data fingerprint, the training posts
    (``training_digest``), the settings — never by object identity; each kind keeps its ``KEEP``
    most recently used entries. A fitted featurizer's encoding of every post of its corpus
    (``keep_encoding``, by ``fit_corpus``) is kept for as long as that featurizer lives (or until
    ``clear``); ``inputs`` slices a split out of it."""

    KEEP = {"tokens": 2, "ngrams": 2, "vocabulary": 8, "fitted": 8, "embeddings": 2, "hidden": 2}

    def __init__(self, embedding_dir: str | None = None, device: str = "cpu"):
        self._entries: dict[str, OrderedDict] = {}
        self._encodings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # featurizer → (fingerprint, batches)
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
        self._encodings.clear()
        give_back_freed_memory()

    def keep_encoding(self, featurizer: "Featurizer", corpus: Corpus, batches) -> None:
        """Keep ``batches``, every post of ``corpus`` as ``featurizer`` (fitted on it) encodes them,
        with the corpus's labels, for as long as ``featurizer`` lives."""
        batches.labels = all_labels(corpus)
        self._encodings[featurizer] = (corpus.fingerprint, batches)

    def encoding(self, featurizer: "Featurizer", corpus: Corpus):
        """Every post of ``corpus`` as ``featurizer`` encoded them when it was fitted on it, with labels."""
        encoded_on, batches = self._encodings.get(featurizer, (None, None))
        if batches is None or encoded_on != corpus.fingerprint:
            raise ValueError(f"this {featurizer.kind} featurizer encoded data {encoded_on}, not {corpus.fingerprint}; "
                             f"expected fit_corpus on that corpus first")
        return batches

    def inputs(self, featurizer: "Featurizer", corpus: Corpus, split: str):
        """The batches of ``corpus``'s ``split`` ("train", "val" or "test"), with their labels, from
        the posts ``featurizer.fit_corpus`` encoded (its folds and ``train_and_val`` share them)."""
        return self.encoding(featurizer, corpus).take(corpus.split_indices(split))
