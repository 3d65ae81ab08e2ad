"""The load benchmarks' one measurement inside a worker: the seconds its main thread spends in
storage calls, per trial (``benchmarks/reliability_load.py``'s workers, ``tests/ray_stub_worker.py``
for ``benchmarks/ray_overhead.py``). Torch-free."""

from __future__ import annotations

import threading
import time

import optuna


def time_storage_calls(entry: type, on_trial, before_trial=None) -> None:
    """Time every ``entry.call`` made by the main thread (the one door a worker's storage calls go
    through, budget-lock tries included; other threads — heartbeats — are not counted), and after
    each ``Study.optimize`` (one trial: ``trials.run_trials`` runs them one at a time) call
    ``on_trial(study, seconds, before)``: the storage seconds since the previous trial ended, and
    what ``before_trial(study)`` returned when this one began (None without it)."""
    spent, real_call, real_optimize = [0.0], entry.call, optuna.study.Study.optimize

    def timed(self, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return real_call(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return real_call(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    def optimize(self, *args, **kwargs):
        before = before_trial(self) if before_trial else None
        real_optimize(self, *args, **kwargs)
        on_trial(self, spent[0], before)
        spent[0] = 0.0

    entry.call = timed
    optuna.study.Study.optimize = optimize
