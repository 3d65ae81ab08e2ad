"""The candidate best on validation becomes the results folder ``predict`` uses, whatever its kind.

``choose``: the candidate with the best validation value of the study's metric (each candidate's
honest, cross-fitted figure; a tie keeps the earlier: networks, then baselines, then the ensemble).
Test figures are never looked at. ``deliver``: that candidate's folder copied, atomically
(``folder.atomic_dir``), to ``results/<study>/``, with ``candidates.json`` beside it: every
candidate's name, kind, folder and validation value, and which was chosen.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tagsearch.learn import metrics
from tagsearch.results import folder as results
from tagsearch.results.candidates import Candidate
from tagsearch.results.ensemble import _link_or_copy

CANDIDATES_FILE = "candidates.json"


def choose(candidates: list[Candidate], metric: str) -> Candidate:
    """The first candidate with the best validation value."""
    return metrics.first_best(candidates, metric, lambda candidate: candidate.validation_value)


def deliver(candidates: list[Candidate], metric: str, out: Path) -> Candidate:
    """Copy the chosen candidate's folder to ``out`` (atomically) with candidates.json; return it."""
    chosen = choose(candidates, metric)
    with results.atomic_dir(out) as folder:
        shutil.copytree(chosen.folder, folder, dirs_exist_ok=True, copy_function=_link_or_copy)
        results.write_json(folder / CANDIDATES_FILE, {
            "metric": metric, "chosen": chosen.name,
            "rule": "the best validation value of the metric (cross-fitted; a tie keeps the earlier); test "
                    "figures never choose",
            "candidates": [{"name": c.name, "kind": c.kind, "folder": str(c.folder), "description": c.description,
                            "validation_value": c.validation_value} for c in candidates]})
    return chosen
