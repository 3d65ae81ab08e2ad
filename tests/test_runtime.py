"""The runtime (src/tagsearch/runtime) stands alone: no module of it imports torch or scikit-learn
(each checked in a fresh interpreter), and every Optuna private API it relies on, all in
runtime/_optuna.py, still behaves as the adapter says on this Optuna (real in-memory and SQLite
studies), so an Optuna upgrade that changes one fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tagsearch.runtime import _optuna
from tagsearch.runtime.outcomes import requeue
from tagsearch.runtime.storage import open_storage
from tagsearch.runtime.worker_storage import WorkerHeartbeatStorage, WorkerStorage

optuna.logging.set_verbosity(optuna.logging.WARNING)
State = optuna.trial.TrialState
RUNTIME = Path(__file__).resolve().parents[1] / "src" / "tagsearch" / "runtime"
TESTING = RUNTIME.with_name("testing")  # the stub workers and what the tests share with the benchmarks
CHECK = """
import importlib, sys
module = sys.argv[1]
importlib.import_module(module)
heavy = {'torch', 'sklearn'} & set(sys.modules)
assert not heavy, f"{module} imports {heavy}"
"""


def check_light(module: str) -> None:
    """Import ``module`` in a fresh process (this checkout's src/ first): neither torch nor sklearn comes."""
    path = os.pathsep.join(filter(None, [str(RUNTIME.parents[1]), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", CHECK, module], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("module", sorted(f"tagsearch.runtime.{p.stem}" for p in RUNTIME.glob("*.py")))
def test_no_runtime_module_imports_torch_or_sklearn(module):
    check_light(module)


@pytest.mark.parametrize("module", sorted(f"tagsearch.testing.{p.stem}" for p in TESTING.glob("*.py")))
def test_the_stub_workers_and_test_helpers_import_neither_torch_nor_sklearn(module):
    check_light(module)


@pytest.fixture(params=["memory", "sqlite"])
def study(request, tmp_path):
    url = None if request.param == "memory" else f"sqlite:///{tmp_path}/adapter.db"
    return optuna.create_study(storage=None if url is None else open_storage(url), study_name="adapter")


def test_trial_and_study_ids_are_what_the_storage_takes(study):
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage, study_id = _optuna.study_storage(study), _optuna.study_id(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_study_name_from_id(study_id) == "adapter"
    frozen = study.get_trials()[0]
    assert _optuna.trial_id(trial) == _optuna.trial_id(frozen)
    assert storage.get_trial(_optuna.trial_id(frozen)).number == trial.number == 0
    study.tell(trial, 0.5)
    live = _optuna.live_trial(study, study.get_trials()[0])
    assert isinstance(live, optuna.Trial) and live.number == 0 and live.params == {"x": frozen.params["x"]}


def test_queued_params_are_read_back_before_they_are_suggested(study):
    study.enqueue_trial({"x": 0.25, "y": 3})
    assert _optuna.queued_params(study.get_trials()[0]) == {"x": 0.25, "y": 3}


def test_the_heartbeat_protocol(tmp_path, monkeypatch):
    """An SQLite storage with heartbeats: the wrapper keeps Optuna's protocol, a trial whose
    heartbeat stopped is listed stale (through the wrapper and the adapter), Optuna's own
    fail_stale_trials fails it through the wrapper and calls the requeue callback."""
    import time

    monkeypatch.setenv("TAGSEARCH_HEARTBEAT", "1")
    monkeypatch.setenv("TAGSEARCH_GRACE", "2")
    storage = open_storage(f"sqlite:///{tmp_path}/beat.db")
    assert isinstance(storage, WorkerHeartbeatStorage) and _optuna.has_heartbeat(storage)
    assert _optuna.heartbeat_enabled(storage) and not _optuna.heartbeat_enabled(optuna.storages.InMemoryStorage())
    study = optuna.create_study(storage=storage, study_name="beat")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    storage.record_heartbeat(_optuna.trial_id(trial))
    stale = []
    while not stale:  # its one heartbeat ages past the grace period (SQLite keeps whole seconds)
        time.sleep(0.5)
        stale = _optuna.stale_trial_ids(storage, _optuna.study_id(study))
    assert stale == [_optuna.trial_id(trial)] == storage.stale_trial_ids(_optuna.study_id(study))
    optuna.storages.fail_stale_trials(study)  # Optuna's own check: through _get_stale_trial_ids
    trials = study.get_trials()
    assert [t.state for t in trials] == [State.FAIL, State.WAITING]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].system_attrs["retry_history"] == [0]


def test_the_worker_storage_forwards_every_public_storage_method():
    public = {name for name in dir(optuna.storages.BaseStorage)
              if not name.startswith("_") and callable(getattr(optuna.storages.BaseStorage, name))}
    assert public <= set(vars(WorkerStorage)), sorted(public - set(vars(WorkerStorage)))
    WorkerStorage(optuna.storages.InMemoryStorage())  # nothing abstract is left


def test_the_grpc_server_serves_a_storage():
    import socket
    from concurrent.futures import ThreadPoolExecutor

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = _optuna.grpc_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port, ThreadPoolExecutor(2))
    server.start()
    try:
        client = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=port)
        client.wait_server_ready(timeout=10)
        optuna.create_study(storage=client, study_name="served")
        assert optuna.get_all_study_names(client) == ["served"]
        client.close()
    finally:
        server.stop(grace=None)


def test_interrupted_and_lost_trials_are_queued_again_the_same_way(study):
    """One bookkeeping: same parameters (queued ones included), ``config`` and ``retry_of`` kept,
    Optuna's failed_trial/retry_history; a lost worker's trial is retried once, an interrupted one
    every time."""
    study.enqueue_trial({"x": 0.25}, user_attrs={"config": "defaults"})
    first = study.ask()  # interrupted before it suggested anything
    first.set_user_attr("fail_reason", "interrupted")
    study.tell(first, state=State.FAIL)
    assert requeue(study, study.get_trials()[first.number], lost=False)
    second = study.ask()
    assert second.user_attrs == {"config": "defaults", "retry_of": 0}
    assert second.suggest_float("x", 0, 1) == 0.25
    study.tell(second, state=State.FAIL)
    assert requeue(study, study.get_trials()[1], lost=True)
    third = study.get_trials()[2]
    assert third.state == State.WAITING and third.params == {"x": 0.25}
    assert third.user_attrs == {"config": "defaults", "retry_of": 1}
    assert third.system_attrs["failed_trial"] == 0 and third.system_attrs["retry_history"] == [1]
    retry = study.ask()
    study.tell(retry, state=State.FAIL)
    assert not requeue(study, study.get_trials()[2], lost=True)  # a lost worker's trial: once
    assert requeue(study, study.get_trials()[2], lost=False)  # interrupted (or backed off): always
    assert study.get_trials()[3].state == State.WAITING
