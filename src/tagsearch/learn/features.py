"""Featurizers: posts → model inputs, fitted on training posts; batches served without Python loops.

This module is the kinds' registry (``FEATURIZERS``, ``featurizer_for``, ``featurizer_from_state``)
and names the parts, which live one concern per module: ``batches`` (the batch containers),
``tokens`` (the token stream, vocabularies), ``feature_cache`` (``FeatureCache``), ``featurizers``
(the ``Featurizer`` interface), ``bags``, ``tfidf`` and ``encoder_features`` (the kinds).

A featurizer is fitted scikit-learn style and saved as plain data:

- ``fit(texts) -> self`` learns from training posts; ``transform(texts)`` gives their batches
  (``BagBatches``, ``CsrBatches`` or ``DenseBatches``, with no labels) and changes nothing (before
  any fit it raises ``featurizers.NotFittedError``);
- ``input_kind`` says what its batches hold, and so which first layer the model needs
  (``models.build_model``): ``"bags"`` (table rows with weights), ``"sparse"`` (CSR rows) or
  ``"dense"`` (float32 rows); ``input_size`` is the table's rows or the rows' width;
- ``state()`` is what ``preprocessing.json`` saves, and ``from_state(state)`` what ``predict`` loads;
- ``fit_corpus(corpus, cache)`` fits on the corpus's training split and encodes every post of the
  corpus once, into the cache; ``cache.inputs(featurizer, corpus, split)`` then slices a split's
  batches out of it.

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

from tagsearch.errors import UserError
from tagsearch.learn.bags import DenseBags, bag_arrays, hashed_ngrams, ids_of  # noqa: F401
from tagsearch.learn.batches import (BagBatches, CsrBatches, DenseBatches, all_labels, bag_counts,  # noqa: F401
                                     bags_of, dedupe_bags, no_labels, permuted_entries)
from tagsearch.learn.encoder_features import Embeddings, EncoderTfidf  # noqa: F401
from tagsearch.learn.feature_cache import FeatureCache  # noqa: F401
from tagsearch.learn.featurizers import Featurizer
from tagsearch.learn.tfidf import TfidfFeatures, ngram_counts, ngram_strings, rebuilt_vectorizer  # noqa: F401
from tagsearch.learn.tokens import UNKNOWN, TokenStream, split_tokens, training_digest, vocabulary_of  # noqa: F401


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
