"""A weighted ensemble of results folders, chosen by greedy ensemble selection (Caruana et al. 2004).

**Selection.** ``greedy``: start from nothing; each round add (with replacement) the member whose
addition gives the ensemble — the mean of the chosen members' out-of-fold validation probabilities
— the best value of the study's metric at thresholds chosen by the one rule
(``metrics.choose_thresholds``); a tie adds the earlier member. After ``ROUNDS`` rounds (or
``PATIENCE`` rounds with no better value) the ensemble kept is the round with the best value (the
first such); the weights are the counts. Round 1 picks the best single member, so a dominant member
ends up alone and two that err on different posts both get weight.

**An honest validation figure.** Weights chosen on the same posts they are scored on would flatter
the ensemble against the single models, so the weight choice is cross-fitted as the thresholds are:
the validation posts fall in groups (the cross-validation folds a trial was scored on, else two
fixed halves); each group's ensemble probabilities come from weights chosen on the *other* groups
(``cross_fitted``), and the ensemble's validation value is the threshold rule's cross-fitted value
on those. The delivered weights are chosen on all posts, and its thresholds by the same rule on the
probabilities they give.

**The folder** (``kind: "ensemble"``)::

    members/<name>/      each member's results folder (a network's or a baseline's), complete
    weights.json         {"members": [{"name", "count", "weight"}, ...]}
    config.json          thresholds, sha256 of weights.json and of each member's config.json (whose
                         own sha256 cover the member's files)
    metrics.json         validation and test figures, and the selection (``ensemble``)

A post's probability is the weighted mean of the members' probabilities.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagsearch.errors import UserError
from tagsearch.learn import metrics
from tagsearch.results import baseline_model
from tagsearch.results import folder as results
from tagsearch.results.scored import LoadedModel, Scored, config_figures, metrics_figures

KIND = "ensemble"
WEIGHTS_FILE = "weights.json"
MEMBERS = "members"
ROUNDS = 25
PATIENCE = 5
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


# ---------------------------------------------------------------------------------------------
# Selection


def blend(probs: list[np.ndarray], counts) -> np.ndarray:
    """The members' probabilities weighted by ``counts`` (the ensemble's probabilities)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = sum(c * p.astype(np.float64) for c, p in zip(counts, probs) if c)
    return total / counts.sum()


def value_of(y: np.ndarray, probs: np.ndarray, metric: str) -> float:
    return metrics.choose_thresholds(y, probs, metric).value


def greedy(y: np.ndarray, probs: list[np.ndarray], metric: str, rounds: int = ROUNDS,
           patience: int = PATIENCE) -> tuple[np.ndarray, float]:
    """Forward selection with replacement on (``y``, each member's ``probs``); returns the counts
    of the best round and its value."""
    counts, total = np.zeros(len(probs), dtype=np.int64), np.zeros_like(probs[0], dtype=np.float64)
    best_counts, best_value, since = None, metrics.worst(metric), 0
    for size in range(1, rounds + 1):
        values = [value_of(y, (total + p) / size, metric) for p in probs]
        pick = 0
        for j in range(1, len(values)):
            if metrics.better(metric, values[j], values[pick]):
                pick = j
        total += probs[pick]
        counts[pick] += 1
        if metrics.better(metric, values[pick], best_value):
            best_counts, best_value, since = counts.copy(), values[pick], 0
        else:
            since += 1
            if since >= patience:
                break
    return best_counts, float(best_value)


def cross_fitted(y: np.ndarray, probs: list[np.ndarray], metric: str, groups: np.ndarray) -> tuple[np.ndarray, list]:
    """Every post's ensemble probabilities from weights chosen on the other ``groups``; and each
    group's counts."""
    out, chosen = np.zeros_like(probs[0], dtype=np.float64), []
    for group in np.unique(groups):
        held, rest = groups == group, groups != group
        counts, _ = greedy(y[rest], [p[rest] for p in probs], metric)
        out[held] = blend([p[held] for p in probs], counts)
        chosen.append(counts.tolist())
    return out, chosen


