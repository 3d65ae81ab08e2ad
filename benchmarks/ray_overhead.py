"""What placing workers with Ray costs: storage time, startup and wall time, local against Ray.

The same W stub workers × N trivial trials each (a budget of W·N) on one PostgreSQL study, once
started as local subprocesses (as ``tagsearch launch`` does) and once as Ray tasks
(``ray_launch.launch_on_ray``, as ``tagsearch launch --ray`` does) on a single-node Ray head started
beforehand (its start is reported apart, it is not part of a launch).

The workers are ``tagsearch.testing.ray_stub_worker`` (torch-free; each trial suggests x, reports
one step, returns x), so a trial is almost nothing but storage work: the worst case for overhead. Measured:
per-trial storage time (seconds a worker's main thread spent in storage calls, the budget lock's
tries included, from the end of one trial to the end of the next; median and p95), worker startup
(from the launch to each worker process's start, and to its first trial; median and max) and wall
time. Checked: exactly W·N finished, no FAIL, nothing RUNNING or WAITING.

    .venv/bin/python -m benchmarks run ray_overhead [--workers 8] [--trials 50]
        [--postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test] [--json OUT]

Each mode uses a study of its own (deleted afterwards). Stops every Ray process of this user on the
machine at the end (``ray stop --force``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB = ["-m", "tagsearch.testing.ray_stub_worker"]  # torch-free


def stub_args(url: str, name: str, trials: int, timings: Path) -> list[str]:
    return ["--storage", url, "--study-name", name, "--n-trials", str(trials), "--steps", "1",
            "--step-seconds", "0", "--timings", str(timings)]


def run_local(url: str, name: str, trials: int, workers: int, folder: Path, timings: Path) -> list[int]:
    processes = []
    for index in range(workers):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGSEARCH_WORKER_INDEX": str(index), "PYTHONUNBUFFERED": "1"}
        with open(folder / f"worker{index}.log", "w") as handle:
            processes.append(subprocess.Popen([sys.executable, *STUB, "worker", *stub_args(url, name, trials, timings)],
                                              env=env, stdout=handle, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL))
    return [p.wait(timeout=1800) for p in processes]


def run_ray(url: str, name: str, trials: int, workers: int, folder: Path, timings: Path, address: str) -> list[int]:
    with open(folder / "driver.log", "w") as handle:
        driver = subprocess.run([sys.executable, *STUB, "launch", "--address", address, "--workers", str(workers),
                                 "--log-dir", str(folder / "logs"), "--gpus-per-worker", "0", "--cpus-per-worker", "1",
                                 *stub_args(url, name, trials, timings)],
                                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=1800)
    return [driver.returncode]


def start_ray(cpus: int, temp: str) -> tuple[str, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    subprocess.run([str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1",
                    f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false",
                    f"--temp-dir={temp}"], env=env, check=True, capture_output=True, timeout=300)
    return f"127.0.0.1:{port}", time.monotonic() - start


def measure(mode: str, postgres: str, trials: int, workers: int, folder: Path, address: str | None) -> dict:
    import optuna
    from tagsearch.runtime.storage import open_storage

    name = f"tagsearch-ray-overhead-{mode}-{uuid.uuid4().hex[:8]}"
    folder = folder / mode
    folder.mkdir(parents=True)
    timings = folder / "timings.jsonl"
    optuna.create_study(study_name=name, storage=open_storage(postgres))
    launched = time.time()
    start = time.monotonic()
    codes = (run_local(postgres, name, trials, workers, folder, timings) if mode == "local"
             else run_ray(postgres, name, trials, workers, folder, timings, address))
    wall = time.monotonic() - start
    study = optuna.load_study(study_name=name, storage=open_storage(postgres))
    all_trials = study.get_trials(deepcopy=False)
    State = optuna.trial.TrialState
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    per_trial = sorted(r["storage_s"] for r in rows if "storage_s" in r)
    starts = [r for r in rows if "first_trial" in r]
    to_process = sorted(r["process_start"] - launched for r in starts)
    to_first = sorted(r["first_trial"] - launched for r in starts)
    result = {
        "mode": mode, "workers": workers, "budget": trials, "exit_codes": codes, "wall_s": round(wall, 1),
        "finished": sum(t.state in (State.COMPLETE, State.PRUNED) for t in all_trials),
        "fail": sum(t.state == State.FAIL for t in all_trials),
        "running_or_waiting": sum(t.state in (State.RUNNING, State.WAITING) for t in all_trials),
        "storage_s_median": round(statistics.median(per_trial), 4),
        "storage_s_p95": round(per_trial[max(0, int(round(0.95 * len(per_trial))) - 1)], 4),
        "trials_timed": len(per_trial),
        "process_start_s_median": round(statistics.median(to_process), 2), "process_start_s_max": round(to_process[-1], 2),
        "first_trial_s_median": round(statistics.median(to_first), 2), "first_trial_s_max": round(to_first[-1], 2),
        "workers_started": len(starts),
    }
    optuna.delete_study(study_name=name, storage=open_storage(postgres))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50, help="trials per worker (the budget is W times this)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--postgres", default=os.environ.get("TAGSEARCH_TEST_POSTGRES",
                                                             "postgresql+psycopg2://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="tagsearch-ray-overhead-"))
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    results = []
    try:
        budget = args.trials * args.workers
        results.append(measure("local", args.postgres, budget, args.workers, folder, None))
        print(json.dumps(results[-1]), flush=True)
        address, head_seconds = start_ray(args.workers, temp)
        results.append({**measure("ray", args.postgres, budget, args.workers, folder, address),
                        "ray_head_start_s": round(head_seconds, 1)})
        print(json.dumps(results[-1]), flush=True)
    finally:
        subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True, timeout=300)
        shutil.rmtree(temp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                               "cpus": os.cpu_count(), "results": results}, indent=2) + "\n")
    ok = all(r["finished"] == r["budget"] and r["fail"] == 0 and r["running_or_waiting"] == 0
             and set(r["exit_codes"]) == {0} for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
