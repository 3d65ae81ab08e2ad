"""Faults inside one worker's trial loop (runtime/trials.py), in-process on SQLite: every trial ends,
every report is true.

- a worker that died after creating its trial but before its first heartbeat (the trial is made
  and never beaten): the trial is failed on the database's clock and rerun, the study ends;
- a create or a claim whose write committed but whose answer was lost (the storage raises a
  connection error after the real write, once): no orphan RUNNING trial, the queued trial runs;
- the grace period outlasts an outage the workers ride out; a worker whose trial was failed by
  another one moves on;
- Optuna's own stale check leaves a ``fail_reason`` too; a trial interrupted before it had any
  parameter is not reported as queued again.
"""

from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy.exc

from tagsearch.runtime import _optuna, heartbeat
from tagsearch.runtime.interrupts import Interrupts
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.outages import Outages
from tagsearch.runtime.storage import heartbeat_settings, open_storage, worker_storage
from tagsearch.runtime.trials import run_trials

optuna.logging.set_verbosity(optuna.logging.WARNING)
State = optuna.trial.TrialState
FINISHED = (State.COMPLETE, State.PRUNED)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture
def fast_beats(monkeypatch):
    """Beats every second and an outage limit of 1 s: a derived grace period of 3 s."""
    monkeypatch.setenv("TAGSEARCH_HEARTBEAT", "1")
    monkeypatch.setenv("TAGSEARCH_OUTAGE_LIMIT", "1")
    monkeypatch.delenv("TAGSEARCH_GRACE", raising=False)


def objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def finished(study) -> list:
    return [t for t in study.get_trials() if t.state in FINISHED]


def running(study) -> list:
    return [t.number for t in study.get_trials() if t.state == State.RUNNING]


# ---------------------------------------------------------------------------------------------
# Item 1: a trial never beaten


@pytest.mark.timeout(90)
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_rerun(tmp_path, fast_beats):
    url = f"sqlite:///{tmp_path}/unbeaten.db"
    study = optuna.create_study(storage=open_storage(url), study_name="unbeaten")
    orphan = study.ask()  # a worker created it, suggested, and was SIGKILLed before any heartbeat
    orphan.suggest_float("x", 0.0, 1.0)
    assert run_trials(study, objective, target=2, lock=BudgetLock.of(study, url), timeout=40) == 0
    trials = study.get_trials()
    assert len(finished(study)) == 2 and not running(study), [t.state for t in trials]
    assert trials[0].state == State.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("worker lost: no heartbeat for more than 3 s")
    reruns = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert len(reruns) == 1 and reruns[0].params == orphan.params and reruns[0].state in FINISHED


# ---------------------------------------------------------------------------------------------
# Item 2: a write applied whose answer was lost


def answer_lost(monkeypatch, inner, method: str, when=lambda *args, **kwargs: True) -> list:
    """``inner.method`` does its write, then (once, when ``when``) raises a dropped connection."""
    real, lost = getattr(inner, method), []

    def write(*args, **kwargs):
        result = real(*args, **kwargs)
        if not lost and when(*args, **kwargs):
            lost.append(result)
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, ConnectionResetError("connection reset by peer"))
        return result

    monkeypatch.setattr(inner, method, write)
    return lost


def retried_storage(url: str):
    return worker_storage(optuna.storages.RDBStorage(url, **heartbeat_settings()), Outages(limit=30))


