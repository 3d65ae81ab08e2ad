"""The load benchmarks' one measurement inside a worker: the seconds its main thread spends in
storage calls, per trial (the ``reliability_load`` benchmark's workers, ``ray_stub_worker`` for the
``ray_overhead`` benchmark). Torch-free."""

from __future__ import annotations

import threading
import time


def time_storage_calls(entry: type, on_trial, before_trial=None) -> None:
    """Time every ``entry.call`` made by the main thread (the one door a worker's storage calls go
    through, budget-lock tries included; other threads — heartbeats — are not counted), and after
    each trial (``trials.run_trial``: run and told) call ``on_trial(study, seconds, before)``: the
    storage seconds since the previous trial ended, and what ``before_trial(study)`` returned before
    this one was created (``budget.Budget.next_trial``; None without it)."""
    from tagsearch.runtime import trials
    from tagsearch.runtime.budget import Budget

    spent, real_call, real_next, real_run, before = [0.0], entry.call, Budget.next_trial, trials.run_trial, [None]

    def timed(self, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return real_call(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return real_call(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    def next_trial(budget):
        before[0] = before_trial(budget.study) if before_trial else None
        return real_next(budget)

    def run_trial(study, *args, **kwargs):
        try:
            return real_run(study, *args, **kwargs)
        finally:
            on_trial(study, spent[0], before[0])
            spent[0] = 0.0

    entry.call = timed
    Budget.next_trial, trials.run_trial = next_trial, run_trial
