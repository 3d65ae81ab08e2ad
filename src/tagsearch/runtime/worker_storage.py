"""The storage a worker uses: ``WorkerStorage`` wraps an opened Optuna storage so a signal never
lands inside a write and, given ``Outages``, its calls are retried through transient errors (each
non-idempotent write made idempotent by a client token). ``storage.open_storage`` wraps what it opens."""

from __future__ import annotations

import copy
import datetime
import functools
import uuid

import optuna

from tagsearch.runtime import _optuna
from tagsearch.runtime.interrupts import storage_call
from tagsearch.log import warning
from tagsearch.runtime.outages import Outages, describe, is_transient

CREATE_KEY = "tagsearch:create"  # trial system attributes: the client tokens of a create and a claim
CLAIM_KEY = "tagsearch:claim"


def optuna_cached(storage):
    """``storage`` as ``optuna.create_study`` would use it (RDBStorage → _CachedStorage)."""
    return optuna.storages.get_storage(storage)


class Forwarded:
    """A ``WorkerStorage`` method: the wrapped storage's method of the same name, called through
    ``WorkerStorage.call``."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, storage, owner=None):
        if storage is None:
            return self
        return functools.partial(storage.call, self.name, getattr(storage.inner, self.name))


class WorkerStorage(optuna.storages.BaseStorage):
    """A storage with every call marked for the signal handler (``interrupts.storage_call``: a
    signal never lands inside a write) and, given ``outages``, retried through transient errors: a
    database restart or a network cut of a few seconds costs a pause, not a trial. Idempotent calls
    are simply repeated. The writes that are not are made idempotent: a new trial carries a client
    token (system attribute ``CREATE_KEY``) and a retry first looks for the trial with that token; the
    claim of a queued trial writes a token (``CLAIM_KEY``) before it, and a retry whose trial is already
    RUNNING with our token counts as claimed (an orphan otherwise: Optuna would skip the trial it holds);
    a state change whose first attempt was applied but not acknowledged is recognised
    (UpdateFinishedTrialError on the retry while the trial already has the requested state)."""

    def __init__(self, inner, outages: Outages | None = None):
        self.inner, self.outages = inner, outages

    def __getattr__(self, name):  # engine, url, ... of the wrapped storage
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def call(self, what: str, function, *args, **kwargs):
        if self.outages is not None:
            return self.outages.call(what, function, *args, **kwargs)
        with storage_call():
            return function(*args, **kwargs)

    def create_new_trial(self, study_id, template_trial=None):
        token = uuid.uuid4().hex
        template = (optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING) if template_trial is None
                    else copy.copy(template_trial))
        if template_trial is None:
            template.datetime_start = datetime.datetime.now()
        template.system_attrs = {**template.system_attrs, CREATE_KEY: token}
        attempts = []

        def once():
            if attempts:  # the first attempt may have been applied, its answer lost
                mine = [t._trial_id for t in self.inner.get_all_trials(study_id, deepcopy=False)
                        if t.system_attrs.get(CREATE_KEY) == token]
                if mine:
                    return mine[0]
            attempts.append(1)
            return self.inner.create_new_trial(study_id, template)

        return self.call("create_new_trial", once)

    def set_trial_state_values(self, trial_id, state, values=None):
        attempts, claim = [], state == optuna.trial.TrialState.RUNNING
        token = uuid.uuid4().hex

        def once():
            attempts.append(1)
            if claim:
                if len(attempts) > 1:
                    trial = self.inner.get_trial(trial_id)
                    if trial.state == state:
                        return trial.system_attrs.get(CLAIM_KEY) == token  # ours, or another worker's
                self.inner.set_trial_system_attr(trial_id, CLAIM_KEY, token)
            try:
                return self.inner.set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if len(attempts) > 1 and self.inner.get_trial(trial_id).state == state:
                    return True  # our first attempt was applied; its answer was lost
                raise

        return self.call(f"set_trial_state_values({state.name})", once)

    # Every other public method of optuna.storages.BaseStorage (tests/test_runtime.py checks the list).
    check_trial_is_updatable = Forwarded()
    create_new_study = Forwarded()
    delete_study = Forwarded()
    get_all_studies = Forwarded()
    get_all_trials = Forwarded()
    get_best_trial = Forwarded()
    get_n_trials = Forwarded()
    get_study_directions = Forwarded()
    get_study_id_from_name = Forwarded()
    get_study_name_from_id = Forwarded()
    get_study_system_attrs = Forwarded()
    get_study_user_attrs = Forwarded()
    get_trial = Forwarded()
    get_trial_id_from_study_id_trial_number = Forwarded()
    get_trial_number_from_id = Forwarded()
    get_trial_param = Forwarded()
    get_trial_params = Forwarded()
    get_trial_system_attrs = Forwarded()
    get_trial_user_attrs = Forwarded()
    remove_session = Forwarded()
    set_study_system_attr = Forwarded()
    set_study_user_attr = Forwarded()
    set_trial_intermediate_value = Forwarded()
    set_trial_param = Forwarded()
    set_trial_system_attr = Forwarded()
    set_trial_user_attr = Forwarded()


class WorkerHeartbeatStorage(WorkerStorage, _optuna.ForwardingHeartbeat):
    """``WorkerStorage`` of a storage with Optuna's heartbeats (RDB), which it keeps working."""

    def record_heartbeat(self, trial_id):
        if self.outages is None:
            return self.inner.record_heartbeat(trial_id)
        try:  # Optuna's heartbeat thread: log and go on (an exception would kill the thread)
            self.inner.record_heartbeat(trial_id)
        except Exception as exc:
            if not is_transient(exc):
                raise
            warning(f"heartbeat of trial id {trial_id} not recorded ({describe(exc)}); next beat in "
                f"{self.inner.get_heartbeat_interval()} s")

    def first_heartbeat(self, trial_id):
        """A trial's first beat: retried through outages like any write, and raising when it cannot be
        written (the trial must not leave the budget lock without one)."""
        return self.call("record_heartbeat", self.inner.record_heartbeat, trial_id)

    def stale_trial_ids(self, study_id):
        return self.call("_get_stale_trial_ids", _optuna.stale_trial_ids, self.inner, study_id)

    def unbeaten_trial_ids(self, study_id):
        return self.call("unbeaten_trial_ids", _optuna.unbeaten_trial_ids, self.inner, study_id)

    def _get_stale_trial_ids(self, study_id):
        """What Optuna's own stale check (``optuna.storages.fail_stale_trials``, in ``Study.optimize``)
        calls before it fails each trial listed: each gets tagsearch's ``fail_reason`` first."""
        from tagsearch.runtime.heartbeat import heartbeat_timing, mark_lost

        stale = self.stale_trial_ids(study_id)
        for trial_id in stale:
            try:
                mark_lost(self, trial_id, self.get_trial(trial_id), heartbeat_timing()[1])
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # finished meanwhile; Optuna skips it too
        return stale


def worker_storage(storage, outages: Outages | None = None) -> WorkerStorage:
    """``storage`` (as Optuna caches it) in the wrapper that fits it."""
    storage = optuna_cached(storage)
    kind = WorkerHeartbeatStorage if _optuna.has_heartbeat(storage) else WorkerStorage
    return kind(storage, outages)


def outages_of(storage) -> Outages | None:
    """The ``Outages`` of a storage ``open_storage`` made with ``retry`` (None for others)."""
    return getattr(storage, "outages", None) if isinstance(storage, WorkerStorage) else None
