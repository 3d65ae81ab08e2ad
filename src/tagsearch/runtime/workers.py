"""Processes that run trials: ``tagsearch worker`` (one process joining a study until the study as
a whole has its budget of finished trials) and ``tagsearch launch`` (W worker subprocesses on a
device list, one live progress line, signals forwarded, non-zero exit if a worker crashed).

Budget: before each trial a worker counts the study's finished (COMPLETE + PRUNED) and RUNNING
trials and starts one only while their sum is below N. Counting and creating the trial happen under
the study's ``BudgetLock`` (locks.py), so two workers never both take the last slot: exactly N
finish; creating the study and its [defaults] trial happens under the same lock. While the
remaining budget is held by other workers' running trials, a worker waits and keeps checking
heartbeats (heartbeat.py, on every storage): if such a worker died, its trial is failed, requeued
and run here.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna

from tagsearch.runtime import heartbeat, ray_launch
from tagsearch.study import search
from tagsearch.data.corpus import DataOptions, load_corpus, resolve_data
from tagsearch.errors import UserError
from tagsearch.runtime.locks import BudgetLock
from tagsearch.log import log
from tagsearch.study.spec import load_spec
from tagsearch.runtime import storage as storages
from tagsearch.runtime.storage import local_path, masked, open_storage

POLL_SECONDS = 1.0
MAX_CONSECUTIVE_FAILURES = 8
KILL_AFTER_SECONDS = 30
PLAIN_LINE_SECONDS = 5
WORKER_INDEX_ENV = "TAGSEARCH_WORKER_INDEX"
# Code a signal must not interrupt: a storage write stopped halfway leaves its trial RUNNING.
STORAGE_MODULES = ("sqlalchemy", "sqlite3", "optuna.storages", "redis", "grpc", "tagsearch.runtime.storage")
REDELIVER_SECONDS = 0.05


# ---------------------------------------------------------------------------------------------
# tagsearch worker


def cmd_worker(args) -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # while loading: SIGTERM acts like Ctrl-C
    spec = load_spec(args.spec)
    url, target = args.storage or spec.storage, args.n_trials or spec.n_trials
    search.check_space(spec)  # cheap checks first, then the data
    device = search.describe_device(args.device or spec.device)
    store = open_early(url)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    corpus = load_corpus(resolve_data(spec, DataOptions(args.data, tuple(args.text_columns or ()), args.tags_column, args.top_k)))
    study = open_study(spec, corpus, url, args.study_name, seed_offset=worker_index(), storage=store)
    objective = search.Objective(spec, corpus, device=args.device)
    interrupts = Interrupts().install()
    log(f"data: {corpus.source}: {corpus.summary()}")
    log(f"worker {os.getpid()} on study {study.study_name!r} ({masked(url)}), device {device}, data fingerprint "
        f"{corpus.fingerprint}: {search.progress(study).finished}/{target} trials finished")
    code = run_trials(study, objective, target, args.timeout or spec.timeout, url=url, interrupts=interrupts)
    log(f"worker {os.getpid()} done: {summary(search.progress(study), target)}")
    return code


def open_study(spec, corpus, url: str, study_name: str | None, **kwargs) -> optuna.Study:
    """``search.open_study`` under the study's budget lock: of workers starting on a new study at
    the same moment, one creates it and queues [defaults]; the others find it complete."""
    name, storage = study_name or spec.name, kwargs.get("storage")
    if storage is not None and any(s.study_name == name and "fingerprint" in s.user_attrs
                                   for s in storage.get_all_studies()):
        return search.open_study(spec, corpus, url, study_name, **kwargs)  # complete: joining changes nothing
    lock = BudgetLock(url, name)
    try:
        lock.acquire()
        return search.open_study(spec, corpus, url, study_name, **kwargs)
    finally:
        lock.close()


def open_early(url: str):
    """A server storage, opened before the data is loaded (an unreachable one fails fast); None for
    a local file that does not exist yet, so a refused input never leaves an empty storage behind
    (``open_study`` creates it once the data is good)."""
    path = local_path(url)
    return open_storage(url, retry=True) if path is None or path.exists() else None


class Interrupts:
    """A worker's Ctrl-C/SIGTERM state. A running trial is interrupted at once (FAIL with the reason,
    then queued again); between trials the worker just starts no further one. Never mid-ask, which
    could strand a trial, and never inside a storage call (a report, a heartbeat): the signal is
    delivered again ``REDELIVER_SECONDS`` later, once the write is done."""

    def __init__(self):
        self.active = False  # inside a trial: a signal interrupts it
        self.stop_requested = False  # a signal came: start no further trial
        self.interrupted: int | None = None  # the trial a signal stopped (to queue again)

    def install(self) -> "Interrupts":
        def on_signal(signum, frame):
            self.stop_requested = True
            if not self.active:
                return
            if in_storage_call(frame):
                # to the main thread itself: a process-wide signal may land on another thread, and
                # then a blocking call in the main thread (a sleep, a wait) is not interrupted
                again = threading.Timer(REDELIVER_SECONDS, signal.pthread_kill,
                                        (threading.main_thread().ident, signum))
                again.daemon = True  # never holds up the process's exit
                again.start()
                return
            raise KeyboardInterrupt

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        return self

    def run(self, objective, trial: optuna.Trial) -> float:
        self.active = True
        try:
            if self.stop_requested:  # the signal came while Optuna was creating this trial
                raise KeyboardInterrupt
            return objective(trial)
        except KeyboardInterrupt:
            self.interrupted = trial.number
            trial.set_user_attr("fail_reason", "interrupted (Ctrl-C or SIGTERM); queued again with the same parameters")
            raise
        finally:
            self.active = False


def in_storage_call(frame) -> bool:
    """Whether ``frame`` or a caller of it runs storage code (``STORAGE_MODULES``); not when
    ``frame`` is an outage retry waiting between attempts (nothing is half-written then)."""
    if frame is not None and frame.f_code is storages.retry_transient.__code__:
        return False
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


def worker_index() -> int:
    """This worker's index among those ``launch`` started (offsets the sampler seed); 0 if alone."""
    text = os.environ.get(WORKER_INDEX_ENV, "0")
    if not text.isdigit():
        raise UserError(f"{WORKER_INDEX_ENV}={text!r} is not an integer >= 0")
    return int(text)


