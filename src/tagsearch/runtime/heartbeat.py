"""Crash recovery on every storage: a liveness signal for running trials, and the rule that fails
the trials of dead workers and queues each of them again once with the same parameters.

Optuna 5 has heartbeats for ``RDBStorage`` only. For the others (journal file, Redis journal, the
gRPC proxy) a worker writes ``time.time()`` as the trial system attribute ``tagsearch:heartbeat``
every ``TAGSEARCH_HEARTBEAT`` seconds from a background thread while a trial runs (``TrialHeartbeat``).
Any worker, through the storage API alone, can then tell a slow trial from a dead one: a RUNNING trial
whose newest heartbeat (or start, before its first) is older than the grace period is dead. RDB
storages use Optuna's heartbeat table through the same thread (``record_heartbeat``), judged on the
database's own clock.

The first beat is written before the trial leaves the budget lock (``TrialHeartbeat.start``, retried
through outages), so a trial seen without one by a worker holding the lock belongs to a worker that
died between creating it and its first beat: on RDB storages ``fail_stale_trials`` records a beat for
such a trial on its behalf (``adopt_unbeaten``), which starts its grace period on the database's clock.

The grace period is derived: ``TAGSEARCH_OUTAGE_LIMIT`` + 2 × ``TAGSEARCH_HEARTBEAT`` (a worker rides
out an outage of up to the limit and beats again within one interval of its end), unless
``TAGSEARCH_GRACE`` sets it; a setting at or below limit + interval is used but warned about. A worker
whose trial was failed anyway (a longer outage, a too-short grace) moves on to its next trial.

``fail_stale_trials`` is the one rule for all storages (RDB ones read Optuna's own heartbeat table):
the trial gets ``fail_reason`` = ``STALE_REASON``, becomes FAIL, and ``outcomes.requeue`` queues a
copy (the same bookkeeping as for an interrupted trial; at most ``MAX_RETRY`` = 1 retry for a lost
worker). Workers call it under the study's budget lock, so two workers never fail the same trial or
queue it twice.

On storages without a clock of their own (journals, Redis, the proxy) heartbeats of different
machines are compared with this machine's clock: keep hosts NTP-synced (skew well below the grace).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from datetime import datetime

import optuna

from tagsearch.errors import UserError
from tagsearch.log import log, warning
from tagsearch.runtime import _optuna
from tagsearch.runtime.outcomes import HEARTBEAT_KEY as KEY
from tagsearch.runtime.outcomes import MAX_RETRY, may_retry_lost, repeatable, requeue

STALE_REASON = ("worker lost: no heartbeat for more than {grace} s (killed, or its machine or connection died); "
                "{what}")


def native(storage) -> bool:
    """Whether Optuna's own heartbeats cover ``storage`` (RDBStorage with an interval)."""
    return _optuna.heartbeat_enabled(storage)


class TrialHeartbeat:
    """Context manager: while a trial runs, write its heartbeat every ``interval`` seconds from a
    daemon thread (Optuna's heartbeat table on RDB storages, the ``KEY`` system attribute elsewhere).
    ``start`` writes the first beat in the caller's thread, retried through outages (a storage that
    stays away raises ``StorageOutage``); a later beat that fails is logged and retried at the next
    one, and never disturbs the trial."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float | None = None):
        self.storage, self.trial_id = storage, trial_id
        self.interval = interval or heartbeat_timing()[0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    @classmethod
    def of(cls, trial: optuna.Trial) -> "TrialHeartbeat":
        """The heartbeat of ``trial``, on its study's storage (not started)."""
        return cls(_optuna.study_storage(trial.study), _optuna.trial_id(trial))

    def start(self) -> "TrialHeartbeat":
        """The first beat (raising), then the thread for the others."""
        self._write()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.trial_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None

    def __enter__(self) -> "TrialHeartbeat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def _write(self) -> None:
        if native(self.storage):
            first = getattr(self.storage, "first_heartbeat", self.storage.record_heartbeat)
            first(self.trial_id)
        else:
            self.storage.set_trial_system_attr(self.trial_id, KEY, time.time())

    def beat(self) -> None:
        try:
            if native(self.storage):
                self.storage.record_heartbeat(self.trial_id)
            else:
                self.storage.set_trial_system_attr(self.trial_id, KEY, time.time())
            if self.failures:
                log(f"heartbeat of trial id {self.trial_id} written again after {self.failures} failed attempt(s)")
            self.failures = 0
        except optuna.exceptions.UpdateFinishedTrialError:
            self._stop.set()  # finished (or failed as stale by another worker): nothing left to keep alive
        except Exception as exc:  # storage unreachable: the grace period covers the outage limit
            self.failures += 1
            warning(f"heartbeat of trial id {self.trial_id} not written ({type(exc).__name__}: "
                    f"{(str(exc).strip().splitlines() or [''])[0][:200]}); retrying in {self.interval} s")


def last_sign_of_life(trial: optuna.trial.FrozenTrial) -> float | None:
    """Epoch seconds of the trial's newest heartbeat, else its start."""
    beat = trial.system_attrs.get(KEY)
    if isinstance(beat, (int, float)):
        return float(beat)
    start = trial.datetime_start
    return start.timestamp() if isinstance(start, datetime) else None


