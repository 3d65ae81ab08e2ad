"""A results directory: a retrained model saved as plain data, and loaded back without pickle.

Layout (written by ``tagsearch retrain``, read by ``predict`` and ``compare``)::

    model.safetensors    the weights (safetensors: tensors only, nothing that runs code on load)
    preprocessing.json   dense: the vocabulary; tfidf: vocabulary (column order), idf, settings
    config.json          params, tags, thresholds, data, study/trial, versions, sha256 of both files
    metrics.json         validation and test figures (see retrain.py)
    *.png, report.md     plots and a short report

``save_dir`` writes a directory atomically (a temp directory beside it, renamed into place), so an
interrupted run never leaves a half-written results directory. ``load`` checks the sha256 of every
file it reads against config.json before using it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import features
from .data import clean_texts
from .errors import UserError
from .models import build_model
from .train import predict_proba

FORMAT = 1
WEIGHTS = "model.safetensors"
PREPROCESSING = "preprocessing.json"
CONFIG = "config.json"
METRICS = "metrics.json"


# ---------------------------------------------------------------------------------------------
# Writing


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
    return {name: sha256(folder / name) for name in (WEIGHTS, PREPROCESSING)}


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike):
    """Yield a fresh temp directory beside ``out``; on success it replaces ``out`` in one rename
    (an existing ``out`` is moved aside first, then removed). On any error it is deleted."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"results path {str(out)!r} is a file; expected a directory (or nothing) there")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Reading


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} is missing; expected a results directory written by "
                        f"'tagsearch retrain'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {str(path)!r} is not valid JSON ({exc}); re-run 'tagsearch retrain'") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {str(path)!r} holds a {type(data).__name__}; expected a JSON object")
    return data


def read_config(folder: str | os.PathLike) -> dict:
    """config.json of a results directory, checked for the keys the loaders use."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"results directory {str(folder)!r} not found; expected the output of 'tagsearch retrain'")
    config = read_json(folder / CONFIG, "config file")
    missing = [k for k in ("format", "params", "tags", "thresholds", "input_size", "sha256") if k not in config]
    if missing:
        raise UserError(f"config file {str(folder / CONFIG)!r} lacks {missing[0]!r}; re-run 'tagsearch retrain'")
    if config["format"] != FORMAT:
        raise UserError(f"config file {str(folder / CONFIG)!r} has format {config['format']!r}; this tagsearch "
                        f"reads format {FORMAT}")
    return config


def verified(folder: Path, name: str, config: dict) -> Path:
    """``folder/name`` after checking it exists and matches the sha256 recorded in config.json."""
    path = folder / name
    if not path.is_file():
        raise UserError(f"{str(path)!r} is missing from the results directory; re-run 'tagsearch retrain'")
    expected = config["sha256"].get(name)
    if expected is None or sha256(path) != expected:
        raise UserError(f"{str(path)!r} does not match the sha256 recorded in {CONFIG} (modified or "
                        f"corrupted); refusing to load it, re-run 'tagsearch retrain'")
    return path


@dataclass
class Results:
    """A loaded results directory: the model(s) in eval mode, their preprocessing and thresholds
    (an ensemble of fold models predicts their mean probability)."""

    path: Path
    config: dict
    states: list[dict]
    models: list[nn.Module]

    @property
    def model(self) -> nn.Module:
        return self.models[0]

    @property
    def tag_names(self) -> list[str]:
        return self.config["tags"]

    @property
    def thresholds(self) -> np.ndarray:
        return np.asarray(self.config["thresholds"], dtype=np.float64)  # as retrain compared them

    def probabilities(self, texts: list[str], cleaned: bool = False) -> np.ndarray:
        """(posts, tags) probabilities for raw ``texts`` (cleaned like the training data)."""
        if not texts:
            return np.zeros((0, len(self.tag_names)), dtype=np.float32)
        texts = list(texts) if cleaned else clean_texts(texts)
        return np.mean([predict_proba(model, features.text_inputs(state, texts))
                        for model, state in zip(self.models, self.states)], axis=0)

    def predict(self, texts: list[str], cleaned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """0/1 predictions at the saved thresholds, and the probabilities."""
        probs = self.probabilities(texts, cleaned)
        return (probs >= self.thresholds).astype(np.uint8), probs


def load(folder: str | os.PathLike) -> Results:
    """Load a results directory: JSON and safetensors only, every file checked against its sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_config(folder)
    state = read_json(verified(folder, PREPROCESSING, config), "preprocessing file")
    weights = verified(folder, WEIGHTS, config)
    members = state["members"] if state.get("kind") == "ensemble" else [state]
    sizes = config.get("input_sizes", [config["input_size"]])
    try:
        tensors = load_file(str(weights))
        models = []
        for k, size in enumerate(sizes):
            prefix = f"member{k}." if len(sizes) > 1 else ""
            model = build_model(config["params"], size, len(config["tags"]))
            model.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)},
                                  strict=True)
            models.append(model.eval())
        if len(members) != len(models):
            raise ValueError(f"{len(members)} preprocessing states for {len(models)} models")
    except (SafetensorError, RuntimeError, KeyError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load the weights {str(weights)!r} into a {config['params'].get('model')!r} "
                        f"model: {first_line}") from None
    return Results(folder, config, members, models)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers))] + [line(row) for row in rows])
