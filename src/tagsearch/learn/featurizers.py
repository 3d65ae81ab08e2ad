"""The featurizer interface: posts → model inputs, fitted on training posts (``Featurizer``); the
kinds live in ``bags``, ``tfidf`` and ``encoder_features``, their registry in ``features``."""

from __future__ import annotations

from typing import ClassVar

from tagsearch.data.corpus import Corpus
from tagsearch.learn.batches import all_labels
from tagsearch.learn.feature_cache import FeatureCache


class Featurizer:
    """Posts → model inputs, fitted on training posts (see ``tagsearch.learn.features``). A subclass sets
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
