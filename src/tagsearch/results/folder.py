"""A results directory loaded back without pickle, every file verified against its manifest; and
the one import for everything about a results folder (its layout and writing from ``layout.py``,
the atomic swap from ``atomic.py``, ``markdown_table`` from ``markdown.py``).

Every loader reads a file through ``FolderReader``: its bytes are read once, hashed, compared with
the manifest, and only then used (no second open that a concurrent writer could swap in between).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from tagsearch.learn.features import Featurizer, featurizer_from_state
from tagsearch.data.corpus import clean_texts
from tagsearch.errors import UserError
from tagsearch.learn.models import build_model
from tagsearch.learn.train import predict_proba
from tagsearch.results.atomic import atomic_dir, check_replaceable, is_results_folder, write_manifest  # noqa: F401
from tagsearch.results.layout import (  # noqa: F401
    CONFIG, ENCODER_FILES, FORMAT, MANIFEST, MANIFEST_KIND, METRICS, PREPROCESSING, WEIGHTS, encoder_files,
    encoder_states, model_files, save_model, sha256, write_json)
from tagsearch.results.markdown import markdown_table  # noqa: F401


def parse_json(data: bytes, path: Path, what: str) -> dict:
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {str(path)!r} is not valid JSON ({exc}); re-run 'tagsearch retrain'") from None
    if not isinstance(parsed, dict):
        raise UserError(f"{what} {str(path)!r} holds a {type(parsed).__name__}; expected a JSON object")
    return parsed


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} is missing; expected a results directory written by "
                        f"'tagsearch retrain'")
    return parse_json(path.read_bytes(), path, what)


class FolderReader:
    """A results folder opened once: its directory is held by a descriptor (a concurrent
    ``atomic_dir`` swap cannot mix two trees), and each file is read once, through one handle, and
    its bytes checked against the manifest before anything uses them. A folder from before
    manifests: config.json is read unchecked, and the files it lists are checked against it."""

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder)
        if not self.path.is_dir():
            raise UserError(f"results directory {str(self.path)!r} not found; expected the output of "
                            f"'tagsearch retrain'")
        self.descriptor = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        self.digests: dict | None = None
        try:
            raw = self._read(MANIFEST)
            if raw is not None:
                manifest = parse_json(raw, self.path / MANIFEST, "manifest")
                if manifest.get("kind") != MANIFEST_KIND or not isinstance(manifest.get("sha256"), dict):
                    raise UserError(f"manifest {str(self.path / MANIFEST)!r} is not a tagsearch results manifest; "
                                    f"re-run 'tagsearch retrain'")
                self.digests = manifest["sha256"]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        os.close(self.descriptor)

    def __enter__(self) -> "FolderReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, name: str) -> bytes | None:
        try:
            descriptor = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=self.descriptor)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise UserError(f"cannot read {str(self.path / name)!r}: {exc.strerror}") from None
        with os.fdopen(descriptor, "rb") as handle:
            return handle.read()

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.descriptor, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def read(self, name: str, legacy_digests: dict | None = None) -> bytes:
        """The bytes of ``name``, checked against the manifest (a folder from before manifests:
        against ``legacy_digests`` where given) before they are returned."""
        data = self._read(name)
        if data is None:
            raise UserError(f"{str(self.path / name)!r} is missing from the results directory; re-run "
                            f"'tagsearch retrain'")
        self._check(name, data, legacy_digests)
        return data

    def _check(self, name: str, data: bytes, legacy_digests: dict | None) -> None:
        digests = self.digests if self.digests is not None else legacy_digests
        if digests is None:
            return
        expected = digests.get(name)
        if expected is None or hashlib.sha256(data).hexdigest() != expected:
            raise UserError(f"{str(self.path / name)!r} does not match the sha256 recorded in "
                            f"{MANIFEST if self.digests is not None else CONFIG} (modified or corrupted); "
                            f"refusing to load it, re-run 'tagsearch retrain'")

    def json(self, name: str, what: str, legacy_digests: dict | None = None) -> dict:
        """A JSON file: read once, parsed (a JSON error is reported as such), checked, returned."""
        data = self._read(name)
        if data is None:
            raise UserError(f"{what} {str(self.path / name)!r} is missing; expected a results directory written "
                            f"by 'tagsearch retrain'")
        parsed = parse_json(data, self.path / name, what)
        self._check(name, data, legacy_digests)
        return parsed

    def config(self) -> dict:
        """config.json, checked for the keys the loaders use."""
        config = self.json(CONFIG, "config file")
        where = str(self.path / CONFIG)
        missing = [k for k in ("format", "params", "tags", "thresholds", "input_size", "sha256") if k not in config]
        if missing:
            raise UserError(f"config file {where!r} lacks {missing[0]!r}; re-run 'tagsearch retrain'")
        if config["format"] != FORMAT:
            raise UserError(f"config file {where!r} has format {config['format']!r}; this tagsearch reads format "
                            f"{FORMAT}")
        if not isinstance(config["sha256"], dict):
            raise UserError(f"config file {where!r} has no sha256 table; re-run 'tagsearch retrain'")
        return config


def read_config(folder: str | os.PathLike) -> dict:
    """config.json of a results directory (checked against its manifest), checked for the keys the loaders use."""
    with FolderReader(folder) as reader:
        return reader.config()


def read_results_json(folder: str | os.PathLike, name: str, what: str) -> dict:
    """Another JSON file of a results directory (metrics.json, ...), checked against its manifest."""
    with FolderReader(folder) as reader:
        return reader.json(name, what)


@dataclass
class Results:
    """A loaded results directory: the model(s) in eval mode, their fitted featurizers and the
    thresholds (an ensemble of fold models predicts their mean probability)."""

    path: Path
    config: dict
    featurizers: list[Featurizer]
    models: list[nn.Module]
    resources: list = field(default_factory=list, repr=False)  # verified encoder copies, kept while loaded

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
        return np.mean([predict_proba(model, featurizer.transform(texts))
                        for model, featurizer in zip(self.models, self.featurizers)], axis=0)

    def predict(self, texts: list[str], cleaned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """0/1 predictions at the saved thresholds, and the probabilities."""
        probs = self.probabilities(texts, cleaned)
        return (probs >= self.thresholds).astype(np.uint8), probs


def load(folder: str | os.PathLike) -> Results:
    """Load a results directory: JSON and safetensors only, every file read once and checked
    against its sha256 before use (``FolderReader``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    folder = Path(folder)
    with FolderReader(folder) as reader:
        config = reader.config()
        state = reader.json(PREPROCESSING, "preprocessing file", config["sha256"])
        weights = reader.read(WEIGHTS, config["sha256"])
        encoders = reader.json(ENCODER_FILES, "encoder manifest") if reader.exists(ENCODER_FILES) else None
        if encoders is None and reader.digests is not None and encoder_states(state):
            raise UserError(f"{str(folder / ENCODER_FILES)!r} is missing: the tagger's sentence encoder has no "
                            f"recorded files to check; re-run 'tagsearch retrain'")
    resources = [verified_encoders(state, encoders)] if encoders is not None else []
    members = state["members"] if state.get("kind") == "ensemble" else [state]
    featurizers = [featurizer_from_state(member) for member in members]
    sizes = config.get("input_sizes", [config["input_size"]])
    try:
        if len(featurizers) != len(sizes):
            raise ValueError(f"{len(featurizers)} preprocessing states for {len(sizes)} models")
        tensors = load_tensors(weights)
        models = []
        for k, (size, featurizer) in enumerate(zip(sizes, featurizers)):
            prefix = f"member{k}." if len(sizes) > 1 else ""
            model = build_model(config["params"], size, len(config["tags"]), featurizer.input_kind)
            model.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)},
                                  strict=True)
            models.append(model.eval())
    except (SafetensorError, RuntimeError, KeyError, ValueError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load the weights {str(folder / WEIGHTS)!r} into a {config['params'].get('model')!r} "
                        f"model: {first_line}") from None
    return Results(folder, config, featurizers, models, resources)


