"""Stress: four worker processes on one SQLite file, 32 short trials of varying length; two workers
reaching the budget's last slot together; two workers creating a new study together.

The workers are the real runtime around a stub objective (``tagsearch.testing.stub_worker``, no
torch): what is under test is the budget, the locks and the storage, not the model. Afterwards the
study must hold exactly its budget of finished trials, each stored once and complete (learning curve
+ user attributes), no FAIL, nothing left RUNNING/WAITING, a file that passes ``PRAGMA integrity_check``,
and no worker may have seen "database is locked" or a traceback. (A study of the real objective under
``tagsearch launch`` is checked the same way in test_crashes.py.)

The helpers here (``start_worker``, ``start_stub``, ``stop_all``, ``check_study``) are shared by
test_crashes.py, test_outages.py and test_services.py.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import write_spec
from tagsearch.runtime import _optuna
from tagsearch.runtime.locks import BudgetLock

optuna.logging.set_verbosity(optuna.logging.WARNING)
State = optuna.trial.TrialState
FINISHED = (State.COMPLETE, State.PRUNED)

STUB = ["-m", "tagsearch.testing.stub_worker"]  # torch-free: the real runtime around a stub objective
# What every COMPLETE trial of the real objective must carry (objective.Objective.run_trial sets them).
COMPLETE_ATTRS = ("params", "model", "device", "worker", "epochs_run", "best_epoch", "stopped_early",
                  "train_seconds", "parameters", "val_micro_f1", "val_macro_f1", "val_per_class_f1")
PRUNED_ATTRS = ("params", "model", "worker", "pruned_reason", "epochs_run", "best_epoch")
STUB_ATTRS = ("params", "worker", "epochs_run", "best_epoch")  # stub_worker.ATTRS

# Trials of very different lengths without any test hook in product code: batch size 8 takes ~45
# optimizer steps per epoch on the tiny corpus, 256 takes two; hidden1 varies the model size.
VARYING_SPACE = """
[search.batch_size]
choices = [8, 16, 64, 256]

[search.hidden1]
low = 8
high = 64
"""


def stress_spec(path: Path, data: Path, storage: str, name: str, epochs: int = 2, extra: str = VARYING_SPACE,
                pruner: str = "median") -> Path:
    """The tiny test spec with the varying search space, random sampling, ``epochs`` epochs (as long a
    patience) and the ``pruner`` kind ("none": trials run their epochs, so they can be hit mid-run)."""
    def edit(raw: dict) -> None:
        raw["training"].update(max_epochs=epochs, patience=epochs)
        raw["sampler"]["n_startup_trials"] = 8
        raw["pruner"]["kind"] = pruner

    return write_spec(path, model="dense", data=data, storage=storage, name=name, extra=extra, edit=edit)


def start_worker(spec: Path, log: Path, *args: str, index: int = 0, env: dict | None = None,
                 command: str = "worker", cwd: Path | None = None) -> subprocess.Popen:
    """``tagsearch worker SPEC ARGS`` (or another command) in a subprocess, output to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TAGSEARCH_WORKER_INDEX": str(index),
           **(env or {})}
    with open(log, "w", encoding="utf-8") as handle:
        return subprocess.Popen([sys.executable, "-m", "tagsearch.cli", command, str(spec), *args], env=env,
                                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)


def start_stub(log: Path, command: str, url: str, name: str, target: int, *args: str, index: int = 0,
               env: dict | None = None) -> subprocess.Popen:
    """``python -m tagsearch.testing.stub_worker COMMAND`` (worker or launch) on study ``name`` in
    ``url``, output to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TAGSEARCH_WORKER_INDEX": str(index), **(env or {})}
    with open(log, "w", encoding="utf-8") as handle:
        return subprocess.Popen([sys.executable, *STUB, command, "--storage", url, "--study-name", name,
                                 "--n-trials", str(target), *args], env=env, stdout=handle,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_all(processes) -> None:
    """Kill whatever is still running (tests call this in ``finally``)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


def wait_all(processes, seconds: float) -> list[int]:
    """Exit codes of ``processes``, waiting at most ``seconds`` for all of them together."""
    deadline = time.monotonic() + seconds
    for process in processes:
        process.wait(timeout=max(1.0, deadline - time.monotonic()))
    return [process.returncode for process in processes]