class StaleTrials:
    """The watch over one study's RUNNING trials whose workers died, built once per worker: the
    study's storage and id are read once, and each ``fail`` fails the stale ones and queues each
    again once."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage | None = None):
        self.study = study
        self.storage = storage or _optuna.study_storage(study)
        self.study_id = _optuna.study_id(study)
        self.native = native(self.storage)

    def stale_ids(self, grace: float) -> list[int]:
        """The ids of the RUNNING trials without a heartbeat for more than ``grace`` seconds."""
        if self.native:
            lister = getattr(self.storage, "stale_trial_ids", None)  # the worker storage's (retried), else Optuna's
            return lister(self.study_id) if lister else _optuna.stale_trial_ids(self.storage, self.study_id)
        now, stale = time.time(), []
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            seen = last_sign_of_life(trial)
            if seen is not None and now - seen > grace:
                stale.append(_optuna.trial_id(trial))
        return stale

    def adopt_unbeaten(self) -> list[int]:
        """RDB storages, under the budget lock: record a heartbeat (on the database's clock) for every
        RUNNING trial that has none. Its worker died between creating it and its first beat (written
        before the lock is released), or left it behind; it is failed once that beat is older than the
        grace period, unless its worker beats after all. Returns the numbers of the trials adopted."""
        if not self.native:
            return []
        storage, adopted = self.storage, []
        lister = getattr(storage, "unbeaten_trial_ids", None)  # the worker storage's (retried), else the adapter
        for trial_id in lister(self.study_id) if lister else _optuna.unbeaten_trial_ids(storage, self.study_id):
            storage.record_heartbeat(trial_id)
            number = storage.get_trial(trial_id).number
            adopted.append(number)
            log(f"trial {number} is RUNNING without a heartbeat (its worker died before its first beat, or it was "
                f"left behind); it fails after {heartbeat_timing()[1]} s unless its worker beats")
        return adopted

    def fail(self) -> list[int]:
        """Fail the RUNNING trials of dead workers with ``fail_reason`` and queue each again once.
        Returns the numbers of the trials failed here."""
        _, grace = heartbeat_timing()
        storage, failed = self.storage, []
        self.adopt_unbeaten()
        for trial_id in self.stale_ids(grace):
            trial = storage.get_trial(trial_id)
            if trial.state != optuna.trial.TrialState.RUNNING:
                continue
            try:
                what = mark_lost(storage, trial_id, trial, grace)
                if not storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # it finished (or another worker failed it) just now
            failed.append(trial.number)
            warning(f"trial {trial.number} failed: its worker {trial.user_attrs.get('worker', '?')} sent no heartbeat "
                f"for more than {grace} s; {what}")
            requeue(self.study, copy.deepcopy(storage.get_trial(trial_id)), lost=True)
        return failed


def stale_trial_ids(study: optuna.Study, grace: float) -> list[int]:
    """The ids of ``study``'s RUNNING trials without a heartbeat for more than ``grace`` seconds."""
    return StaleTrials(study).stale_ids(grace)


def adopt_unbeaten(study: optuna.Study) -> list[int]:
    """``StaleTrials.adopt_unbeaten`` on ``study``."""
    return StaleTrials(study).adopt_unbeaten()


def mark_lost(storage, trial_id: int, trial: optuna.trial.FrozenTrial, grace: float) -> str:
    """Give a RUNNING trial whose worker is lost its ``fail_reason``; returns what happens next."""
    what = ("not queued again: it had no parameter yet (nothing to repeat)" if not repeatable(trial)
            else "queued again once with the same parameters" if may_retry_lost(trial)
            else f"already a retry (max_retry={MAX_RETRY}), not queued again")
    storage.set_trial_user_attr(trial_id, "fail_reason", STALE_REASON.format(grace=grace, what=what))
    return what


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers with ``fail_reason`` and queue each again once.
    Returns the numbers of the trials failed here (``StaleTrials.fail``)."""
    return StaleTrials(study).fail()


HEARTBEAT_SECONDS = 30
OUTAGE_LIMIT_SECONDS = 120  # outages.py's default (defined here: outages.py imports this module)
_warned: set = set()


def heartbeat_timing() -> tuple[int, int]:
    """(interval, grace period) in seconds: TAGSEARCH_HEARTBEAT, and TAGSEARCH_GRACE or, unset,
    the outage limit + two intervals (a live worker riding out an outage is never judged dead)."""
    interval = env_seconds("TAGSEARCH_HEARTBEAT", HEARTBEAT_SECONDS)
    limit = env_seconds("TAGSEARCH_OUTAGE_LIMIT", OUTAGE_LIMIT_SECONDS)
    grace = env_seconds("TAGSEARCH_GRACE", limit + 2 * interval)
    if grace <= interval:
        raise UserError(f"TAGSEARCH_GRACE={grace} must be larger than TAGSEARCH_HEARTBEAT={interval}")
    if grace <= limit + interval and (grace, limit, interval) not in _warned:
        _warned.add((grace, limit, interval))
        warning(f"warning: TAGSEARCH_GRACE={grace} is not above TAGSEARCH_OUTAGE_LIMIT={limit} + TAGSEARCH_HEARTBEAT="
                f"{interval}: a storage outage the workers ride out can get their live trials failed (they then "
                f"move on); unset TAGSEARCH_GRACE to derive it ({limit + 2 * interval} s)")
    return interval, grace


def env_seconds(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{name}={text!r} is not a whole number of seconds >= 1")
    return int(text)
