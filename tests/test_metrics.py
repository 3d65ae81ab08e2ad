"""Thresholds fitted for the study's metric, and the honest (cross-fitted) choice between variants."""

from __future__ import annotations

import numpy as np
import pytest

from tagsearch.learn import metrics


def noisy(n_posts: int = 400, n_tags: int = 4, seed: int = 0):
    """Labels and probabilities whose best thresholds differ per tag (tag t's positives sit lower)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n_posts, n_tags)) < 0.3).astype(np.uint8)
    shift = np.linspace(0.0, 0.4, n_tags)
    probs = np.clip(0.25 + 0.5 * y - shift * y + rng.normal(0, 0.12, y.shape), 0, 1)
    return y, probs


@pytest.mark.parametrize("metric", list(metrics.DIRECTIONS))
def test_fitted_thresholds_are_optimal_on_the_grid(metric):
    """The global threshold is the best single grid value; per-tag is at least as good (exactly best
    per tag for the separable metrics)."""
    y, probs = noisy()
    score = lambda th: metrics.summary(y, (probs >= th).astype(np.uint8))[metric]  # noqa: E731
    best = min if metrics.DIRECTIONS[metric] == "minimize" else max
    global_t = metrics.fit_global(y, probs, metric)
    assert score(global_t) == best(score(g) for g in metrics.GRID)
    per_tag = metrics.fit_per_tag(y, probs, metric)
    assert not metrics.better(metric, score(global_t), score(per_tag))
    if metric != "micro_f1":
        for t in range(y.shape[1]):
            for g in metrics.GRID:
                trial = per_tag.copy()
                trial[t] = g
                assert not metrics.better(metric, score(trial), score(per_tag))


def test_cross_fitting_never_scores_thresholds_on_the_posts_they_were_fitted_on():
    y, probs = noisy(seed=1)
    a, b = metrics.halves(len(y))
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == len(y)
    pred = metrics.cross_fitted(y, probs, "hamming_loss", "per_tag", 0.5)
    expected = probs[b] >= metrics.fit_per_tag(y[a], probs[a], "hamming_loss")
    np.testing.assert_array_equal(pred[b], expected)


def test_choice_is_honest_and_prefers_the_simpler_variant_on_ties():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 5, dtype=np.uint8)
    perfect = y * 0.8 + 0.1  # 0.9 / 0.1: every variant is perfect → the fixed 0.5 stays
    assert metrics.choose_thresholds(y, perfect, "micro_f1").chosen == "fixed"
    low = y * 0.2 + 0.05  # positives at 0.25: a fitted threshold is needed, one is enough
    choice = metrics.choose_thresholds(y, low, "hamming_loss")
    assert choice.chosen == "global" and choice.value == 0.0
    y, probs = noisy(seed=2)  # per-tag shifts: per-tag wins even when judged on unseen halves
    choice = metrics.choose_thresholds(y, probs, "hamming_loss")
    assert choice.chosen == "per_tag"
    flattering = metrics.summary(y, (probs >= np.asarray(choice.thresholds)).astype(np.uint8))["hamming_loss"]
    assert choice.value >= flattering  # fitted and scored on the same posts looks better than it is


def test_threshold_variants_report_test_but_choose_on_validation():
    y, probs = noisy(seed=3)
    y_test, p_test = noisy(seed=4)
    variants, choice = metrics.threshold_variants(y, probs, y_test, 1 - p_test, ["a", "b", "c", "d"], "micro_f1")
    assert set(variants) == set(metrics.VARIANTS)
    assert choice == metrics.choose_thresholds(y, probs, "micro_f1")  # test data played no part
    assert variants[choice.chosen].cross_fitted_validation == choice.value


def test_small_validation_splits_cross_validate_over_training_and_validation(tiny_csv):
    """"auto": 3 folds below 2,000 validation posts; the folds cover training + validation once,
    never the test split, and each fold fits its features on its own training posts."""
    from tagsearch.data.corpus import DataConfig, cv_folds, load_corpus, n_folds

    corpus = load_corpus(DataConfig(path=str(tiny_csv)))
    assert n_folds(corpus, "auto") == 3 and n_folds(corpus, 1) == 1
    assert cv_folds(corpus, 1, 0) == [corpus]
    folds = cv_folds(corpus, 3, 0)
    pool = np.sort(np.concatenate([corpus.train_idx, corpus.val_idx]))
    np.testing.assert_array_equal(np.sort(np.concatenate([f.val_idx for f in folds])), pool)
    for fold in folds:
        assert len(np.intersect1d(fold.train_idx, fold.val_idx)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([fold.train_idx, fold.val_idx])), pool)
        np.testing.assert_array_equal(fold.test_idx, corpus.test_idx)


def test_cross_validated_training_pools_every_folds_predictions(tiny_csv):
    from tagsearch.learn import train
    from tagsearch.data.corpus import DataConfig, cv_folds, load_corpus
    from tagsearch.study.spec import SEED_DEFAULTS

    corpus = load_corpus(DataConfig(path=str(tiny_csv)))
    params = {**SEED_DEFAULTS, "model": "tfidf", "hidden_layers": 0, "max_features": 300, "batch_size": 64}
    result = train.train_config(cv_folds(corpus, 3, 0), params, max_epochs=2, patience=None, device="cpu")
    assert len(result.models) == 3 and len(result.val_labels) == len(corpus.train_idx) + len(corpus.val_idx)
    value = metrics.choose_thresholds(result.val_labels, result.val_probs, "hamming_loss").value
    assert value == result.best_value == result.history[result.best_epoch - 1].value("hamming_loss")
    assert result.best.to_json()["val_hamming_loss"] == value  # the JSON record (metrics.json's history)


def test_no_tag_hamming_loss_is_the_share_of_positive_labels():
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=np.uint8)  # 4 of 12 labels positive
    assert metrics.hamming_loss_no_tags(y) == 4 / 12
    from sklearn.metrics import hamming_loss

    y, _ = noisy(seed=5)
    assert metrics.hamming_loss_no_tags(y) == pytest.approx(hamming_loss(y, np.zeros_like(y)), abs=1e-15)


def test_precision_and_recall_at_one_tag_per_post():
    """By hand: 4 posts, 5 true tags. Top tags 0, 2, 1, 0 (post 2: a tie of tags 1 and 2 → the first,
    its true one); hits: posts 0 and 2 (post 1's top tag 2 is not true; post 3 has no true tag but
    predicts one). P@1 = 2/4, R@1 = 2/5."""
    y = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.uint8)
    probs = np.array([[0.9, 0.8, 0.1], [0.3, 0.2, 0.4], [0.1, 0.7, 0.7], [0.6, 0.1, 0.1]])
    assert metrics.at_one(y, probs) == (2 / 4, 2 / 5)
    assert metrics.at_one(y, probs * 0.01) == (2 / 4, 2 / 5)  # no threshold: the order alone counts
    assert metrics.at_one(np.zeros_like(y), probs) == (0.0, 0.0)  # no true tag: nothing to find


def test_at_one_is_micro_precision_and_recall_of_the_top_tag():
    from sklearn.metrics import precision_score, recall_score

    y, probs = noisy(seed=6)
    top = np.zeros_like(y)
    top[np.arange(len(y)), probs.argmax(axis=1)] = 1
    precision, recall = metrics.at_one(y, probs)
    assert precision == pytest.approx(precision_score(y, top, average="micro"), abs=1e-15)
    assert recall == pytest.approx(recall_score(y, top, average="micro"), abs=1e-15)
    figures = metrics.reference_figures(y, probs)
    assert figures == {"hamming_loss_no_tags": metrics.hamming_loss_no_tags(y), "precision_at_1": precision,
                       "recall_at_1": recall}
