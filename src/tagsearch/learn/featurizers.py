"""The featurizer interface: posts → model inputs, fitted on training posts (``Featurizer``); the
kinds live in ``bags``, ``tfidf`` and ``encoder_features``, their registry in ``features``.

A featurizer is a pure fitted object, as scikit-learn's estimators are: its constructor only stores
its settings, ``fit``/``fit_corpus``/``from_state`` set what is learned (attributes ending in
``_``), and ``transform`` reads them and changes nothing (``check_is_fitted`` guards it). The
encoded corpus ``fit_corpus`` makes is kept by the ``FeatureCache``, not by the featurizer.
"""

from __future__ import annotations

from typing import ClassVar

from tagsearch.data.corpus import Corpus
from tagsearch.learn.feature_cache import FeatureCache


class NotFittedError(ValueError, AttributeError):
    """A featurizer was asked for what only fitting gives (``transform``, ``state``) before it was fitted."""


def check_is_fitted(featurizer: "Featurizer") -> None:
    """Raise ``NotFittedError`` unless ``featurizer`` has learned something (an attribute ending
    in ``_``, as scikit-learn's ``check_is_fitted`` decides)."""
    if not any(name.endswith("_") and not name.startswith("__") for name in vars(featurizer)):
        raise NotFittedError(f"this {type(featurizer).__name__} is not fitted yet; expected fit(texts), "
                             f"fit_corpus(corpus) or from_state(state) before using it")


class Featurizer:
    """Posts → model inputs, fitted on training posts (see ``tagsearch.learn.features``). A subclass sets
    ``kind``, ``input_kind`` and ``SETTINGS`` (its constructor's arguments, taken from the trial's
    parameters) and implements ``fit``, ``transform``, ``input_size``, ``state``, ``from_state``."""

    kind: ClassVar[str]
    input_kind: ClassVar[str]  # "bags" | "sparse" | "dense": the batches' type, the model's first layer
    SETTINGS: ClassVar[tuple[str, ...]]

    @classmethod
    def from_params(cls, params: dict) -> "Featurizer":
        return cls(**{name: params[name] for name in cls.SETTINGS if name in params})

    def settings(self) -> dict:
        return {name: getattr(self, name) for name in self.SETTINGS}

    def fit(self, texts: list[str]) -> "Featurizer":
        raise NotImplementedError

    def transform(self, texts: list[str]):
        """Batches of ``texts`` (already cleaned), without labels; the featurizer is left unchanged."""
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
        """Fit on ``corpus``'s training posts and encode all its posts once, into ``cache``
        (``cache.inputs(self, corpus, split)`` then serves a split; a fresh cache: the encoding is
        dropped). The kinds override it to start from the cache's token stream or encodings."""
        cache = FeatureCache() if cache is None else cache
        self.fit([corpus.texts[i] for i in corpus.train_idx])
        cache.keep_encoding(self, corpus, self.transform(corpus.texts))
        return self