def check_study(study: optuna.Study, target: int, allowed_fail: int = 0, defaults_finished: int = 1,
                complete_attrs=STUB_ATTRS, pruned_attrs=PRUNED_ATTRS) -> list:
    """The invariants every finished multi-worker study must satisfy; returns its trials.
    ``defaults_finished``: how many finished trials run the spec's defaults (0 when a test killed
    trial 0 and its one retry). ``complete_attrs``: the user attributes every COMPLETE trial carries
    (the stub objective's by default; ``COMPLETE_ATTRS`` for the real one)."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = [t for t in trials if t.state in FINISHED]
    failed = [t for t in trials if t.state == State.FAIL]
    assert len(finished) == target, f"{len(finished)} finished trials, expected exactly {target}: {states}"
    assert len(failed) == allowed_fail, [(t.number, t.user_attrs.get("fail_reason")) for t in failed]
    assert not [t.number for t in trials if t.state in (State.RUNNING, State.WAITING)], states
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), f"duplicated or missing trial numbers: {sorted(numbers)}"
    assert len({_optuna.trial_id(t) for t in trials}) == len(trials)
    assert sum(t.user_attrs.get("config") == "defaults" and t.state in FINISHED for t in trials) == defaults_finished
    for trial in finished:
        attrs = trial.user_attrs
        required = complete_attrs if trial.state == State.COMPLETE else pruned_attrs
        missing = [key for key in required if key not in attrs]
        assert not missing, f"trial {trial.number} ({trial.state.name}) lacks user attributes {missing}"
        assert {k: attrs["params"][k] for k in trial.params} == trial.params, trial.number
        curve = trial.intermediate_values
        assert sorted(curve) == list(range(1, attrs["epochs_run"] + 1)), (trial.number, curve, attrs["epochs_run"])
        if trial.state == State.COMPLETE:
            assert trial.value == pytest.approx(min(curve.values())), trial.number
            assert curve[attrs["best_epoch"]] == pytest.approx(trial.value), trial.number
            assert 0.0 <= attrs.get("val_micro_f1", 0.0) <= 1.0
    return trials


def run_workers(tmp_path: Path, url: str, name: str, workers: int, target: int, seconds: float,
                *args: str) -> list[Path]:
    """Run ``workers`` stub worker processes on study ``name`` to ``target`` trials; all must exit 0
    with clean logs (killed at ``seconds`` otherwise)."""
    logs = [tmp_path / f"worker{i}.log" for i in range(workers)]
    processes = []
    try:
        for index, log in enumerate(logs):
            processes.append(start_stub(log, "worker", url, name, target, *args, index=index))
        codes = wait_all(processes, seconds)
    finally:
        stop_all(processes)
    assert codes == [0] * workers, {str(log): log.read_text(errors="replace")[-2000:] for log in logs}
    assert_clean_logs(logs)
    return logs


def sqlite_file(url: str) -> Path:
    assert url.startswith("sqlite:////")
    return Path(url[len("sqlite:///"):])


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def assert_clean_logs(logs) -> None:
    for log in logs:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
        assert "database is locked" not in text, f"{log}:\n{text[-3000:]}"
        assert "Traceback" not in text, f"{log}:\n{text[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_four_workers_32_trials_of_varying_length_on_one_sqlite_file(tmp_path):
    target, workers = 32, 4
    url = f"sqlite:///{tmp_path}/stress.db"
    logs = run_workers(tmp_path, url, "stress", workers, target, 240, "--epochs", "3")
    assert integrity(sqlite_file(url)) == "ok"

    study = optuna.load_study(study_name="stress", storage=url)
    trials = check_study(study, target)
    assert len(trials) == target  # nothing failed, nothing extra
    # The trials really did vary in length: the stub's epochs last 1, 2, 4 or 8 units (``size``).
    sizes = {t.params["size"] for t in trials}
    assert len(sizes) >= 3 and max(sizes) >= 4 * min(sizes), sizes
    # The work was shared: several worker processes ran trials.
    assert len({t.user_attrs["worker"] for t in trials}) >= 2
    # Every process reported the whole study finished.
    for log in logs:
        assert f"{target}/{target} finished" in log.read_text(), log.read_text()[-2000:]


# The race behind an overshoot, made deterministic: each worker, about to create the trial that takes
# the last slot of the budget, waits (up to RENDEZVOUS_SECONDS) until the other worker is about to
# create a trial too. Counting and creating must be one step among workers, so with a correct budget
# the second worker never gets that far: it is still waiting to count, and then finds no slot left.
RENDEZVOUS_SECONDS = 6
ASK_HOOK = """
import os, sys, time
from pathlib import Path

