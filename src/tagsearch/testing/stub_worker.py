"""A worker process without a model, for the process tests: the real runtime (``run_trials``,
interrupts, heartbeats, budget locks, outages, ``launch``) around a stub objective that imports no
torch. Run as ``python -m tagsearch.testing.stub_worker worker|launch --storage URL --study-name NAME ...``.

The objective suggests ``x`` and ``size``, reports ``--epochs`` epochs (each sleeps
``--epoch-seconds`` × size / 4, so trials vary in length) and returns the best reported value. Told
through a file in ``--control DIR``: ``hang`` (while it exists, a trial goes on past its epochs,
reporting one more every 0.2 s, until killed or the file goes); ``die-after-create`` (the first
worker to create a new trial while it exists takes it away and SIGKILLs itself right after the
create, before the trial's first heartbeat). The study is created under the budget lock with a
[defaults] trial queued first, as ``tagsearch worker`` creates one.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

import optuna

from tagsearch.errors import exit_code
from tagsearch.log import log
from tagsearch.runtime import _optuna
from tagsearch.runtime import launch as runtime_launch
from tagsearch.runtime.interrupts import Interrupts
from tagsearch.runtime.locks import BudgetLock
from tagsearch.runtime.progress import progress, summary
from tagsearch.runtime.storage import open_storage
from tagsearch.runtime.worker_storage import outages_of
from tagsearch.runtime.trials import run_trials

MODULE = "tagsearch.testing.stub_worker"  # what ``python -m`` runs, here and in ``launch``
DEFAULTS = {"x": 0.5, "size": 1}
HANG_EPOCH_SECONDS = 0.2
ATTRS = ("params", "worker", "epochs_run", "best_epoch")  # what every finished stub trial carries


class StubObjective:
    def __init__(self, epochs: int, epoch_seconds: float, control: Path | None):
        self.epochs, self.epoch_seconds, self.control = epochs, epoch_seconds, control

    def told(self, name: str) -> bool:
        return self.control is not None and (self.control / name).exists()

    def __call__(self, trial: optuna.Trial) -> float:
        x, size = trial.suggest_float("x", 0.0, 1.0), trial.suggest_categorical("size", [1, 2, 4, 8])
        trial.set_user_attr("params", {"x": x, "size": size})
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        best, epoch = None, 0
        while epoch < self.epochs or self.told("hang"):
            epoch += 1
            time.sleep(self.epoch_seconds * size / 4 if epoch <= self.epochs else HANG_EPOCH_SECONDS)
            value = (x - 0.3) ** 2 + 1.0 / (epoch + size)
            trial.report(value, epoch)
            if best is None or value < best[0]:
                best = (value, epoch)
        trial.set_user_attr("epochs_run", epoch)
        trial.set_user_attr("best_epoch", best[1])
        return best[0]


def open_study(url: str, name: str, seed: int) -> optuna.Study:
    storage = open_storage(url, retry=True)
    lock = BudgetLock(url, name, outages_of(storage))
    try:
        lock.acquire()
        sampler = optuna.samplers.RandomSampler(seed=seed)
        if name in optuna.get_all_study_names(storage):
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler)
        study.enqueue_trial(DEFAULTS, user_attrs={"config": "defaults"})
        return study
    finally:
        lock.close()


def die_after_create(study: optuna.Study, control: Path) -> None:
    """The fault ``die-after-create``: SIGKILL this process right after it created a new trial."""
    storage = _optuna.study_storage(study)
    real = storage.create_new_trial

    def create(study_id, template_trial=None):
        trial_id = real(study_id, template_trial)
        if template_trial is None:  # a new RUNNING trial (not a queued copy)
            try:
                os.rename(control / "die-after-create", control / f"died-{os.getpid()}")  # one worker only
            except FileNotFoundError:
                return trial_id
            os.kill(os.getpid(), signal.SIGKILL)
        return trial_id

    storage.create_new_trial = create


def worker(args) -> int:
    study = open_study(args.storage, args.study_name, seed=runtime_launch.worker_index())
    if args.control:
        die_after_create(study, args.control)
    interrupts = Interrupts().install()
    log(f"worker {os.getpid()} on study {args.study_name!r}: {progress(study).finished}/{args.n_trials} finished")
    objective = StubObjective(args.epochs, args.epoch_seconds, args.control)
    code = run_trials(study, objective, args.n_trials, args.timeout, lock=BudgetLock.of(study, args.storage),
                      interrupts=interrupts)
    log(f"worker {os.getpid()} done: {summary(progress(study), args.n_trials)}")
    return code


def launch(args) -> int:
    open_study(args.storage, args.study_name, seed=0)  # trial 0 before any child

    def command(index: int, device: str, threads: int) -> list[str]:
        return [sys.executable, "-m", MODULE, "worker", *common(args)]

    return runtime_launch.launch(args.storage, args.study_name, args.n_trials, args.workers, ["cpu"], command)


def common(args) -> list[str]:
    line = ["--storage", args.storage, "--study-name", args.study_name, "--n-trials", str(args.n_trials),
            "--epochs", str(args.epochs), "--epoch-seconds", str(args.epoch_seconds)]
    line += ["--control", str(args.control)] if args.control else []
    return line + (["--timeout", str(args.timeout)] if args.timeout else [])


def stub_parser(prog: str) -> argparse.ArgumentParser:
    """What every stub command takes (this one and ``ray_stub_worker``): worker or launch, on a
    study (storage URL, name) and its budget of finished trials."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("command", choices=["worker", "launch"])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--n-trials", type=int, required=True)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    parser = stub_parser("stub_worker")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--epoch-seconds", type=float, default=0.05)
    parser.add_argument("--control", type=Path)
    parser.add_argument("--timeout", type=float)
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """As ``tagsearch.cli.main``: a UserError is one ``error:`` line and exit 2, Ctrl-C exit 130."""
    def command() -> int:
        args = parse(sys.argv[1:] if argv is None else argv)
        return (worker if args.command == "worker" else launch)(args)

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
