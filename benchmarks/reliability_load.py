"""Reliability under load: W workers on PostgreSQL, directly and through the storage proxy, a dashboard reading.

Load figures for docs/storages.md ("Load figures") and BENCHMARKS.md: W workers × 1 thread run N
short trials on tiny data, once directly on PostgreSQL and once through ``tagsearch storage-proxy``
with the same PostgreSQL behind it, while ``tagsearch dashboard`` serves the study and a poller reads
it through the dashboard's HTTP API every second (the dashboard's read path).

Checked afterwards: exactly N finished, 0 duplicated numbers, 0 FAIL, nothing RUNNING or WAITING.
Measured: per-trial storage time (seconds a worker's main thread spent in storage calls, the budget
lock's tries included, from the end of one trial to the end of the next), median and p95; wall time.

    .venv/bin/python -m benchmarks run reliability_load [--trials 200] [--workers 8]
        [--postgres postgresql+psycopg2://postgres@127.0.0.1:5432/test] [--modes direct,proxy] [--json OUT]
        [--stub] [--folder DIR] [--data CSV]

Each run uses a study of its own (deleted afterwards); one JSON line per mode on stdout. The tests
(tests/test_services.py) run it at test size with ``--stub``: the workers are
``tagsearch.testing.stub_worker`` (the same runtime, a stub objective without torch) instead of
``tagsearch worker``. ``--folder`` keeps the logs (default: a new temporary folder), ``--data`` is the
workers' corpus (default: 600 synthetic posts written there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

# Runs inside each worker: time every storage call of the main thread (on a server storage all go
# through outages.Outages.call, budget lock tries included) and write one line per trial: its number
# and its storage seconds. Then runs the worker: ``hook.py MODULE ARGS`` calls MODULE.main(ARGS).
TIMING_HOOK = """
import importlib, json, os, sys
from tagsearch.testing.storage_timing import time_storage_calls
from tagsearch.runtime.outages import Outages

out = open(os.environ["TAGSEARCH_BENCH_TIMINGS"], "a")


def record(study, seconds, before):
    mine = [t.number for t in study.get_trials(deepcopy=False) if t.number not in before]
    out.write(json.dumps({"trial": mine[0] if mine else None, "storage_s": seconds}) + "\\n")
    out.flush()


time_storage_calls(Outages, record, before_trial=lambda study: {t.number for t in study.get_trials(deepcopy=False)})
sys.exit(importlib.import_module(sys.argv[1]).main(sys.argv[2:]))
"""


class DashboardPoller:
    """``tagsearch dashboard`` on the study's storage and a thread reading the study through its API."""

    def __init__(self, url: str, name: str, folder: Path):
        from tagsearch.testing.processes import free_port

        self.port, self.name = free_port(), name
        self.log = folder / "dashboard.log"
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen([sys.executable, "-m", "tagsearch.cli", "dashboard", "--storage", url,
                                             "--port", str(self.port)], stdout=handle, stderr=subprocess.STDOUT,
                                            cwd=folder)
        self.polls, self.errors, self.stop, self.ready = 0, [], threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as reply:
            return json.loads(reply.read())

    def run(self) -> None:
        study_id = None
        while not self.stop.wait(1.0):
            try:
                if study_id is None:
                    found = [s for s in self.get("/api/studies")["study_summaries"] if s["study_name"] == self.name]
                    self.ready.set()  # serving: the load may start (a fast load could otherwise end unobserved)
                    study_id = found[0]["study_id"] if found else None
                    continue
                self.get(f"/api/studies/{study_id}?after=0")
                self.polls += 1
            except OSError as exc:  # not listening yet
                if self.process.poll() is not None:
                    self.errors.append(f"dashboard exited: {exc}")
                    return
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=40)
        self.process.terminate()
        self.process.wait(timeout=30)