@pytest.mark.timeout(60)
def test_a_created_trial_whose_answer_was_lost_is_not_left_running(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/create.db"
    storage = retried_storage(url)
    study = optuna.create_study(storage=storage, study_name="create")
    lost = answer_lost(monkeypatch, storage.inner, "create_new_trial")
    assert run_trials(study, objective, target=2, lock=BudgetLock.of(study, url), wait_for_running=False) == 0
    assert lost, "the fault was not injected"
    assert len(finished(study)) == 2 and not running(study), [t.state for t in study.get_trials()]
    assert len(study.get_trials()) == 2  # one trial per create, whatever the retries


@pytest.mark.timeout(60)
def test_a_claimed_queued_trial_whose_answer_was_lost_runs_here(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/claim.db"
    storage = retried_storage(url)
    study = optuna.create_study(storage=storage, study_name="claim")
    study.enqueue_trial({"x": 0.25}, user_attrs={"config": "defaults"})
    lost = answer_lost(monkeypatch, storage.inner, "set_trial_state_values",
                       when=lambda trial_id, state, values=None: state == State.RUNNING)
    assert run_trials(study, objective, target=2, lock=BudgetLock.of(study, url), wait_for_running=False) == 0
    assert lost, "the fault was not injected"
    trials = study.get_trials()
    assert not running(study) and len(finished(study)) == 2, [t.state for t in trials]
    assert trials[0].state == State.COMPLETE and trials[0].params == {"x": 0.25}


# ---------------------------------------------------------------------------------------------
# Item 3: an outage ridden out; a trial failed by another worker


@pytest.mark.parametrize("limit, interval", [(120, 30), (1, 1), (60, 5)])
def test_the_grace_period_outlasts_an_outage_the_workers_ride_out(limit, interval, monkeypatch):
    """A worker retries its calls for up to the outage limit and beats again within one interval of
    its end: only a trial silent for longer than both is dead."""
    monkeypatch.setenv("TAGSEARCH_OUTAGE_LIMIT", str(limit))
    monkeypatch.setenv("TAGSEARCH_HEARTBEAT", str(interval))
    monkeypatch.delenv("TAGSEARCH_GRACE", raising=False)
    assert heartbeat.heartbeat_timing()[1] > limit + interval


@pytest.mark.timeout(60)
def test_a_worker_whose_trial_was_failed_by_another_moves_on(tmp_path):
    url = f"sqlite:///{tmp_path}/moved.db"
    study = optuna.create_study(storage=open_storage(url), study_name="moved")
    other = open_storage(url)  # another worker's handle on the same study

    def judged_dead_midway(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 0:  # another worker found its heartbeat stale (a long outage) and failed it
            other.set_trial_user_attr(_optuna.trial_id(trial), "fail_reason", "worker lost: no heartbeat (test)")
            other.set_trial_state_values(_optuna.trial_id(trial), State.FAIL)
        return x

    assert run_trials(study, judged_dead_midway, target=2, lock=BudgetLock.of(study, url)) == 0
    trials = study.get_trials()
    assert trials[0].state == State.FAIL and trials[0].user_attrs["fail_reason"] == "worker lost: no heartbeat (test)"
    assert len(finished(study)) == 2 and not running(study)


# ---------------------------------------------------------------------------------------------
# Item 4: a reason on every failed trial, and only true ones


@pytest.mark.timeout(60)
def test_optunas_own_stale_check_leaves_a_fail_reason(tmp_path, fast_beats):
    storage = open_storage(f"sqlite:///{tmp_path}/own.db")
    study = optuna.create_study(storage=storage, study_name="own")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    storage.record_heartbeat(_optuna.trial_id(trial))
    while not _optuna.stale_trial_ids(storage, _optuna.study_id(study)):
        time.sleep(0.5)  # its one heartbeat ages past the grace period (SQLite keeps whole seconds)
    optuna.storages.fail_stale_trials(study)  # what Study.optimize runs before each trial
    failed = study.get_trials()[0]
    assert failed.state == State.FAIL
    assert failed.user_attrs["fail_reason"].startswith("worker lost: no heartbeat for more than 3 s")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("queued", [False, True])
def test_a_trial_interrupted_as_it_is_created_is_reported_as_it_is(queued, tmp_path, monkeypatch):
    """The signal lands while the trial is being created (or a queued one claimed): the worker stops;
    "queued again" is said of a trial only if a copy of it is queued."""
    url = f"sqlite:///{tmp_path}/signal.db"
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="signal")
    if queued:
        study.enqueue_trial({"x": 0.25}, user_attrs={"config": "defaults"})
    interrupts = Interrupts()
    method = "set_trial_state_values" if queued else "create_new_trial"
    real = getattr(storage, method)

    def signal_meanwhile(*args, **kwargs):
        interrupts.stop_requested = True  # what the handler does outside a running trial
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, method, signal_meanwhile)
    with pytest.raises(KeyboardInterrupt):
        run_trials(study, objective, target=2, lock=BudgetLock.of(study, url), interrupts=interrupts)
    monkeypatch.undo()
    trials = study.get_trials()
    assert not running(study)
    for trial in (t for t in trials if t.state == State.FAIL):
        reason = trial.user_attrs["fail_reason"]
        copies = [t for t in trials if t.user_attrs.get("retry_of") == trial.number and t.state == State.WAITING]
        assert ("queued again" in reason and "not queued again" not in reason) == bool(copies), (reason, copies)
    if queued:
        assert [_optuna.queued_params(t) for t in trials if t.state == State.WAITING] == [{"x": 0.25}]
