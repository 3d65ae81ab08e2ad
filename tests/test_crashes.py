"""Crashes: SIGKILLed workers, Ctrl-C and a hard double Ctrl-C on ``launch``, trials that raise inside
training (NaN loss, CUDA out of memory), and ``retrain`` interrupted while writing its results
directory.

The process tests run the real runtime around a stub objective (``tagsearch.testing.stub_worker``, no
torch): killed workers, including the retry of a killed trial killed again (not retried a second time), and
a double Ctrl-C that SIGKILLs every worker mid-trial so that only the heartbeat machinery can recover
the trials on the next ``launch``; the same recovery on journal files, Redis journals and the gRPC
proxy, which have no Optuna heartbeats (tagsearch's own, heartbeat.py). One ``tagsearch launch`` of
the real objective on a tiny corpus has a worker SIGKILLed mid-trial.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from tagsearch.results import retrain as retrain_module
from tagsearch.results import atomic, folder as results
from tagsearch.study import search
from tagsearch.study import objective
from tagsearch.learn import train
from tagsearch.cli import main
from tagsearch.data.corpus import load_corpus
from tagsearch.errors import UserError
from tagsearch.study.spec import load_spec
from tagsearch.runtime import _optuna, heartbeat
from tagsearch.runtime.location import artifact_dir
from tagsearch.runtime.storage import open_storage
from tagsearch.testing.processes import start_proxy, stop_proxy
from test_stress import (COMPLETE_ATTRS, FINISHED, State, check_study, integrity, sqlite_file, start_stub, stop_all,
                         wait_all)

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage")]
FAST_HEARTBEAT = {"TAGSEARCH_HEARTBEAT": "1", "TAGSEARCH_GRACE": "3"}


def load_trials(url: str, name: str) -> list:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
    except (KeyError, UserError):  # not created yet
        return []


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception:  # the file is being created; a reader may see it half-made
            result = None
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def pid_of(trial) -> int:
    return int(trial.user_attrs["worker"].rsplit(":", 1)[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(url: str, name: str, where=lambda t: True) -> list:
    """The RUNNING trials of live workers that have reported an epoch and pass ``where``."""
    return [t for t in load_trials(url, name) if t.state == State.RUNNING and t.intermediate_values
            and "worker" in t.user_attrs and alive(pid_of(t)) and where(t)]


def beating(url: str, trial) -> bool:
    """Whether Optuna's heartbeat table has a row for ``trial`` (SQLite): a trial killed before its
    first heartbeat is never found stale (Optuna lists only trials with one)."""
    import sqlite3

    with sqlite3.connect(sqlite_file(url)) as connection:
        return connection.execute("SELECT 1 FROM trial_heartbeats WHERE trial_id = ?",
                                  (_optuna.trial_id(trial),)).fetchone() is not None


def hanging(tmp_path: Path) -> Path:
    """A control folder telling stub trials to hang after their first epoch (until the file goes)."""
    control = tmp_path / "control"
    control.mkdir(exist_ok=True)
    (control / "hang").touch()
    return control


# ---------------------------------------------------------------------------------------------
# SIGKILL and a hard double Ctrl-C (stub objective)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killed_workers_and_a_hard_double_ctrl_c_each_lost_trial_is_retried_once_and_the_budget_met(tmp_path):
    """Under ``launch`` (4 workers, budget 2, trials that hang after an epoch): kill the worker of a
    running trial X: X becomes FAIL after the grace period and is queued again with the same
    parameters. Kill the worker running that retry too: the retry becomes FAIL and is NOT queued a
    third time (max_retry=1). Then a second signal before the first was forwarded (Ctrl-C then
    SIGTERM; two SIGINTs sent at once would merge into one): launch SIGKILLs its workers, leaving
    their trials RUNNING with a dead heartbeat; no worker survives. The next launch fails those
    trials, reruns each once with the same parameters, and reaches the budget exactly."""
    url, name, target = f"sqlite:///{tmp_path}/kill.db", "kill", 2
    control = hanging(tmp_path)
    first = start_stub(tmp_path / "launch1.log", "launch", url, name, target, "--workers", "4",
                       "--control", str(control), env=FAST_HEARTBEAT)
    try:
        x = wait_for(lambda: running(url, name, lambda t: beating(url, t)), 120, "a trial to report an epoch")[0]
        os.kill(pid_of(x), signal.SIGKILL)
        retry = wait_for(lambda: running(url, name, lambda t: t.system_attrs.get("failed_trial") == x.number
                                         and beating(url, t)), 120, f"the retry of trial {x.number} to beat")[0]
        os.kill(pid_of(retry), signal.SIGKILL)
        wait_for(lambda: len(running(url, name)) == 2 and load_trials(url, name)[retry.number].state == State.FAIL,
                 120, "the retry failed and two trials of live workers running")
        first.send_signal(signal.SIGINT)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 130
    finally:
        stop_all([first])
    output = (tmp_path / "launch1.log").read_text()
    assert "interrupted" in output and "Traceback" not in output, output
    stranded = [t for t in load_trials(url, name) if t.state == State.RUNNING]
    assert len(stranded) == 2, [t.state for t in load_trials(url, name)]
    assert not [pid_of(t) for t in stranded if alive(pid_of(t))], "a worker outlived launch"

    (control / "hang").unlink()  # resume with trials that finish
    second = start_stub(tmp_path / "launch2.log", "launch", url, name, target, "--workers", "2",
                        env=FAST_HEARTBEAT)
    try:
        assert second.wait(timeout=120) == 0, (tmp_path / "launch2.log").read_text()
    finally:
        stop_all([second])
    output = (tmp_path / "launch2.log").read_text()
    assert f"{target}/{target} finished" in output and "Traceback" not in output, output

    study = optuna.load_study(study_name=name, storage=url)
    trials = check_study(study, target, allowed_fail=4, defaults_finished=0 if x.number == 0 else 1)
    by_number = {t.number: t for t in trials}
    assert by_number[x.number].user_attrs["fail_reason"].startswith("worker lost: no heartbeat")
    assert "not queued again" in by_number[retry.number].user_attrs["fail_reason"]
    copies = [t for t in trials if t.system_attrs.get("failed_trial") == x.number]
    assert [t.number for t in copies] == [retry.number], "trial retried more than once"
    assert retry.params == x.params and retry.system_attrs["retry_history"] == [x.number]
    for lost in stranded:
        assert by_number[lost.number].state == State.FAIL
        reruns = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
        assert len(reruns) == 1 and reruns[0].params == lost.params and reruns[0].state in FINISHED
    assert integrity(sqlite_file(url)) == "ok"


def storage_for(kind: str, tmp_path: Path, cleanup: list) -> str:
    """A fresh storage URL of ``kind``; ``cleanup`` collects what to undo afterwards."""
    if kind == "journal":
        return f"journal:///{tmp_path}/kill.log"
    if kind == "redis":
        from test_services import drop_redis_journal, empty_redis_db, server_url

        url = empty_redis_db(server_url("redis"))
        cleanup.append(lambda: drop_redis_journal(url, f"kill-{kind}"))
        return url
    assert kind == "grpc"
    proxy, url = start_proxy(f"sqlite:///{tmp_path}/behind-proxy.db", tmp_path / "proxy.log")
    cleanup.append(lambda: stop_proxy(proxy))
    return url


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["journal", "grpc", pytest.param("redis", marks=pytest.mark.services)])
def test_sigkill_mid_trial_is_recovered_on_storages_without_optuna_heartbeats(kind, tmp_path):
    """Journal file, Redis journal, gRPC proxy: the killed worker's trial becomes FAIL once its
    heartbeat (a trial system attribute) is older than the grace period, with the same fail_reason
    as on RDB storages; it is rerun once with the same parameters and the budget is met exactly."""
    cleanup, processes, name, target = [], [], f"kill-{kind}", 1  # the survivor waits, then reruns trial 0
    try:
        url = storage_for(kind, tmp_path, cleanup)
        control = hanging(tmp_path)
        processes += [start_stub(tmp_path / f"w{i}.log", "worker", url, name, target, "--control", str(control),
                                 index=i, env=FAST_HEARTBEAT) for i in (0, 1)]
        victim = wait_for(lambda: running(url, name), 120, "a trial to report an epoch")[0]
        os.kill(pid_of(victim), signal.SIGKILL)
        (control / "hang").unlink()  # the rerun finishes
        survivors = [p for p in processes if p.pid != pid_of(victim)]
        assert wait_all(survivors, 120) == [0], [(tmp_path / f"w{i}.log").read_text()[-2000:] for i in (0, 1)]
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        trials = check_study(study, target, allowed_fail=1)  # the rerun of trial 0 runs the defaults
        dead = trials[victim.number]
        assert dead.state == State.FAIL and dead.user_attrs["fail_reason"].startswith(
            "worker lost: no heartbeat for more than 3 s"), dead.user_attrs
        assert isinstance(dead.system_attrs.get(heartbeat.KEY), float)  # it was beating while alive
        reruns = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
        assert len(reruns) == 1 and reruns[0].params == dead.params and reruns[0].state in FINISHED
        assert "fail_reason" not in reruns[0].user_attrs and reruns[0].user_attrs["retry_of"] == victim.number
        assert "Traceback" not in (tmp_path / "w0.log").read_text() + (tmp_path / "w1.log").read_text()
    finally:
        stop_all(processes)
        for undo in cleanup:
            undo()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_stale_trials_fail_with_a_reason_and_are_retried_once(kind, tmp_path, monkeypatch):
    """The recovery rule itself, in-process: a RUNNING trial whose last heartbeat is older than the
    grace period is failed with a reason and queued again; the retry, when stale too, is not."""
    monkeypatch.setenv("TAGSEARCH_HEARTBEAT", "1")
    monkeypatch.setenv("TAGSEARCH_GRACE", "2")
    url = f"{kind}:///{tmp_path}/stale.{kind}"
    study = optuna.create_study(storage=open_storage(url), study_name="stale")
    storage, ids = _optuna.study_storage(study), _optuna.trial_id
    fresh, old = study.ask(), study.ask()
    for trial in (fresh, old):
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.set_user_attr("worker", "host:1")
    if kind == "journal":
        storage.set_trial_system_attr(ids(old), heartbeat.KEY, time.time() - 60)
        storage.set_trial_system_attr(ids(fresh), heartbeat.KEY, time.time())
    else:  # Optuna's heartbeat table (whole seconds on SQLite): the old one beat once and stopped
        storage.record_heartbeat(ids(old))
        wait_for(lambda: heartbeat.stale_trial_ids(study, 2) == [ids(old)], 30, "the old heartbeat to go stale")
        storage.record_heartbeat(ids(fresh))
    assert heartbeat.fail_stale_trials(study) == [old.number]
    trials = study.get_trials()
    assert [t.state for t in trials] == [State.RUNNING, State.FAIL, State.WAITING]
    assert trials[1].user_attrs["fail_reason"] == heartbeat.STALE_REASON.format(
        grace=2, what="queued again once with the same parameters")
    retry = study.ask()  # takes the queued copy
    assert retry.number == 2 and retry.params == old.params and "fail_reason" not in retry.user_attrs
    if kind == "sqlite":
        return  # the rest is storage-independent (and slow on SQLite's whole-second clock)
    storage.set_trial_system_attr(ids(retry), heartbeat.KEY, time.time() - 60)
    storage.set_trial_system_attr(ids(fresh), heartbeat.KEY, time.time())
    assert heartbeat.fail_stale_trials(study) == [2]
    trials = study.get_trials()
    assert [t.state for t in trials] == [State.RUNNING, State.FAIL, State.FAIL]
    assert "not queued again" in trials[2].user_attrs["fail_reason"]


# ---------------------------------------------------------------------------------------------
# Ctrl-C on launch (stub objective)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_launch_forwards_ctrl_c_and_a_rerun_resumes(tmp_path):
    url, name, target = f"sqlite:///{tmp_path}/launch.db", "ctrl-c", 4
    control = hanging(tmp_path)  # the signal lands mid-trial
    launch = start_stub(tmp_path / "launch1.log", "launch", url, name, target, "--workers", "2",
                        "--control", str(control))
    try:
        wait_for(lambda: len(running(url, name)) == 2, 120, "both workers mid-trial")
        launch.send_signal(signal.SIGINT)
        assert launch.wait(timeout=60) == 130
    finally:
        stop_all([launch])
    output = (tmp_path / "launch1.log").read_text()
    assert "interrupted" in output and "Traceback" not in output, output
    stopped = load_trials(url, name)
    assert not any(t.state == State.RUNNING for t in stopped)
    interrupted = [t for t in stopped if t.state == State.FAIL]
    assert interrupted and all("interrupted" in t.user_attrs["fail_reason"] for t in interrupted)
    queued = [t for t in stopped if t.state == State.WAITING]
    assert {t.user_attrs["retry_of"] for t in queued} == {t.number for t in interrupted}

    (control / "hang").unlink()
    rerun = start_stub(tmp_path / "launch2.log", "launch", url, name, target, "--workers", "2")
    try:
        assert rerun.wait(timeout=120) == 0, (tmp_path / "launch2.log").read_text()
    finally:
        stop_all([rerun])
    output = (tmp_path / "launch2.log").read_text()
    assert f"{target}/{target} finished" in output and "launched 2 worker(s) on cpu" in output, output
    check_study(optuna.load_study(study_name=name, storage=url), target, allowed_fail=len(interrupted))
    assert (tmp_path / "launch-logs" / f"{name}-worker0.log").is_file()


# ---------------------------------------------------------------------------------------------
# The real objective under launch, one worker SIGKILLed


def cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``tagsearch ARGS`` in a subprocess, one thread, stdout+stderr captured together."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "tagsearch.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_launch_of_the_real_objective_with_a_killed_worker(spec_factory, tmp_path):
    """``tagsearch launch`` on a tiny corpus, 2 workers: SIGKILL the worker running trial 0; the
    other marks it FAIL (heartbeat), reruns its parameters, and the study reaches its budget with
    every finished trial complete (learning curve, metrics, user attributes); launch reports the
    crash with a non-zero exit."""
    url, target = f"sqlite:///{tmp_path}/kill.db", 3
    spec = spec_factory("dense", storage=url, edit=lambda raw: raw["training"].update(max_epochs=12, patience=12))
    launch = cli("launch", str(spec), "--workers", "2", "--n-trials", str(target), env=FAST_HEARTBEAT)
    victim = wait_for(lambda: running(url, "test-dense", lambda t: t.number == 0 and beating(url, t)), 120,
                      "trial 0 to report an epoch")[0]
    os.kill(pid_of(victim), signal.SIGKILL)
    output = launch.communicate(timeout=300)[0]
    assert launch.returncode == 1 and "exited with code -9" in output, output
    assert "launched 2 worker(s) on cpu" in output and f"{target}/{target} finished" in output, output
    study = optuna.load_study(study_name="test-dense", storage=url)
    done = check_study(study, target, allowed_fail=1, complete_attrs=COMPLETE_ATTRS)
    assert done[0].state == State.FAIL and done[0].user_attrs["fail_reason"].startswith("worker lost: no heartbeat")
    retry = [t for t in done if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == done[0].params and retry[0].state in FINISHED
    assert (tmp_path / "kill-logs" / "test-dense-worker1.log").is_file()


# ---------------------------------------------------------------------------------------------
# Exceptions inside training (in-process: the real worker command, with training sabotaged)


class Sabotage:
    """Counts trials (one ``train.fit_folds`` call each) and breaks the ones listed, for real:
    ``nan`` makes the loss NaN inside the training loop, ``oom`` raises CUDA's out-of-memory error."""

    def __init__(self, monkeypatch, plan: dict[int, str]):
        self.plan, self.calls = plan, 0
        real_fit, real_loss = train.fit_folds, torch.nn.BCEWithLogitsLoss
        sabotage = self

        class NanLoss(real_loss):
            def forward(self, input, target):
                return super().forward(input, target) * float("nan")

        def fit(*args, **kwargs):
            sabotage.calls += 1
            kind = sabotage.plan.get(sabotage.calls)
            if kind == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
            if kind == "nan":
                with monkeypatch.context() as patch:
                    patch.setattr(train.nn, "BCEWithLogitsLoss", NanLoss)
                    return real_fit(*args, **kwargs)
            return real_fit(*args, **kwargs)

        monkeypatch.setattr(train, "fit_folds", fit)


