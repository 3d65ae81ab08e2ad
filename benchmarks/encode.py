"""Throughput of ``SentenceEncoder.transform`` against sentence-transformers' own ``encode``.

The encoder must not cost more than the library it wraps (issue #20: at least 0.9x).
Both encode the same cleaned robotics posts on 2 torch threads (batch 64, max_seq_length 256),
after a short warm-up, optionally ``--repeat``ed alternately (the best run of each is
reported, in wall and in CPU seconds: the latter moves less when other jobs share the cores):

    .venv/bin/python -m benchmarks run encode [--data CSV] [--limit N] [--repeat K] [--json]

Posts are read with a local stdlib reader (HTML tags stripped, entities unescaped, case kept, as
a sentence encoder wants natural text), so the benchmark does not depend on ``tagsearch.data``.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "stackexchange-robotics.csv"
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def read_posts(path: Path) -> list[str]:
    """Title + body of each post (``title``/``content`` or ``Title``/``Body``), HTML stripped."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    posts = []
    for row in rows:
        title = row.get("title") or row.get("Title") or ""
        body = row.get("content") or row.get("Body") or ""
        posts.append(_SPACE.sub(" ", html.unescape(_TAG.sub(" ", f"{title}. {body}"))).strip())
    return posts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=0, help="first N posts only (0: all)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found (pass --data)")
    posts = read_posts(args.data)[: args.limit or None]

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from sentence_transformers import SentenceTransformer

    from tagsearch.learn.encoder import SentenceEncoder
    import_s = time.perf_counter() - started

    started = time.perf_counter()
    encoder = SentenceEncoder(max_seq_length=256, batch_size=64).fit()
    encoder.dim_  # loads the model
    load_s = time.perf_counter() - started
    library = SentenceTransformer(encoder.path_, device="cpu")
    library.max_seq_length = 256

    def library_encode():
        return library.encode(posts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                              show_progress_bar=False)

    warm = posts[:128]
    library.encode(warm, batch_size=64)
    encoder.transform(warm)
    runs = {"sentence_transformers": [], "sentence_encoder": []}
    cpu = {name: [] for name in runs}  # CPU seconds: steadier than wall time on a shared machine
    for _ in range(args.repeat):
        for name, encode in (("sentence_transformers", library_encode),
                             ("sentence_encoder", lambda: encoder.transform(posts))):
            started, cpu_started = time.perf_counter(), time.process_time()
            result = encode()
            runs[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
            if name == "sentence_transformers":
                reference = result
            else:
                max_abs_diff = float(np.abs(result - reference).max())
    best = {name: min(seconds) for name, seconds in runs.items()}
    report = {
        "posts": len(posts), "threads": args.threads, "repeat": args.repeat,
        "import_s": round(import_s, 2), "model_load_s": round(load_s, 2),
        "seconds": {name: round(s, 2) for name, s in best.items()},
        "posts_per_s": {name: round(len(posts) / s, 1) for name, s in best.items()},
        "ratio": round(best["sentence_transformers"] / best["sentence_encoder"], 3),
        "all_seconds": {name: [round(s, 2) for s in seconds] for name, seconds in runs.items()},
        "cpu_seconds": {name: round(min(seconds), 2) for name, seconds in cpu.items()},
        "cpu_ratio": round(min(cpu["sentence_transformers"]) / min(cpu["sentence_encoder"]), 3),
        "max_abs_diff": max_abs_diff,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for name in best:
            print(f"{name:22s} {report['seconds'][name]:7.2f} s  {report['posts_per_s'][name]:7.1f} posts/s")
        print(f"ratio (SentenceEncoder / sentence-transformers throughput): {report['ratio']} "
              f"(wall), {report['cpu_ratio']} (CPU time); all runs (s): {report['all_seconds']}")
        print(f"max |difference|: {max_abs_diff:.2e}; import {import_s:.1f} s, model load {load_s:.1f} s; "
              f"peak RSS {report['peak_rss_mb']} MB; {len(posts)} posts, {args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