def run_trials(study: optuna.Study, objective: search.Objective, target: int, timeout: float | None = None,
               wait_for_running: bool = True, url: str | None = None, interrupts: Interrupts | None = None) -> int:
    """Run trials until the study has ``target`` finished ones or ``timeout`` seconds passed.
    When the rest of the budget is running elsewhere, wait (``wait_for_running``: heartbeats, on
    every storage, tell a slow worker from a dead one) or leave. ``url``: the study's storage,
    whose ``BudgetLock`` other workers share (None: no other worker). ``interrupts``: the installed
    signal state of a ``worker`` process (default: none installed). Returns 0, or 1 when this
    worker's trials keep failing."""
    interrupts = interrupts or Interrupts()
    deadline = None if timeout is None else time.monotonic() + timeout
    guard = FailureGuard(MAX_CONSECUTIVE_FAILURES)
    lock = BudgetLock(url, study.study_name)

    def started(trial: optuna.Trial) -> float:
        lock.release()  # the trial exists and counts as RUNNING: the next worker may count now
        with heartbeat.TrialHeartbeat(study, trial._trial_id):
            return interrupts.run(objective, trial)

    gc.freeze()  # what exists now lives through every trial: the collection after each scans only the trial's own
    try:
        while not guard.tripped:
            if interrupts.stop_requested:
                raise KeyboardInterrupt
            if storages.gave_up is not None:
                raise storages.gave_up
            if deadline is not None and time.monotonic() >= deadline:
                return 0
            lock.acquire()
            try:
                if not has_budget(study, target):
                    if search.progress(study).finished >= target or not wait_for_running:
                        return 0
                    lock.release()
                    time.sleep(POLL_SECONDS)  # the rest is running elsewhere; take over if that worker dies
                    continue
                study.optimize(started, n_trials=1, catch=(Exception,), callbacks=[guard])
            finally:
                lock.release()
    except KeyboardInterrupt:
        requeue(study, interrupts.interrupted)
        raise
    except Exception:
        if storages.gave_up is not None:  # an outage outlasted the limit (whatever Optuna made of it)
            raise storages.gave_up from None
        raise
    finally:
        gc.unfreeze()
        lock.close()
    log(f"stopping: {guard.limit} trials in a row failed; last reason: {guard.last_reason}")
    return 1


def has_budget(study: optuna.Study, target: int) -> bool:
    """Fail stale trials of dead workers (and queue each again once), then: may one more trial start?"""
    heartbeat.fail_stale_trials(study)
    State = optuna.trial.TrialState
    return storages.count_trials(study, (State.COMPLETE, State.PRUNED, State.RUNNING)) < target


