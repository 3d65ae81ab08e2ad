"""The floor: the least time a training epoch can take on this machine, from the bytes it must move.

A training step at the seed's hyperparameters is memory-bound (a few FLOPs per byte), so its floor
is the bytes it must read and write divided by the machine's memory bandwidth:

- **bandwidth**: the best of 5 single-threaded copies of a 256 MiB float32 array
  (``numpy.copyto``), counted as 2 × 256 MiB moved (one read, one write); with ``--threads 2``
  the floor is the 1-thread floor (two cores may move more, so the ratio is then an upper bound);
- **TF-IDF, the seed's exact optimizer** (dense AdamW over every parameter, the first layer's
  ``max_features × hidden1`` included): per step, every parameter's gradient is written and read,
  and the parameter and both Adam moments are read and written: 8 × 4 bytes per parameter; plus
  the batch's input (a CSR row's column and value per non-zero, 12 bytes). tagsearch's lazy AdamW
  touches only the first-layer rows the batch contains, so it can go *below* this floor; the lazy
  floor (the same 32 bytes per parameter, but only for the touched rows of the first layer) is
  printed beside it;
- **dense, lazy Adam on the embedding** (the issue's semantics: the touched rows and both
  moments): per step, each distinct row the batch touches is read in the forward pass, its
  gradient written and read, and the row and both moments read and written: 9 × 4 bytes ×
  ``embedding_dim``; the head's parameters as for TF-IDF; the input (an id and a weight per
  distinct token of a post, 12 bytes).

The rows a step touches are counted exactly from the epoch's own batches (ascending order; the
shuffled order touches the same number on average). ``ratio`` = tagsearch's measured training
time per epoch (``train.train_epoch`` alone, no validation; the median of epochs 2..N) / floor.

    python -m benchmarks run floor                  # built-in corpus, both models, 1 thread
    python -m benchmarks run floor --threads 2 --only dense
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tagsearch.data import corpus as data
from tagsearch.learn import models, train
from tagsearch.data.builtin import BUILTIN_PATH, BUILTIN_POSTS, ensure_corpus
from tagsearch.study.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SPECS = {"dense": REPO / "studies" / "dense.toml", "tfidf": REPO / "studies" / "tfidf.toml"}
ADAM_BYTES = 8 * 4  # per parameter per step: gradient write + read, parameter/m/v read + write
COPY_MIB = 256


def copy_bandwidth(mib: int = COPY_MIB, repeats: int = 5) -> float:
    """Bytes per second of the best single-threaded copy (read + write counted)."""
    source = np.ones(mib * 2**20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def step_bytes(model: torch.nn.Module, inputs, kind: str) -> dict:
    """The bytes one step must move: ``exact`` (the seed's optimizer semantics) and ``lazy``."""
    if kind == "dense":
        ids, _, _ = inputs
        table = model.embedding.weight
        rows = int(torch.unique(ids).numel())
        head = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("embedding"))
        lazy = rows * table.shape[1] * 4 * 9 + head * ADAM_BYTES + len(ids) * 12
        return {"exact": lazy, "lazy": lazy, "touched_rows": rows}
    first = next(m for m in model.modules() if isinstance(m, models.SparseLinear)).weight
    rows = int(torch.unique(inputs.col_indices()).numel())
    rest = sum(p.numel() for p in model.parameters()) - first.numel()
    io = inputs.values().numel() * 12
    return {"exact": (first.numel() + rest) * ADAM_BYTES + io,
            "lazy": (rows * first.shape[1] + rest) * ADAM_BYTES + io, "touched_rows": rows}


def floor(corpus: data.Corpus, kind: str, params: dict, bandwidth: float, epochs: int = 3) -> dict:
    model, train_data, val_data, _ = train.build(corpus, params, "cpu")
    steps = [step_bytes(model, inputs, kind) for inputs, targets in train_data.batches(params["batch_size"])
             if len(targets) >= 2]
    runner = train.Trainee.start(model, train_data, val_data, params)
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        runner.epoch(params)
        seconds.append(time.perf_counter() - start)
    epoch = float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
    exact, lazy = sum(s["exact"] for s in steps), sum(s["lazy"] for s in steps)
    return {"kind": kind, "steps": len(steps), "touched_rows_per_step": float(np.mean([s["touched_rows"] for s in steps])),
            "bytes_per_step_exact": exact / len(steps), "bytes_per_step_lazy": lazy / len(steps),
            "floor_exact": exact / bandwidth, "floor_lazy": lazy / bandwidth, "epoch_seconds": epoch,
            "ratio_exact": epoch / (exact / bandwidth), "ratio_lazy": epoch / (lazy / bandwidth)}


def describe(row: dict, bandwidth: float) -> str:
    text = (f"{row['kind']:5s}: {row['steps']} steps/epoch, {row['touched_rows_per_step']:.0f} rows touched/step; "
            f"{row['bytes_per_step_exact'] / 1e6:.2f} MB/step (exact) -> floor {row['floor_exact']:.3f} s/epoch "
            f"at {bandwidth / 1e9:.1f} GB/s; tagsearch {row['epoch_seconds']:.3f} s = {row['ratio_exact']:.2f}x")
    if row["kind"] == "tfidf":
        text += (f"; lazy floor {row['floor_lazy']:.3f} s ({row['bytes_per_step_lazy'] / 1e6:.2f} MB/step) "
                 f"= {row['ratio_lazy']:.2f}x")
    return text


def seed_params(kind: str) -> dict:
    """The spec's defaults (the seed's hyperparameters) with the seed's pos_weight, as the reference
    uses (studies/tfidf.toml defaults to neg_pos)."""
    return load_spec(SPECS[kind]).params({"pos_weight": "seed"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a CSV (default: the built-in corpus)")
    parser.add_argument("--only", choices=sorted(SPECS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.data or ensure_corpus(str(REPO / BUILTIN_PATH), BUILTIN_POSTS)
    corpus = data.load_corpus(data.DataConfig(path=path))
    bandwidth = copy_bandwidth()
    print(f"memory bandwidth (1-thread copy of {COPY_MIB} MiB, read + write): {bandwidth / 1e9:.2f} GB/s")
    rows = []
    for kind in [args.only] if args.only else ["dense", "tfidf"]:
        rows.append(floor(corpus, kind, seed_params(kind), bandwidth, args.epochs))
        print(describe(rows[-1], bandwidth), flush=True)
    if args.json:
        print(json.dumps({"bandwidth": bandwidth, "threads": args.threads, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
