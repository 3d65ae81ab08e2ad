"""The files of a results directory, and writing a retrained model into one as plain data.

Layout (written by ``tagsearch retrain``, read by ``predict`` and ``compare``)::

    model.safetensors    the weights (safetensors: tensors only, nothing that runs code on load)
    preprocessing.json   the fitted featurizer's state (``features.Featurizer.state``; an ensemble: its members')
    config.json          params, tags, thresholds, data, study/trial, versions, sha256 of both files
    metrics.json         validation and test figures (see retrain.py)
    encoder_files.json   the sha256 of every file of a sentence encoder the tagger uses (if it uses one)
    *.png, report.md     plots and a short report
    manifest.json        the marker of a tagsearch results folder: the sha256 of every other file

``atomic.py`` publishes such a directory (and writes its manifest); ``folder.py`` reads it back.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn

FORMAT = 1
WEIGHTS = "model.safetensors"
PREPROCESSING = "preprocessing.json"
CONFIG = "config.json"
METRICS = "metrics.json"
ENCODER_FILES = "encoder_files.json"  # the sha256 of every file of a sentence encoder the tagger uses
MANIFEST = "manifest.json"  # the marker of a results folder, and the sha256 of every file in it
MANIFEST_KIND = "tagsearch results folder"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def save_model(folder: Path, model: nn.Module | list[nn.Module], state: dict | list[dict]) -> dict:
    """Write the weights and preprocessing state; returns their sha256 for config.json. A list of
    models (the fold models of a cross-validated trial, whose mean probability predicts) is saved
    as ``member<k>.``-prefixed tensors and ``{"kind": "ensemble", "members": [state, ...]}``."""
    from safetensors.torch import save_file

    if isinstance(model, list):
        tensors = {f"member{k}.{name}": value for k, member in enumerate(model)
                   for name, value in member.state_dict().items()}
        state = {"kind": "ensemble", "members": state}
    else:
        tensors = model.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt", "model": state["kind"]})
    (folder / WEIGHTS).chmod(0o644)  # safetensors creates it owner-only, unlike every other file here
    (folder / PREPROCESSING).write_text(json.dumps(state) + "\n", encoding="utf-8")
    encoders = encoder_files(state)
    if encoders:
        write_json(folder / ENCODER_FILES, encoders)
    return {name: sha256(folder / name) for name in (WEIGHTS, PREPROCESSING)}


def encoder_states(state: dict) -> list[dict]:
    """The sentence-encoder states inside a preprocessing state (an ensemble's members', an
    encoder_tfidf's embeddings), as the very dicts (``load`` points them at verified copies)."""
    if state.get("kind") == "ensemble":
        return [found for member in state.get("members", []) for found in encoder_states(member)]
    if state.get("kind") == "encoder_tfidf" and isinstance(state.get("embeddings"), dict):
        return encoder_states(state["embeddings"])
    return [state] if state.get("kind") == "encoder" and "weights_hash" in state else []


def encoder_files(state: dict) -> dict:
    """``{model name: {file: sha256}}`` of every file the encoders of ``state`` load (their model
    directories, less the formats sentence-transformers never reads): encoder_files.json, so the
    manifest covers the model the tagger was trained with, not only its weights' short hash."""
    from tagsearch.learn.encoder import resolve_model

    found = {}
    for encoder in encoder_states(state):
        if encoder["model"] not in found:
            root = Path(resolve_model(encoder["model"])[0])
            found[encoder["model"]] = {p.relative_to(root).as_posix(): sha256(p) for p in model_files(root)}
    return found


def model_files(root: Path) -> list[Path]:
    """The files of a sentence-encoder directory that loading it may read."""
    skipped = ("onnx", "openvino")
    suffixes = (".onnx", ".h5", ".msgpack", ".ot")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skipped
                  and not p.name.endswith(suffixes) and ".cache" not in p.relative_to(root).parts)
