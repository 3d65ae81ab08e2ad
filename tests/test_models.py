"""The models' shapes, and the training loop's contracts: pos_weight, early stopping, the hook."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tagsearch.learn import features
from tagsearch.learn import train
from tagsearch.data.corpus import DataConfig, load_corpus
from tagsearch.learn.models import DenseTagger, TfidfTagger, VectorTagger, build_model
from tagsearch.study.spec import SEED_DEFAULTS


@pytest.fixture(scope="module")
def corpus(tiny_csv):
    return load_corpus(DataConfig(path=str(tiny_csv)))


def small_params(model: str, **extra) -> dict:
    return {**SEED_DEFAULTS, "model": model, "embedding_dim": 16, "hidden1": 12, "hidden2": 8,
            "max_features": 300, "batch_size": 64, **extra}


@pytest.mark.parametrize("model", ["dense", "tfidf"])
def test_forward_shapes_on_real_batches(corpus, model):
    params = small_params(model)
    model_, data, _, featurizer = train.build(corpus, params)
    inputs, labels = next(data.batches(32))
    assert model_(inputs).shape == (32, len(corpus.tag_names)) == labels.shape
    assert isinstance(model_, DenseTagger if model == "dense" else TfidfTagger)
    assert type(featurizer) is features.FEATURIZERS[model]


def test_dense_architecture_is_embeddingbag_then_two_blocks():
    net = build_model(small_params("dense"), input_size=100, n_tags=10, input_kind="bags")
    assert net.embedding.mode == "sum" and net.embedding.sparse  # a weighted sum: the mean bag
    kinds = [type(m).__name__ for m in net.head.block1] + [type(m).__name__ for m in net.head.block2]
    assert kinds == ["Linear", "WarmBatchNorm1d", "ReLU", "Dropout"] * 2
    assert net.head.out.out_features == 10
    assert net.embedding.weight.shape == (100, 16)


def test_dense_rows_train_a_head_on_float_vectors():
    """The "dense" input kind (a featurizer giving float rows, such as sentence embeddings)."""
    rows, labels = torch.randn(40, 6), (torch.rand(40, 3) > 0.5).float()
    data = features.DenseBatches(rows, labels)
    net = build_model(small_params("dense", hidden_layers=1), input_size=6, n_tags=3, input_kind="dense")
    assert isinstance(net, VectorTagger)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    batches = list(data.batches(16, order))
    assert [len(y) for _, y in batches] == [16, 16, 8]
    assert torch.equal(torch.cat([x for x, _ in batches]), rows[order])
    assert torch.equal(data.take(np.array([5, 2])).rows, rows[[5, 2]])
    result = train.fit(net, data, data, small_params("dense", hidden_layers=1), max_epochs=2, patience=None)
    assert result.epochs_run == 2 and net(rows).shape == (40, 3)


def test_tfidf_input_stays_sparse(corpus):
    _, data, _, _ = train.build(corpus, small_params("tfidf"))
    inputs, _ = next(data.batches(16))
    assert inputs.layout == torch.sparse_csr


def test_vocabulary_is_fitted_on_train_only_with_unknown_at_zero(corpus):
    vocab = features.DenseBags(min_freq=1).fit_corpus(corpus).vocabulary_
    assert vocab[0] == features.UNKNOWN
    train_words = {w for i in corpus.train_idx for w in corpus.texts[i].split()}
    assert set(vocab[1:]) == train_words
    assert len(features.DenseBags(min_freq=3).fit_corpus(corpus).vocabulary_) < len(vocab)
    alone = features.DenseBags(min_freq=1).fit([corpus.texts[i] for i in corpus.train_idx]).vocabulary_
    assert alone[0] == features.UNKNOWN and set(alone) == set(vocab)  # ties: first seen in the texts given


def test_feature_cache_shares_fits_between_folds_and_trials(corpus):
    """Equal settings on the same training posts are fitted once; other posts or settings refit."""
    from tagsearch.data.corpus import cv_folds

    cache, params = features.FeatureCache(), small_params("tfidf", max_features=0)
    folds = cv_folds(corpus, 3)
    first = [cache.fitted(features.featurizer_for(params), fold) for fold in folds]
    assert [cache.fitted(features.featurizer_for(params), fold) for fold in folds] == first  # the same objects
    assert len({id(f) for f in first}) == 3
    other = cache.fitted(features.featurizer_for({**params, "min_df": 2}), folds[0])
    assert other is not first[0] and other.input_size < first[0].input_size
    counts = cache._entries["ngrams"]
    assert len(counts) == 1 and len(cache._entries["tokens"]) == 1  # shared by every fold and setting
    cache.clear()
    assert cache.fitted(features.featurizer_for(params), folds[0]) is not first[0]


def test_one_featurizer_asked_for_every_fold_gets_one_fit_per_fold(corpus):
    """compare's baseline asks with one featurizer object for all folds: each fold must get its own
    fit (fitting the asking object in place once left every fold with the last fold's vocabulary)."""
    from tagsearch.data.corpus import cv_folds

    cache, asking, folds = features.FeatureCache(), features.TfidfFeatures(min_df=1, ngram_max=2), cv_folds(corpus, 3)
    fitted = [cache.fitted(asking, fold) for fold in folds]
    alone = [features.TfidfFeatures(min_df=1, ngram_max=2).fit_corpus(fold) for fold in folds]
    assert [f.vocabulary_ for f in fitted] == [f.vocabulary_ for f in alone]
    assert len({len(f.vocabulary_) for f in fitted}) > 1  # the folds' training posts differ


def test_pos_weight_schemes():
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.uint8)
    np.testing.assert_allclose(train.pos_weight(labels, "seed"), [4 / (2 * 3), 4 / (2 * 1)], rtol=1e-6)
    np.testing.assert_allclose(train.pos_weight(labels, "neg_pos"), [1 / 3, 3.0], rtol=1e-6)
    assert train.pos_weight(labels, "none") is None
    rare = np.zeros((1000, 1), dtype=np.uint8)
    rare[0] = 1
    assert float(train.pos_weight(rare, "neg_pos")[0]) == train.POS_WEIGHT_CLIP
    with pytest.raises(ValueError, match="pos_weight"):
        train.pos_weight(labels, "bogus")


