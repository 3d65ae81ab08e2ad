"""``tagsearch launch --ray``: workers placed by Ray, on PostgreSQL, with the local launch's guarantees.

A single-node Ray cluster on loopback (2 CPUs and 2 declared GPUs, so GPU placement is exercised on
a machine without any) is started once for the module and ALWAYS stopped afterwards (``ray stop
--force``, which stops every Ray process of this user on the machine). The budget, restart and
Ctrl-C tests run the torch-free stub worker of ``tagsearch.testing.ray_stub_worker`` through
``ray_launch.launch_on_ray``; one test runs the real ``tagsearch launch --ray`` on a tiny corpus.
The refusals (no Ray, an unreachable address, a storage other nodes cannot reach) need no cluster.

Skipped, saying why, when Ray is not installed or PostgreSQL does not answer.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from conftest import REPO, write_spec
from tagsearch.cli import main
from tagsearch.errors import UserError
from tagsearch.runtime import ray_launch
from tagsearch.runtime.storage import open_storage
from test_crashes import alive, wait_for
from test_services import server_url
from tagsearch.testing.processes import free_port
from test_stress import FINISHED, State, stop_all

optuna.logging.set_verbosity(optuna.logging.WARNING)
STUB = ["-m", "tagsearch.testing.ray_stub_worker"]  # torch-free
FAST_HEARTBEAT = {"TAGSEARCH_HEARTBEAT": "1", "TAGSEARCH_GRACE": "3"}
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install -e '.[ray]')")


# ---------------------------------------------------------------------------------------------
# Refusals: one error line, exit 2, nothing created


def test_storages_that_other_nodes_cannot_reach_are_refused_on_several_nodes_only():
    for url in ("sqlite:///storage/x.db", "journal:///storage/x.log", "postgresql://postgres@127.0.0.1:5432/test",
                "redis://localhost:6379/0", "grpc://127.0.0.1:13000", "postgresql:///test"):
        ray_launch.check_storage_for_cluster(url, multi_node=False)
        with pytest.raises(UserError, match="expected postgresql://, mysql://, redis://"):
            ray_launch.check_storage_for_cluster(url, multi_node=True)
    for url in ("postgresql://u:pw@db.internal:5432/optuna", "mysql+pymysql://root@10.0.0.5/test",
                "redis://cache:6379/0", "grpc://10.0.0.7:13000"):
        ray_launch.check_storage_for_cluster(url, multi_node=True)


def test_launch_ray_without_ray_installed_says_how_to_install_it(monkeypatch, spec_factory, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    assert main(["launch", str(spec_factory()), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --ray needs Ray") and "tagsearch[ray]" in err[0], err


@needs_ray
def test_launch_ray_on_an_unreachable_address_is_one_error_line(tmp_path, spec_factory, capsys):
    url = f"sqlite:///{tmp_path}/study.db"
    assert main(["launch", str(spec_factory()), "--storage", url, "--ray", f"127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --ray 127.0.0.1:") and "no Ray head answers" in err[0], err
    assert not (tmp_path / "study.db").exists()


def test_launch_ray_refuses_sqlite_on_a_multi_node_cluster_before_loading_data(tmp_path, spec_factory, capsys,
                                                                                monkeypatch):
    two_nodes = ray_launch.Cluster("test", [{"host": "a", "CPU": 4.0, "GPU": 0.0}, {"host": "b", "CPU": 4.0, "GPU": 0.0}])
    monkeypatch.setattr(ray_launch, "connect", lambda address: two_nodes)
    disconnected = []
    monkeypatch.setattr(ray_launch, "import_ray", lambda: SimpleNamespace(shutdown=lambda: disconnected.append(1)))
    url = f"sqlite:///{tmp_path}/study.db"
    assert main(["launch", str(spec_factory()), "--storage", url, "--ray", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file on this machine" in err[0] and "grpc://HOST:PORT" in err[0], err
    assert not (tmp_path / "study.db").exists() and disconnected == [1]


def test_a_worker_no_node_can_hold_is_refused():
    cluster = ray_launch.Cluster("test", [{"host": "a", "CPU": 8.0, "GPU": 1.0}, {"host": "b", "CPU": 2.0, "GPU": 0.0}])
    assert ray_launch.worker_resources(cluster, None, 1.0) == (1.0, 1.0)  # GPUs in the cluster: one each
    assert ray_launch.worker_resources(cluster, 0, 2.0) == (0.0, 2.0)
    with pytest.raises(UserError, match="no node of the Ray cluster has 2 GPU"):
        ray_launch.worker_resources(cluster, 2, 1.0)
    with pytest.raises(UserError, match="no node of the Ray cluster has 1 GPU.*and 10 CPU"):
        ray_launch.worker_resources(cluster, None, 10.0)


# ---------------------------------------------------------------------------------------------
# On a Ray cluster


@pytest.fixture(scope="module")
def ray_address():
    """A single-node Ray head on loopback (2 CPUs, 2 declared GPUs); stopped whatever happens."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()  # an ephemeral port: outside Ray's worker ports (10002-19999)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    try:
        started = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                                  f"--ray-client-server-port={free_port()}", "--num-cpus=2", "--num-gpus=2",
                                  "--include-dashboard=false", f"--temp-dir={temp}"],
                                 env=env, capture_output=True, text=True, timeout=240)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        stop_head(temp, port)
        shutil.rmtree(temp, ignore_errors=True)