class FailureGuard:
    """Study callback: stop this worker after ``limit`` failed trials in a row (a broken GPU, a bug)."""

    def __init__(self, limit: int):
        self.limit, self.count, self.last_reason = limit, 0, None

    @property
    def tripped(self) -> bool:
        return self.count >= self.limit

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != optuna.trial.TrialState.FAIL:
            self.count = 0
            return
        self.count += 1
        self.last_reason = trial.user_attrs.get("fail_reason", "see the log")
        if self.tripped:
            study.stop()


def requeue(study: optuna.Study, number: int | None) -> None:
    """Queue an interrupted trial's parameters again so a later run retries it."""
    if number is None:
        return
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    params = {**trial.system_attrs.get("fixed_params", {}), **trial.params} if trial else {}
    if trial is not None and trial.state == optuna.trial.TrialState.FAIL and params:
        keep = {k: v for k, v in trial.user_attrs.items() if k == "config"}
        study.enqueue_trial(params, user_attrs={**keep, "retry_of": number})
        log(f"trial {number} was interrupted; queued again with the same parameters")


def summary(counts: search.Progress, target: int) -> str:
    best = "-" if counts.best_value is None else f"{counts.best_value:.4f} (trial {counts.best_number})"
    return (f"{counts.finished}/{target} finished (complete {counts.complete}, pruned {counts.pruned}, "
            f"failed {counts.failed}, running {counts.running}), best {best}")


# ---------------------------------------------------------------------------------------------
# tagsearch launch