import optuna

target, rendezvous = int(sys.argv[1]), Path(sys.argv[2])
counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
real_ask = optuna.study.Study.ask


def ask(self, *args, **kwargs):
    mine = rendezvous / str(os.getpid())
    taken = sum(t.state in counted for t in self.get_trials(deepcopy=False))
    if taken == target - 1 and not mine.exists():
        mine.touch()
        deadline = time.monotonic() + %d
        while len(list(rendezvous.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    return real_ask(self, *args, **kwargs)


optuna.study.Study.ask = ask
from tagsearch.testing.stub_worker import main

sys.exit(main(sys.argv[3:]))
""" % RENDEZVOUS_SECONDS


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_workers_reaching_the_last_slot_together_do_not_overshoot(tmp_path):
    target, url = 2, f"sqlite:///{tmp_path}/race.db"
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    hook = tmp_path / "hook.py"
    hook.write_text(ASK_HOOK)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    logs, processes = [tmp_path / f"worker{i}.log" for i in range(2)], []
    try:
        for index, log in enumerate(logs):
            with open(log, "w") as handle:
                processes.append(subprocess.Popen(
                    [sys.executable, str(hook), str(target), str(rendezvous), "worker", "--storage", url,
                     "--study-name", "race", "--n-trials", str(target), "--epochs", "1"],
                    env={**env, "TAGSEARCH_WORKER_INDEX": str(index)}, stdout=handle, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL))
        codes = wait_all(processes, 150)
    finally:
        stop_all(processes)
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert len(list(rendezvous.iterdir())) >= 1  # a worker really stood at the last slot
    trials = optuna.load_study(study_name="race", storage=url).get_trials()
    finished = [t.number for t in trials if t.state in FINISHED]
    assert len(finished) == target, f"{len(finished)} finished trials for a budget of {target}: {finished}"


@pytest.mark.timeout(120)
def test_two_workers_creating_a_study_together_queue_the_defaults_once(tmp_path, tiny_csv, monkeypatch):
    """Two ``open_study`` calls (study/workers.py, as ``tagsearch worker`` makes them) on a new study
    at the same moment, in two threads of this process (the file lock is per open file, so they
    exclude each other as two processes would). The creator is held just before queueing the
    [defaults] trial until the other gets there too (or 4 s pass). Without the lock the other one,
    finding the study undescribed, adopts it and queues [defaults] again; with study creation under
    the budget lock it waits, then joins the finished study."""
    import threading

    from tagsearch.data.corpus import load_corpus
    from tagsearch.runtime.storage import open_storage
    from tagsearch.study import search, workers
    from tagsearch.study.spec import load_spec

    url = f"sqlite:///{tmp_path}/new.db"
    spec = load_spec(stress_spec(tmp_path / "new.toml", tiny_csv, url, "new", epochs=1, extra=""))
    corpus = load_corpus(spec.data_config())
    monkeypatch.setattr(search, "DESCRIBE_WAIT_SECONDS", 1)  # how long a joiner waits for the creator
    at_defaults, real_enqueue = threading.Barrier(2, timeout=4), optuna.study.Study.enqueue_trial

    def enqueue_trial(self, params, *args, **kwargs):
        if (kwargs.get("user_attrs") or {}).get("config") == "defaults":
            try:
                at_defaults.wait()  # broken after 4 s when the other worker cannot get here
            except threading.BrokenBarrierError:
                pass
        return real_enqueue(self, params, *args, **kwargs)

    monkeypatch.setattr(optuna.study.Study, "enqueue_trial", enqueue_trial)
    start, errors = threading.Barrier(2), []

    def worker():
        try:
            start.wait()
            with contextlib.closing(BudgetLock(url, spec.name)) as lock:
                workers.open_study(spec, corpus, url, None, lock)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    trials = optuna.load_study(study_name="new", storage=open_storage(url)).get_trials()
    defaults = [t.number for t in trials if t.user_attrs.get("config") == "defaults"]
    assert defaults == [0], f"[defaults] queued as trials {defaults}"
