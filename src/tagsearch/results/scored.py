"""A candidate model's predictions, scored: what every results folder kind records about itself.

A network's retrain, a tuned baseline and an ensemble all end with the same four arrays — the
out-of-fold validation labels and probabilities (the posts each prediction comes from a model that
did not train on), and the test labels and probabilities of the model that predicts — and the same
rule turns them into thresholds and figures (``metrics.threshold_variants``: chosen on validation,
test reported). ``Scored`` holds them; ``config_figures`` and ``metrics_figures`` are the parts of
config.json and metrics.json every kind shares, so ``compare`` and the verdict read any kind alike.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import numpy as np

from tagsearch.data.corpus import clean_texts
from tagsearch.learn import metrics
from tagsearch.learn.metrics import ThresholdChoice, VariantFigures


@dataclass
class Scored:
    """Predictions and the thresholds chosen on them. ``validation_value``: the honest validation
    figure of the study's metric (the threshold choice's cross-fitted value, unless the caller
    cross-fitted more than the thresholds — an ensemble's weights — and says so)."""

    metric: str
    tags: list[str]
    val_labels: np.ndarray
    val_probs: np.ndarray
    test_labels: np.ndarray
    test_probs: np.ndarray
    variants: dict[str, VariantFigures]
    choice: ThresholdChoice
    validation_value: float
    reference: dict[str, float] = field(default_factory=dict)

    @property
    def thresholds(self) -> list[float]:
        return self.variants[self.choice.chosen].thresholds

    @property
    def test(self) -> dict:
        return self.variants[self.choice.chosen].test

    def test_predictions(self) -> np.ndarray:
        return (self.test_probs >= np.asarray(self.thresholds)).astype(np.uint8)


def score(val_labels, val_probs, test_labels, test_probs, tags: list[str], metric: str, fixed: float = 0.5,
          validation_value: float | None = None) -> Scored:
    """Thresholds chosen on validation by the one rule (``metrics.choose_thresholds``), every
    variant's figures on validation and test, and the threshold-free test figures."""
    val_labels, test_labels = np.asarray(val_labels, dtype=np.uint8), np.asarray(test_labels, dtype=np.uint8)
    variants, choice = metrics.threshold_variants(val_labels, val_probs, test_labels, test_probs, tags, metric, fixed)
    value = choice.value if validation_value is None else float(validation_value)
    return Scored(metric, list(tags), val_labels, np.asarray(val_probs), test_labels, np.asarray(test_probs),
                  variants, choice, value, metrics.reference_figures(test_labels, test_probs))


def config_figures(scored: Scored) -> dict:
    """config.json's keys about thresholds and the validation value (as ``retrain`` writes them)."""
    return {"metric": scored.metric, "tags": scored.tags, "validation_value": scored.validation_value,
            "thresholds": scored.thresholds, "threshold_choice": scored.choice.chosen,
            "threshold_criterion": metrics.HOW_FITTED,
            "global_threshold": scored.variants["global"].thresholds[0],
            "per_tag_thresholds": scored.variants["per_tag"].thresholds,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def metrics_figures(scored: Scored, folds: int) -> dict:
    """metrics.json's keys that ``compare`` and the verdict read, and every threshold variant."""
    test, choice = scored.test, scored.choice
    return {
        "metric": scored.metric, "validation_value": scored.validation_value,
        "test_hamming_loss": test["hamming_loss"], "test_micro_f1": test["micro_f1"],
        "test_macro_f1": test["macro_f1"], "per_class": test["per_class"],
        **{f"test_{name}": value for name, value in scored.reference.items()},
        "validation": {**choice.summary, "per_class": scored.variants[choice.chosen].validation["per_class"]},
        "thresholds": {"chosen": choice.chosen, "how_fitted": metrics.HOW_FITTED, "metric": scored.metric,
                       "cross_fitted_scores": dict(choice.scores)},
        "threshold_variants": {v: f.to_json() for v, f in scored.variants.items()},
        "folds": folds,
        "posts": {"val": int(len(scored.val_labels)), "test": int(len(scored.test_labels))},
    }


class LoadedModel:
    """What ``predict`` needs of a loaded folder that is not a network (a baseline, an ensemble):
    its tags, thresholds and ``probabilities``/``predict`` as ``folder.Results``'. A subclass gives
    ``path``, ``config`` and ``probabilities_of(cleaned_texts)``."""

    config: dict

    @property
    def tag_names(self) -> list[str]:
        return self.config["tags"]

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray(self.config["thresholds"], dtype=np.float64)

    def probabilities(self, texts: list[str], cleaned: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.tag_names)), dtype=np.float64)
        return self.probabilities_of(list(texts) if cleaned else clean_texts(texts))

    def predict(self, texts: list[str], cleaned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        probs = self.probabilities(texts, cleaned)
        return (probs >= self.thresholds).astype(np.uint8), probs
