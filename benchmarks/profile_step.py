"""Where one training step of tagsearch's own path spends its time, on the built-in corpus.

    python benchmarks/profile_step.py                    # dense, 1 thread, one epoch
    python benchmarks/profile_step.py --model tfidf --threads 2 --ops 15

Runs one warm-up epoch, then one timed epoch of ``train.train_epoch``'s phases (batch gather, zero
grad, forward + loss, backward, clip, each optimizer), and prints milliseconds per step; then
torch.profiler's busiest operators over one more epoch (``--ops``). The seed's hyperparameters
(the specs' defaults, ``pos_weight = "seed"``) unless ``--param`` says otherwise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from tagsearch import data, train
from tagsearch.builtin import ensure_builtin
from tagsearch.spec import BUILTIN_PATH, load_spec, parse_overrides

REPO = Path(__file__).resolve().parent.parent


def timed_epoch(prepared: train.Prepared, params: dict, criterion, optimizers, generator) -> dict:
    """One epoch of ``train.train_epoch``'s loop with a timer around each phase; ms per step."""
    model, batches = prepared.model, prepared.train
    model.train()
    phases = dict.fromkeys(["batch", "zero_grad", "forward+loss", "backward", "clip"], 0.0)
    phases.update({f"step {type(opt).__name__}": 0.0 for opt in optimizers})
    order = torch.randperm(len(batches), generator=generator)
    steps, stream = 0, batches.batches(params["batch_size"], order)
    while True:
        tick = time.perf_counter()
        try:
            inputs, targets = next(stream)
        except StopIteration:
            break
        tick = _add(phases, "batch", tick)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        tick = _add(phases, "zero_grad", tick)
        loss = criterion(model(inputs), targets)
        tick = _add(phases, "forward+loss", tick)
        loss.backward()
        tick = _add(phases, "backward", tick)
        train.clip_gradients(model, params["clip_value"])
        tick = _add(phases, "clip", tick)
        for opt in optimizers:
            opt.step()
            tick = _add(phases, f"step {type(opt).__name__}", tick)
        steps += 1
    return {name: 1000 * seconds / steps for name, seconds in phases.items()} | {"steps": steps}


def _add(phases: dict, name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] += now - since
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["dense", "tfidf"], default="dense")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", help="posts file (default: the built-in corpus)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--ops", type=int, default=12, help="profiler rows to print (0: no profiler epoch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_spec(REPO / "studies" / f"{args.model}.toml")
    overrides = {"pos_weight": "seed", **parse_overrides(args.param)}
    params = spec.params(overrides)
    path = args.data or ensure_builtin(str(REPO / BUILTIN_PATH))
    corpus = data.load_corpus(data.DataConfig(path=path))
    prepared = train.prepare(corpus, params, torch.device("cpu"))
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=train.pos_weight(corpus.labels[corpus.train_idx],
                                                                       params["pos_weight"]))
    optimizers = train.make_optimizers(prepared.model, params["lr"], params["weight_decay"])
    generator = torch.Generator().manual_seed(0)
    print(f"{args.model}, {args.threads} thread(s), {path}: {prepared.model}")
    timed_epoch(prepared, params, criterion, optimizers, generator)  # warm-up: allocator, optimizer state
    start = time.perf_counter()
    phases = timed_epoch(prepared, params, criterion, optimizers, generator)
    seconds = time.perf_counter() - start
    print(f"\none training epoch: {seconds:.2f}s, {phases.pop('steps')} steps")
    for name, ms in phases.items():
        print(f"  {name:22s} {ms:6.2f} ms/step")
    print(f"  {'total':22s} {sum(phases.values()):6.2f} ms/step")
    sparse = prepared.model.embedding.weight.grad if args.model == "dense" else None
    if sparse is not None:
        print(f"  (last step: {sparse._nnz()} of {len(prepared.model.embedding.weight)} table rows touched)")
    if args.ops:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train.train_epoch(prepared.model, prepared.train, criterion, optimizers, params["batch_size"],
                              params["clip_value"], generator)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


if __name__ == "__main__":
    main()
