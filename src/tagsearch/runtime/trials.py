"""The trial loop of one worker process, whatever the objective: run trials until the study as a
whole has its budget of finished trials.

Budget: before each trial a worker counts the study's finished (COMPLETE + PRUNED) and RUNNING
trials and starts one only while their sum is below N. Counting and creating the trial happen under
the study's ``BudgetLock`` (locks.py), so two workers never both take the last slot: exactly N
finish. While the remaining budget is held by other workers' running trials, a worker waits and
keeps checking heartbeats (heartbeat.py, on every storage): if such a worker died, its trial is
failed, queued again (retries.py) and run here.

Each trial is asked for and told (``Study.ask``/``tell``, not ``optimize``): its first heartbeat is
written before it leaves the budget lock (heartbeat.py), the lock is confirmed with its server
before the trial runs (a lock lost meanwhile: the budget is counted again under a fresh lock, and
the trial backs off if another worker took the slot), every FAIL carries a ``fail_reason`` of
tagsearch's, and a trial failed by another worker while it ran (its worker was judged lost) is
told with ``skip_if_finished``: this worker moves on.

Time: ``timeout`` is this worker's (no trial starts ``timeout`` seconds after it began);
``time_budget`` is the study's (deadline.py: the first worker to bring one records the study's
deadline, and no worker starts a trial at or past it, checked under the lock just before creating one).
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from typing import Callable

import optuna

from tagsearch.log import log, warning
from tagsearch.runtime import _optuna, deadline as deadlines, heartbeat
from tagsearch.runtime.interrupts import INTERRUPTED, Interrupts
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.outages import Outages
from tagsearch.runtime.progress import progress
from tagsearch.runtime.retries import repeatable, requeue, requeue_interrupted
from tagsearch.runtime.worker_storage import outages_of

POLL_SECONDS = 1.0
MAX_CONSECUTIVE_FAILURES = 8
State = optuna.trial.TrialState
COUNTED = (State.COMPLETE, State.PRUNED, State.RUNNING)
BACKED_OFF = ("not run: this worker's budget lock lapsed while the trial was created, and another worker took "
              "the last slot of the budget meanwhile")


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
    storage = _optuna.study_storage(study)  # read once: the loop passes it down with each trial's id
    watch = heartbeat.StaleTrials(study, storage)
    outages = outages_of(storage) or Outages()
    timeout_at = None if timeout is None else time.monotonic() + timeout
    guard = FailureGuard(MAX_CONSECUTIVE_FAILURES)
    lock = BudgetLock(url, study.study_name, outages)

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
                if not has_budget(study, target, watch):
                    if progress(study).finished >= target or not wait_for_running:
                        return 0
                    lock.release()
                    time.sleep(POLL_SECONDS)  # the rest is running elsewhere; take over if that worker dies
                    continue
                if interrupts.stop_requested:  # the signal came while this worker waited for the lock
                    raise KeyboardInterrupt
                trial, beat = start_trial(study, lock, target, storage)
            finally:
                lock.release()
            if trial is None:
                continue
            try:
                guard(study, run_trial(study, trial, objective, interrupts))
            finally:
                beat.stop()
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
    warning(f"stopping: {guard.limit} trials in a row failed; last reason: {guard.last_reason}")
    return 1


def start_trial(study: optuna.Study, lock: BudgetLock, target: int, storage: optuna.storages.BaseStorage):
    """Under ``lock``: a new (or queued) trial (an ``Asked``) with its first heartbeat, once the lock
    is confirmed unbroken; (None, None) when the lock lapsed and the budget turned out full (the
    trial is failed with ``BACKED_OFF`` and, if it has parameters, queued again)."""
    with warnings.catch_warnings():  # Optuna warns that its heartbeats are meant for optimize: ours beat here
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = Asked(study.ask(), storage)
    beat = heartbeat.TrialHeartbeat(storage, trial.id).start()
    if lock.confirm():
        return trial, beat
    log(f"trial {trial.number}: the budget lock lapsed while it was created; counting the budget again")
    lock.release()
    lock.acquire()
    if len(study.get_trials(deepcopy=False, states=COUNTED)) <= target:
        return trial, beat
    beat.stop()
    again = repeatable(trial.stored())
    reason = BACKED_OFF + ("; queued again with the same parameters" if again else "; nothing to repeat")
    if tell_failed(study, trial, reason) and again:
        requeue(study, trial.stored(), lost=False)
    log(f"trial {trial.number} {reason}")
    return None, None


def run_trial(study: optuna.Study, trial: Asked, objective, interrupts: Interrupts) -> optuna.trial.FrozenTrial:
    """``objective(trial)`` and its outcome told; every FAIL gets a ``fail_reason``. A trial another
    worker finished meanwhile (failed it as lost) is left as it is, and said so."""
    try:
        value = interrupts.run(objective, trial.trial)
    except optuna.TrialPruned:
        return tell(study, trial, state=State.PRUNED)
    except KeyboardInterrupt:  # said true: queued again (requeue_interrupted) only with something to repeat
        again = repeatable(trial.stored())
        tell_failed(study, trial, INTERRUPTED + ("; queued again with the same parameters" if again else
                                                 " before it had any parameter; not queued again (nothing to repeat)"),
                    replace=True)
        raise
    except Exception as exc:
        tell_failed(study, trial, f"{type(exc).__name__}: {exc}"[:1000])
        return trial.stored()
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        tell_failed(study, trial, f"the objective returned {value!r}, not a finite number")
        return trial.stored()
    return tell(study, trial, value=value)


def tell_failed(study: optuna.Study, trial: Asked, reason: str, replace: bool = False) -> bool:
    """FAIL ``trial`` with ``reason`` unless it has one (the objective's own; ``replace``: ours wins)
    or is finished already."""
    try:
        frozen = trial.stored()
        if frozen.state == State.RUNNING and (replace or "fail_reason" not in frozen.user_attrs):
            trial.trial.set_user_attr("fail_reason", reason)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    return tell(study, trial, state=State.FAIL).state == State.FAIL


def tell(study: optuna.Study, trial: Asked, value: float | None = None,
         state: State | None = None) -> optuna.trial.FrozenTrial:
    """Tell ``trial``'s outcome; returns it as stored (another worker may have finished it first)."""
    try:
        study.tell(trial.trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # finished by another worker between tell's check and its write
    frozen = trial.stored()
    told = state or State.COMPLETE
    if frozen.state != told:
        log(f"trial {trial.number} was finished elsewhere while it ran ({frozen.state.name}: "
            f"{frozen.user_attrs.get('fail_reason', 'no reason given')}); this worker moves on")
    return frozen


def has_budget(study: optuna.Study, target: int, watch: heartbeat.StaleTrials) -> bool:
    """Fail stale trials of dead workers (``watch``; each queued again once), then: may one more trial start?"""
    watch.fail()
    return len(study.get_trials(deepcopy=False, states=COUNTED)) < target


class Asked:
    """A trial this worker asked for, with what telling it needs: its storage id, read once, and the
    study's storage to read it back from."""

    def __init__(self, trial: optuna.Trial, storage: optuna.storages.BaseStorage):
        self.trial, self.id, self.storage = trial, _optuna.trial_id(trial), storage

    @property
    def number(self) -> int:
        return self.trial.number

    def stored(self) -> optuna.trial.FrozenTrial:
        """The trial as the storage holds it now."""
        return self.storage.get_trial(self.id)


class FailureGuard:
    """Stop this worker after ``limit`` failed trials in a row (a broken GPU, a bug)."""

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
