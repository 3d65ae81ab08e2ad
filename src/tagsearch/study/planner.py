"""What things cost, and whether the budget can pay: pure functions over measured rates, the
budget and the clock (no torch, no storage; the objective feeds them and acts on the answer).

- A kind's **fixed cost** (encoding every post with a sentence encoder; on a GPU seconds, on two
  CPU cores minutes) is measured on its first chunk and extrapolated (``extrapolate``);
  ``fixed_cost_plan`` says whether it may be paid now: only while it takes at most
  ``FIXED_COST_SHARE`` of what is left of the search. The encoding runs beside the search (one
  worker encodes, the others search the cheap kinds), so what it must leave is time for its own
  kinds to be searched after it: 30 % of the search (and the encodings also feed the cheap TF-IDF ⊕
  encoder + LR baseline). Measured on the crypto posts (2 CPU workers, 8 minutes): encoding took
  half of the search and the encoder kinds still won by a wide margin (validation Hamming 0.0730
  against 0.0776 for the search without them).
  A kind left out says what it would have cost and which ``--time`` would include it.
- The ``finetune`` kind's **fixed cost** is its frozen prefix (the layers below the trained ones,
  computed once per N) and its trials are long: ``finetune_seconds`` predicts a trial from the
  prefix's measured rate, and the plan pays for the prefix only where the prefix and one such
  trial fit the same share of what is left (``fixed_cost_plan`` on their sum).
- **Fidelity**: ``fidelity_plan`` says whether early epochs should train on a subsample of the
  training posts — only where a full-data trial's measured epochs would let too few trials finish
  in what is left (``MIN_TRIALS_AHEAD``): small data never pays the subsampling, large data gets
  many more configurations per minute.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tagsearch.durations import span_text

FIXED_COST_SHARE = 0.7  # of the remaining search a kind's fixed cost may take (30 % is left to search its kinds)
MIN_TRIALS_AHEAD = 24  # full trials the remaining budget should buy; fewer and early rungs subsample


def extrapolate(done: int, seconds: float, total: int) -> float:
    """Seconds for ``total`` items at the rate measured on the first ``done`` (in ``seconds``)."""
    if done <= 0:
        return math.inf
    return seconds / done * total


@dataclass(frozen=True)
class FixedCost:
    """The verdict on one kind's fixed cost: what it will cost, what the search had left when it was
    measured, whether it is paid, and the ``--time`` that would pay it."""

    kind: str
    seconds: float  # predicted, for the whole fixed cost
    remaining: float  # seconds of search left when measured
    elapsed: float  # seconds of search gone when measured
    included: bool
    time_needed: float  # a --time that would include it (whole minutes)

    def note(self) -> str:
        """One line for the log and the verdict."""
        if self.included:
            return f"{self.kind}: its fixed cost (~{span_text(self.seconds)}) fits the {span_text(self.remaining)} left"
        return (f"{self.kind} left out: its fixed cost would take ~{span_text(self.seconds)} of the "
                f"{span_text(self.remaining)} left of the search (more than {FIXED_COST_SHARE:.0%}); "
                f"--time {span_text(self.time_needed)} or more would include it")

    def record(self) -> dict:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def fixed_cost_plan(kind: str, seconds: float, *, now: float, deadline: float | None, budget: float | None,
                    share: float = FIXED_COST_SHARE) -> FixedCost:
    """Whether ``kind``'s fixed cost of ``seconds`` (predicted) may be paid at ``now``: with no
    deadline always; else when it is at most ``share`` of the seconds left. ``budget``: the whole
    search's seconds (for how much of it is gone, hence the ``--time`` that would include it)."""
    if deadline is None:
        return FixedCost(kind, seconds, math.inf, 0.0, True, 0.0)
    remaining = max(deadline - now, 0.0)
    elapsed = max((budget or remaining) - remaining, 0.0)
    needed = 60 * math.ceil((elapsed + seconds / share) / 60)
    return FixedCost(kind, seconds, remaining, elapsed, seconds <= share * remaining, float(needed))


BACKWARD_FACTOR = 3.0  # a trained layer's forward + backward pass, in forward passes


def finetune_seconds(prefix_seconds: float, n_posts: int, frozen: int, trained: int, train_posts: int,
                     val_posts: int, epochs: int, folds: int = 1) -> float | None:
    """Seconds one ``finetune`` trial will train, from its prefix's measured (extrapolated)
    ``prefix_seconds`` for ``n_posts`` posts through ``frozen`` layers: one layer's forward pass
    costs ``prefix_seconds / (n_posts * frozen)`` a post; an epoch runs the ``trained`` layers
    forward and backward (``BACKWARD_FACTOR``) over the training posts and forward over the
    validation posts; ``epochs`` epochs on each of ``folds`` folds. None when nothing below the
    trained layers was measured (``frozen`` 0: every layer trains)."""
    if frozen <= 0 or n_posts <= 0:
        return None
    layer_post = prefix_seconds / (n_posts * frozen)
    return layer_post * trained * (BACKWARD_FACTOR * train_posts + val_posts) * epochs * folds


@dataclass(frozen=True)
class Fidelity:
    """How a trial trains its early epochs: on ``fraction`` of the training posts until epoch
    ``full_from`` (fraction 1.0: all of them from the start)."""

    fraction: float = 1.0
    full_from: int = 1

    def at(self, epoch: int) -> float:
        """The share of the training posts epoch ``epoch`` trains on."""
        return self.fraction if epoch < self.full_from else 1.0

    def level(self, epoch: int) -> int:
        """0 for a subsampled epoch, 1 for a full one: what the pruner must not mix."""
        return 0 if epoch < self.full_from else 1


FULL = Fidelity()


def fidelity_plan(epoch_seconds: float | None, epochs: int, remaining: float | None, workers: int = 1,
                  min_trials: int = MIN_TRIALS_AHEAD, fractions: tuple[float, ...] = (0.25, 0.5),
                  rungs: int = 2) -> Fidelity:
    """Subsample the first ``rungs`` epochs when a full trial (``epochs`` epochs of the measured
    ``epoch_seconds``) times ``min_trials`` would not fit the ``remaining`` seconds on ``workers``:
    the largest fraction of ``fractions`` that makes them fit, else the smallest. Nothing measured
    yet, or no deadline: full fidelity."""
    if not epoch_seconds or remaining is None or not math.isfinite(remaining):
        return FULL
    capacity = remaining * max(workers, 1)

    def trial_seconds(fraction: float) -> float:
        return epoch_seconds * (fraction * min(rungs, epochs) + max(epochs - rungs, 0))

    if trial_seconds(1.0) * min_trials <= capacity:
        return FULL
    for fraction in sorted(fractions, reverse=True):
        if trial_seconds(fraction) * min_trials <= capacity:
            return Fidelity(fraction, rungs + 1)
    return Fidelity(min(fractions), rungs + 1)
