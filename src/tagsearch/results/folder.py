"""A results directory: a retrained model saved as plain data, and loaded back without pickle.

Layout (written by ``tagsearch retrain``, read by ``predict`` and ``compare``)::

    model.safetensors    the weights (safetensors: tensors only, nothing that runs code on load)
    preprocessing.json   the fitted featurizer's state (``features.Featurizer.state``; an ensemble: its members')
    config.json          params, tags, thresholds, data, study/trial, versions, sha256 of both files
    metrics.json         validation and test figures (see retrain.py)
    *.png, report.md     plots and a short report
    manifest.json        the marker of a tagsearch results folder: the sha256 of every other file

``atomic_dir`` writes a directory atomically (a temp directory beside it, swapped into place in one
step), so an interrupted run never leaves a half-written results directory, and a replaced one is
the old or the new directory at every instant. It writes manifest.json into every folder it
publishes, and replaces only a directory that is a results folder (one with a manifest.json, or a
config.json of an older tagsearch) or an empty one: a mistyped ``--out`` is refused, not deleted.
Every loader reads a file through ``read_verified``: its bytes are read once, hashed, compared with
the manifest, and only then used (no second open that a concurrent writer could swap in between).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from tagsearch.learn.features import Featurizer, featurizer_from_state
from tagsearch.data.corpus import clean_texts
from tagsearch.errors import UserError
from tagsearch.learn import finetune  # noqa: F401  (registers the finetune kind's featurizer and model)
from tagsearch.learn.models import build_model
from tagsearch.learn.train import predict_proba

FORMAT = 1
WEIGHTS = "model.safetensors"
PREPROCESSING = "preprocessing.json"
CONFIG = "config.json"
METRICS = "metrics.json"
ENCODER_FILES = "encoder_files.json"  # the sha256 of every file of a sentence encoder the tagger uses
MANIFEST = "manifest.json"  # the marker of a results folder, and the sha256 of every file in it
MANIFEST_KIND = "tagsearch results folder"


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


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike):
    """Yield a fresh temp directory beside ``out``; on success it becomes ``out`` in one atomic step,
    so ``out`` is the complete old directory or the complete new one at every instant, whatever kills
    the process (SIGKILL, power loss after the rename is journaled). On an error the temp directory
    is deleted and ``out`` is untouched.

    An existing ``out`` is swapped with ``renameat2(RENAME_EXCHANGE)`` (Linux ≥ 3.15 on ext4, xfs,
    btrfs, tmpfs, ...); then the old tree, now under the temp name, is deleted. Where the exchange
    is unavailable, ``out`` becomes a symlink to a versioned directory ``.out.v-*`` and each replace
    is one ``os.replace`` of that symlink (a real directory left by an older tagsearch is converted
    once, by the exchange if possible, else with a rename whose gap is the only non-atomic moment).
    Leftovers of a killed run (``.out.tmp-*``, ``.out.v-*`` no longer linked) are removed by the next."""
    out = Path(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        write_manifest(tmp)
        tmp.chmod(0o755)
        check_replaceable(out)  # still nothing else there (checked again just before the swap)
        _fsync_tree(tmp)
        _checkpoint("written")
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(out: str | os.PathLike) -> None:
    """A UserError unless ``out`` is nothing, an empty directory, or a tagsearch results folder:
    the only things ``atomic_dir`` may replace (and delete the old tree of)."""
    out = Path(out)
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise UserError(f"results path {str(out)!r} is a file; expected a directory (or nothing) there")
    if is_results_folder(out) or not any(out.iterdir()):
        return
    raise UserError(f"results path {str(out)!r} is a directory that is not a tagsearch results folder (no "
                    f"{MANIFEST}); refusing to replace it, expected a new path, an empty directory or a results "
                    f"folder written by tagsearch")


def is_results_folder(folder: Path) -> bool:
    """A folder written by ``atomic_dir`` (its manifest), or by a tagsearch from before manifests
    (a config.json of the results format beside its weights)."""
    if (folder / MANIFEST).is_file():
        try:
            return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("kind") == MANIFEST_KIND
        except (OSError, ValueError, AttributeError):
            return False
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT and isinstance(config.get("sha256"), dict) \
        and (folder / WEIGHTS).is_file()


def write_manifest(folder: Path) -> None:
    """manifest.json: the marker of a results folder and the sha256 of every file in it (config.json
    included), by path relative to ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != MANIFEST)
    write_json(folder / MANIFEST, {"kind": MANIFEST_KIND, "format": FORMAT,
                                   "sha256": {p.relative_to(folder).as_posix(): sha256(p) for p in files}})


