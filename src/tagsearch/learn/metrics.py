"""Multi-label metrics, and the thresholds that turn probabilities into tags, fitted for a metric.

A study optimises one metric (``[study] metric``): ``hamming_loss`` (minimised), ``micro_f1`` or
``macro_f1`` (maximised). Three threshold variants compete for every model:

- ``fixed``: the parameter ``threshold`` (0.5 by default), nothing fitted;
- ``global``: one threshold for every tag, fitted on validation for the metric;
- ``per_tag``: one threshold per tag, fitted on validation for the metric (Hamming loss and
  macro-F1 split into independent per-tag problems; micro-F1 does not, so it is fitted by two
  rounds of coordinate ascent from the global threshold).

Fitting and scoring thresholds on the same posts flatters small validation sets, so a variant is
judged by its *cross-fitted* score: validation is cut into two fixed halves, thresholds fitted on
each half predict the other, and the metric is computed once over all validation posts. The
variant with the best cross-fitted score is chosen (a tie keeps the simpler one); its final
thresholds are then fitted on the whole validation split. The search, ``retrain`` and ``compare``
all use this one rule (``choose_thresholds``).

Two threshold-free figures give the others a scale (``reference_figures``): the Hamming loss of
predicting no tag at all (``hamming_loss_no_tags``, the fraction of positive labels: a Hamming loss
is read against it), and precision and recall at one tag per post (``at_one``: P@1, R@1, as
fastText's ``test`` reports them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score, hamming_loss, precision_recall_fscore_support

DIRECTIONS = {"hamming_loss": "minimize", "micro_f1": "maximize", "macro_f1": "maximize"}
VARIANTS = ("fixed", "global", "per_tag")  # simplest first: a tie keeps the earlier one
GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)
CROSS_FIT_SEED = 0
HOW_FITTED = ("variants fixed (the threshold parameter), global and per-tag (fitted on validation for the "
              "metric); chosen by the metric cross-fitted on two halves of validation (thresholds fitted on "
              "one half, scored on the other); final thresholds fitted on all of validation")


def val_key(metric: str) -> str:
    """A validation figure's name in epoch records, trial attributes and JSON: ``val_<metric>``."""
    return f"val_{metric}"


def summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Hamming loss and micro/macro F1."""
    return {
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def hamming_loss_no_tags(y_true: np.ndarray) -> float:
    """The Hamming loss of predicting no tag for any post: the fraction of (post, tag) labels that
    are positive, ``hamming_loss(y_true, zeros)``. A tagger's Hamming loss is read against it."""
    y_true = np.asarray(y_true)
    return float(y_true.mean()) if y_true.size else 0.0


