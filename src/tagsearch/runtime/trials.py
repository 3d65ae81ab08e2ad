"""The trial loop of one worker process, whatever the objective: take the next trial the study's
budget allows (budget.py: the count, the deadline and the lock shared with the other workers), run
it, tell its outcome (outcomes.py: every FAIL carries a ``fail_reason`` of tagsearch's), and again,
until the budget says stop.

Each trial is asked for and told (``Study.ask``/``tell``, not ``optimize``). A trial failed by
another worker while it ran (its worker was judged lost) is left as it is: this worker moves on.
A signal during a trial fails it with the reason and queues it again (interrupts.py); the worker
then stops.
"""

from __future__ import annotations

import gc
import math
from typing import Callable

import optuna

from tagsearch.log import warning
from tagsearch.runtime.budget import Budget
from tagsearch.runtime.interrupts import INTERRUPTED, Interrupts
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.outcomes import Asked, fail_and_requeue, tell

MAX_CONSECUTIVE_FAILURES = 8
NOT_REPEATED = " before it had any parameter; not queued again (nothing to repeat)"
State = optuna.trial.TrialState


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], target: int,
               timeout: float | None = None, wait_for_running: bool = True, lock: BudgetLock | None = None,
               interrupts: Interrupts | None = None, time_budget: float | None = None) -> int:
    """Run ``objective`` on trials until the study has ``target`` finished ones, ``timeout``
    seconds passed, or the study's deadline came (``time_budget``: seconds for the study as a
    whole, recorded as its deadline unless it has one; deadline.py). When the rest of the budget
    is running elsewhere, wait (``wait_for_running``: heartbeats, on every storage, tell a slow
    worker from a dead one) or leave. ``lock``: the study's ``BudgetLock``, shared with the other
    workers (None: no other worker; its maker closes it). ``interrupts``: the installed
    signal state of a worker process (default: none installed). An outage that outlasted the limit
    on the study's storage ends the loop with its ``StorageOutage``.
    Returns 0, or 1 when this worker's trials keep failing (``MAX_CONSECUTIVE_FAILURES`` in a row)."""
    interrupts = interrupts or Interrupts()
    budget = Budget(study, target, lock or BudgetLock(), timeout=timeout, time_budget=time_budget,
                    wait_for_running=wait_for_running, interrupts=interrupts)
    failures, last_reason = 0, None
    gc.freeze()  # what exists now lives through every trial: the collection after each scans only the trial's own
    try:
        while failures < MAX_CONSECUTIVE_FAILURES and (trial := budget.next_trial()) is not None:
            try:
                told = run_trial(study, trial, objective, interrupts)
            finally:
                trial.beat.stop()
            failures = failures + 1 if told.state == State.FAIL else 0
            last_reason = told.user_attrs.get("fail_reason", "see the log") if failures else last_reason
    except Exception:
        if budget.outages.gave_up is not None:  # an outage outlasted the limit (whatever Optuna made of it)
            raise budget.outages.gave_up from None
        raise
    finally:
        gc.unfreeze()
    if failures < MAX_CONSECUTIVE_FAILURES:
        return 0
    warning(f"stopping: {failures} trials in a row failed; last reason: {last_reason}")
    return 1


def run_trial(study: optuna.Study, trial: Asked, objective, interrupts: Interrupts) -> optuna.trial.FrozenTrial:
    """``objective(trial)`` and its outcome told; every FAIL gets a ``fail_reason``. A signal during
    it fails the trial, queues it again (with anything to repeat) and raises ``KeyboardInterrupt``."""
    stop, value, state, reason = None, None, State.FAIL, None
    try:
        value = interrupts.run(objective, trial.trial)
        state = State.COMPLETE
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            value, state, reason = None, State.FAIL, f"the objective returned {value!r}, not a finite number"
    except optuna.TrialPruned:
        state = State.PRUNED
    except KeyboardInterrupt as exc:
        stop = exc
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"[:1000]
    if stop is None:
        return tell(study, trial, value, state=state, reason=reason)
    fail_and_requeue(study, trial, INTERRUPTED, NOT_REPEATED, replace=True)
    raise stop
