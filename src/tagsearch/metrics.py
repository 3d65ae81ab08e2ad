"""Multi-label metrics (scikit-learn) and threshold fitting on 0/1 matrices."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, hamming_loss, precision_recall_fscore_support


def summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Hamming loss and micro/macro F1."""
    return {
        "hamming_loss": float(hamming_loss(y_true, y_pred)),
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


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


def fit_thresholds(y_true: np.ndarray, probs: np.ndarray, grid=None) -> np.ndarray:
    """Per tag, the threshold on ``grid`` that maximises that tag's F1 (ties: the lowest)."""
    grid = np.linspace(0.05, 0.95, 19) if grid is None else np.asarray(grid)
    pred = probs[None, :, :] >= grid[:, None, None]  # (grid, posts, tags)
    truth = y_true.astype(bool)[None]
    tp = (pred & truth).sum(axis=1)
    fp = (pred & ~truth).sum(axis=1)
    fn = (~pred & truth).sum(axis=1)
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return grid[np.argmax(f1, axis=0)].astype(np.float32)