RENAME_EXCHANGE = 2
AT_FDCWD = -100
_FORCE_SYMLINK_ENV = "TAGSEARCH_NO_RENAME_EXCHANGE"  # tests: exercise the symlink fallback on Linux


def _checkpoint(step: str) -> None:
    """Between two steps of a results swap (tests kill the process here)."""


def _install(tmp: Path, out: Path) -> None:
    """Make ``tmp`` the new ``out`` atomically; then delete the old tree."""
    if not os.path.lexists(out):
        if _symlink_mode(out):
            _link_version(tmp, out)
        else:
            os.rename(tmp, out)  # nothing to keep: a plain rename is atomic
            _fsync_dir(out.parent)
        _checkpoint("installed")
        return
    if out.is_symlink() or not _exchange(tmp, out):
        _link_version(tmp, out)
        return
    # tmp now holds the old tree (or, if out was a symlink, the old link: see _link_version).
    _fsync_dir(out.parent)
    _checkpoint("exchanged")
    _remove_old(tmp)
    _checkpoint("cleaned")


def _link_version(tmp: Path, out: Path) -> None:
    """Fallback: ``out`` is a symlink to ``.out.v-*``; replace the link in one ``os.replace``."""
    version = Path(tempfile.mkdtemp(prefix=f".{out.name}.v-{os.getpid()}-", dir=out.parent))
    os.rename(tmp, version)  # rename over the empty directory mkdtemp made (same file system)
    _checkpoint("versioned")
    link = out.with_name(f".{out.name}.link-{os.getpid()}")
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(version.name, link)
    old = os.readlink(out) if out.is_symlink() else None
    if os.path.lexists(out) and not out.is_symlink():
        # A real directory from before: the exchange is unavailable, so move it aside first (the
        # one gap of the fallback, once per results directory).
        aside = out.with_name(f".{out.name}.v-old-{os.getpid()}")
        os.rename(out, aside)
        _checkpoint("moved-aside")
        os.replace(link, out)
        old = aside.name
    else:
        os.replace(link, out)
    _fsync_dir(out.parent)
    _checkpoint("exchanged")
    if old is not None and "/" not in old:
        _remove_old(out.parent / old)
    _checkpoint("cleaned")


def _symlink_mode(out: Path) -> bool:
    return os.environ.get(_FORCE_SYMLINK_ENV) == "1" or _renameat2() is None


def _renameat2():
    """libc's renameat2, or None (not Linux, old glibc)."""
    if os.environ.get(_FORCE_SYMLINK_ENV) == "1" or not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step; False where the OS or file system cannot."""
    import ctypes

    function = _renameat2()
    if function is None:
        return False
    if function(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # file system (or seccomp filter) without RENAME_EXCHANGE: use the symlink fallback
    raise OSError(error, f"renameat2({str(a)!r}, {str(b)!r}, RENAME_EXCHANGE): {os.strerror(error)}")


def _remove_old(path: Path) -> None:
    """Delete an old tree: a directory, or a symlink (then also the version it pointed to)."""
    if path.is_symlink():
        target = os.readlink(path)
        os.unlink(path)
        if "/" not in target and target.startswith("."):
            shutil.rmtree(path.parent / target, ignore_errors=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _sweep_leftovers(out: Path) -> None:
    """Remove what a killed earlier run left beside ``out``: temp directories of dead processes,
    versions no longer linked, stray links. Never the live version, never another run's temp."""
    live = os.readlink(out) if out.is_symlink() else None
    for path in out.parent.glob(f".{glob.escape(out.name)}.*"):
        kind, _, tail = path.name[len(out.name) + 2:].partition("-")
        owner = tail.removeprefix("old-").split("-", 1)[0]
        if kind not in ("tmp", "v", "link") or path.name == live or _pid_alive(owner):
            continue  # not ours, the live version, or another retrain of this directory is running
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(text: str) -> bool:
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(text) != os.getpid()


def _fsync_tree(folder: Path) -> None:
    """Flush every file of the new tree before it becomes visible (a crash after the swap must not
    leave empty files under the new name)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ---------------------------------------------------------------------------------------------
# Reading


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


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), line(["---"] * len(headers))] + [line(row) for row in rows])