def cmd_launch(args) -> int:
    spec = load_spec(args.spec)
    search.check_space(spec)
    devices = parse_devices(args.devices)
    url, target = args.storage or spec.storage, args.n_trials or spec.n_trials
    placement = getattr(args, "ray", None) and ray_launch.prepare(args.ray, url, args.gpus_per_worker,
                                                                  args.cpus_per_worker)  # before the data
    store = open_early(url)
    config = resolve_data(spec, DataOptions(args.data, tuple(args.text_columns or ()), args.tags_column, args.top_k))
    corpus = load_corpus(config)
    study = open_study(spec, corpus, url, args.study_name, storage=store)  # trial 0 before any child
    log(f"data: {corpus.source}: {corpus.summary()}")
    if placement:  # --ray: Ray places the workers anywhere in its cluster (ray_launch.py)
        poll = optuna.load_study(study_name=study.study_name, storage=open_storage(url, read_only=True, retry=True))
        line = ProgressLine(target)
        commands = [worker_command(args, url, study.study_name, target, config.path, placement.device,
                                   placement.threads) for _ in range(args.workers)]
        return ray_launch.launch_on_ray(commands, placement=placement, log_dir=log_dir(url),
                                        log_prefix=f"{study.study_name}-",
                                        show=lambda final: line.show(search.progress(poll), final=final))
    threads = max(1, cpu_count() // args.workers)
    logs = log_dir(url)
    logs.mkdir(parents=True, exist_ok=True)
    children = []
    for index in range(args.workers):
        device = devices[index % len(devices)]
        command = worker_command(args, url, study.study_name, target, config.path, device, threads)
        path = logs / f"{study.study_name}-worker{index}.log"
        children.append(start_worker(command, worker_env(index, device, threads), path))
    log(f"launched {args.workers} worker(s) on {', '.join(devices)} ({threads} thread(s) each); "
        f"logs in {logs}/{study.study_name}-worker*.log")
    # Progress polls read through a storage of their own that never takes SQLite's write lock.
    poll = open_storage(url, read_only=True, retry=True)
    return supervise(optuna.load_study(study_name=study.study_name, storage=poll), children, target)


def parse_devices(text: str) -> list[str]:
    """``"cpu"`` → ``["cpu"]``; ``"0,1"`` → ``["0", "1"]`` (GPU ids, checked against what is visible)."""
    if text.strip().lower() == "cpu":
        return ["cpu"]
    ids = [part.strip() for part in text.split(",")]
    if not ids or not all(part.isdigit() for part in ids):
        raise UserError(f"--devices {text!r} is not a device list; expected 'cpu' or GPU ids like 0,1,2,3")
    import torch

    visible = torch.cuda.device_count()
    missing = [i for i in ids if int(i) >= visible]
    if missing and not visible:
        raise UserError(f"--devices {text!r}: no CUDA GPU is visible on this machine; expected --devices cpu")
    if missing:
        raise UserError(f"--devices {text!r}: GPU {missing[0]} is not visible ({visible} CUDA GPU(s) found); "
                        f"expected ids below {visible}, or --devices cpu")
    return ids


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def log_dir(url: str) -> Path:
    """Worker logs sit beside a local storage file (``dir/x.db`` → ``dir/x-logs``), else storage/logs."""
    path = local_path(url)
    return Path("storage/logs") if path is None else path.with_name(f"{path.stem}-logs")


def worker_command(args, url: str, study_name: str, target: int, data_path: str, device: str,
                   threads: int) -> list[str]:
    command = [sys.executable, "-m", "tagsearch.cli", "worker", args.spec, "--data", str(data_path),
               "--storage", url, "--study-name", study_name, "--n-trials", str(target),
               "--device", "cpu" if device == "cpu" else "cuda", "--threads", str(threads)]
    for column in args.text_columns or ():
        command += ["--text-column", column]
    if args.tags_column:
        command += ["--tags-column", args.tags_column]
    if args.top_k:
        command += ["--top-k", str(args.top_k)]
    if args.timeout:
        command += ["--timeout", str(args.timeout)]
    return command


def worker_env(index: int, device: str, threads: int) -> dict:
    """Each child sees only its GPU (none for CPU workers) and its share of the cores. GPU ids count
    the GPUs launch itself sees, so they are mapped through its own CUDA_VISIBLE_DEVICES if set."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    gpu = "" if device == "cpu" else (visible[int(device)] if visible else device)
    return {**os.environ, WORKER_INDEX_ENV: str(index), "CUDA_VISIBLE_DEVICES": gpu,
            "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def start_worker(command: list[str], env: dict, log_path: Path) -> tuple[subprocess.Popen, Path]:
    """A worker in its own session (a terminal's Ctrl-C reaches only us; we forward it once)."""
    with open(log_path, "a", encoding="utf-8") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    return process, log_path


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when ``launch`` dies, even by SIGKILL (no orphaned workers)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def supervise(study: optuna.Study, children: list, target: int) -> int:
    """Show progress until every worker exits; forward SIGINT/SIGTERM (a second one kills)."""
    signals: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: signals.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    line, forwarded, since = ProgressLine(target), 0, None
    try:
        while any(process.poll() is None for process, _ in children):
            if len(signals) > forwarded:
                forwarded = len(signals)
                since = time.monotonic()
                forward(children, signal.SIGTERM if forwarded == 1 else signal.SIGKILL)
            if since is not None and time.monotonic() - since > KILL_AFTER_SECONDS:
                forward(children, signal.SIGKILL)
            line.show(search.progress(study))
            time.sleep(POLL_SECONDS)
        line.show(search.progress(study), final=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return report_exits(children, interrupted=bool(signals))


def forward(children: list, signum: int) -> None:
    for process, _ in children:
        if process.poll() is None:
            process.send_signal(signum)


def report_exits(children: list, interrupted: bool) -> int:
    crashed = [(i, process, path) for i, (process, path) in enumerate(children) if process.returncode != 0]
    if interrupted:
        log(f"interrupted: {len(children)} worker(s) stopped; interrupted trials are queued again, rerun to resume")
        return 130
    for index, process, path in crashed:
        tail = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        log(f"worker {index} (pid {process.pid}) exited with code {process.returncode}; last lines of {path}:")
        for text in tail:
            log(f"    {text}")
    return 1 if crashed else 0


class ProgressLine:
    """One live line on stderr: rewritten in place on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, target: int, stream=None):
        self.target, self.stream = target, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start, self.last_text, self.last_time = time.monotonic(), None, -PLAIN_LINE_SECONDS

    def show(self, counts: search.Progress, final: bool = False) -> None:
        elapsed = int(time.monotonic() - self.start)
        text = f"{summary(counts, self.target)}  [{elapsed // 60:02d}:{elapsed % 60:02d}]"
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K" + ("\n" if final else ""))
        else:
            counts_text, waited = text.split("  [")[0], time.monotonic() - self.last_time
            changed = counts_text != self.last_text
            if (final and changed) or waited >= 60 or (changed and waited >= PLAIN_LINE_SECONDS):
                self.stream.write(text + "\n")
                self.last_text, self.last_time = counts_text, time.monotonic()
        self.stream.flush()
