"""The frozen prefix's hidden states of a corpus, computed once per host and shared by its workers.

When a ``finetune`` trial trains only the top N of a transformer's L layers, what enters layer L−N
depends on the post alone: ``(model, weights hash, max_seq_length, N, data)`` names it. Its entry
keeps every post's token states flat, fp16, one row per real token (no padding), with the posts'
token counts beside them:

    <digest>.json          the key, the shape and dtype (written first)
    <digest>.lengths.npy   int64, tokens per post
    <digest>.npy           float16 (tokens, hidden): written last, so its presence means complete

The same rules as ``embedding_cache.EmbeddingCache`` (whose helpers this reuses): one ``flock`` per
key while computing (the first worker computes, the others wait and read), every file through a
temp file, fsync and ``os.replace``, leftovers of a killed writer removed by the next one.

On disk or in memory by size: an entry of at most ``IN_MEMORY_BYTES`` is read into memory; a larger
one is memory-mapped read-only, so the workers of a host share one copy through the page cache and
a batch reads only its own posts' rows. Only the standard library and numpy are imported here.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from tagsearch.learn.embedding_cache import _write_atomically, check_sidecar, computing, key_digest
from tagsearch.log import warning

IN_MEMORY_BYTES = 256 << 20


class HiddenStates(NamedTuple):
    """Every post's token states, flat (``rows``: tokens × hidden, float16) with ``lengths`` per post."""

    rows: np.ndarray
    lengths: np.ndarray


def check(states: HiddenStates) -> None:
    """Refuse anything but 2-D float16 rows whose count is the lengths' sum."""
    rows, lengths = states
    if not (isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.dtype == np.float16):
        raise ValueError(f"expected 2-D float16 hidden states, got {getattr(rows, 'dtype', type(rows))} "
                         f"of shape {getattr(rows, 'shape', None)}")
    if lengths.ndim != 1 or int(lengths.sum()) != len(rows) or (len(lengths) and int(lengths.min()) < 1):
        raise ValueError(f"token counts (sum {int(lengths.sum())}) do not match {len(rows)} rows")


class HiddenCache:
    """Hidden-state entries in ``directory``, computed at most once per key."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def paths(self, key: dict) -> tuple[Path, Path, Path, Path]:
        """The entry's rows, lengths, sidecar and lock files."""
        stem = self.directory / f"hidden-{key_digest(key)}"
        return (stem.with_suffix(".npy"), stem.with_suffix(".lengths.npy"), stem.with_suffix(".json"),
                stem.with_suffix(".lock"))

    def get(self, key: dict) -> HiddenStates | None:
        """The stored states for ``key``, or None when there is no complete, matching entry."""
        rows_path, lengths_path, sidecar_path, _ = self.paths(key)
        if not rows_path.exists():
            return None
        try:
            check_sidecar(sidecar_path, key)
            mapped = rows_path.stat().st_size > IN_MEMORY_BYTES
            states = HiddenStates(np.load(rows_path, mmap_mode="r" if mapped else None, allow_pickle=False),
                                  np.load(lengths_path, allow_pickle=False))
            check(states)
        except (OSError, ValueError) as error:
            warning(f"hidden-state cache: ignoring unreadable entry {rows_path.name} ({error})")
            return None
        return states

    def get_or_compute(self, key: dict, compute: Callable[[], HiddenStates], wait: bool = True) -> HiddenStates:
        """The states for ``key``: read if stored, else computed by exactly one process and stored.
        ``wait=False``: ``Busy`` instead of waiting while another process computes them."""
        states = self.get(key)
        if states is not None:
            return states
        self.directory.mkdir(parents=True, exist_ok=True)
        rows_path, lengths_path, sidecar_path, lock_path = self.paths(key)
        with computing(lock_path, wait, f"hidden-state entry {rows_path.stem}"):
            states = self.get(key)
            if states is not None:
                return states
            for leftover in self.directory.glob(f"{rows_path.stem}.*tmp"):
                leftover.unlink(missing_ok=True)  # a killed writer's: never read
            states = compute()
            check(states)
            _write_atomically(sidecar_path, lambda f: f.write(json.dumps(
                {"key": key, "shape": list(states.rows.shape), "dtype": "float16"}, indent=1,
                sort_keys=True).encode("utf-8")))
            _write_atomically(lengths_path, lambda f: np.save(f, states.lengths, allow_pickle=False))
            _write_atomically(rows_path, lambda f: np.save(f, states.rows, allow_pickle=False))
        return self.get(key) or states
