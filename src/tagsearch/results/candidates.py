"""After ``tune``'s search: every model worth delivering, each as a results folder, scored on the same
out-of-fold validation posts.

The candidates, in this order (a tie on validation keeps the earlier):

1. **networks**: the best COMPLETE trial of each kind the search finished, retrained as ``tagsearch
   retrain`` does (``retrain.retrained``: a cross-validated trial's fold models stay an ensemble of
   folds) — only the best of each kind, so the retrains cost at most one per kind;
2. **baselines**: the tuned baselines ``compare`` fits (TF-IDF + LR; TF-IDF ⊕ encoder + LR when the
   encoder kinds were searched), on the same folds, with the same threshold rule;
3. **ensemble**: a greedy weighted ensemble of all of them (``ensemble.py``), its weights chosen on
   the out-of-fold validation probabilities and cross-fitted for its validation figure.

Every candidate's validation probabilities are the pooled out-of-fold predictions the thresholds are
chosen on (each post predicted by a model that did not train on it; the folds of ``cv_folds``, in
the same order for every candidate); nothing here reads the test labels except to report.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagsearch.data.corpus import DataConfig, cv_folds, load_corpus
from tagsearch.errors import UserError
from tagsearch.learn import metrics
from tagsearch.log import log
from tagsearch.results import baseline_model, ensemble
from tagsearch.results import compare as comparing
from tagsearch.results import folder as results
from tagsearch.results.scored import score
from tagsearch.study.spec import Spec, load_spec

INFO_KEYS = ("data", "fingerprint", "storage", "study", "refit")


@dataclass
class Candidate:
    """One model that could be delivered: its results folder and the predictions it was scored on."""

    name: str  # its folder's name under the candidates directory: a kind, "baseline-<kind>", "ensemble"
    kind: str  # "network" | "baseline" | "ensemble"
    folder: Path
    validation_value: float  # the study's metric on validation, cross-fitted: what chooses
    val_labels: np.ndarray
    val_probs: np.ndarray
    test_probs: np.ndarray
    description: str
    summary: str = ""  # a retrained network's closing summary, as 'tagsearch retrain' prints it


def best_trials(study) -> dict:
    """The best COMPLETE trial of each model kind (in the order the kinds first completed)."""
    import optuna

    best: dict = {}
    minimize = study.direction == optuna.study.StudyDirection.MINIMIZE
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        kind = trial.params.get("model") or trial.user_attrs.get("model") or "?"
        if trial.value is None:
            continue
        if kind not in best or (trial.value < best[kind].value if minimize else trial.value > best[kind].value):
            best[kind] = trial
    return best


def network_candidates(spec: Spec, url: str, study_name: str, root: Path, data: str | None = None,
                       retrain_seconds: float | None = None) -> list[Candidate]:
    """The best trial of each kind, retrained into ``root/<kind>`` (on ``data``, the posts file the
    user named, where given; else the spec's). ``retrain_seconds``: a kind whose best trial trained
    longer than this (a fine-tuning trial on a CPU) is retrained only when it is the study's best."""
    from tagsearch.results.retrain import retrained, summary_text
    from tagsearch.study import search

    study = search.load_study(spec, url, study_name)
    found, best = [], study.best_trial.number
    for kind, trial in best_trials(study).items():
        took = trial.user_attrs.get("train_seconds", 0.0)
        if retrain_seconds is not None and trial.number != best and took > retrain_seconds:
            log(f"\n== not retraining the best {kind} trial ({trial.number}, validation {trial.value:.4f}): it "
                f"trained {took:.0f} s, more than the {retrain_seconds:.0f} s a candidate that is not the "
                f"study's best may take ==")
            continue
        log(f"\n== retraining the best {kind} trial ({trial.number}, validation {trial.value:.4f}) ==")
        done = retrained(spec, trial=trial.number, out=root / kind, storage=url, study_name=study_name,
                         data=data)
        result = done.run.result
        found.append(Candidate(kind, "network", done.out, done.evaluation.choice.value, result.val_labels,
                               result.val_probs, done.evaluation.test_probs, f"{kind} network, trial {trial.number}",
                               summary_text(done)))
    return found


def folder_info(folder: Path) -> dict:
    """The data, study and fold settings a network's folder records, for the other kinds' config.json."""
    config = results.read_config(folder)
    folds = results.read_json(folder / results.METRICS, "metrics file").get("folds", 1)
    return {**{k: config.get(k) for k in INFO_KEYS}, "folds": int(folds),
            "encoder": config["params"].get("encoder") if config["model"].startswith("encoder") else None}


def corpus_of(info: dict):
    recorded = info["data"]
    corpus = load_corpus(DataConfig(**{**recorded, "text_columns": tuple(recorded["text_columns"])}))
    if corpus.fingerprint != info["fingerprint"]:
        raise UserError(f"{recorded['path']} now has fingerprint {corpus.fingerprint}, not the study's "
                        f"{info['fingerprint']} (the file changed during the search)")
    return corpus


def baseline_candidates(corpus, info: dict, metric: str, kinds: tuple[str, ...], root: Path,
                        embedding_dir: str | None) -> list[Candidate]:
    """The tuned baselines of ``kinds`` ("tfidf", "encoder_tfidf"), each written into
    ``root/baseline-<kind>``; one that cannot be fitted here (no encoder) is left out with a line."""
    found = []
    record = {k: v for k, v in info.items() if k != "encoder"}
    for kind in kinds:
        log(f"\n== fitting the {comparing.BASELINES[kind]!r} ==")
        try:
            base = comparing.fit_baseline(corpus, metric, bool(info.get("refit")), info["folds"], kind,
                                          info.get("encoder") or comparing.DEFAULT_ENCODER, embedding_dir)
        except UserError as exc:
            log(f"no {comparing.BASELINES[kind]!r}: {exc}")
            continue
        y_test = corpus.labels[corpus.test_idx]
        scored = score(base.val_labels, base.val_probs, y_test, base.test_probs, corpus.tag_names, metric)
        name = f"baseline-{kind}"
        with results.atomic_dir(root / name) as folder:
            baseline_model.write_baseline(folder, base, scored, name=comparing.BASELINES[kind], kind=kind,
                                          info=record)
        weight = "" if base.encoder_weight is None else f", encoder weight {base.encoder_weight:g}"
        found.append(Candidate(name, "baseline", root / name, scored.validation_value, scored.val_labels,
                               base.val_probs, base.test_probs, f"{comparing.BASELINES[kind]} (C={base.C:g}{weight})"))
    return found


def groups_of(corpus, folds: int) -> np.ndarray:
    """Which group each pooled validation post falls in, for cross-fitting the ensemble's weights:
    its cross-validation fold, or (one validation split) one of two fixed halves."""
    if folds > 1:
        sizes = [len(split.val_idx) for split in cv_folds(corpus, folds)]
        return np.repeat(np.arange(len(sizes)), sizes)
    groups = np.zeros(len(corpus.val_idx), dtype=np.int64)
    groups[metrics.halves(len(corpus.val_idx))[1]] = 1
    return groups


def ensemble_candidate(members: list[Candidate], corpus, info: dict, metric: str, root: Path) -> Candidate | None:
    """The greedy ensemble of ``members`` into ``root/ensemble``; None (with a line) when there are
    fewer than two members, their validation posts differ, or the selection keeps a single member
    (that member is already a candidate)."""
    if len(members) < 2:
        return None
    y = members[0].val_labels
    if any(m.val_labels.shape != y.shape or not np.array_equal(m.val_labels, y) for m in members):
        log("no ensemble: the candidates were scored on different validation posts")
        return None
    probs = [m.val_probs for m in members]
    counts, in_sample = ensemble.greedy(y, probs, metric)
    if np.count_nonzero(counts) < 2:
        log(f"no ensemble: greedy selection on validation keeps {members[int(np.argmax(counts))].name} alone")
        return None
    p_cross, fold_counts = ensemble.cross_fitted(y, probs, metric, groups_of(corpus, info["folds"]))
    honest = metrics.choose_thresholds(y, p_cross, metric).value
    p_val = ensemble.blend(probs, counts)
    p_test = ensemble.blend([m.test_probs for m in members], counts)
    scored = score(y, p_val, corpus.labels[corpus.test_idx], p_test, corpus.tag_names, metric,
                   validation_value=honest)
    names = [m.name for m in members]
    selection = {"candidates": names, "counts": counts.tolist(), "rounds": ensemble.ROUNDS,
                 "patience": ensemble.PATIENCE, "in_sample_value": in_sample, "cross_fitted_value": honest,
                 "cross_fitted_counts": fold_counts,
                 "how": "greedy forward selection with replacement (Caruana et al. 2004) on the out-of-fold "
                        "validation probabilities, each step scored by the metric at thresholds chosen by the "
                        "one rule; validation_value: each post's probabilities from weights chosen on the other "
                        "folds (one validation split: the other half), then the threshold rule's cross-fitted value"}
    record = {k: v for k, v in info.items() if k != "encoder"}
    with results.atomic_dir(root / "ensemble") as folder:
        ensemble.write_ensemble(folder, [(m.name, m.folder) for m in members], counts, scored,
                                selection=selection, info=record)
    described = "greedy ensemble: " + " + ".join(f"{c}×{n}" for n, c in zip(names, counts) if c)
    return Candidate("ensemble", "ensemble", root / "ensemble", honest, y, p_val, p_test, described)


def gather(spec: Spec | str | Path, url: str, study_name: str, root: Path, metric: str, encoder_baseline: bool,
           embedding_dir: str | None, data: str | None = None, retrain_seconds: float | None = None) -> list[Candidate]:
    """Every candidate, each written under ``root`` (networks, baselines, then the ensemble);
    ``retrain_seconds``: see ``network_candidates``."""
    spec = spec if isinstance(spec, Spec) else load_spec(spec)  # tune passes the value it wrote
    networks = network_candidates(spec, url, study_name, root, data, retrain_seconds)
    info = folder_info(networks[0].folder)
    info["encoder"] = next((e for e in (folder_info(n.folder)["encoder"] for n in networks) if e), None)
    corpus = corpus_of(info)
    kinds = ("tfidf", "encoder_tfidf") if encoder_baseline else ("tfidf",)
    baselines = baseline_candidates(corpus, info, metric, kinds, root, embedding_dir)
    found = networks + baselines
    log("\n== choosing a greedy ensemble on the out-of-fold validation predictions ==")
    mixed = ensemble_candidate(found, corpus, info, metric, root)
    if mixed is None:
        shutil.rmtree(root / "ensemble", ignore_errors=True)  # an older tune's, no longer a candidate
    return found + ([mixed] if mixed else [])
