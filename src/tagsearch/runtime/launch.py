"""W worker processes on one study: each started in its own session with its device and share of
the cores, one live progress line while they run, Ctrl-C/SIGTERM forwarded (a second one, or
``KILL_AFTER_SECONDS`` without an exit, SIGKILLs them), and a non-zero exit if a worker crashed.
With ``soft_stop`` (``tagsearch tune``) the first Ctrl-C calls it instead (the study's deadline
becomes now: workers finish their epoch and exit on their own); the next ones forward as above.

A closed terminal (SIGHUP: an SSH session that dropped) does not stop the study: launch goes on
supervising, its output from then on appended to ``<logs>/<study>-launch.log`` (``Hangup``). A
progress poll that fails (an outage, a bug) is logged and skipped (``progress.Poll``).

What a worker process runs is the caller's (``command(index, device, threads)``): ``tagsearch
launch`` starts ``tagsearch worker`` (study/workers.py), the tests a worker with a stub objective.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import optuna

from tagsearch.durations import clock_text  # noqa: F401  (launch.clock_text, as tune imports it)
from tagsearch.errors import UserError
from tagsearch.log import log, logger, warning
from tagsearch.runtime import deadline as deadlines
from tagsearch.runtime.children import spawn
from tagsearch.runtime.progress import Poll, Progress, progress, summary
from tagsearch.runtime.location import local_path
from tagsearch.runtime.storage import open_storage

POLL_SECONDS = 1.0
KILL_AFTER_SECONDS = 30
PLAIN_LINE_SECONDS = 5
WORKER_INDEX_ENV = "TAGSEARCH_WORKER_INDEX"


def launch(url: str, study_name: str, target: int, workers: int, devices: list[str],
           command: Callable[[int, str, int], list[str]], soft_stop: Callable[[], None] | None = None) -> int:
    """Start ``workers`` processes ``command(index, device, threads)`` on ``devices`` (round robin;
    "cpu" or GPU ids as launch itself sees them), logging to ``log_dir(url)``, and supervise them.
    Returns 0, 1 if a worker crashed, 130 if interrupted (a ``soft_stop`` alone is not an interruption)."""
    threads = max(1, cpu_count() // workers)
    logs = log_dir(url)
    logs.mkdir(parents=True, exist_ok=True)
    hangup = Hangup(logs / f"{study_name}-launch.log")
    previous = signal.signal(signal.SIGHUP, hangup.on_signal)  # from the first worker on
    try:
        return _launch(url, study_name, target, workers, devices, command, soft_stop, threads, logs, hangup)
    finally:
        signal.signal(signal.SIGHUP, previous)


def _launch(url, study_name, target, workers, devices, command, soft_stop, threads, logs, hangup) -> int:
    children = []
    for index in range(workers):
        device = devices[index % len(devices)]
        path = logs / f"{study_name}-worker{index}.log"
        children.append(start_worker(command(index, device, threads), worker_env(index, device, threads), path))
    log(f"launched {workers} worker(s) on {', '.join(devices)} ({threads} thread(s) each); "
        f"logs in {logs}/{study_name}-worker*.log; a closed terminal does not stop them ({hangup.path} "
        f"then gets launch's output)")
    # Progress polls read through a storage of their own that never takes SQLite's write lock; not
    # retried through outages (a failed poll is skipped, and never holds up a forwarded signal).
    poll = open_storage(url, read_only=True)
    return supervise(optuna.load_study(study_name=study_name, storage=poll), children, target, soft_stop, hangup)


def worker_index() -> int:
    """This worker's index among those ``launch`` started (offsets the sampler seed); 0 if alone."""
    text = os.environ.get(WORKER_INDEX_ENV, "0")
    if not text.isdigit():
        raise UserError(f"{WORKER_INDEX_ENV}={text!r} is not an integer >= 0")
    return int(text)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def log_dir(url: str) -> Path:
    """Worker logs sit beside a local storage file (``dir/x.db`` → ``dir/x-logs``), else storage/logs."""
    path = local_path(url)
    return Path("storage/logs") if path is None else path.with_name(f"{path.stem}-logs")


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
        process = spawn(command, env, handle)
    return process, log_path