@pytest.mark.parametrize("model", ["dense", "tfidf"])
def test_training_learns_on_tiny_data(corpus, model):
    params = small_params(model, lr=0.01, pos_weight="neg_pos")
    result = train.train_config(corpus, params, max_epochs=3, patience=None, device="cpu")
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0]
    assert result.epochs_run == 3 and 1 <= result.best_epoch <= 3


def test_early_stopping_restores_the_best_epoch(corpus, monkeypatch):
    """Scripted validation scores: best at epoch 2, then two worse epochs → stop at 4, epoch-2 weights."""
    scores = iter([0.30, 0.20, 0.25, 0.26, 0.10])
    real_choose = train.metrics.choose_thresholds

    def scripted(*args, **kwargs):
        return dataclasses.replace(real_choose(*args, **kwargs), value=next(scores))

    monkeypatch.setattr(train.metrics, "choose_thresholds", scripted)
    snapshots = {}

    def hook(epoch, record):
        snapshots[epoch] = {k: v.detach().clone() for k, v in prepared_model().state_dict().items()}

    params = small_params("dense", lr=0.05)
    model, train_data, val_data, _ = train.build(corpus, params, "cpu")
    prepared_model = lambda: model  # noqa: E731
    result = train.fit(model, train_data, val_data, params, max_epochs=5, patience=2, on_epoch=hook)
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (4, 2, True)
    assert result.best_value == pytest.approx(0.20)
    final = model.state_dict()
    for key, value in snapshots[2].items():
        assert torch.equal(final[key], value), key
    assert not torch.equal(final["head.out.weight"], snapshots[4]["head.out.weight"])


def test_hook_exceptions_stop_training(corpus):
    class Stop(Exception):
        pass

    def hook(epoch, record):
        assert set(record.to_json()) >= {"epoch", "train_loss", "val_loss", "val_hamming_loss", "val_micro_f1",
                                         "seconds"}
        raise Stop

    with pytest.raises(Stop):
        train.train_config(corpus, small_params("tfidf"), max_epochs=3, patience=None, device="cpu", on_epoch=hook)


def test_diverging_training_raises_a_clear_error(corpus, monkeypatch):
    monkeypatch.setattr(torch.nn.BCEWithLogitsLoss, "forward", lambda self, x, y: (x * float("nan")).sum())
    with pytest.raises(train.NonFiniteLossError, match="diverged"):
        train.train_config(corpus, small_params("tfidf"), max_epochs=1, patience=None, device="cpu")


@pytest.mark.parametrize("model", ["dense", "tfidf"])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_hidden_layers(corpus, model, layers):
    """0 hidden layers is one linear layer from the bag / TF-IDF features to the tags."""
    params = small_params(model, hidden_layers=layers)
    net, data, _, _ = train.build(corpus, params)
    blocks = [name for name, _ in net.head.named_children() if name.startswith("block")]
    assert blocks == [f"block{i}" for i in range(1, layers + 1)]
    widths = [params["hidden1"], params["hidden2"]][:layers]
    assert [getattr(net.head, b)[0].out_features for b in blocks] == widths
    assert net.head.out.out_features == len(corpus.tag_names)
    if model == "tfidf" and layers == 0:
        assert type(net.head.out).__name__ == "SparseLinear"
    inputs, _ = next(data.batches(8))
    assert net(inputs).shape == (8, len(corpus.tag_names))


def test_metric_drives_early_stopping_and_the_value(corpus):
    """With metric micro_f1 the best epoch is the highest validation micro-F1 (cross-fitted)."""
    params = small_params("tfidf", lr=0.01, pos_weight="neg_pos")
    result = train.train_config(corpus, params, max_epochs=3, patience=None, device="cpu", metric="micro_f1")
    values = [r.value("micro_f1") for r in result.history]
    assert result.best_value == max(values) and values[result.best_epoch - 1] == max(values)
    assert result.thresholds.chosen in ("fixed", "global", "per_tag")
    assert result.history[-1].best_epoch == result.best_epoch


@pytest.mark.parametrize("model", ["dense", "tfidf"])
def test_sgd_trains_both_models_with_lazy_tables(model, corpus):
    params = small_params(model, optimizer="sgd", sgd_lr=0.5)
    built = train.build(corpus, params)
    assert [type(o).__name__ for o in train.make_optimizers(built[0], params)] == ["SGD", "LazySGD"]
    result = train.fit(*built[:3], params, max_epochs=2, patience=None)
    assert result.epochs_run == 2 and result.history[1].train_loss < result.history[0].train_loss