def verified_encoders(state: dict, recorded: dict) -> tempfile.TemporaryDirectory:
    """Copy each encoder's model files, as recorded in encoder_files.json, into a private temp
    directory, hashing the bytes as they are copied (one handle per file), and point ``state`` at
    the copies: the encoder loads only files the tagger was trained with, and nothing that changes
    at their source afterwards. A file that differs, or is missing, is a UserError."""
    from tagsearch.learn.encoder import resolve_model

    private = tempfile.TemporaryDirectory(prefix="tagsearch-encoder-")
    copies: dict[str, str] = {}
    for encoder in encoder_states(state):
        name = encoder["model"]
        if name not in copies:
            files = recorded.get(name)
            if not isinstance(files, dict) or not files:
                raise UserError(f"{ENCODER_FILES} records no files for encoder model {name!r}; re-run "
                                f"'tagsearch retrain'")
            copies[name] = _copy_verified(name, Path(resolve_model(name)[0]), files,
                                          Path(private.name) / str(len(copies)))
        encoder["model"] = encoder["encoder"] = copies[name]
    return private


def _copy_verified(name: str, root: Path, files: dict, target: Path) -> str:
    for relative, expected in files.items():
        source, destination = root / relative, target / relative
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise UserError(f"{ENCODER_FILES} names {relative!r}, outside the model directory; re-run "
                            f"'tagsearch retrain'")
        destination.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            with open(source, "rb") as handle, open(destination, "wb") as out:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
        except FileNotFoundError:
            digest = None
        if digest is None or digest.hexdigest() != expected:
            what = "is missing" if digest is None else "is not the file it was"
            raise UserError(f"encoder model {name!r} ({root}): {relative} {what}: this tagger was trained with "
                            f"weights and files whose sha256 {ENCODER_FILES} records; expected that model, unchanged")
    return str(target)
