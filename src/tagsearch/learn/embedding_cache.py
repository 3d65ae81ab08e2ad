"""A directory of computed embedding matrices, shared by the workers of one host.

Encoding a corpus with a sentence encoder costs minutes on a CPU, and every trial of a study (and
every worker process) needs the same matrix, so it is computed once per key and read from disk
afterwards. The key (model name, weights hash, max_seq_length, data fingerprint, ...) is a JSON
object; its entry is ``<digest>.npy`` plus a ``<digest>.json`` sidecar recording the key.

Concurrency and crashes, without a server:

- one lock file per key, held with an exclusive ``fcntl.flock`` while computing: the first worker
  computes, the others block on the lock and then read the finished file, so nothing is encoded
  twice. The kernel releases the lock when its process dies, however it dies;
- files are written to a temp file in the same directory, fsynced, then ``os.replace``d into place,
  so a reader sees a whole entry or none. A killed encoder leaves at most a ``*.tmp`` file, which
  no reader opens and the next computation of that key deletes;
- lock files stay in place (unlinking them would let two processes lock different inodes);
- a search worker does not wait (``wait=False``): while another process computes the entry it gets
  ``Busy`` at once and goes on with other work;
- an encoding stopped part-way (the search's deadline, or its cost plan) leaves what it computed as
  ``<digest>.partial.npz`` with the number of rows done (``save_partial``): the next computation of
  that key starts from there (``partial``).

Only the standard library and numpy are imported here: tests run it in subprocesses cheaply, and a
worker that finds its embeddings cached never needs torch for them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from tagsearch.log import log


def check_sidecar(sidecar_path: Path, key: dict) -> None:
    """A ValueError unless the entry's sidecar records ``key`` (an OSError where it cannot be read)."""
    recorded = json.loads(sidecar_path.read_text(encoding="utf-8"))
    if recorded.get("key") != json.loads(json.dumps(key)):
        raise ValueError("its sidecar records another key")


def key_digest(key: dict) -> str:
    """A short, stable file name for ``key``: sha256 of its canonical JSON (sorted keys)."""
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:16]


class Busy(Exception):
    """Another process is computing this entry now (``get_or_compute(..., wait=False)``)."""


@contextlib.contextmanager
def computing(lock_path: Path, wait: bool, what: str):
    """Hold ``lock_path``'s exclusive lock while one process computes ``what`` (released on close,
    or by the kernel if the process dies); ``wait=False``: ``Busy`` at once while another holds it."""
    with open(lock_path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(f"another process is computing {what}") from None
        yield


class EmbeddingCache:
    """Embedding matrices (float32, 2-D) on disk, computed at most once per key per directory."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def paths(self, key: dict) -> tuple[Path, Path, Path]:
        """The entry's ``.npy``, its ``.json`` sidecar and its lock file."""
        stem = self.directory / key_digest(key)
        return stem.with_suffix(".npy"), stem.with_suffix(".json"), stem.with_suffix(".lock")

    def get(self, key: dict) -> np.ndarray | None:
        """The stored matrix for ``key``, or None when there is no complete, matching entry."""
        array_path, sidecar_path, _ = self.paths(key)
        if not array_path.exists():
            return None
        try:
            check_sidecar(sidecar_path, key)
            array = np.load(array_path, mmap_mode=None, allow_pickle=False)
            _check(array)
        except (OSError, ValueError) as error:
            log(f"embedding cache: ignoring unreadable entry {array_path.name} ({error})")
            return None
        return array

    def get_or_compute(self, key: dict, compute: Callable[[], np.ndarray], wait: bool = True) -> np.ndarray:
        """The matrix for ``key``: read if stored, else computed by exactly one process and stored.
        ``wait=False``: ``Busy`` instead of waiting while another process computes it.

        The lock-free read first keeps the common case (entry present) cheap; the second read
        under the lock catches an entry that another worker finished while this one waited."""
        array = self.get(key)
        if array is not None:
            return array
        self.directory.mkdir(parents=True, exist_ok=True)
        array_path, sidecar_path, lock_path = self.paths(key)
        with computing(lock_path, wait, f"embedding entry {array_path.stem}"):
            array = self.get(key)
            if array is not None:
                return array
            self._remove_temp_files(array_path.stem)  # left by a killed writer: never read
            array = compute()
            _check(array)
            # Sidecar first: an .npy in place means its entry is complete.
            _write_atomically(sidecar_path, lambda f: f.write(
                json.dumps({"key": key, "shape": list(array.shape), "dtype": "float32"},
                           indent=1, sort_keys=True).encode("utf-8")))
            _write_atomically(array_path, lambda f: np.save(f, array, allow_pickle=False))
        self.partial_path(key).unlink(missing_ok=True)
        return array

    def partial_path(self, key: dict) -> Path:
        return self.directory / f"{key_digest(key)}.partial.npz"

    def save_partial(self, key: dict, array: np.ndarray, done: int) -> None:
        """Keep a computation stopped part-way: ``array`` with its first ``done`` rows (in the
        computation's own order) valid. Call it while computing the entry (under its lock)."""
        _check(array)
        _write_atomically(self.partial_path(key), lambda f: np.savez(f, array=array, done=np.int64(done)))

    def partial(self, key: dict) -> tuple[np.ndarray, int] | None:
        """``(array, rows done)`` that ``save_partial`` kept for ``key``, or None."""
        try:
            with np.load(self.partial_path(key), allow_pickle=False) as stored:
                array, done = stored["array"], int(stored["done"])
            _check(array)
        except (OSError, ValueError, KeyError):
            return None
        return array, done

    def _remove_temp_files(self, stem: str) -> None:
        for leftover in self.directory.glob(f"{stem}.*.tmp"):
            leftover.unlink(missing_ok=True)


def _check(array) -> None:
    """Refuse anything but a 2-D float32 ndarray (what every consumer of the cache expects)."""
    if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype != np.float32:
        described = (f"{array.dtype} array of shape {array.shape}" if isinstance(array, np.ndarray)
                     else type(array).__name__)
        raise ValueError(f"expected a 2-D float32 array, got a {described}")


def _write_atomically(path: Path, write: Callable) -> None:
    """Write through a temp file in the same directory, fsync, rename over ``path``, fsync the dir."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