def at_one(y_true: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """Precision and recall at one tag per post, (P@1, R@1), as fastText's ``test`` reports them.

    Each post predicts exactly one tag: its most probable (a tie: the first in tag order), whatever
    the thresholds. Of the N posts, H have that tag among their true tags; T true tags exist in all.
    P@1 = H / N (every post made one prediction, also a post with no true tag); R@1 = H / T, the
    share of all true tags that the top-1 predictions find (micro-averaged; at most N / T, so below
    1 when posts have several tags). Both are 0 where their denominator is."""
    y_true = np.asarray(y_true).astype(bool)
    if not len(y_true):
        return 0.0, 0.0
    hits = int(y_true[np.arange(len(y_true)), np.argmax(probs, axis=1)].sum())
    return hits / len(y_true), hits / max(int(y_true.sum()), 1)


def reference_figures(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The threshold-free figures that place the others: ``hamming_loss_no_tags``,
    ``precision_at_1`` and ``recall_at_1`` (``at_one``)."""
    precision, recall = at_one(y_true, probs)
    return {"hamming_loss_no_tags": hamming_loss_no_tags(y_true), "precision_at_1": precision,
            "recall_at_1": recall}


def per_class(y_true: np.ndarray, y_pred: np.ndarray, tag_names: list[str], thresholds=None) -> list[dict]:
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None,
                                                                     zero_division=0)
    rows = []
    for i, tag in enumerate(tag_names):
        row = {"label": tag, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        if thresholds is not None:
            row["threshold"] = float(np.broadcast_to(thresholds, (len(tag_names),))[i])
        rows.append(row)
    return rows


def report(y_true: np.ndarray, probs: np.ndarray, thresholds, tag_names: list[str]) -> dict:
    """Summary plus per-class figures for probabilities cut at ``thresholds`` (scalar or per tag)."""
    y_pred = (probs >= np.asarray(thresholds)).astype(np.uint8)
    return {**summary(y_true, y_pred), "per_class": per_class(y_true, y_pred, tag_names, thresholds)}


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is strictly better than ``b`` for ``metric``."""
    return a < b if DIRECTIONS[metric] == "minimize" else a > b


def first_best(items: list, metric: str, value) -> object:
    """The first of ``items`` whose ``value(item)`` is best for ``metric`` (a tie keeps the earlier)."""
    best = items[0]
    for item in items[1:]:
        if better(metric, value(item), value(best)):
            best = item
    return best


def worst(metric: str) -> float:
    return float("inf") if DIRECTIONS[metric] == "minimize" else float("-inf")


# ---------------------------------------------------------------------------------------------
# Threshold fitting


def _counts(y_true: np.ndarray, probs: np.ndarray, grid: np.ndarray):
    """(grid, tags) true positives, false positives and false negatives of ``probs >= grid[g]``."""
    truth = y_true.astype(bool)
    positives = truth.sum(axis=0)
    tp = np.stack([((probs >= g) & truth).sum(axis=0) for g in grid])
    predicted = np.stack([(probs >= g).sum(axis=0) for g in grid])
    return tp, predicted - tp, positives[None, :] - tp


def _score(metric: str, tp, fp, fn, n_posts: int) -> np.ndarray:
    """The metric from counts whose last axis is the tags (any leading axes broadcast)."""
    if metric == "hamming_loss":
        return (fp + fn).sum(axis=-1) / (n_posts * tp.shape[-1])
    if metric == "micro_f1":
        tp, fp, fn = tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1)
        return 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return (2 * tp / np.maximum(2 * tp + fp + fn, 1)).mean(axis=-1)


def _best(metric: str, scores: np.ndarray, axis: int = 0) -> np.ndarray:
    """Index of the best score along ``axis`` (ties: the first, i.e. the lowest threshold)."""
    return np.argmin(scores, axis=axis) if DIRECTIONS[metric] == "minimize" else np.argmax(scores, axis=axis)


def fit_global(y_true: np.ndarray, probs: np.ndarray, metric: str) -> float:
    tp, fp, fn = _counts(y_true, probs, GRID)
    return float(GRID[_best(metric, _score(metric, tp, fp, fn, len(y_true)))])


def fit_per_tag(y_true: np.ndarray, probs: np.ndarray, metric: str) -> np.ndarray:
    tp, fp, fn = _counts(y_true, probs, GRID)
    if metric == "hamming_loss":
        return GRID[np.argmin(fp + fn, axis=0)]
    if metric == "macro_f1":
        return GRID[np.argmax(2 * tp / np.maximum(2 * tp + fp + fn, 1), axis=0)]
    # micro-F1: coordinate ascent over tags, the others held at their current thresholds
    choice = np.full(tp.shape[1], _best(metric, _score(metric, tp, fp, fn, len(y_true))))
    tags = np.arange(tp.shape[1])
    for _ in range(2):
        for t in tags:
            others = tags != t
            rest = [c[choice[others], tags[others]].sum() for c in (tp, fp, fn)]
            f1 = 2 * (rest[0] + tp[:, t]) / np.maximum(2 * (rest[0] + tp[:, t]) + rest[1] + fp[:, t]
                                                       + rest[2] + fn[:, t], 1)
            choice[t] = int(np.argmax(f1))
    return GRID[choice]


def fit_thresholds(y_true: np.ndarray, probs: np.ndarray, metric: str, variant: str, fixed: float) -> np.ndarray:
    """Per-tag thresholds of ``variant`` fitted on (``y_true``, ``probs``)."""
    n_tags = probs.shape[1]
    if variant == "fixed":
        return np.full(n_tags, fixed)
    if variant == "global":
        return np.full(n_tags, fit_global(y_true, probs, metric))
    return fit_per_tag(y_true, probs, metric).astype(np.float64)


def halves(n_posts: int) -> tuple[np.ndarray, np.ndarray]:
    """Two fixed, disjoint halves of ``range(n_posts)`` (the same for every trial and retrain)."""
    order = np.random.default_rng(CROSS_FIT_SEED).permutation(n_posts)
    return np.sort(order[::2]), np.sort(order[1::2])


def cross_fitted(y_true: np.ndarray, probs: np.ndarray, metric: str, variant: str, fixed: float) -> np.ndarray:
    """0/1 predictions for every post, each cut at thresholds fitted on the *other* half."""
    if variant == "fixed" or len(y_true) < 4:
        return (probs >= fixed).astype(np.uint8)
    pred = np.zeros_like(y_true, dtype=np.uint8)
    a, b = halves(len(y_true))
    for fit_on, apply_to in ((a, b), (b, a)):
        thresholds = fit_thresholds(y_true[fit_on], probs[fit_on], metric, variant, fixed)
        pred[apply_to] = probs[apply_to] >= thresholds
    return pred


@dataclass(frozen=True)
class ThresholdChoice:
    """What ``choose_thresholds`` chose for ``metric``: the ``chosen`` variant, its cross-fitted
    validation ``value`` (the honest one), its ``thresholds`` fitted on all of validation; every
    variant's cross-fitted score (``scores``) and thresholds (``all_thresholds``); the three
    metrics (``summary``) and the per-tag F1 of the chosen variant's cross-fitted predictions."""

    metric: str
    chosen: str
    value: float
    thresholds: list[float]
    scores: dict[str, float]
    all_thresholds: dict[str, list[float]]
    summary: dict[str, float]
    per_tag_f1: list[float]

    def val_figures(self, digits: int | None = None) -> dict[str, float]:
        """``{"val_hamming_loss": ..., "val_micro_f1": ..., "val_macro_f1": ...}``, rounded to ``digits``."""
        return {val_key(k): v if digits is None else round(v, digits) for k, v in self.summary.items()}


def choose_thresholds(y_true: np.ndarray, probs: np.ndarray, metric: str, fixed: float = 0.5) -> ThresholdChoice:
    """The threshold rule shared by the search, ``retrain`` and ``compare``: the variant with the
    best cross-fitted validation ``metric`` (see ``ThresholdChoice``)."""
    y_true = np.asarray(y_true, dtype=np.uint8)
    predictions = {v: cross_fitted(y_true, probs, metric, v, fixed) for v in VARIANTS}
    summaries = {v: summary(y_true, p) for v, p in predictions.items()}
    chosen = VARIANTS[0]
    for variant in VARIANTS[1:]:
        if better(metric, summaries[variant][metric], summaries[chosen][metric]):
            chosen = variant
    thresholds = {v: [round(float(t), 6) for t in fit_thresholds(y_true, probs, metric, v, fixed)]
                  for v in VARIANTS}
    per_tag_f1 = f1_score(y_true, predictions[chosen], average=None, zero_division=0)
    return ThresholdChoice(metric=metric, chosen=chosen, value=summaries[chosen][metric],
                           thresholds=thresholds[chosen], scores={v: s[metric] for v, s in summaries.items()},
                           all_thresholds=thresholds, summary=summaries[chosen],
                           per_tag_f1=[round(float(f), 4) for f in per_tag_f1])


@dataclass(frozen=True)
class VariantFigures:
    """One threshold variant: its thresholds, its cross-fitted validation value, and ``report``'s
    figures on validation and on test."""

    thresholds: list[float]
    cross_fitted_validation: float
    validation: dict
    test: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def threshold_variants(y_val, p_val, y_test, p_test, tags: list[str], metric: str,
                       fixed: float = 0.5) -> tuple[dict[str, VariantFigures], ThresholdChoice]:
    """Validation and test figures of every threshold variant, and the choice made on validation
    alone (``choose_thresholds``). The test figures are reported, never used to choose."""
    choice = choose_thresholds(y_val, p_val, metric, fixed)
    variants = {v: VariantFigures(th, choice.scores[v], report(y_val, p_val, th, tags),
                                  report(y_test, p_test, th, tags))
                for v, th in choice.all_thresholds.items()}
    return variants, choice
