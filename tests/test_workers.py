"""Worker processes on one storage: concurrency on SQLite, a SIGKILLed worker, launch and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from tagsearch.cli import main
from tagsearch.errors import UserError
from tagsearch.storage import open_storage
from tagsearch.workers import ProgressLine, parse_devices, worker_env
from tagsearch.search import Progress

optuna.logging.set_verbosity(optuna.logging.WARNING)
State = optuna.trial.TrialState


def cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """``tagsearch ARGS`` in a subprocess, one thread, stdout+stderr captured together."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "tagsearch.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def quick_spec(spec_factory, epochs: int, **kwargs):
    """The tiny test spec with ``epochs`` epochs and early-stopping patience as long."""
    path = spec_factory("dense", **kwargs)
    text = path.read_text().replace("max_epochs = 2", f"max_epochs = {epochs}").replace("patience = 2",
                                                                                           f"patience = {epochs}")
    path.write_text(text)
    return path


def trials(url: str, name: str = "test-dense") -> list:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def running_with_an_epoch(url: str, number: int | None = None):
    """The first RUNNING trial (numbered ``number``) that has reported an epoch, else None."""
    try:
        return next((t for t in trials(url) if t.state == State.RUNNING and t.intermediate_values
                     and number in (None, t.number)), None)
    except (KeyError, UserError):  # the study is not created yet
        return None


# ---------------------------------------------------------------------------------------------
# Fast checks


def test_device_lists(monkeypatch):
    assert parse_devices("cpu") == ["cpu"]
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert parse_devices("0,1") == ["0", "1"]
    with pytest.raises(Exception, match="GPU 2 is not visible"):
        parse_devices("0,2")
    with pytest.raises(Exception, match="expected 'cpu' or GPU ids"):
        parse_devices("gpu0")


def test_each_gpu_worker_sees_only_its_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert worker_env(1, "3", 4)["CUDA_VISIBLE_DEVICES"] == "3"
    assert worker_env(0, "cpu", 4)["CUDA_VISIBLE_DEVICES"] == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # launch itself sees physical GPUs 4 and 6
    env = worker_env(1, "1", 4)
    assert env["CUDA_VISIBLE_DEVICES"] == "6" and env["TAGSEARCH_WORKER_INDEX"] == "1" and env["OMP_NUM_THREADS"] == "4"


def test_launch_with_a_bad_device_list_exits_2(spec_factory, tmp_path, capsys):
    code = main(["launch", str(spec_factory()), "--storage", f"sqlite:///{tmp_path}/x.db", "--devices", "0,x"])
    assert code == 2 and "--devices '0,x'" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists()


def test_progress_line_without_a_terminal(tmp_path):
    with open(tmp_path / "out.txt", "w+") as stream:
        line = ProgressLine(12, stream)
        line.show(Progress(complete=3, pruned=1, running=2, best_value=0.1234, best_number=2))
        line.show(Progress(complete=3, pruned=1, running=2, best_value=0.1234, best_number=2))  # unchanged: quiet
        line.show(Progress(complete=12), final=True)
        stream.seek(0)
        lines = stream.read().splitlines()
    assert len(lines) == 2 and "\r" not in lines[0]
    assert lines[0].startswith("4/12 finished (complete 3, pruned 1, failed 0, running 2), best 0.1234 (trial 2)")


# ---------------------------------------------------------------------------------------------
# Several processes


@pytest.mark.slow
def test_four_workers_share_one_sqlite_file(spec_factory, tmp_path):
    """Started together on a fresh file: one creates the study, all run, the budget is met once."""
    url, target = f"sqlite:///{tmp_path}/four.db", 16
    spec = quick_spec(spec_factory, epochs=1, storage=url)
    workers = [cli("worker", str(spec), "--n-trials", str(target), "--threads", "1") for _ in range(4)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, outputs
    assert not any("database is locked" in out or "Traceback" in out for out in outputs), outputs
    done = trials(url)
    finished = [t for t in done if t.state in (State.COMPLETE, State.PRUNED)]
    assert target <= len(finished) <= target + 3 and len(finished) == len(done)  # nothing failed or left running
    assert sorted(t.number for t in done) == list(range(len(done)))  # each trial stored once
    assert [t.number for t in done if t.user_attrs.get("config") == "defaults"] == [0]
    assert len({t.user_attrs["worker"] for t in done}) >= 2  # the work was shared


@pytest.mark.slow
def test_killed_worker_trial_is_failed_retried_and_the_budget_met(spec_factory, tmp_path):
    """SIGKILL the worker running trial 0: the other marks it FAIL (heartbeat), reruns its parameters,
    and the study still reaches its budget; launch reports the crash with a non-zero exit."""
    url, target = f"sqlite:///{tmp_path}/kill.db", 3
    spec = quick_spec(spec_factory, epochs=12, storage=url)
    launch = cli("launch", str(spec), "--workers", "2", "--n-trials", str(target),
                 env={"TAGSEARCH_HEARTBEAT": "1", "TAGSEARCH_GRACE": "3"})
    victim = wait_for(lambda: (tmp_path / "kill.db").exists() and running_with_an_epoch(url, number=0), 120,
                      "trial 0 to report an epoch")
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    output = launch.communicate(timeout=300)[0]
    assert launch.returncode == 1 and "exited with code -9" in output, output
    done = trials(url)
    assert done[0].state == State.FAIL
    retry = [t for t in done if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].params == done[0].params
    assert retry[0].state in (State.COMPLETE, State.PRUNED)
    assert sum(t.state in (State.COMPLETE, State.PRUNED) for t in done) == target
    assert not any(t.state == State.RUNNING for t in done)


@pytest.mark.slow
def test_launch_forwards_ctrl_c_and_a_rerun_resumes(spec_factory, tmp_path):
    url, target = f"sqlite:///{tmp_path}/launch.db", 4
    spec = quick_spec(spec_factory, epochs=300, storage=url)  # long trials: the signal lands mid-trial
    launch = cli("launch", str(spec), "--workers", "2", "--n-trials", str(target))
    wait_for(lambda: (tmp_path / "launch.db").exists() and running_with_an_epoch(url), 120, "a running trial")
    launch.send_signal(signal.SIGINT)
    output = launch.communicate(timeout=60)[0]
    assert launch.returncode == 130 and "interrupted" in output, output
    assert "Traceback" not in output
    stopped = trials(url)
    assert not any(t.state == State.RUNNING for t in stopped)
    interrupted = [t for t in stopped if t.state == State.FAIL]
    assert interrupted and all("interrupted" in t.user_attrs["fail_reason"] for t in interrupted)
    queued = [t for t in stopped if t.state == State.WAITING]
    assert {t.user_attrs["retry_of"] for t in queued} == {t.number for t in interrupted}

    spec = quick_spec(spec_factory, epochs=2, storage=url)
    rerun = cli("launch", str(spec), "--workers", "2", "--n-trials", str(target))
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    assert f"{target}/{target} finished" in output and "launched 2 worker(s) on cpu" in output
    done = trials(url)
    assert sum(t.state in (State.COMPLETE, State.PRUNED) for t in done) == target
    assert not any(t.state in (State.RUNNING, State.WAITING) for t in done)
    defaults = [t for t in done if t.user_attrs.get("config") == "defaults" and t.state != State.FAIL]
    assert len(defaults) == 1 and (tmp_path / "launch-logs" / "test-dense-worker0.log").is_file()