def run(mode: str, postgres: str, trials: int, workers: int, folder: Path, data: Path, stub: bool = False) -> dict:
    import optuna
    from tagsearch.runtime.storage import open_storage
    from tagsearch.testing.processes import start_proxy, stop_proxy
    from tagsearch.testing.specs import write_spec

    name = f"tagsearch-load-{mode}-{uuid.uuid4().hex[:8]}"
    folder = folder / mode
    folder.mkdir(parents=True)
    proxy, proxy_exit = None, None
    url = postgres
    if mode == "proxy":
        proxy, url = start_proxy(postgres, folder / "proxy.log")
    spec = write_spec(folder / "spec.toml", model="dense", data=data, storage=url, name=name,
                      edit=lambda raw: raw["training"].update(max_epochs=1, patience=1, folds=1))  # short trials
    hook = folder / "timing_hook.py"
    hook.write_text(TIMING_HOOK)
    timings = folder / "timings.jsonl"
    poller = DashboardPoller(url, name, folder)
    poller.ready.wait(timeout=120)  # the dashboard must be up before the load it reads begins
    worker = (["tagsearch.testing.stub_worker", "worker", "--storage", url, "--study-name", name, "--n-trials", str(trials),
               "--epochs", "1", "--epoch-seconds", "0.2"] if stub else
              ["tagsearch.cli", "worker", str(spec), "--n-trials", str(trials), "--threads", "1"])
    processes, start = [], time.monotonic()
    try:
        for index in range(workers):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGSEARCH_WORKER_INDEX": str(index),
                   "TAGSEARCH_BENCH_TIMINGS": str(timings)}
            with open(folder / f"worker{index}.log", "w") as handle:
                processes.append(subprocess.Popen([sys.executable, str(hook), *worker], env=env, stdout=handle,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        codes = [p.wait(timeout=3600) for p in processes]
        wall = time.monotonic() - start
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        poller.close()
        if proxy is not None:
            proxy_exit = stop_proxy(proxy)
    study = optuna.load_study(study_name=name, storage=open_storage(postgres))
    all_trials = study.get_trials(deepcopy=False)
    State = optuna.trial.TrialState
    numbers = [t.number for t in all_trials]
    rows = [json.loads(line) for line in timings.read_text().splitlines()]
    per_trial = sorted(r["storage_s"] for r in rows if r["trial"] is not None)
    result = {
        "mode": mode, "workers": workers, "budget": trials, "exit_codes": codes, "wall_s": round(wall, 1),
        "finished": sum(t.state in (State.COMPLETE, State.PRUNED) for t in all_trials),
        "complete": sum(t.state == State.COMPLETE for t in all_trials),
        "pruned": sum(t.state == State.PRUNED for t in all_trials),
        "fail": sum(t.state == State.FAIL for t in all_trials),
        "running_or_waiting": sum(t.state in (State.RUNNING, State.WAITING) for t in all_trials),
        "duplicated_numbers": len(numbers) - len(set(numbers)),
        "numbers_contiguous": sorted(numbers) == list(range(len(numbers))),
        "defaults_trials": sum(t.user_attrs.get("config") == "defaults" for t in all_trials),
        "storage_s_median": round(statistics.median(per_trial), 4),
        "storage_s_p95": round(per_trial[max(0, int(round(0.95 * len(per_trial))) - 1)], 4),
        "trials_timed": len(per_trial),
        "dashboard_polls": poller.polls, "dashboard_errors": poller.errors[:3],
        "proxy_exit": proxy_exit,  # the proxy's exit code on SIGTERM (None: no proxy)
    }
    optuna.delete_study(study_name=name, storage=open_storage(postgres))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--postgres", default=os.environ.get("TAGSEARCH_TEST_POSTGRES",
                                                             "postgresql+psycopg2://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--modes", default="direct,proxy")
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--stub", action="store_true", help="torch-free stub workers instead of tagsearch worker")
    parser.add_argument("--folder", type=Path, help="where the logs go (default: a new temporary folder)")
    parser.add_argument("--data", type=Path, help="the workers' corpus (default: 600 synthetic posts)")
    args = parser.parse_args(argv)
    from tagsearch.data.synth import write_corpus

    folder = args.folder or Path(tempfile.mkdtemp(prefix="tagsearch-load-"))
    data = args.data
    if data is None:
        data = folder / "tiny.csv"
        write_corpus(data, n_posts=600, seed=1)
    results = []
    for mode in args.modes.split(","):
        result = run(mode, args.postgres, args.trials, args.workers, folder, data, stub=args.stub)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                               "results": results}, indent=2) + "\n")
    ok = all(r["finished"] == r["budget"] and r["fail"] == 0 and r["duplicated_numbers"] == 0
             and r["running_or_waiting"] == 0 and r["exit_codes"] == [0] * r["workers"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