@pytest.mark.timeout(120)
def test_nan_loss_and_cuda_oom_fail_their_trials_with_a_reason_and_the_worker_finishes(
        tmp_path, spec_factory, monkeypatch, capsys):
    url, target = f"sqlite:///{tmp_path}/errors.db", 5
    spec = spec_factory("dense", storage=url)
    sabotage = Sabotage(monkeypatch, {2: "nan", 3: "oom", 5: "nan"})
    assert main(["worker", str(spec), "--n-trials", str(target)]) == 0
    err = capsys.readouterr().err
    assert f"{target}/{target} finished (complete" in err and "failed 3" in err, err
    study = optuna.load_study(study_name="test-dense", storage=url)
    trials = study.get_trials()
    assert sabotage.calls == len(trials) == target + 3
    failed = {t.number: t.user_attrs.get("fail_reason", "") for t in trials if t.state == State.FAIL}
    assert sorted(failed) == [1, 2, 4], failed
    assert failed[1].startswith("NonFiniteLossError: training loss became nan")
    assert failed[2].startswith("OutOfMemoryError: CUDA out of memory")
    assert failed[4].startswith("NonFiniteLossError")
    assert sum(t.state in FINISHED for t in trials) == target
    assert not [t for t in trials if t.state in (State.RUNNING, State.WAITING)]
    # A failed trial is not a dead worker: it is not queued again.
    assert not [t for t in trials if "failed_trial" in t.system_attrs]


