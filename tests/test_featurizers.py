"""Featurizers are pure fitted objects: nothing to transform before a fit, a transform that changes
nothing, and the encoded corpus kept by the ``FeatureCache`` rather than by the featurizer."""

from __future__ import annotations

import numpy as np
import pytest

from tagsearch.data.corpus import DataConfig, load_corpus
from tagsearch.learn import features
from tagsearch.learn.featurizers import NotFittedError

KINDS = [features.DenseBags(min_freq=1, word_ngrams=2, buckets=50), features.TfidfFeatures(min_df=1, ngram_max=2)]


@pytest.fixture(scope="module")
def corpus(tiny_csv):
    return load_corpus(DataConfig(path=str(tiny_csv)))


def snapshot(featurizer) -> dict:
    """The featurizer's attributes, each by identity (a transform that rebinds one shows)."""
    return {name: id(value) for name, value in vars(featurizer).items()}


@pytest.mark.parametrize("featurizer", KINDS, ids=lambda f: f.kind)
def test_transform_before_fit_raises_the_not_fitted_error(featurizer):
    unfitted = type(featurizer)(**featurizer.settings())
    with pytest.raises(NotFittedError, match=f"{type(featurizer).__name__} is not fitted yet"):
        unfitted.transform(["a post"])
    with pytest.raises(NotFittedError):
        unfitted.state()


@pytest.mark.parametrize("featurizer", KINDS, ids=lambda f: f.kind)
@pytest.mark.parametrize("how", ["fit", "fit_corpus", "from_state"])
def test_transform_leaves_the_featurizer_unchanged(featurizer, how, corpus):
    texts = [corpus.texts[i] for i in corpus.train_idx]
    fitted = type(featurizer)(**featurizer.settings())
    if how == "fit":
        fitted.fit(texts)
    elif how == "fit_corpus":
        fitted.fit_corpus(corpus)
    else:
        fitted = features.featurizer_from_state(type(featurizer)(**featurizer.settings()).fit(texts).state())
    before, state = snapshot(fitted), fitted.state()
    first = fitted.transform(corpus.texts[:50])
    second = fitted.transform(corpus.texts[:50])
    assert snapshot(fitted) == before
    assert fitted.state() == state
    assert len(first) == len(second) == 50


def test_the_cache_keeps_the_encoded_corpus_not_the_featurizer(corpus):
    cache = features.FeatureCache()
    fitted = cache.fitted(features.TfidfFeatures(min_df=1), corpus)
    assert not [name for name in vars(fitted) if name.startswith("encoded")]
    train = cache.inputs(fitted, corpus, "train")
    np.testing.assert_array_equal(train.labels.numpy(), corpus.labels[corpus.train_idx])
    with pytest.raises(ValueError, match="expected fit_corpus on that corpus first"):
        features.FeatureCache().inputs(fitted, corpus, "train")
    cache.clear()
    with pytest.raises(ValueError, match="expected fit_corpus on that corpus first"):
        cache.inputs(fitted, corpus, "train")