def stop_head(temp: str, port: int) -> None:
    """Stop this head's processes only: ``ray stop`` stops every Ray on the machine, and so the
    cluster of a test of this module running in the other xdist worker (its driver then lost its
    GCS and exited 1). Ours name the head's temp dir or port on their command line; the agents and
    workers they started exit with their raylet."""
    def ours() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # not a process, or gone
                continue
            if entry.name.isdigit() and (temp in line or f":{port} " in line or line.endswith(f":{port}")):
                found.append(int(entry.name))
        return found

    for signum, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in ours():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while ours() and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def postgres_study():
    """A fresh, empty study on the test PostgreSQL: (url, name); deleted afterwards."""
    url, name = server_url("postgresql"), f"ray-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_storage(url))
    yield url, name
    optuna.delete_study(study_name=name, storage=open_storage(url))


def start_driver(address: str, url: str, name: str, folder: Path, n_trials: int, *, steps: int = 3,
                 step_seconds: float = 0.2, gpus: float = 1, env: dict | None = None) -> subprocess.Popen:
    """The stub driver (``launch_on_ray`` over 2 stub workers), output to ``folder/driver.log``."""
    with open(folder / "driver.log", "w") as handle:
        return subprocess.Popen(
            [sys.executable, *STUB, "launch", "--address", address, "--storage", url, "--study-name", name,
             "--n-trials", str(n_trials), "--workers", "2", "--log-dir", str(folder / "logs"), "--steps", str(steps),
             "--step-seconds", str(step_seconds), "--gpus-per-worker", str(gpus)],
            env={**os.environ, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def trials_of(url: str, name: str) -> list:
    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)


def running_with_steps(url: str, name: str) -> list:
    return [t for t in trials_of(url, name) if t.state == State.RUNNING and t.intermediate_values]


def pid_of(trial) -> int:
    return int(trial.user_attrs["worker"].rsplit(":", 1)[1])


def worker_pids(folder: Path) -> list[int]:
    """Every worker process the Ray tasks started (the header each task writes into its log)."""
    pids = []
    for log in (folder / "logs").glob("*.log"):
        pids += [int(line.split(" pid ")[1].split()[0]) for line in log.read_text().splitlines()
                 if line.startswith("[ray task on ")]
    return pids


def driver_output(folder: Path) -> str:
    return (folder / "driver.log").read_text()


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.timeout(240)
def test_ray_workers_meet_the_budget_exactly_each_on_its_own_gpu(ray_address, postgres_study, tmp_path):
    url, name = postgres_study
    driver = start_driver(ray_address, url, name, tmp_path, n_trials=6)
    try:
        assert driver.wait(timeout=200) == 0, driver_output(tmp_path)[-3000:]
    finally:
        stop_all([driver])
    trials = trials_of(url, name)
    assert [t.state for t in trials] == [State.COMPLETE] * 6
    seen = {pid_of(t): t.user_attrs["cuda_visible_devices"] for t in trials}
    assert sorted(seen.values()) == ["0", "1"], seen  # two workers, each with the one GPU Ray gave it
    assert sorted(worker_pids(tmp_path)) == sorted(seen)


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.timeout(240)
def test_a_killed_ray_worker_is_restarted_and_its_trial_failed_and_retried_once(ray_address, postgres_study, tmp_path):
    url, name = postgres_study
    driver = start_driver(ray_address, url, name, tmp_path, n_trials=6, steps=10, step_seconds=0.3, env=FAST_HEARTBEAT)
    try:
        victim = wait_for(lambda: running_with_steps(url, name), 150, "a trial to report a step")[0]
        os.kill(pid_of(victim), signal.SIGKILL)
        assert driver.wait(timeout=200) == 0, driver_output(tmp_path)[-3000:]
    finally:
        stop_all([driver])
    trials = trials_of(url, name)
    assert sum(t.state in FINISHED for t in trials) == 6, [t.state for t in trials]
    assert not [t for t in trials if t.state in (State.RUNNING, State.WAITING)]
    dead = trials[victim.number]
    # failed by tagsearch's stale check (with its reason) or, when a starting worker's Optuna ran its
    # own check first, by Optuna's (no reason: it cannot be set on a finished trial); retried either way
    assert dead.state == State.FAIL
    assert dead.user_attrs.get("fail_reason", "worker lost: no heartbeat").startswith("worker lost: no heartbeat")
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == dead.params and retries[0].state in FINISHED
    assert [t.number for t in trials if t.state == State.FAIL] == [victim.number]
    assert len(worker_pids(tmp_path)) == 3  # two workers, one of them started again by Ray
    assert not [pid for pid in worker_pids(tmp_path) if alive(pid)]


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.timeout(240)
def test_ctrl_c_on_a_ray_launch_stops_every_worker_and_queues_their_trials(ray_address, postgres_study, tmp_path):
    url, name = postgres_study
    driver = start_driver(ray_address, url, name, tmp_path, n_trials=50, steps=200, step_seconds=0.2)
    try:
        interrupted = wait_for(lambda: len(running_with_steps(url, name)) == 2 and running_with_steps(url, name),
                               150, "both workers to run a trial")
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=120) == 130, driver_output(tmp_path)[-3000:]
    finally:
        stop_all([driver])
    assert "interrupted: 2 worker(s) stopped" in driver_output(tmp_path)
    pids = worker_pids(tmp_path)
    # Ray resolves a cancelled task at once; its worker then queues its trial and exits (SIGTERM,
    # SIGKILL after 30 s): wait for that, not for a time
    assert len(pids) == 2
    wait_for(lambda: not [pid for pid in pids if alive(pid)], 60, "the cancelled workers to exit")
    trials = trials_of(url, name)
    assert not [t.number for t in trials if t.state == State.RUNNING]
    for trial in interrupted:
        assert trials[trial.number].state == State.FAIL
        assert trials[trial.number].user_attrs["fail_reason"].startswith("interrupted")
        queued = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
        assert [t.state for t in queued] == [State.WAITING]
        assert queued[0].params == trial.params  # queued with the same parameters


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.timeout(300)
def test_tagsearch_launch_ray_runs_real_workers(ray_address, postgres_study, tmp_path):
    """The one real run: ``tagsearch launch SPEC --ray ADDRESS`` with two CPU workers on 120 posts."""
    from tagsearch.data.synth import write_corpus

    url, _ = postgres_study
    name = f"ray-cli-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "posts.csv"
    write_corpus(data, n_posts=120, seed=3)
    spec = write_spec(tmp_path / "spec.toml", data=data, storage=url, name=name,
                      edit=lambda raw: raw["training"].update(max_epochs=1, patience=1))
    try:
        run = subprocess.run([sys.executable, "-m", "tagsearch.cli", "launch", str(spec), "--ray", ray_address,
                              "--workers", "2", "--n-trials", "2", "--gpus-per-worker", "0"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=280)
        assert run.returncode == 0, run.stderr[-3000:]
        trials = trials_of(url, name)
        assert sum(t.state in FINISHED for t in trials) == 2 and len(trials) == 2, [t.state for t in trials]
        assert {t.user_attrs["device"] for t in trials} == {"cpu"}
        logs = sorted((tmp_path / "storage" / "logs").glob(f"{name}-worker*.log"))
        assert [p.name for p in logs] == [f"{name}-worker0.log", f"{name}-worker1.log"]
        assert "error" not in run.stderr.lower() and "2/2 finished" in run.stderr
    finally:
        try:
            optuna.delete_study(study_name=name, storage=open_storage(url))
        except KeyError:
            pass