def supervise(study: optuna.Study, children: list, target: int, soft_stop: Callable[[], None] | None = None,
              hangup: "Hangup | None" = None) -> int:
    """Show progress until every worker exits; forward SIGINT/SIGTERM (a second one kills). With
    ``soft_stop``, the first signal calls it and forwards nothing. SIGHUP is ``hangup``'s (default:
    output to the null device); a failing progress poll is skipped."""
    signals: list[int] = []
    hangup = hangup or Hangup(None)
    previous = {s: signal.signal(s, lambda signum, frame: signals.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup.on_signal)
    line, handled, forwarded, since, poll = ProgressLine(target), 0, 0, None, Poll()
    try:
        while any(process.poll() is None for process, _ in children):
            hangup.check()
            while len(signals) > handled:
                handled += 1
                if handled == 1 and soft_stop is not None:
                    soft_stop()
                    continue
                forwarded += 1
                since = since or time.monotonic()
                forward(children, signal.SIGTERM if forwarded == 1 else signal.SIGKILL)
            if since is not None and time.monotonic() - since > KILL_AFTER_SECONDS:
                forward(children, signal.SIGKILL)
            poll(lambda: line.show(progress(study), deadlines.recorded(study)))
            time.sleep(POLL_SECONDS)
        hangup.check()
        poll(lambda: line.show(progress(study), deadlines.recorded(study), final=True))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return report_exits(children, interrupted=forwarded > 0)


class Hangup:
    """SIGHUP (the terminal closed): keep going, with stdout and stderr from then on appended to
    ``path`` (None: the null device), as far as they were the terminal; a later write to a closed
    terminal would fail."""

    def __init__(self, path: Path | None):
        self.path, self.signalled, self.done = path, False, False

    def on_signal(self, signum, frame) -> None:
        self.signalled = True

    def check(self) -> None:
        if not self.signalled or self.done:
            return
        self.done = True
        target = os.open(self.path or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for fd in (1, 2):
                if os.isatty(fd):
                    os.dup2(target, fd)
        finally:
            os.close(target)
        log("the terminal closed (SIGHUP): launch goes on supervising its workers; output continues here"
            + (f" ({self.path})" if self.path else ""))


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
        warning(f"worker {index} (pid {process.pid}) exited with code {process.returncode}; last lines of {path}:")
        for text in tail:
            warning(f"    {text}")
    return 1 if crashed else 0


class ProgressLine:
    """One live line on stderr: rewritten in place on a terminal, a plain line every few seconds otherwise.
    A terminal widget rather than a log line, so it writes to its stream itself; ``-q`` hides it with
    the other information lines of the ``tagsearch`` logger."""

    def __init__(self, target: int, stream=None):
        self.target, self.stream = target, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start, self.last_text, self.last_time = time.monotonic(), None, -PLAIN_LINE_SECONDS

    def show(self, counts: Progress, deadline: float | None = None, final: bool = False) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        elapsed = int(time.monotonic() - self.start)
        left = "" if deadline is None else f", {clock_text(max(0, deadline - deadlines.clock()))} left"
        text = f"{summary(counts, self.target)}  [{clock_text(elapsed)}{left}]"
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K" + ("\n" if final else ""))
        else:
            counts_text, waited = text.split("  [")[0], time.monotonic() - self.last_time
            changed = counts_text != self.last_text
            if (final and changed) or waited >= 60 or (changed and waited >= PLAIN_LINE_SECONDS):
                self.stream.write(text + "\n")
                self.last_text, self.last_time = counts_text, time.monotonic()
        self.stream.flush()

