"""Where one training step of tagsearch's own path spends its time, on the built-in corpus.

    python -m benchmarks run profile_step                    # dense, 1 thread, one epoch
    python -m benchmarks run profile_step --model tfidf --threads 2 --ops 15

Runs ``train.train_epoch`` itself: one warm-up epoch, then one epoch with a clock hooked onto its
phases (batch gather, zero grad, forward + loss, backward, clip, each optimizer), and prints
milliseconds per step; then torch.profiler's busiest operators over one more epoch (``--ops``).
The seed's hyperparameters (the specs' defaults, ``pos_weight = "seed"``) unless ``--param`` says
otherwise.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from tagsearch.data import corpus as data
from tagsearch.learn import train
from tagsearch.data.builtin import BUILTIN_PATH, BUILTIN_POSTS, ensure_corpus
from tagsearch.study.spec import load_spec, parse_overrides

REPO = Path(__file__).resolve().parent.parent


class PhaseClock:
    """Seconds per phase of ``train.train_epoch``: each hook marks the end of the phase it names."""

    def __init__(self):
        self.seconds, self.steps, self.last, self.on = defaultdict(float), 0, 0.0, False

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        if self.on:
            self.seconds[phase] += now - self.last
            self.steps += phase == "forward+loss"
        self.last = now

    def after(self, function, phase: str):
        """``function``, marking the end of ``phase`` when it returns."""
        def timed(*args, **kwargs):
            result = function(*args, **kwargs)
            self.mark(phase)
            return result

        return timed


class ClockedBatches:
    """The training inputs, marking the end of each batch gather."""

    def __init__(self, inputs, clock: PhaseClock):
        self.inputs, self.labels, self.clock = inputs, inputs.labels, clock

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self, *args, **kwargs):
        for batch in self.inputs.batches(*args, **kwargs):
            self.clock.mark("batch")
            yield batch


def hook_phases(criterion, optimizers, clock: PhaseClock) -> None:
    """Hooks (no copy of the loop): zero_grad and the steps on each optimizer, forward + loss on the
    criterion, backward and clip around ``train.clip_gradients``."""
    for opt in optimizers:
        opt.zero_grad = clock.after(opt.zero_grad, "zero_grad")
        opt.register_step_post_hook(lambda opt, *_: clock.mark(f"step {type(opt).__name__}"))
    criterion.register_forward_hook(lambda *_: clock.mark("forward+loss"))
    clip = train.clip_gradients

    def clocked_clip(*args, **kwargs):
        clock.mark("backward")
        clip(*args, **kwargs)
        clock.mark("clip")

    train.clip_gradients = clocked_clip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["dense", "tfidf"], default="dense")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", help="posts file (default: the built-in corpus)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--ops", type=int, default=12, help="profiler rows to print (0: no profiler epoch)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_spec(REPO / "studies" / f"{args.model}.toml")
    overrides = {"pos_weight": "seed", **parse_overrides(args.param)}
    params = spec.params(overrides)
    path = args.data or ensure_corpus(str(REPO / BUILTIN_PATH), BUILTIN_POSTS)
    corpus = data.load_corpus(data.DataConfig(path=path))
    model, train_data, *_ = train.build(corpus, params, "cpu")
    criterion = torch.nn.BCEWithLogitsLoss(pos_weight=train.pos_weight(corpus.labels[corpus.train_idx],
                                                                       params["pos_weight"]))
    optimizers = train.make_optimizers(model, params)
    generator = torch.Generator().manual_seed(0)
    print(f"{args.model}, {args.threads} thread(s), {path}: {model}")
    clock = PhaseClock()
    hook_phases(criterion, optimizers, clock)
    batches = ClockedBatches(train_data, clock)

    def epoch() -> None:
        train.train_epoch(model, batches, criterion, optimizers, params["batch_size"], params["clip_value"],
                          generator)

    epoch()  # warm-up: allocator, optimizer state
    clock.on, clock.last = True, time.perf_counter()
    epoch()
    clock.on = False
    steps = clock.steps
    print(f"\none training epoch: {sum(clock.seconds.values()):.2f}s, {steps} steps")
    for name, seconds in clock.seconds.items():
        print(f"  {name:22s} {1000 * seconds / steps:6.2f} ms/step")
    print(f"  {'total':22s} {1000 * sum(clock.seconds.values()) / steps:6.2f} ms/step")
    sparse = model.embedding.weight.grad if args.model == "dense" else None
    if sparse is not None:
        print(f"  (last step: {sparse._nnz()} of {len(model.embedding.weight)} table rows touched)")
    if args.ops:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            epoch()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


if __name__ == "__main__":
    main()
