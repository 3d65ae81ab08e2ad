"""A tuned baseline as a results folder: TF-IDF (⊕ the encoder's embedding) + one-vs-rest logistic
regression, saved as plain data and loaded back without pickle or scikit-learn's estimators.

Layout (``kind: "baseline"`` in config.json; written by ``tagsearch tune`` when it keeps the
candidates, see ``results.candidates``)::

    model.safetensors    per model k: member<k>.coef (tags × features) and member<k>.intercept (tags), float64
    preprocessing.json   {"members": [featurizer state, ...]}: the TF-IDF vocabulary and idf (and the
                         encoder's name and weight), as a network's preprocessing.json holds them
    config.json          thresholds, C, the encoder weight, data, sha256 of both files (``scored.config_figures``)
    metrics.json         validation and test figures (``scored.metrics_figures``)

A post's probability for a tag is ``sigmoid(x · coef + intercept)`` — what scikit-learn's
``LogisticRegression.predict_proba`` computes — averaged over the models (the fold models of a
cross-validated study, or the one refit on training + validation). A tag absent from a training
split (scikit-learn's constant predictor) is saved as coef 0 and intercept ±inf: probability 1 or 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from tagsearch.errors import UserError
from tagsearch.learn.features import Featurizer, featurizer_from_state
from tagsearch.results import folder as results
from tagsearch.results.scored import LoadedModel, Scored, config_figures, metrics_figures

KIND = "baseline"


def linear_arrays(classifier, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(coef: tags × features, intercept: tags) of a fitted one-vs-rest LogisticRegression."""
    coef = np.zeros((len(classifier.estimators_), n_features), dtype=np.float64)
    intercept = np.zeros(len(classifier.estimators_), dtype=np.float64)
    for tag, estimator in enumerate(classifier.estimators_):
        if hasattr(estimator, "coef_"):
            coef[tag], intercept[tag] = estimator.coef_[0], estimator.intercept_[0]
        else:  # one class only in this training split: a constant probability of 0 or 1
            intercept[tag] = np.inf if float(np.ravel(estimator.y_)[0]) >= 0.5 else -np.inf
    return coef, intercept


@dataclass
class LinearModel:
    """One fitted logistic regression per tag, as arrays."""

    coef: np.ndarray
    intercept: np.ndarray

    def predict_proba(self, matrix) -> np.ndarray:
        return expit(np.asarray(matrix @ self.coef.T, dtype=np.float64) + self.intercept)


def write_baseline(folder: Path, base, scored: Scored, *, name: str, kind: str, info: dict) -> None:
    """The baseline ``base`` (``compare.fit_baseline``'s, with its fitted models) and its figures
    ``scored`` into ``folder`` (inside ``results.atomic_dir``). ``info``: data, fingerprint, storage,
    study, refit, folds, as a network's config.json records them."""
    from safetensors.numpy import save_file

    tensors, states, sizes = {}, [], []
    for k, (classifier, featurizer) in enumerate(base.final):
        coef, intercept = linear_arrays(classifier, featurizer.input_size)
        tensors[f"member{k}.coef"], tensors[f"member{k}.intercept"] = coef, intercept
        states.append(featurizer.state())
        sizes.append(featurizer.input_size)
    save_file(tensors, str(folder / results.WEIGHTS), metadata={"format": "np", "model": "linear"})
    (folder / results.WEIGHTS).chmod(0o644)
    results.write_json(folder / results.PREPROCESSING, {"members": states})
    digests = {n: results.sha256(folder / n) for n in (results.WEIGHTS, results.PREPROCESSING)}
    weight = "" if base.encoder_weight is None else f", encoder weight={base.encoder_weight:g}"
    final = "refit on training + validation" if info.get("refit") else (
        f"mean of the {len(base.final)} fold models" if len(base.final) > 1 else "the training-split model")
    results.write_json(folder / results.CONFIG, {
        "format": results.FORMAT, "kind": KIND, "baseline": kind, "name": name, "model": "linear",
        "params": {"model": "linear", "C": base.C, "encoder_weight": base.encoder_weight},
        "summary": f"C={base.C:g}{weight}", **config_figures(scored),
        "input_size": sizes[0], "input_sizes": sizes, "final_model": final, "parameters": base.parameters,
        "train_seconds": round(base.seconds, 3), "weights": results.WEIGHTS,
        "preprocessing": results.PREPROCESSING, "sha256": digests, **info})
    results.write_json(folder / results.METRICS, {**metrics_figures(scored, info.get("folds", 1)),
                                                  "name": name, "final_model": final, "study": info.get("study")})


@dataclass
class BaselineResults(LoadedModel):
    """A loaded baseline folder: ``probabilities`` and ``predict`` as ``folder.Results``'."""

    path: Path
    config: dict
    featurizers: list[Featurizer]
    models: list[LinearModel]

    def probabilities_of(self, texts: list[str]) -> np.ndarray:
        return np.mean([model.predict_proba(featurizer.transform(texts).matrix)
                        for model, featurizer in zip(self.models, self.featurizers)], axis=0)


def load(folder: str | os.PathLike) -> BaselineResults:
    """A baseline folder: JSON and safetensors only, every file checked against its sha256."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_tensors

    folder = Path(folder)
    with results.FolderReader(folder) as reader:  # each file read once and checked from the bytes it gives
        config = reader.config()
        if config.get("kind") != KIND:
            raise UserError(f"{str(folder)!r} holds a {config.get('kind', 'network')!r} model; expected a baseline")
        state = reader.json(results.PREPROCESSING, "preprocessing file", config["sha256"])
        weights = reader.read(results.WEIGHTS, config["sha256"])
    try:
        members = state["members"]
        featurizers = [featurizer_from_state(member) for member in members]
        tensors = load_tensors(weights)
        models = [LinearModel(tensors[f"member{k}.coef"], tensors[f"member{k}.intercept"])
                  for k in range(len(featurizers))]
        n_tags = len(config["tags"])
        for model, featurizer in zip(models, featurizers):
            if model.coef.shape != (n_tags, featurizer.input_size) or model.intercept.shape != (n_tags,):
                raise ValueError(f"coefficients of shape {model.coef.shape} for {n_tags} tags × "
                                 f"{featurizer.input_size} features")
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load the baseline {str(folder)!r}: {first_line}") from None
    return BaselineResults(folder, config, featurizers, models)