# ---------------------------------------------------------------------------------------------
# Writing


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows it (a member's weights are not stored twice), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_ensemble(folder: Path, members: list[tuple[str, Path]], counts, scored: Scored, *,
                   selection: dict, info: dict) -> None:
    """The ensemble of ``members`` ((name, results folder), with ``counts``) into ``folder`` (inside
    ``results.atomic_dir``): the members' folders copied under members/, weights.json, config.json
    (``info``: data, fingerprint, storage, study, refit, folds) and metrics.json (``selection``:
    how the weights were chosen and what each step gave)."""
    counts = [int(c) for c in counts]
    kept = [(name, path, c) for (name, path), c in zip(members, counts) if c]
    for name, _, _ in kept:
        if not NAME.match(name):
            raise ValueError(f"member name {name!r}")
    (folder / MEMBERS).mkdir()
    configs = []
    for name, path, _ in kept:
        shutil.copytree(path, folder / MEMBERS / name, copy_function=_link_or_copy)
        configs.append(results.read_json(folder / MEMBERS / name / results.CONFIG, "config file"))
    total = sum(c for _, _, c in kept)
    entries = [{"name": name, "count": c, "weight": c / total} for name, _, c in kept]
    results.write_json(folder / WEIGHTS_FILE, {"members": entries})
    digests = {WEIGHTS_FILE: results.sha256(folder / WEIGHTS_FILE)}
    digests.update({f"{MEMBERS}/{name}/{results.CONFIG}": results.sha256(folder / MEMBERS / name / results.CONFIG)
                    for name, _, _ in kept})
    summary = " + ".join(f"{e['weight']:.2f} {e['name']}" for e in entries)
    results.write_json(folder / results.CONFIG, {
        "format": results.FORMAT, "kind": KIND, "model": KIND, "name": "ensemble",
        "params": {"model": KIND}, "summary": summary, **config_figures(scored), "input_size": 0,
        "members": entries, "parameters": sum(int(c.get("parameters", 0)) for c in configs),
        "train_seconds": round(sum(float(c.get("train_seconds", 0)) for c in configs), 3),
        "final_model": f"weighted mean of {len(kept)} results folders", "weights": WEIGHTS_FILE,
        "sha256": digests, **info})
    results.write_json(folder / results.METRICS, {**metrics_figures(scored, info.get("folds", 1)),
                                                  "name": "ensemble", "ensemble": selection,
                                                  "study": info.get("study")})


# ---------------------------------------------------------------------------------------------
# Loading


def load_member(path: Path):
    """A member folder: a network's (``folder.load``) or a baseline's; nothing else."""
    kind = results.read_config(path).get("kind", "network")
    if kind == "network":
        return results.load(path)
    if kind == baseline_model.KIND:
        return baseline_model.load(path)
    raise UserError(f"ensemble member {str(path)!r} is a {kind!r}; expected a network or a baseline")


@dataclass
class EnsembleResults(LoadedModel):
    """A loaded ensemble folder: ``probabilities`` and ``predict`` as ``folder.Results``'."""

    path: Path
    config: dict
    members: list
    counts: list[int]

    def probabilities_of(self, texts: list[str]) -> np.ndarray:
        return blend([member.probabilities(texts, cleaned=True) for member in self.members], self.counts)


def load(folder: str | os.PathLike) -> EnsembleResults:
    """An ensemble folder: weights.json and each member's config.json checked against config.json's
    sha256, each member loaded by its own (checked) loader. Member names are checked, never used as paths."""
    folder = Path(folder)
    with results.FolderReader(folder) as reader:  # each file read once and checked from the bytes it gives
        config = reader.config()
        if config.get("kind") != KIND:
            raise UserError(f"{str(folder)!r} holds a {config.get('kind', 'network')!r} model; expected an ensemble")
        entries = reader.json(WEIGHTS_FILE, "weights file", config["sha256"]).get("members")
        return load_members(folder, reader, config, entries)


def load_members(folder: Path, reader, config: dict, entries) -> EnsembleResults:
    """The members ``weights.json`` lists, each checked by name and loaded by its own loader."""
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{str(folder / WEIGHTS_FILE)!r} lists no members; expected a list of {{name, count}}")
    members, counts = [], []
    for entry in entries:
        name, count = entry.get("name") if isinstance(entry, dict) else None, entry.get("count") if isinstance(
            entry, dict) else None
        if not isinstance(name, str) or not NAME.match(name) or not isinstance(count, int) or count < 1:
            raise UserError(f"{str(folder / WEIGHTS_FILE)!r}: member {entry!r}; expected a name of letters, digits, "
                            f"'_', '.', '-' and a count ≥ 1")
        member = folder / MEMBERS / name
        reader.read(f"{MEMBERS}/{name}/{results.CONFIG}", config["sha256"])  # the member is the one recorded
        loaded = load_member(member)
        if loaded.tag_names != config["tags"]:
            raise UserError(f"ensemble member {str(member)!r} predicts other tags than the ensemble")
        members.append(loaded)
        counts.append(count)
    return EnsembleResults(folder, config, members, counts)
