"""Ctrl-C and SIGTERM in a worker: a running trial is interrupted at once (FAIL with the reason,
then queued again, ``outcomes.requeue``); between trials the worker just starts no further one.

Never inside a storage call (a report, a state change): a write stopped halfway can leave its trial
RUNNING. Every call through a storage that ``storage.open_storage`` made runs inside
``storage_call()``, which marks this thread as writing; a signal that finds the main thread marked
is delivered again ``REDELIVER_SECONDS`` later, once the call is done. An outage retry waiting
between two attempts is not inside a call (nothing is half-written then).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

REDELIVER_SECONDS = 0.05
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"

_calls = threading.local()  # per thread: how many storage calls are in progress (nested wrappers)


@contextmanager
def storage_call():
    """Mark the current thread as inside a storage call for the duration of the block."""
    _calls.depth = getattr(_calls, "depth", 0) + 1
    try:
        yield
    finally:
        _calls.depth -= 1


def in_storage_call() -> bool:
    """Whether the current thread (in a signal handler: the main thread) is inside a storage call."""
    return getattr(_calls, "depth", 0) > 0


class Interrupts:
    """A worker's Ctrl-C/SIGTERM state (``install`` sets the handlers; ``run`` runs one trial)."""

    def __init__(self):
        self.active = False  # inside a trial: a signal interrupts it
        self.stop_requested = False  # a signal came: start no further trial

    def install(self) -> "Interrupts":
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True
        if not self.active:
            return
        if in_storage_call():
            # to the main thread itself: a process-wide signal may land on another thread, and
            # then a blocking call in the main thread (a sleep, a wait) is not interrupted
            again = threading.Timer(REDELIVER_SECONDS, signal.pthread_kill,
                                    (threading.main_thread().ident, signum))
            again.daemon = True  # never holds up the process's exit
            again.start()
            return
        raise KeyboardInterrupt

    def run(self, objective, trial) -> float:
        """``objective(trial)``; a signal during it raises KeyboardInterrupt (after any storage call)
        and gives the trial its ``fail_reason`` (``trials.run_trial`` then fails it and queues it again)."""
        self.active = True
        try:
            if self.stop_requested:  # the signal came while Optuna was creating this trial
                raise KeyboardInterrupt
            return objective(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", INTERRUPTED)  # trials.run_trial adds whether it is queued again
            raise
        finally:
            self.active = False

