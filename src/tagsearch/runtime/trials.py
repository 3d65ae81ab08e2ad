"""The trial loop of one worker process, whatever the objective: run trials until the study as a
whole has its budget of finished trials.

Budget: before each trial a worker counts the study's finished (COMPLETE + PRUNED) and RUNNING
trials and starts one only while their sum is below N. Counting and creating the trial happen under
the study's ``BudgetLock`` (locks.py), so two workers never both take the last slot: exactly N
finish. While the remaining budget is held by other workers' running trials, a worker waits and
keeps checking heartbeats (heartbeat.py, on every storage): if such a worker died, its trial is
failed, queued again (retries.py) and run here.

Time: ``timeout`` is this worker's (no trial starts ``timeout`` seconds after it began);
``time_budget`` is the study's (deadline.py: the first worker to bring one records the study's
deadline, and no worker starts a trial at or past it, checked under the lock just before creating one).
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import optuna

from tagsearch.log import log
from tagsearch.runtime import _optuna, deadline as deadlines, heartbeat
from tagsearch.runtime.interrupts import Interrupts
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.outages import Outages
from tagsearch.runtime.progress import progress
from tagsearch.runtime.retries import requeue_interrupted
from tagsearch.runtime.storage import outages_of

POLL_SECONDS = 1.0
MAX_CONSECUTIVE_FAILURES = 8
State = optuna.trial.TrialState
COUNTED = (State.COMPLETE, State.PRUNED, State.RUNNING)


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], target: int,
               timeout: float | None = None, wait_for_running: bool = True, url: str | None = None,
               interrupts: Interrupts | None = None, time_budget: float | None = None) -> int:
    """Run ``objective`` on trials until the study has ``target`` finished ones, ``timeout``
    seconds passed, or the study's deadline came (``time_budget``: seconds for the study as a
    whole, recorded as its deadline unless it has one; deadline.py). When the rest of the budget
    is running elsewhere, wait (``wait_for_running``: heartbeats, on every storage, tell a slow
    worker from a dead one) or leave. ``url``: the study's
    storage, whose ``BudgetLock`` other workers share (None: no other worker). ``interrupts``: the
    installed signal state of a worker process (default: none installed). An outage that outlasted
    the limit on the study's storage (``storage.outages_of``) ends the loop with its
    ``StorageOutage``. Returns 0, or 1 when this worker's trials keep failing."""
    interrupts = interrupts or Interrupts()
    outages = outages_of(_optuna.study_storage(study)) or Outages()
    timeout_at = None if timeout is None else time.monotonic() + timeout
    guard = FailureGuard(MAX_CONSECUTIVE_FAILURES)
    lock = BudgetLock(url, study.study_name, outages)

    def started(trial: optuna.Trial) -> float:
        lock.release()  # the trial exists and counts as RUNNING: the next worker may count now
        with heartbeat.TrialHeartbeat(study, _optuna.trial_id(trial)):
            return interrupts.run(objective, trial)

    gc.freeze()  # what exists now lives through every trial: the collection after each scans only the trial's own
    try:
        study_deadline = deadlines.establish(study, time_budget, lock)
        while not guard.tripped:
            if interrupts.stop_requested:
                raise KeyboardInterrupt
            if outages.gave_up is not None:
                raise outages.gave_up
            if timeout_at is not None and time.monotonic() >= timeout_at:
                return 0
            lock.acquire()
            try:
                study_deadline = deadlines.recorded(study)  # another worker may bring one, tune's Ctrl-C move it
                if deadlines.passed(study_deadline):
                    log(f"stopping: the study's deadline has come ({deadlines.when(study_deadline)})")
                    return 0
                if not has_budget(study, target):
                    if progress(study).finished >= target or not wait_for_running:
                        return 0
                    lock.release()
                    time.sleep(POLL_SECONDS)  # the rest is running elsewhere; take over if that worker dies
                    continue
                study.optimize(started, n_trials=1, catch=(Exception,), callbacks=[guard])
            finally:
                lock.release()
    except KeyboardInterrupt:
        requeue_interrupted(study, interrupts.interrupted)
        raise
    except Exception:
        if outages.gave_up is not None:  # an outage outlasted the limit (whatever Optuna made of it)
            raise outages.gave_up from None
        raise
    finally:
        gc.unfreeze()
        lock.close()
    log(f"stopping: {guard.limit} trials in a row failed; last reason: {guard.last_reason}")
    return 1


def has_budget(study: optuna.Study, target: int) -> bool:
    """Fail stale trials of dead workers (and queue each again once), then: may one more trial start?"""
    heartbeat.fail_stale_trials(study)
    return len(study.get_trials(deepcopy=False, states=COUNTED)) < target


class FailureGuard:
    """Study callback: stop this worker after ``limit`` failed trials in a row (a broken GPU, a bug)."""

    def __init__(self, limit: int):
        self.limit, self.count, self.last_reason = limit, 0, None

    @property
    def tripped(self) -> bool:
        return self.count >= self.limit

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != State.FAIL:
            self.count = 0
            return
        self.count += 1
        self.last_reason = trial.user_attrs.get("fail_reason", "see the log")
        if self.tripped:
            study.stop()