@pytest.mark.timeout(120)
def test_a_diverged_trial_keeps_its_learning_curve_and_the_search_moves_on(tmp_path, spec_factory, monkeypatch):
    """NaN on the second epoch: the first epoch's value stays reported, the trial is FAIL (not pruned)."""
    spec = load_spec(spec_factory("dense", edit=lambda raw: raw["training"].update(folds=1)))  # 1 epoch = 1 call
    corpus = load_corpus(spec.data_config())
    real_epoch, epochs = train.train_epoch, []

    def second_epoch_diverges(*args, **kwargs):
        epochs.append(1)
        loss = real_epoch(*args, **kwargs)
        if len(epochs) == 2:
            raise train.NonFiniteLossError("training loss became nan (diverged); try a lower lr")
        return loss

    monkeypatch.setattr(train, "train_epoch", second_epoch_diverges)
    study = search.open_study(spec, corpus, f"sqlite:///{tmp_path}/curve.db")
    from tagsearch.runtime.trials import run_trials

    assert run_trials(study, objective.Objective(spec, corpus), target=2) == 0
    first = study.trials[0]
    assert first.state == State.FAIL and list(first.intermediate_values) == [1]
    assert "NonFiniteLossError" in first.user_attrs["fail_reason"] and first.user_attrs["config"] == "defaults"
    assert search.progress(study).finished == 2


