"""Every use of an Optuna private API in tagsearch, in one place (tests/test_runtime.py calls each
on a real study, so an Optuna release that changes one fails there, not in a worker).

pyproject.toml pins the Optuna versions these were checked against. Each adapter says why the public
API does not suffice.
"""

from __future__ import annotations

import optuna
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of ``trial``."""
    # Trials are public only by number; the storage API (heartbeats, system attrs) takes ids.
    return trial._trial_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object a study reads and writes through (tagsearch's wrapper, if it made one)."""
    # Study has no public accessor for the storage it was created with.
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of ``study``."""
    # The storage API takes study ids; Study exposes only the name (an id lookup costs a query).
    return study._study_id


def live_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> optuna.Trial:
    """A ``Trial`` handle on a stored trial (what optuna-dashboard's ``save_note`` takes)."""
    # Trial(study, trial_id) is the only way to a handle on a finished trial, and it takes the id.
    return optuna.trial.Trial(study, trial_id(trial))


def queued_params(trial: optuna.trial.FrozenTrial) -> dict:
    """The parameters ``trial`` was queued with (``Study.enqueue_trial``), suggested or not yet."""
    # enqueue_trial keeps them in the system attribute "fixed_params"; no public accessor reads them.
    return dict(trial.system_attrs.get("fixed_params", {}))


def has_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether ``storage`` implements Optuna's heartbeat protocol (enabled or not)."""
    # The protocol's class, BaseHeartbeat, is private.
    return isinstance(storage, BaseHeartbeat)


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether Optuna's own heartbeats cover ``storage`` (an RDBStorage with an interval)."""
    # optuna.storages._heartbeat.is_heartbeat_enabled has no public alias.
    return is_heartbeat_enabled(storage)


def stale_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> list[int]:
    """The RUNNING trials of a study whose Optuna heartbeat is older than the grace period."""
    # Public optuna.storages.fail_stale_trials fails them at once; tagsearch first gives each a fail_reason.
    return list(storage._get_stale_trial_ids(study_id))


def rdb_storage(storage) -> optuna.storages.RDBStorage | None:
    """The RDBStorage under tagsearch's wrapper (``inner``) and Optuna's cache (``_backend``), if any."""
    # _CachedStorage keeps its RDBStorage in the private attribute _backend.
    for _ in range(4):
        if isinstance(storage, optuna.storages.RDBStorage):
            return storage
        storage = getattr(storage, "inner", None) or getattr(storage, "_backend", None)
    return None


def unbeaten_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> list[int]:
    """The RUNNING trials of a study with no row in Optuna's heartbeat table (RDB storages)."""
    # Optuna's stale check skips these (it lists only trials with a row); the table has no public reader.
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    rdb = rdb_storage(storage)
    running = [t._trial_id for t in storage.get_all_trials(study_id, deepcopy=False,
                                                            states=(optuna.trial.TrialState.RUNNING,))]
    if rdb is None or not running:
        return []
    with _create_scoped_session(rdb.scoped_session) as session:
        beating = {row[0] for row in session.query(models.TrialHeartbeatModel.trial_id)
                   .filter(models.TrialHeartbeatModel.trial_id.in_(running)).all()}
    return [trial_id for trial_id in running if trial_id not in beating]


class ForwardingHeartbeat(BaseHeartbeat):
    """Base of a storage wrapper (``self.inner``) that keeps Optuna's heartbeats working: Optuna
    checks ``isinstance(storage, BaseHeartbeat)`` and calls ``_get_stale_trial_ids`` on it."""

    # BaseHeartbeat is private, and its abstract _get_stale_trial_ids is what Optuna calls.
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return stale_trial_ids(self.inner, study_id)

    def record_heartbeat(self, trial_id: int) -> None:
        self.inner.record_heartbeat(trial_id)

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self):
        return self.inner.get_heartbeat_stale_trial_callback()


def grpc_server(storage: optuna.storages.BaseStorage, host: str, port: int, thread_pool):
    """Optuna's gRPC storage proxy service, not yet started, as a ``grpc.Server``."""
    # Public run_grpc_proxy_server starts and blocks; tagsearch adds its lock service to the server first.
    from optuna.storages._grpc.server import make_server

    return make_server(storage, host, port, thread_pool)
