"""One worker's share of the study's budget: how many trials the study may still start, until
when, and the lock that makes "count, then create" one step among all workers.

A worker starts a trial only while the study's finished (COMPLETE + PRUNED) and RUNNING trials
number fewer than ``target``. Counting and creating the trial happen under the study's
``BudgetLock`` (locks.py), so two workers never both take the last slot: exactly ``target`` finish.
While the rest of the budget is held by other workers' running trials, a worker waits and keeps
checking heartbeats (heartbeat.py, on every storage): if such a worker died, its trial is failed,
queued again (outcomes.py) and run here.

A new trial's first heartbeat is written before it leaves the lock, and the lock is confirmed with
its server before the trial runs: a lock lost meanwhile (a lease that ran out, a restarted server)
has the budget counted again under a fresh lock, and the trial backs off — failed with
``BACKED_OFF`` and queued again — if another worker took the slot meanwhile.

Time: ``timeout`` is this worker's (no trial starts ``timeout`` seconds after it began);
``time_budget`` is the study's (deadline.py: the first worker to bring one records the study's
deadline, and no worker starts a trial at or past it, checked under the lock just before creating one).
"""

from __future__ import annotations

import time
import warnings

import optuna

from tagsearch.log import log
from tagsearch.runtime import _optuna, deadline as deadlines, heartbeat
from tagsearch.runtime.interrupts import Interrupts
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.outcomes import Asked, fail_and_requeue
from tagsearch.runtime.progress import progress
from tagsearch.runtime.worker_storage import outages_of

POLL_SECONDS = 1.0
State = optuna.trial.TrialState
COUNTED = (State.COMPLETE, State.PRUNED, State.RUNNING)
BACKED_OFF = ("not run: this worker's budget lock lapsed while the trial was created, and another worker took "
              "the last slot of the budget meanwhile")


class Budget:
    """The trials this worker may still start on ``study``: until the study has ``target``
    finished ones, ``timeout`` seconds passed (this worker's), or the study's deadline came
    (``time_budget``: seconds for the study as a whole, recorded as its deadline unless it has one).
    ``lock``: the study's ``BudgetLock``, shared with the other workers;
    ``wait_for_running``: when the rest of the budget is running elsewhere, wait (heartbeats tell a
    slow worker from a dead one) rather than stop; ``interrupts``: the worker's signal state."""

    def __init__(self, study: optuna.Study, target: int, lock: BudgetLock, *, timeout: float | None = None,
                 time_budget: float | None = None, wait_for_running: bool = True,
                 interrupts: Interrupts | None = None):
        self.study, self.target, self.lock, self.wait = study, target, lock, wait_for_running
        self.interrupts = interrupts or Interrupts()
        # an outage that outlasted the limit on the study's storage (or the lock's server) stops the worker
        self.outages = outages_of(_optuna.study_storage(study)) or lock.outages
        self.timeout_at = None if timeout is None else time.monotonic() + timeout
        self.watch = heartbeat.StaleTrials(study)
        deadlines.establish(study, time_budget, lock)

    def next_trial(self) -> Asked | None:
        """The next trial this worker runs, created under the lock with its first heartbeat
        started; None when the budget says stop. Raises ``KeyboardInterrupt`` once a signal asked
        the worker to stop, and an outage's ``StorageOutage`` once it outlasted the limit."""
        while True:
            if self.interrupts.stop_requested:
                raise KeyboardInterrupt
            if self.outages.gave_up is not None:
                raise self.outages.gave_up
            if self.timeout_at is not None and time.monotonic() >= self.timeout_at:
                return None
            with self.lock:
                deadline = deadlines.recorded(self.study)  # another worker may bring one, tune's Ctrl-C move it
                if deadlines.passed(deadline):
                    log(f"stopping: the study's deadline has come ({deadlines.when(deadline)})")
                    return None
                self.watch.fail()  # the trials of dead workers: failed, queued again once, their slots free
                if len(self.study.get_trials(deepcopy=False, states=COUNTED)) < self.target:
                    if self.interrupts.stop_requested:  # the signal came while this worker waited for the lock
                        raise KeyboardInterrupt
                    with warnings.catch_warnings():  # Optuna warns that its heartbeats are meant for optimize
                        warnings.filterwarnings("ignore", message="Heartbeat of storage")
                        trial = self.study.ask()
                    beat = heartbeat.TrialHeartbeat.of(trial).start()
                    lapsed = not self.lock.confirm()
                    if lapsed:
                        log(f"trial {trial.number}: the budget lock lapsed while it was created; counting the "
                            f"budget again")
                        self.lock.release()
                        self.lock.acquire()
                    asked = Asked(trial, beat)
                    if lapsed and len(self.study.get_trials(deepcopy=False, states=COUNTED)) > self.target:
                        beat.stop()
                        fail_and_requeue(self.study, asked, BACKED_OFF, "; nothing to repeat")
                        continue
                    return asked
                if progress(self.study).finished >= self.target or not self.wait:
                    return None
            time.sleep(POLL_SECONDS)  # the rest is running elsewhere; take over if that worker dies
