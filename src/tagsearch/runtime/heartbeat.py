"""Crash recovery on every storage: a liveness signal for running trials, and the rule that fails
the trials of dead workers and queues each of them again once with the same parameters.

Optuna 5 has heartbeats for ``RDBStorage`` only. For the others (journal file, Redis journal, the
gRPC proxy) a worker writes ``time.time()`` as the trial system attribute ``tagsearch:heartbeat``
every ``TAGSEARCH_HEARTBEAT`` seconds from a background thread while a trial runs (``TrialHeartbeat``).
Any worker, through the storage API alone, can then tell a slow trial from a dead one: a RUNNING trial
whose newest heartbeat (or start, before its first) is older than ``TAGSEARCH_GRACE`` seconds is dead.

``fail_stale_trials`` is the one rule for all storages (RDB ones read Optuna's own heartbeat table):
the trial gets ``fail_reason`` = ``STALE_REASON``, becomes FAIL, and ``retries.requeue`` queues a
copy (the same bookkeeping as for an interrupted trial; at most ``MAX_RETRY`` = 1 retry for a lost
worker). Workers call it under the study's budget lock, so two workers never fail the same trial or
queue it twice.

Heartbeats of different machines are compared with this machine's clock: keep hosts NTP-synced
(skew must stay well below the grace period).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from datetime import datetime

import optuna

from tagsearch.errors import UserError
from tagsearch.log import log
from tagsearch.runtime import _optuna
from tagsearch.runtime.retries import HEARTBEAT_KEY as KEY
from tagsearch.runtime.retries import MAX_RETRY, may_retry_lost, requeue

STALE_REASON = ("worker lost: no heartbeat for more than {grace} s (killed, or its machine or connection died); "
                "{what}")


def native(storage) -> bool:
    """Whether Optuna's own heartbeats cover ``storage`` (RDBStorage with an interval)."""
    return _optuna.heartbeat_enabled(storage)


class TrialHeartbeat:
    """Context manager: while a trial runs, write its heartbeat every ``interval`` seconds from a
    daemon thread (nothing for storages with Optuna's own heartbeat). A failed write is logged and
    retried at the next beat; it never disturbs the trial."""

    def __init__(self, study: optuna.Study, trial_id: int, interval: float | None = None):
        self.storage, self.trial_id = _optuna.study_storage(study), trial_id
        self.interval = interval or heartbeat_timing()[0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def __enter__(self) -> "TrialHeartbeat":
        if not native(self.storage):
            self.beat()
            self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            self.storage.set_trial_system_attr(self.trial_id, KEY, time.time())
            if self.failures:
                log(f"heartbeat of trial id {self.trial_id} written again after {self.failures} failed attempt(s)")
            self.failures = 0
        except optuna.exceptions.UpdateFinishedTrialError:
            self._stop.set()  # finished (or failed as stale by another worker): nothing left to keep alive
        except Exception as exc:  # storage unreachable: the grace period covers a few missed beats
            self.failures += 1
            log(f"heartbeat of trial id {self.trial_id} not written ({type(exc).__name__}: "
                f"{(str(exc).strip().splitlines() or [''])[0][:200]}); retrying in {self.interval} s")


def last_sign_of_life(trial: optuna.trial.FrozenTrial) -> float | None:
    """Epoch seconds of the trial's newest heartbeat, else its start."""
    beat = trial.system_attrs.get(KEY)
    if isinstance(beat, (int, float)):
        return float(beat)
    start = trial.datetime_start
    return start.timestamp() if isinstance(start, datetime) else None


def stale_trial_ids(study: optuna.Study, grace: float) -> list[int]:
    storage = _optuna.study_storage(study)
    if native(storage):
        return _optuna.stale_trial_ids(storage, _optuna.study_id(study))
    now, stale = time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        seen = last_sign_of_life(trial)
        if seen is not None and now - seen > grace:
            stale.append(_optuna.trial_id(trial))
    return stale


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers with ``fail_reason`` and queue each again once.
    Returns the numbers of the trials failed here."""
    _, grace = heartbeat_timing()
    storage, failed = _optuna.study_storage(study), []
    for trial_id in stale_trial_ids(study, grace):
        trial = storage.get_trial(trial_id)
        if trial.state != optuna.trial.TrialState.RUNNING:
            continue
        what = ("queued again once with the same parameters" if may_retry_lost(trial)
                else f"already a retry (max_retry={MAX_RETRY}), not queued again")
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", STALE_REASON.format(grace=grace, what=what))
            if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished (or another worker failed it) just now
        failed.append(trial.number)
        log(f"trial {trial.number} failed: its worker {trial.user_attrs.get('worker', '?')} sent no heartbeat for "
            f"more than {grace} s; {what}")
        requeue(study, copy.deepcopy(storage.get_trial(trial_id)), lost=True)
    return failed


HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120


def heartbeat_timing() -> tuple[int, int]:
    """(interval, grace period) in seconds, from TAGSEARCH_HEARTBEAT / TAGSEARCH_GRACE."""
    interval = env_seconds("TAGSEARCH_HEARTBEAT", HEARTBEAT_SECONDS)
    grace = env_seconds("TAGSEARCH_GRACE", GRACE_SECONDS)
    if grace <= interval:
        raise UserError(f"TAGSEARCH_GRACE={grace} must be larger than TAGSEARCH_HEARTBEAT={interval}")
    return interval, grace


def env_seconds(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{name}={text!r} is not a whole number of seconds >= 1")
    return int(text)
