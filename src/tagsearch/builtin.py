"""The built-in corpus: the synthetic 47,427-post set, generated under ``storage/`` on first use."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .log import log
from .spec import BUILTIN_PATH

BUILTIN_POSTS = 47427
BUILTIN_SEED = 0


def ensure_builtin(path: str, n_posts: int = BUILTIN_POSTS) -> str:
    """Generate the built-in corpus at ``path`` if it is the built-in path and missing."""
    if Path(path) != Path(BUILTIN_PATH) or Path(path).is_file():
        return path
    from .synth import write_corpus

    start = time.perf_counter()
    log(f"generating the built-in synthetic corpus ({n_posts} posts) at {path} ...")
    tmp = f"{path}.tmp-{os.getpid()}.csv"
    write_corpus(tmp, n_posts=n_posts, seed=BUILTIN_SEED)
    os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    log(f"  done in {time.perf_counter() - start:.1f}s")
    return path
