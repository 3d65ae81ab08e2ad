"""Faults around the launcher (runtime/launch.py, runtime/ray_launch.py): a closed terminal (SIGHUP),
a progress poll that raises, a worker under Ray that gave up on a storage outage; and, on PostgreSQL,
``launch`` with a worker SIGKILLed right after it created a trial, before its first heartbeat.

Torch-free: the stub worker (``tagsearch.testing.stub_worker``), a one-line Python child, fake worker handles."""

from __future__ import annotations

import signal
import sys
import time
import uuid

import optuna
import pytest

from tagsearch.runtime import launch as runtime_launch
from tagsearch.runtime import ray_launch
from tagsearch.runtime.storage import open_storage
from test_stress import FINISHED, State, check_study, start_stub, stop_all

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def wait_for_text(path, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} not in {path} within {seconds}s"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_launch_survives_a_closed_terminal(tmp_path):
    """SIGHUP (the SSH session dropped) while ``launch`` supervises: the workers finish the study
    and launch exits 0, its output continuing in the launch log."""
    url, name, target = f"sqlite:///{tmp_path}/hup.db", "hup", 4
    launch = start_stub(tmp_path / "launch.log", "launch", url, name, target, "--workers", "2",
                        "--epochs", "3", "--epoch-seconds", "0.3")
    try:
        wait_for_text(tmp_path / "launch.log", "launched 2 worker(s)", 120)
        launch.send_signal(signal.SIGHUP)
        assert launch.wait(timeout=150) == 0, (tmp_path / "launch.log").read_text()
    finally:
        stop_all([launch])
    output = (tmp_path / "launch.log").read_text()
    assert f"{target}/{target} finished" in output and "SIGHUP" in output, output
    check_study(optuna.load_study(study_name=name, storage=url), target)


class FakeWorker:
    """A worker handle (``subprocess.Popen``'s poll/returncode/send_signal) that exits after ``polls``."""

    def __init__(self, polls: int):
        self.polls, self.returncode, self.signals, self.pid = polls, None, [], 0

    def poll(self):
        self.polls -= 1
        if self.polls <= 0:
            self.returncode = 0
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)


def test_a_progress_poll_that_raises_leaves_the_workers_alone(monkeypatch, tmp_path, capsys):
    def broken(study):
        raise RuntimeError("the poll broke")

    monkeypatch.setattr(runtime_launch, "progress", broken)
    monkeypatch.setattr(runtime_launch, "POLL_SECONDS", 0.01)
    workers = [(FakeWorker(5), tmp_path / "w0.log"), (FakeWorker(7), tmp_path / "w1.log")]
    study = optuna.create_study()
    assert runtime_launch.supervise(study, workers, target=4) == 0
    assert [process.signals for process, _ in workers] == [[], []]
    assert capsys.readouterr().err.count("progress not shown (RuntimeError: the poll broke)") == 1


OUTAGE_CHILD = """
import sys
from tagsearch.cli import exit_code
from tagsearch.runtime.outages import Outages

def cut():
    raise ConnectionResetError("connection reset by peer")

sys.exit(exit_code(lambda: Outages(limit=0).call("create_new_trial", cut)))
"""


def test_a_ray_worker_that_gave_up_on_an_outage_is_restarted_not_refused(tmp_path):
    """The worker's own exit (2, after its one ``error:`` line on the outage), run as a Ray task runs
    it: the task asks Ray for a restart, as for a lost worker; a refused input still is not retried."""
    log = tmp_path / "w0.log"
    with pytest.raises(ray_launch.WorkerExited, match="exited with code 2"):
        ray_launch._run_worker(0, [sys.executable, "-c", OUTAGE_CHILD], {}, str(log), str(tmp_path), sys.executable,
                               1, False)
    assert "error: the storage was unreachable" in log.read_text()
    refused = [sys.executable, "-c", "import sys; print('error: --n-trials 0 is not >= 1'); sys.exit(2)"]
    with pytest.raises(ray_launch.WorkerRefused):
        ray_launch._run_worker(1, refused, {}, str(tmp_path / "w1.log"), str(tmp_path), sys.executable, 1, False)


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.timeout(240)
def test_launch_on_postgresql_with_a_worker_killed_before_its_first_heartbeat_ends_with_its_budget(tmp_path):
    """``launch --n-trials 8`` (stub workers) on PostgreSQL; one worker SIGKILLs itself right after it
    created a trial, before any heartbeat. The trial is adopted on the database's clock and failed
    after the grace period derived from short beat/outage settings (3 s); the study ends with
    exactly 8 finished trials and nothing RUNNING. Launch reports the killed worker (exit 1, as for
    any worker that crashed)."""
    from test_services import server_url

    url, name, target = server_url("postgresql"), f"tagsearch-unbeaten-{uuid.uuid4().hex[:8]}", 8
    control = tmp_path / "control"
    control.mkdir()
    (control / "die-after-create").touch()
    fast = {"TAGSEARCH_HEARTBEAT": "1", "TAGSEARCH_OUTAGE_LIMIT": "1"}
    launch = start_stub(tmp_path / "launch.log", "launch", url, name, target, "--workers", "3",
                        "--control", str(control), env=fast)
    try:
        assert launch.wait(timeout=200) == 1, (tmp_path / "launch.log").read_text()[-3000:]
        output = (tmp_path / "launch.log").read_text()
        assert "exited with code -9" in output and f"{target}/{target} finished" in output, output[-3000:]
        assert len(list(control.glob("died-*"))) == 1  # the fault was injected once
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        trials = check_study(study, target, allowed_fail=1)
        dead = [t for t in trials if t.state == State.FAIL][0]
        assert dead.user_attrs["fail_reason"].startswith("worker lost: no heartbeat for more than 3 s")
        reruns = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
        if dead.params:  # killed after its first suggestion: rerun once with the same parameters
            assert len(reruns) == 1 and reruns[0].state in FINISHED and reruns[0].params == dead.params
        else:  # killed before it had any: nothing to repeat, and its reason says so
            assert not reruns and "nothing to repeat" in dead.user_attrs["fail_reason"]
    finally:
        stop_all([launch])
        storage = open_storage(url)
        if name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
