"""A torch-free worker and driver for tests/test_ray.py and the ``ray_overhead`` benchmark.

    python -m tagsearch.testing.ray_stub_worker worker --storage URL --study-name N --n-trials N [--steps K --step-seconds S]
    python -m tagsearch.testing.ray_stub_worker launch --address A --storage URL --study-name N --n-trials N
                                                --workers W --log-dir DIR [--gpus-per-worker G] [--cpus-per-worker C] [...]

``worker`` joins an existing study and runs ``runtime.trials.run_trials`` (the real budget, budget lock,
heartbeats, interrupts and requeueing) over an objective that suggests ``x``, reports ``K`` steps
``S`` seconds apart and returns ``x``; each trial records ``worker`` (host:pid, as the real
objective does) and ``cuda_visible_devices`` (what the process was given). ``launch`` drives
``ray_launch.launch_on_ray`` with W such worker command lines, as ``tagsearch launch --ray`` does
with real ones. ``--timings FILE``: one JSON line per trial with the seconds the worker's main
thread spent in storage calls (as the ``reliability_load`` benchmark measures them), and one line
with the process's start and first-trial times.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()

import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

from tagsearch.log import log  # noqa: E402


def worker(args) -> int:
    import optuna
    from tagsearch.runtime import storage as storages
    from tagsearch.runtime.interrupts import Interrupts
    from tagsearch.runtime.storage import open_storage
    from tagsearch.runtime.locks import BudgetLock
    from tagsearch.runtime.trials import run_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.timings:
        record_timings(storages.WorkerStorage, open(args.timings, "a"))
    study = optuna.load_study(study_name=args.study_name, storage=open_storage(args.storage, retry=True))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("cuda_visible_devices", visible)
        x = trial.suggest_float("x", 0.0, 1.0)
        for step in range(args.steps):
            trial.report(x, step)
            time.sleep(args.step_seconds)
        return x

    log(f"stub worker {os.getpid()} on {args.study_name}: CUDA_VISIBLE_DEVICES={visible}")
    try:
        return run_trials(study, objective, args.n_trials, lock=BudgetLock.of(study, args.storage),
                          interrupts=Interrupts().install())
    except KeyboardInterrupt:
        log("interrupted")
        return 130


def record_timings(entry: type, out) -> None:
    """Every storage call of the main thread goes through ``entry.call`` (``storage.WorkerStorage``):
    one line per trial with its share of storage seconds, and a first line with the process's start
    and its first trial's."""
    from tagsearch.testing.storage_timing import time_storage_calls

    first: list[float] = []

    def first_trial(study):
        if not first:
            first.append(time.time())
            out.write(json.dumps({"pid": os.getpid(), "process_start": PROCESS_START, "first_trial": first[0]}) + "\n")

    def record(study, seconds, before):
        out.write(json.dumps({"pid": os.getpid(), "storage_s": seconds}) + "\n")
        out.flush()

    time_storage_calls(entry, record, before_trial=first_trial)


def launch(args) -> int:
    from tagsearch.runtime import ray_launch

    command = [sys.executable, "-m", "tagsearch.testing.ray_stub_worker", "worker", "--storage", args.storage, "--study-name",
               args.study_name, "--n-trials", str(args.n_trials), "--steps", str(args.steps),
               "--step-seconds", str(args.step_seconds)] + (["--timings", args.timings] if args.timings else [])
    try:
        placement = ray_launch.prepare(args.address, args.storage, args.gpus_per_worker, args.cpus_per_worker)
        return ray_launch.launch_on_ray([command] * args.workers, placement=placement, log_dir=args.log_dir,
                                        log_prefix=f"{args.study_name}-", max_restarts=args.max_restarts,
                                        show=lambda final: sys.stdout.write("progress\n") and sys.stdout.flush())
    except ray_launch.UserError as exc:
        log(f"error: {exc}")
        return 2


def main() -> int:
    from tagsearch.testing.stub_worker import stub_parser

    parser = stub_parser("ray_stub_worker")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.2)
    parser.add_argument("--timings")
    parser.add_argument("--address")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log-dir")
    parser.add_argument("--gpus-per-worker", type=float)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--max-restarts", type=int, default=3)
    args = parser.parse_args()
    return worker(args) if args.command == "worker" else launch(args)


if __name__ == "__main__":
    sys.exit(main())
