"""Worker and launch plumbing: device lists, per-worker environments, the progress line, bad devices,
signals during storage calls, the frozen heap.

The process tests live with their kind: several workers on one storage in test_stress.py, killed
workers and Ctrl-C on ``launch`` in test_crashes.py, real servers in test_services.py."""

from __future__ import annotations

import gc
import os
import signal
import time

import optuna
import pytest

from tagsearch.cli import main
from tagsearch.runtime.interrupts import Interrupts
from tagsearch.runtime.launch import ProgressLine, worker_env
from tagsearch.runtime.progress import Progress
from tagsearch.runtime.worker_storage import WorkerStorage
from tagsearch.runtime.trials import run_trials
from tagsearch.study.workers import parse_devices

optuna.logging.set_verbosity(optuna.logging.WARNING)
State = optuna.trial.TrialState


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
# Read-only traffic and the storage proxy's command line


def test_progress_polls_and_the_dashboard_do_not_queue_for_sqlites_write_lock(tmp_path, monkeypatch):
    """A worker holds SQLite's write lock (BEGIN IMMEDIATE, as every worker transaction does): a
    read-only storage (launch's progress line, the dashboard) still reads at once; a worker's
    storage would queue behind it (shown with a 1 s lock timeout instead of 300 s)."""
    import sqlite3

    from tagsearch.runtime import progress as search
    from tagsearch.runtime import storage

    url = f"sqlite:///{tmp_path}/poll.db"
    study = optuna.create_study(storage=storage.open_storage(url), study_name="poll")
    study.enqueue_trial({"x": 1.0})
    monkeypatch.setattr(storage, "SQLITE_TIMEOUT_SECONDS", 1)
    writer = sqlite3.connect(tmp_path / "poll.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:  # the writer holds the lock throughout: a reader that queued for it would fail after 1 s
        reader = optuna.load_study(study_name="poll", storage=storage.open_storage(url, read_only=True))
        assert search.progress(reader).waiting == 1
        with pytest.raises(Exception):  # "database is locked" (wrapped by Optuna or by open_storage)
            search.progress(optuna.load_study(study_name="poll", storage=storage.open_storage(url)))
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_storage_proxy_on_all_interfaces_warns_first(monkeypatch, capsys):
    from tagsearch.runtime import proxy

    def refuse(*args):
        raise proxy.UserError("stop here (the test never opens the port)")

    monkeypatch.setattr(proxy, "make_server", refuse)
    # without a token such a bind is refused (tests/test_proxy_auth.py); --insecure serves, warning first
    assert main(["storage-proxy", "--storage", "sqlite:///:memory:", "--host", "0.0.0.0", "--insecure"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("WARNING: --insecure: serving on 0.0.0.0 WITHOUT A TOKEN") and err[1].startswith("error:")


@pytest.mark.parametrize("argv, message", [
    (["storage-proxy", "--storage", "journal:///x.log"], "which Optuna's gRPC proxy does not support"),
    (["storage-proxy", "--storage", "sqlite:///:memory:", "--port", "70000"], "--port 70000 is out of range"),
    (["dashboard", "--storage", "grpc://127.0.0.1"], "expected grpc://HOST:PORT"),
    (["dashboard", "--storage", "grpc://127.0.0.1:{port}"], "no storage proxy answers at grpc://127.0.0.1:"),
])
def test_storage_proxy_mistakes_are_one_error_line(argv, message, monkeypatch, capsys):
    import socket

    from tagsearch.runtime import storage

    monkeypatch.setattr(storage, "GRPC_CONNECT_SECONDS", 1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main([a.format(port=port) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


# ---------------------------------------------------------------------------------------------
# A signal never lands inside a storage call (it would leave the trial RUNNING)


class StubTrial:
    number = 7

    def __init__(self):
        self.user_attrs = {}

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


class SlowStorage(optuna.storages.InMemoryStorage):
    """A storage whose ``set_trial_user_attr`` sends this process SIGINT, then works for 0.3 s."""

    def set_trial_user_attr(self, trial_id, key, value):
        os.kill(os.getpid(), signal.SIGINT)
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
        self.written = True


@pytest.fixture
def interrupts():
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield Interrupts().install()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("outages", [False, True])
def test_a_signal_during_a_storage_write_interrupts_the_trial_after_it(interrupts, outages):
    """Through the storage wrapper every worker uses (with and without outage retries): the write
    finishes, then the signal, delivered again, interrupts the sleep after it."""
    from tagsearch.runtime.outages import Outages

    inner = SlowStorage()
    store = WorkerStorage(inner, Outages() if outages else None)
    done = []

    def objective(trial):
        store.set_trial_user_attr(0, "k", "v")  # the signal arrives at its start
        done.append("written")
        time.sleep(30)  # interrupted here, REDELIVER_SECONDS later (else: "slept", and no interrupt)
        done.append("slept")

    trial = StubTrial()
    with pytest.raises(KeyboardInterrupt):
        interrupts.run(objective, trial)
    assert done == ["written"] and inner.written
    assert "interrupted" in trial.user_attrs["fail_reason"]


def test_a_signal_in_our_own_code_interrupts_the_trial_at_once(interrupts):
    done = []

    def objective(trial):
        os.kill(os.getpid(), signal.SIGINT)
        end = time.monotonic() + 30
        while time.monotonic() < end:  # our own work: interrupted at once, never finishes
            pass
        done.append("worked")

    with pytest.raises(KeyboardInterrupt):
        interrupts.run(objective, StubTrial())
    assert done == []


def test_a_signal_between_trials_only_stops_the_next_one(interrupts):
    os.kill(os.getpid(), signal.SIGINT)  # no trial runs: only noted
    assert interrupts.stop_requested
    with pytest.raises(KeyboardInterrupt):
        interrupts.run(lambda trial: 1.0, StubTrial())


def test_trials_run_with_the_earlier_heap_frozen_and_it_is_thawed_after(tmp_path):
    """The collection after each trial scans only what the trial made (the heap that existed before
    the first trial is frozen), and nothing stays frozen once the worker's trials are over."""
    from tagsearch.runtime.storage import open_storage

    frozen_during_trial = []

    def objective(trial):
        frozen_during_trial.append(gc.get_freeze_count())
        return trial.suggest_float("x", 0, 1)

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/frozen.db"))
    assert run_trials(study, objective, 2, wait_for_running=False) == 0
    assert len(frozen_during_trial) == 2 and min(frozen_during_trial) > 0
    assert gc.get_freeze_count() == 0
