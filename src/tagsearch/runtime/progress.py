"""A study's trial counts and best value so far (``launch``'s progress line, the workers' logs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import optuna

from tagsearch.log import log


@dataclass
class Progress:
    """Trial counts of a study and its best value so far."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    best_value: float | None = None
    best_number: int | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def progress(study: optuna.Study) -> Progress:
    state = optuna.trial.TrialState
    counts = Progress()
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    for trial in study.get_trials(deepcopy=False):
        if trial.state == state.COMPLETE:
            counts.complete += 1
            if counts.best_value is None or sign * trial.value < sign * counts.best_value:
                counts.best_value, counts.best_number = trial.value, trial.number
        elif trial.state == state.PRUNED:
            counts.pruned += 1
        elif trial.state == state.FAIL:
            counts.failed += 1
        elif trial.state == state.RUNNING:
            counts.running += 1
        else:
            counts.waiting += 1
    return counts


UNLIMITED = 1_000_000  # a trial budget this large is no budget (tagsearch tune: time alone ends the search)


def summary(counts: Progress, target: int) -> str:
    best = "-" if counts.best_value is None else f"{counts.best_value:.4f} (trial {counts.best_number})"
    done = f"{counts.finished}" if target >= UNLIMITED else f"{counts.finished}/{target}"
    return (f"{done} finished (complete {counts.complete}, pruned {counts.pruned}, "
            f"failed {counts.failed}, running {counts.running}), best {best}")


class Poll:
    """Runs a supervisor's progress display (``poll()``) and never raises: the workers matter more
    than their progress line. A failing poll (a storage outage, a bug) is logged once per distinct
    error and skipped; the next one tries again."""

    def __init__(self):
        self.seen: set[str] = set()

    def __call__(self, show: Callable[[], None]) -> None:
        try:
            show()
        except Exception as exc:
            text = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            if text not in self.seen:
                self.seen.add(text)
                try:
                    log(f"progress not shown ({text}); the workers go on")
                except OSError:
                    pass
