"""The built-in corpus: synthetic posts (synth.py) as many as the seed data had, generated under
``storage/`` on first use. A spec whose ``[data] path`` is ``"builtin"`` reads it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tagsearch.log import log

BUILTIN_DATA = "builtin"
BUILTIN_POSTS = 47427  # the seed data's size
BUILTIN_SEED = 0
SYNTH_VERSION = 2  # bump whenever synth.py's output changes: generated corpora are cached by this name


def synth_path(n_posts: int) -> str:
    """Where a generated corpus of ``n_posts`` posts is cached."""
    return f"storage/builtin-synth-v{SYNTH_VERSION}-{n_posts}.csv"


BUILTIN_PATH = synth_path(BUILTIN_POSTS)


def ensure_corpus(path: str, n_posts: int) -> str:
    """Write ``n_posts`` synthetic posts (seed ``BUILTIN_SEED``) to ``path`` unless it exists."""
    if Path(path).is_file():
        return path
    from tagsearch.data.synth import write_corpus

    start = time.perf_counter()
    log(f"generating the built-in synthetic corpus ({n_posts} posts) at {path} ...")
    tmp = f"{path}.tmp-{os.getpid()}.csv"
    write_corpus(tmp, n_posts=n_posts, seed=BUILTIN_SEED)
    os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    log(f"  done in {time.perf_counter() - start:.1f}s")
    return path