# ---------------------------------------------------------------------------------------------
# retrain interrupted half-way


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_csv):
    """A one-trial tfidf study (read-only for the tests below)."""
    from conftest import write_spec
    from tagsearch.runtime.trials import run_trials

    folder = tmp_path_factory.mktemp("retrain-crash")
    url = f"sqlite:///{folder}/studies.db"
    spec_path = write_spec(folder / "tfidf.toml", model="tfidf", data=tiny_csv, storage=url)
    spec = load_spec(spec_path)
    corpus = load_corpus(spec.data_config())
    run_trials(search.open_study(spec, corpus), objective.Objective(spec, corpus), 1, wait_for_running=False)
    return spec_path, url


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step", ["results.save_model", "results.write_json", "retrain.write_plots",
                                  "retrain.report_markdown"])
def test_retrain_interrupted_while_writing_leaves_nothing_behind(step, finished_study, tmp_path, monkeypatch, capsys):
    spec_path, url = finished_study
    out = tmp_path / "deep" / "out"
    module, name = step.split(".")
    target = {"results": results, "retrain": retrain_module}[module]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, name, interrupted)
    before = sorted(p.name for p in artifact_dir(url).glob("*")) if artifact_dir(url).is_dir() else []
    assert main(["retrain", str(spec_path), "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == [], "a temp or half-written directory was left"
    after = sorted(p.name for p in artifact_dir(url).glob("*")) if artifact_dir(url).is_dir() else []
    assert after == before, "artifacts were uploaded for an interrupted retrain"


@pytest.mark.timeout(120)
def test_retrain_onto_a_file_is_refused_and_the_file_kept(finished_study, tmp_path, capsys):
    spec_path, _ = finished_study
    target = tmp_path / "results.txt"
    target.write_text("not a directory")
    assert main(["retrain", str(spec_path), "--out", str(target)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is a file" in errors[0], errors
    assert target.read_text() == "not a directory"
    assert [p.name for p in tmp_path.iterdir()] == ["results.txt"]


@pytest.fixture(scope="module")
def existing_results(finished_study, tmp_path_factory):
    """A results directory written by a first, complete retrain (the tests below try to replace it)."""
    spec_path, _ = finished_study
    out = tmp_path_factory.mktemp("existing") / "tfidf"
    assert main(["retrain", str(spec_path), "--out", str(out)]) == 0
    return out, results.read_config(out)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("step", ["results.save_model", "results.write_json", "retrain.write_plots",
                                  "retrain.report_markdown", "atomic._checkpoint"])
def test_retrain_interrupted_over_an_existing_directory_keeps_it_whole(step, finished_study, existing_results,
                                                                         monkeypatch, capsys):
    """Interrupted at each write step, or just before the swap, a retrain onto an existing results
    directory leaves the old one in place, loadable, and nothing else beside it. (Kills during the
    swap itself, with os._exit, are in test_atomic.py.)"""
    spec_path, _ = finished_study
    out, config = existing_results
    module, name = step.split(".")
    target = {"results": results, "retrain": retrain_module, "atomic": atomic}[module]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, name, interrupted)
    assert main(["retrain", str(spec_path), "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert results.read_config(out) == config
    assert results.load(out).config["sha256"] == config["sha256"]
    assert [p.name for p in out.parent.iterdir()] == [out.name]
